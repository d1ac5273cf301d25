"""Tokenize a UTF-8 text corpus into shards of GPT-2 token ids, for train.py --data (notebook 09).

    python scripts/make_shards.py input.txt shards/shakespeare --shard-size 100000
    python scripts/make_shards.py ~/corpus/ shards/corpus        # a folder: every file in it, by name
    python train.py --data shards/shakespeare                     # train on the shards

Each file is one document, and each document starts with <|endoftext|> (id 50256), as in GPT-2's
training data, so the model sees where one text ends and the next begins. The tokens go into
shards of --shard-size tokens (the last one shorter): the first --val-shards shards are the
validation split (val_000000.npy, ...), the others the training split (train_000001.npy, ...).

The format is numpy's .npy of uint16: GPT-2's 50,257 ids fit in 16 bits (2 bytes a token, a
quarter of int64's), and the .npy header carries the dtype and the length, which numpy reads and
checks itself. gpt_helpers.ShardLoader memory-maps a shard from it, with no format of our own.

Memory stays flat however large the corpus: a file is read a block at a time (--block-mb), each
block cut at a space between two words or after a line's end, where GPT-2's tokenizer splits anyway
(so the ids are exactly those of the whole text), and a shard is written as soon as it is full.
All or nothing: the shards go into a hidden temporary folder and are moved into the output folder
only once every one is written, so an error part-way leaves the output folder as it was.
"""

from __future__ import annotations

import argparse
import codecs
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the tokenizer and the shard format come from gpt_helpers
    sys.path.insert(0, str(ROOT))

from train import positive_float, positive_int  # noqa: E402 (train.py's argparse types: light, no torch)


