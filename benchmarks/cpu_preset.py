"""How far the cpu preset gets in a run of `python train.py --preset cpu`, timed (issue 13).

    python benchmarks/cpu_preset.py                     # the preset, with train.py's switches for this device,
                                                        # then, on a CPU, again on one core (a fresh process)
    python benchmarks/cpu_preset.py --threads 1         # only the one-core run
    python benchmarks/cpu_preset.py --bf16              # bf16 autocast on the CPU (AVX512-BF16 / AMX)
    python benchmarks/cpu_preset.py --preset-override max_steps=800 --preset-override n_embd=128

It builds the preset (gpt_helpers.get_preset) with gpt_helpers.recommended_switches for the device,
seeds and builds the model as train.py does, trains it with gpt_helpers.train into a temporary
folder (so its checkpoints are written, as train.py's are) and generates a sample, as train.py does.
A callback records the preset's own validation losses and, at the first step that ends past each
--marks second, evaluates once more on the same batches; those extra evaluations are timed apart
and left out of every clock. The wall clock starts when this script starts, before torch is imported.
At the end, untimed: the validation loss over the whole validation split. Nats per character:
the loss times the evaluated targets' tokens per character (GPT-2 BPE), for exactly the text evaluated.
"""

import time

T_START = time.perf_counter()  # noqa: E402 (the clock starts before the imports, as a `python train.py` would)

import argparse  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from dataclasses import asdict, fields  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: gpt_helpers is one folder up

import gpt_helpers as gh  # noqa: E402
from train import non_negative_int, positive_int  # noqa: E402 (the argparse types of train.py's flags)

MODEL_FIELDS = {f.name for f in fields(gh.GPTConfig)}
# each field's type, from its default (the annotations are strings): an override's value is read as it
FIELD_TYPES = {f.name: type(getattr(gh.GPTConfig(), f.name)) for f in fields(gh.GPTConfig)} | {
    f.name: type(getattr(gh.TrainConfig(), f.name)) for f in fields(gh.TrainConfig) if f.name != "model"}


