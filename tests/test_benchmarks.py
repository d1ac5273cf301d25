"""The benchmarks run and print the figures their docstrings promise (their speeds are not asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_preset_benchmark_reports_the_curve_then_one_core():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_preset.py"), "--preset", "smoke",
                           "--device", "cpu", "--marks", "0,1000", "--sample-tokens", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    first, sep, one_core = out.partition("=== the same run on one core")
    assert sep, "the default run should be followed by the one-core run"
    for run, threads in ((first, None), (one_core, 1)):
        assert re.search(r"wall time \d+\.\d s", run) and re.search(r"[\d,]+ tokens/s in the steps", run)
        assert re.search(r"final val loss .*: \d+\.\d{4} nats/token = \d+\.\d{4} nats/char", run)
        assert re.search(r"at +\d+\.\d s \(step \d+, (extra|preset)\)", run), "the 0 s mark has a figure"
        assert "by  1000 s: the run had ended" in run  # a mark past the end says so instead of a figure
        assert re.search(r"whole val split .* nats/char", run) and "--- sample" in run
        if threads:
            assert "threads 1," in run
    assert out.count("=== the same run on one core") == 1  # the one-core run does not start another


@pytest.mark.parametrize("args, message", [
    (["--sample-tokens", "-1"], "argument --sample-tokens: must be an integer >= 0, got '-1'"),
    (["--marks", "abc"], "argument --marks: must be seconds >= 0, comma-separated (as 60,120,180), got 'abc'"),
    (["--preset-override", "max_steps=abc"], "argument --preset-override: max_steps must be an integer, got 'max_steps=abc'"),
    (["--preset-override", "steps=5"], "'steps' in 'steps=5' is neither a TrainConfig nor a GPTConfig field"),
    (["--preset-override", "max_steps=-3"], "--preset-override: TrainConfig.max_steps must be a positive integer, got -3"),
])
def test_cpu_preset_bad_arguments_exit_2_before_the_run(args, message):
    # checked as the arguments are read, not after the timed run: the process ends at once, with no traceback
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_preset.py"), "--preset", "cpu", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert "wall time" not in done.stdout
