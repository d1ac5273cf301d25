"""scripts/gpu_check.sh: its dry run end to end on the CPU (the phases a GPU machine runs, at the
smoke preset), and the time caps that keep the real check within 9 minutes.

The dry run takes one to two minutes on 2 cores; `pytest -m "not gpu_check"` leaves it out."""

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RUNGS = ["original", "tf32", "autocast", "sdpa", "compile", "pad_vocab", "fused_adamw", "fused_head"]
PHASES = ["setup", "cuda_tests", "ladder", "compare_hf", "train", "notebook_05", "notebook_08"]


from scripts import gpu_check  # noqa: E402  (scripts/: a namespace package)


# ----------------------------------------------------------------------------- the dry run


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "results"  # created by the script
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path_factory.getbasetemp(),
                          env=dict(os.environ, PYTHON=sys.executable))
    return proc, out


@pytest.mark.gpu_check
def test_the_dry_run_runs_every_phase_and_summarizes_them(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == PHASES
    assert summary["all_ok"] and all(p["status"] == "ok" for p in summary["phases"])
    assert summary["machine"]["tokenizer_ok"] and summary["mode"].startswith("dry run")
    for p in summary["phases"]:
        assert (out / p["log"]).is_file() and p["phase"] in proc.stdout  # the summary table is printed
    assert (out / "summary.txt").read_text().startswith("gpu_check, dry run")


@pytest.mark.gpu_check
def test_the_dry_run_writes_the_cuda_tests_junit_report(dry_run):
    _, out = dry_run
    suite = ET.parse(out / "cuda_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert tests >= 10 and int(suite.get("failures")) == int(suite.get("errors")) == 0
    assert skipped == (0 if torch.cuda.is_available() else tests)  # no CUDA here: each one skips cleanly


@pytest.mark.gpu_check
def test_the_dry_run_writes_the_ladder_and_the_hf_race_as_json(dry_run):
    _, out = dry_run
    ladder = json.loads((out / "ladder.json").read_text())
    assert [r["key"] for r in ladder["rungs"]] == RUNGS and ladder["preset"] == "smoke"
    ran = [r for r in ladder["rungs"] if r["status"] == "ran"]
    assert len(ran) >= 5 and all(r["tokens_per_sec"] > 0 and r["speedup"] > 0 for r in ran)
    race = json.loads((out / "compare_hf.json").read_text())
    assert race["ours"]["tokens_per_sec"] > 0 and race["hf"]["tokens_per_sec"] > 0
    assert race["ratio"] == pytest.approx(race["ours"]["tokens_per_sec"] / race["hf"]["tokens_per_sec"])


@pytest.mark.gpu_check
def test_the_dry_run_summarizes_the_train_run_from_its_metrics(dry_run):
    _, out = dry_run
    summary = json.loads((out / "train_summary.json").read_text())
    records = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]  # --max-steps 3
    assert summary["target_loss"] == 0.099 and summary["reached"] is False  # the smoke preset learns nothing
    assert summary["step"] == 2 and summary["loss"] == records[-1]["loss"] and summary["steps_logged"] == 3
    assert summary["elapsed_s"] == pytest.approx(records[-1]["elapsed"], abs=0.05)
    assert (out / "train_sample.txt").read_text().startswith("Ham.")


@pytest.mark.gpu_check
@pytest.mark.parametrize("name", ["05_training.ipynb", "08_performance.ipynb"])
def test_the_dry_run_saves_the_notebooks_executed_with_outputs(dry_run, name):
    _, out = dry_run
    nb = nbformat.read(out / "notebooks" / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # every cell, in order
    assert sum(bool(c.outputs) for c in code) >= 5
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("preset 'smoke'" in o.get("text", "") for c in code for o in c.outputs)  # GPT_PRESET reached the kernel


# ----------------------------------------------------------------------------- the time caps


def test_the_phase_budgets_keep_the_whole_check_within_its_total():
    # every phase runs to its cap, after a 15 s set-up: the check still ends in time, and each phase
    # gets at least its floor
    names, left, spent = list(gpu_check.CAPS), gpu_check.TOTAL_S - 15, {}
    for i, name in enumerate(names):
        spent[name] = gpu_check.budget_for(name, names[i + 1:], left, dry=False)
        left -= spent[name]
    assert left >= 0 and gpu_check.TOTAL_S <= 540  # 9 minutes
    assert all(spent[n] >= gpu_check.CAPS[n][1] for n in names), spent
    # phases that finish early leave their time to the train run, not to the notebooks after it
    early = gpu_check.budget_for("train", names[names.index("train") + 1:], 400, dry=False)
    assert early == 400 - sum(gpu_check.CAPS[n][0] for n in ("notebook_05", "notebook_08"))


def sleeper(marker: Path, on_sigint: str) -> list:
    """A child that sleeps; on SIGINT it writes `marker` and then does `on_sigint` ('exit' or 'ignore')."""
    code = f"""
        import pathlib, signal, sys, time
        def interrupted(signum, frame):
            pathlib.Path({str(marker)!r}).write_text("SIGINT")
            if {on_sigint!r} == "exit":
                sys.exit(130)
        signal.signal(signal.SIGINT, interrupted)
        print("sleeping", flush=True)
        for _ in range(600):
            time.sleep(0.1)
    """
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.mark.parametrize("on_sigint", ["exit", "ignore"])
def test_a_phase_past_its_cap_gets_sigint_then_sigkill_and_the_next_runs(tmp_path, monkeypatch, on_sigint):
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    (tmp_path / "logs").mkdir()
    marker = tmp_path / "marker"
    result = gpu_check.run_phase(gpu_check.Phase("slow", sleeper(marker, on_sigint)), 2, tmp_path, dict(os.environ))
    assert result["status"] == "timed out" and result["seconds"] < 20
    assert marker.read_text() == "SIGINT"  # Ctrl-C first: train.py saves its checkpoint there
    assert result["exit"] == (130 if on_sigint == "exit" else -9)  # a child that ignores it is killed
    assert "sleeping" in (tmp_path / result["log"]).read_text()
    capped = gpu_check.run_phase(gpu_check.Phase("train", sleeper(marker, "exit"), cap_is_the_end=True), 2,
                                 tmp_path, dict(os.environ))
    assert capped["status"] == "stopped at its cap"  # how a train run that misses the target ends
    quick = gpu_check.run_phase(gpu_check.Phase("next", [sys.executable, "-c", "raise SystemExit(3)"]), 30,
                                tmp_path, dict(os.environ))
    assert quick["status"] == "failed (exit 3)" and quick["seconds"] < 20