def corpus_files(source: Path) -> list[Path]:
    """The documents of a corpus: one text file, or every file under a folder (hidden ones left
    out), in name order so that the shards are the same on every machine."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{str(source)!r} not found: pass a UTF-8 text file or a folder of them")
    files = sorted(p for p in source.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not files:
        raise FileNotFoundError(f"folder {str(source)!r} holds no files: pass a text file or a folder of them")
    return files


# where a text encodes to the same GPT-2 ids whole or cut: before a space, or after a newline, that
# has a non-space character on each side. GPT-2's pre-tokenizer never joins a character to the
# whitespace after it, always joins such a space to the word after it, and keeps such a newline as a
# token of its own (Python's \s is a superset of the Unicode White_Space that tiktoken's \s matches)
CUT = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")


def last_cut(text: str) -> int:
    """The index of the last CUT in text (0: there is none), looked for near the end first."""
    for window in (1 << 16, len(text)):
        cuts = [m.start() for m in CUT.finditer(text, max(0, len(text) - window))]
        if cuts:
            return cuts[-1]
    return 0


def text_blocks(path: Path, block_bytes: int, progress):
    """A file's text, block_bytes at a time, each block ending at a last_cut (a text with no cut at
    all, one endless word, stays whole). Raises where the bytes are not UTF-8."""
    decoder, pending, offset = codecs.getincrementaldecoder("utf-8")(), "", 0
    with open(path, "rb") as f:
        while True:
            data = f.read(block_bytes)
            try:
                pending += decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise ValueError(f"{str(path)!r} is not UTF-8 text (a bad byte near offset {offset + e.start}): "
                                 "convert it to UTF-8 or leave it out") from None
            offset += len(data)
            progress.update(len(data))
            cut = last_cut(pending) if data else len(pending)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
            if not data:
                return


class ShardWriter:
    """Collects token ids into a buffer of shard_size and writes it out as a shard whenever it is
    full: the first val_shards are val_NNNNNN.npy, the rest train_NNNNNN.npy."""

    def __init__(self, folder: Path, shard_size: int, val_shards: int):
        import numpy as np
        from gpt_helpers import SHARD_DTYPE

        self.folder, self.val_shards = folder, val_shards
        self.buffer, self.filled = np.empty(shard_size, dtype=SHARD_DTYPE), 0
        self.written = []  # (path, tokens) of each shard so far

    def add(self, ids):
        while len(ids):
            n = min(len(ids), len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + n] = ids[:n]
            self.filled, ids = self.filled + n, ids[n:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self):
        """Write what the buffer holds as the next shard (a temporary file renamed, never half a shard)."""
        import numpy as np
        from gpt_helpers import shard_name

        if not self.filled:
            return
        index = len(self.written)
        path = self.folder / shard_name("val" if index < self.val_shards else "train", index)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, self.buffer[: self.filled])
        os.replace(tmp, path)
        self.written.append((path, self.filled))
        self.filled = 0


def block_bytes(block_mb: float) -> int:
    """--block-mb in bytes. At least one byte: a read of 0 bytes would look like the end of the file.
    At most 1024 MB: a block is held in memory several times over (bytes, text, ids) while it is
    tokenized, and blocks past 1 MB are no faster."""
    if not block_mb >= 1 / 2**20:  # `not >=`, so that NaN fails too
        raise ValueError(f"--block-mb {block_mb:g} is less than one byte (1 MB = 1,048,576 bytes): "
                         "use at least 0.000001, or leave it at the default, 1")
    if not block_mb <= 1024:
        raise ValueError(f"--block-mb {block_mb:g} is more than 1024 MB, a block held in memory while it is "
                         "tokenized: use at most 1024, or leave it at the default, 1")
    return int(block_mb * 2**20)


def make_shards(source, out_dir, shard_size: int = 10_000_000, val_shards: int = 1, block_mb: float = 1.0,
                quiet: bool = False) -> list[tuple[Path, int]]:
    """Tokenize `source` (a text file or a folder of them) into shards in out_dir; returns
    (path, tokens) for each shard written. All or nothing: on an error out_dir is left as it was."""
    block = block_bytes(block_mb)
    source, out_dir = Path(source), Path(out_dir)
    files = [p for p in corpus_files(source) if out_dir.resolve() not in p.resolve().parents]
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{str(out_dir)!r} is a file: choose a new or empty folder for the shards")
    if out_dir.exists() and any(out_dir.glob("*_*.npy")):
        raise FileExistsError(f"{str(out_dir)!r} already holds shards: choose an empty folder, or delete them first")
    # the shards are written into a hidden temporary folder and moved into out_dir only once all of them
    # are, so that an error part-way (a file that is not UTF-8, Ctrl-C) leaves no half-made folder that
    # train.py --data would train on. It sits next to a new out_dir, to be renamed to it, or inside an
    # existing one (the same disk for the moves, and its parent may not be writable)
    fresh = not out_dir.exists()
    made = [d for d in out_dir.absolute().parents if not d.exists()]  # the parents this run creates, deepest first
    where = out_dir.parent if fresh else out_dir
    where.mkdir(parents=True, exist_ok=True)
    # a fresh name each run: a run killed before it could clean up (SIGKILL) never blocks the next one
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-" if fresh else ".partial-", dir=where))
    try:
        written = write_shards(files, tmp, shard_size, val_shards, block, quiet)
        if fresh:
            os.rename(tmp, out_dir)
        else:
            move_into(tmp, out_dir, [path for path, _ in written])
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # deepest first; stops at one that is not empty (someone else's since)
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return [(out_dir / path.name, n) for path, n in written]


def write_shards(files: list[Path], folder: Path, shard_size: int, val_shards: int, block: int,
                 quiet: bool) -> list[tuple[Path, int]]:
    """Tokenize the files, one document each, into shards in folder; returns (path, tokens) of each."""
    import numpy as np
    from tqdm.auto import tqdm

    from gpt_helpers import get_tokenizer

    enc, writer = get_tokenizer(), ShardWriter(folder, shard_size, val_shards)
    total = sum(p.stat().st_size for p in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=quiet) as progress:
        for path in files:
            writer.add(np.array([enc.eot_token], dtype=np.uint16))  # each document starts with <|endoftext|>
            for text in text_blocks(path, block, progress):
                writer.add(np.array(enc.encode_ordinary(text), dtype=np.uint16))
            progress.set_postfix(shards=len(writer.written))
        writer.flush()  # the last, shorter shard
        progress.set_postfix(shards=len(writer.written))
    if len(writer.written) <= val_shards:  # nothing left to train on
        tokens = sum(n for _, n in writer.written)
        raise ValueError(f"the corpus is {tokens:,} tokens: {len(writer.written)} shard(s) of --shard-size "
                         f"{shard_size:,}, all of them for validation (--val-shards {val_shards}); "
                         f"use a --shard-size below {tokens // (val_shards + 1):,}")
    return writer.written


def move_into(tmp: Path, out_dir: Path, paths: list[Path]):
    """Move the shards from tmp into out_dir, all of them or, on an error, none (those moved go back)."""
    moved = []
    try:
        for path in paths:
            os.replace(path, out_dir / path.name)  # a rename: the same disk
            moved.append(path)
    except BaseException:  # an error or Ctrl-C part-way: the shards moved so far go back
        for path in moved:
            os.replace(out_dir / path.name, path)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make_shards.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a UTF-8 text file, or a folder of them (each file one document)")
    p.add_argument("out_dir", type=Path, help="where the shards go (a new or empty folder)")
    p.add_argument("--shard-size", type=positive_int, default=10_000_000, metavar="N",
                   help="tokens per shard (default 10,000,000: 20 MB a shard)")
    p.add_argument("--val-shards", type=positive_int, default=1, metavar="N",
                   help="how many of the first shards are the validation split (default 1)")
    p.add_argument("--block-mb", type=positive_float, default=1.0, metavar="MB",
                   help="text read and tokenized at a time (default 1 MB; one byte to 1024 MB)")
    args = p.parse_args(argv)
    try:
        written = make_shards(args.source, args.out_dir, args.shard_size, args.val_shards, args.block_mb)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        p.error(str(e))  # exit status 2, with the usage
    n_val = min(args.val_shards, len(written))
    print(f"wrote {len(written)} shards to {args.out_dir}/ ({n_val} val, {len(written) - n_val} train), "
          f"{sum(n for _, n in written):,} tokens; train on them with: python train.py --data {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