def marks(text: str) -> list[float]:
    """--marks: seconds, comma-separated, each a finite number >= 0."""
    try:
        values = [float(m) for m in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be seconds >= 0, comma-separated (as 60,120,180), got {text!r}")
    return values


def preset_override(text: str) -> tuple[str, object]:
    """--preset-override: KEY=VALUE, KEY a TrainConfig or GPTConfig field, VALUE of that field's type."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (as max_steps=800), got {text!r}")
    if key not in FIELD_TYPES:
        raise argparse.ArgumentTypeError(f"{key!r} in {text!r} is neither a TrainConfig nor a GPTConfig field: "
                                         f"use one of {', '.join(FIELD_TYPES)}")
    kind = FIELD_TYPES[key]
    if kind is bool:  # bool("False") is True: read the words
        if value.lower() not in ("true", "false", "1", "0"):
            raise argparse.ArgumentTypeError(f"{key} must be True or False, got {text!r}")
        return key, value.lower() in ("true", "1")
    try:
        return key, kind(value)
    except ValueError:
        what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise argparse.ArgumentTypeError(f"{key} must be {what}, got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="cpu_preset.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(gh.PRESETS), help="the preset to time (default cpu)")
    p.add_argument("--device", help="default: the fastest here, as train.py picks it")
    p.add_argument("--threads", type=positive_int,
                   help="torch.set_num_threads, one run only (default: torch's, one per core; on a CPU then "
                        "again on one core)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true", help="fp32, as train.py trains on a CPU (the default)")
    precision.add_argument("--bf16", action="store_true",
                           help="bf16 autocast, also on a CPU (train.py autocasts on CUDA only)")
    p.add_argument("--preset-override", type=preset_override, action="append", default=[], metavar="KEY=VALUE",
                   help="change a TrainConfig field, or a GPTConfig one (n_embd=128); repeatable")
    p.add_argument("--marks", type=marks, default="60,120,180", metavar="S,S,...",
                   help="seconds at which to report the validation loss (default 60,120,180)")
    p.add_argument("--sample-tokens", type=non_negative_int, default=200, metavar="N",
                   help="tokens generated at the end, top-k 50 (0: none)")
    p.add_argument("--prompt", default="\n", help="the sample's prompt (default a newline)")
    args = p.parse_args(argv)
    try:  # the overrides through TrainConfig's own checks now, not once the timed run has started
        build_config(args, "cpu")
    except (ValueError, TypeError) as e:
        p.error(f"--preset-override: {e}")
    return args


def build_config(args, device: str) -> gh.TrainConfig:
    """The preset, train.py's switches for the device, then --bf16 and the overrides."""
    cfg = asdict(gh.get_preset(args.preset)) | gh.recommended_switches(device)
    if args.bf16:
        cfg["autocast"] = True
    for key, value in args.preset_override:  # checked by preset_override
        if key in MODEL_FIELDS:
            cfg["model"][key] = value
        else:
            cfg[key] = value
    return gh.TrainConfig(**cfg)


def amp_dtype(args, device: str):
    """The autocast dtype of the run: gpt_helpers' own choice, or bf16 with --bf16."""
    return torch.bfloat16 if args.bf16 else gh.autocast_dtype(device)


def chars_per_token(tokens: torch.Tensor) -> float:
    """Characters per predicted token for a stretch of token ids (the targets are tokens[1:])."""
    return len(gh.get_tokenizer().decode(tokens[1:].tolist())) / (len(tokens) - 1)


class ValRecorder:
    """A train() callback: the preset's val losses, plus one timed-apart evaluation past each mark."""

    def __init__(self, model, cfg, device, dtype, marks):
        self.model, self.cfg, self.marks = model, cfg, sorted(marks)
        self.loader = gh.DataLoaderLite(cfg.batch_size, cfg.seq_len, split="val", val_fraction=cfg.val_fraction)
        self.loss_fn = gh.fused_head_model_loss if cfg.fused_head else gh.model_loss
        self.autocast = (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype else nullcontext
        self.device, self.extra_s, self.evals = device, 0.0, []  # (clock s, step, val, by whom)

    def clock(self) -> float:
        return time.perf_counter() - T_START - self.extra_s

    def __call__(self, rec):
        now = self.clock()
        if rec["val_loss"] is not None:
            self.evals.append((now, rec["step"], rec["val_loss"], "preset"))
        elif self.marks and now >= self.marks[0]:
            t0 = time.perf_counter()
            val = gh.estimate_loss(self.model, self.loader, self.cfg.eval_iters, device=self.device,
                                   loss_fn=self.loss_fn, autocast=self.autocast)
            self.extra_s += time.perf_counter() - t0
            self.evals.append((now, rec["step"], val, "extra"))
        while self.marks and now >= self.marks[0]:
            self.marks.pop(0)

    def whole_split(self) -> tuple[float, float]:
        """(val loss over every whole batch of the val split, its targets' tokens per character)."""
        loader = self.loader
        n = (len(loader.tokens) - 1) // (loader.B * loader.T)
        val = gh.estimate_loss(self.model, loader, n, device=self.device, loss_fn=self.loss_fn, autocast=self.autocast)
        return val, 1 / chars_per_token(loader.tokens[: n * loader.B * loader.T + 1])


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = gh.check_device(args.device)
    cfg = build_config(args, device)
    dtype = amp_dtype(args, device)
    torch.manual_seed(cfg.seed)  # as train.py: the weights from the seed
    model = gh.GPT(cfg.model)
    recorder = ValRecorder(model, cfg, device, dtype, args.marks)
    saved = gh.autocast_dtype
    if args.bf16:  # FastPath asks gpt_helpers.autocast_dtype, which says None off CUDA
        gh.autocast_dtype = lambda device: dtype
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            history = gh.train(model, cfg, device=device, out_dir=out_dir, callbacks=[recorder])
            sample = (gh.generate_text(model, args.prompt, max_new_tokens=args.sample_tokens, top_k=50,
                                       seed=cfg.seed)[0] if args.sample_tokens else None)
    finally:
        gh.autocast_dtype = saved
    wall = recorder.clock()
    return cfg, dtype, model, recorder, history, sample, wall


def report(args, cfg, dtype, recorder, history, sample, wall):
    tokens = len(history) * cfg.tokens_per_step
    step_s = sum(cfg.tokens_per_step / r["tokens_per_sec"] for r in history)
    print(f"preset {args.preset!r}: {cfg.model}")
    print("training: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items() if k != "model"))
    print(f"threads {torch.get_num_threads()}, {'autocast ' + str(dtype) if dtype and cfg.autocast else 'fp32'}")
    print(f"wall time {wall:.1f} s (start to sample, less {recorder.extra_s:.1f} s of this script's extra evaluations)")
    print(f"{len(history)} steps, {tokens:,} tokens: {tokens / step_s:,.0f} tokens/s in the steps, "
          f"{tokens / wall:,.0f} tokens/s over the wall time")
    ratio = 1 / chars_per_token(recorder.loader.tokens[: cfg.eval_iters * cfg.batch_size * cfg.seq_len + 1])
    clock, step, val, _ = recorder.evals[-1]
    print(f"final val loss (the preset's {cfg.eval_iters} batches, {ratio:.4f} tokens/char): "
          f"{val:.4f} nats/token = {val * ratio:.4f} nats/char, step {step}")
    for mark in args.marks:
        at = next(((c, s, v, w) for c, s, v, w in recorder.evals if c >= mark), None)
        if at is None:
            c, s, v, w = recorder.evals[-1]
            print(f"  by {mark:5.0f} s: the run had ended ({c:.1f} s): {v:.4f} nats/token = {v * ratio:.4f} nats/char")
        else:
            c, s, v, w = at
            print(f"  at {c:5.1f} s (step {s}, {w}): {v:.4f} nats/token = {v * ratio:.4f} nats/char")
    whole, whole_ratio = recorder.whole_split()
    print(f"whole val split (untimed, {whole_ratio:.4f} tokens/char): {whole:.4f} nats/token = "
          f"{whole * whole_ratio:.4f} nats/char")
    if sample is not None:
        print(f"--- sample ({args.sample_tokens} tokens, top-k 50, seed {cfg.seed}) ---\n{sample}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cfg, dtype, model, recorder, history, sample, wall = run(args)
    report(args, cfg, dtype, recorder, history, sample, wall)
    if args.threads is None and torch.device(gh.check_device(args.device)).type == "cpu":
        # what one core gives: the same run in a fresh process, so its clock starts fresh
        print("\n=== the same run on one core (torch.set_num_threads(1)) ===", flush=True)
        return subprocess.run([sys.executable, __file__, *argv, "--threads", "1"]).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
