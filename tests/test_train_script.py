"""train.py, the command line over gpt_helpers.train: a smoke run end to end, resume,
and bad flags (exit status 2, a message, nothing saved touched)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train as train_script
from gpt_helpers import PRESETS, read_checkpoint, read_log

ROOT = Path(__file__).resolve().parent.parent
SMOKE = PRESETS["smoke"]


def train_py(*args):
    """Run train.py in a fresh Python, as a user would."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ | {"GPT_PRESET": "smoke"}, timeout=300)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    proc = train_py("--preset", "smoke", "--out-dir", out, "--sample-tokens", 12)
    return out, proc


def test_smoke_run_saves_checkpoint_log_and_sample(finished_run):
    out, proc = finished_run
    assert proc.returncode == 0, proc.stderr
    assert "settings: preset 'smoke'" in proc.stdout and "parameters" in proc.stdout
    assert read_checkpoint(out / "ckpt.pt")["step"] == SMOKE.max_steps - 1
    assert [r["step"] for r in read_log(out / "metrics.jsonl")] == list(range(SMOKE.max_steps))
    sample = (out / "sample.txt").read_text()
    assert sample.startswith(train_script.DEFAULT_PROMPT) and len(sample) > len(train_script.DEFAULT_PROMPT)
    assert sample.strip() in proc.stdout  # printed too


def test_stop_and_resume_reproduce_the_whole_run(finished_run, tmp_path):
    whole, _ = finished_run
    first = train_py("--preset", "smoke", "--out-dir", tmp_path, "--stop-after", 2, "--sample-tokens", 0)
    assert first.returncode == 0, first.stderr
    assert read_checkpoint(tmp_path / "ckpt.pt")["step"] == 2 and not (tmp_path / "sample.txt").exists()
    rest = train_py("--out-dir", tmp_path, "--resume", "--sample-tokens", 12)  # settings from the checkpoint
    assert rest.returncode == 0, rest.stderr
    assert "settings: checkpoint ckpt.pt" in rest.stdout
    losses = [r["loss"] for r in read_log(tmp_path / "metrics.jsonl")]
    assert losses == [r["loss"] for r in read_log(whole / "metrics.jsonl")]  # exact, on CPU
    assert (tmp_path / "sample.txt").read_text() == (whole / "sample.txt").read_text()


def test_existing_run_without_resume_exits_2_untouched(finished_run):
    out, _ = finished_run
    before = snapshot(out)
    proc = train_py("--preset", "smoke", "--out-dir", out)
    assert proc.returncode == 2
    assert "already exists: add --resume" in proc.stderr
    assert snapshot(out) == before


def test_a_log_left_without_a_checkpoint_does_not_lock_the_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 9.0}\n')  # a run stopped before its first save
    proc = train_py("--preset", "smoke", "--out-dir", tmp_path, "--sample-tokens", 0)
    assert proc.returncode == 0, proc.stderr
    kept = list(tmp_path.glob("metrics.before-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == '{"step": 0, "loss": 9.0}\n'
    assert read_checkpoint(tmp_path / "ckpt.pt")["step"] == SMOKE.max_steps - 1


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "-5"], "argument --max-steps: must be a positive integer, got '-5'"),
    (["--seq-len", str(SMOKE.model.block_size + 1)], "seq_len (65) is longer than the model's block_size (64)"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--lr", "0"], "argument --lr: must be a positive number"),
    (["--resume"], "--resume: there is no checkpoint"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
])
def test_bad_flags_exit_2_with_a_message(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--preset", "smoke", "--out-dir", str(tmp_path / "out"), *flags]
                          if "--preset" not in flags else ["--out-dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_resume_with_other_settings_exits_2_untouched(finished_run, capsys):
    out, _ = finished_run
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--out-dir", str(out), "--resume", "--batch-size", "3"])
    assert exit_info.value.code == 2
    assert "different TrainConfig (batch_size: checkpoint 4, now 3)" in capsys.readouterr().err
    assert snapshot(out) == before


def test_not_a_checkpoint_exits_2(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_text("hello")
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--out-dir", str(tmp_path), "--resume"])
    assert exit_info.value.code == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt").read_text() == "hello"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--preset", "smoke", "--out-dir", str(tmp_path / "out"), "--tensorboard"])
    assert exit_info.value.code == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--preset", "--batch-size", "--seq-len", "--lr", "--max-steps", "--grad-accum", "--target-loss",
                 "--out-dir", "--resume", "--device", "--compile", "--no-compile", "--no-amp", "--no-fused",
                 "--no-tf32", "--no-fused-loss", "--tensorboard", "--seed", "--sample-tokens"):
        assert flag in text, flag


def test_no_preset_flag_picks_the_machines_preset(monkeypatch):
    monkeypatch.delenv("GPT_PRESET", raising=False)
    args = train_script.build_parser().parse_args([])
    cfg, source = train_script.make_config(args, None, Path("unused"))
    import torch

    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert source == f"preset {expected!r}" and cfg == PRESETS[expected]


def test_checkpoint_without_training_settings_exits_2(tmp_path, capsys, tiny_config):
    from gpt_helpers import GPT, save_checkpoint

    save_checkpoint(tmp_path / "ckpt.pt", GPT(tiny_config), step=0)  # no train_config
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--out-dir", str(tmp_path), "--resume"])
    assert exit_info.value.code == 2
    assert "holds no training settings: pass --preset" in capsys.readouterr().err
