"""Training throughput of our GPT, one speed-up at a time (notebook 08's ladder).

    python benchmarks/train_speed.py                       # this machine's preset (gpu on CUDA, else cpu)
    python benchmarks/train_speed.py --preset smoke --steps 2 --warmup 1 --json speed.json

Each rung keeps the ones above it and adds one change (RUNGS); one that does not apply here is
skipped, with the reason. A step is gpt_helpers.train_step with the rung's switches applied by
FastPath, on one fixed random batch; --warmup steps are not timed, each timed one ends with
FastPath.synchronize(), a row reports the median. On a CPU the rungs' steps take turns, so load
from elsewhere hits them alike. Peak memory: over a rung's warm-up, above what was in use before
its model was built (CUDA max_memory_allocated; on Linux the resident set's high-water mark).
"""

import argparse
import ctypes
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: gpt_helpers is one folder up

from gpt_helpers import (  # noqa: E402
    GPT, SPEED_SWITCHES, FastPath, GPTConfig, autocast_dtype, can_compile, check_device, configure_optimizer,
    first_line, flops_per_token, get_preset, get_tf32, mfu, padded_vocab, peak_tflops, preset_name, set_seed,
    set_tf32, train_step, use_original_attention)

# in order, each switching on a TrainConfig speed switch or a model option (sdpa: not OriginalAttention)
RUNGS = {"original": "fp32, original attention", "tf32": "+ TF32", "autocast": "+ autocast ({dtype})",
         "sdpa": "+ scaled_dot_product_attention", "compile": "+ torch.compile",
         "pad_vocab": "+ vocab padded to {vocab}", "fused_adamw": "+ fused AdamW", "fused_head": "+ fused head + loss"}


def skip_reason(key: str, args, on: dict) -> str | None:
    """Why a rung does not apply on this device (on top of the switches `on`), or None."""
    device, cuda, vocab = args.device, args.device.type == "cuda", args.model.vocab_size
    checks = (  # (rung, is it skipped, why); only the rung's own checks are evaluated, in order
        ("tf32", lambda: not cuda, "TrainConfig.tf32 applies on CUDA only"),
        ("tf32", lambda: torch.cuda.get_device_capability(device)[0] < 8, "TF32 needs an Ampere or newer GPU"),
        ("autocast", lambda: not cuda, "TrainConfig.autocast applies on CUDA only"),
        ("compile", lambda: not can_compile(device), "torch.compile on CUDA needs Triton, not installed here"),
        ("compile", lambda: not cuda and not args.compile_cpu, "minutes to compile off CUDA: --compile-cpu runs it"),
        ("pad_vocab", lambda: padded_vocab(vocab) == vocab, f"vocab {vocab} is already a multiple of 128"),
        ("fused_adamw", lambda: device.type not in ("cuda", "cpu"), f"AdamW has no fused kernel on {device.type}"),
        ("fused_head", lambda: on.get("compile"), "compiled: FastPath keeps the plain loss (Inductor fuses it)"),
    )
    return next((why for rung, skipped, why in checks if rung == key and skipped()), None)


def setup(args, on: dict):
    """A run's TrainConfig (the preset at the asked sizes, the switches in `on`) and its model's builder."""
    model = replace(args.model, vocab_size=padded_vocab(args.model.vocab_size)) if on.get("pad_vocab") else args.model
    cfg = get_preset(args.preset, model=model, batch_size=args.batch_size, seq_len=args.seq_len,
                     grad_accum_steps=args.grad_accum, max_steps=args.max_steps,
                     **{k: bool(on.get(k)) for k in SPEED_SWITCHES})

    def build() -> GPT:
        set_seed(cfg.seed)  # every run starts from the same weights (a padded vocab draws more)
        return GPT(cfg.model) if on.get("sdpa") else use_original_attention(GPT(cfg.model))
    return cfg, build


def fixed_batch(args):
    """Random ids x (B, T) and their next tokens y (B, T), on the device: every step's batch."""
    buf = torch.randint(0, args.model.vocab_size, (args.batch_size, args.seq_len + 1),
                        generator=torch.Generator().manual_seed(1337))
    return buf[:, :-1].contiguous().to(args.device), buf[:, 1:].contiguous().to(args.device)


def memory_meter(device):
    """Start a peak-memory measurement; returns a function: the peak MiB since, above the use now."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        return lambda: (torch.cuda.max_memory_allocated(device) - base) / 2**20
    mib = lambda name: int(Path("/proc/self/status").read_text().split(name)[1].split()[0]) / 1024  # noqa: E731
    try:  # Linux: hand freed heap pages back to the system, then reset the high-water mark VmHWM to VmRSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = mib("VmRSS:")
        return lambda: mib("VmHWM:") - base
    except (OSError, AttributeError, IndexError):
        return lambda: None  # not measured


class TimedTraining:
    """A model training on a fixed batch, each step gpt_helpers.train_step with cfg's switches
    applied by FastPath (loss_fn: another loss). Warmed up at once, so its peak memory is its own."""

    def __init__(self, build, cfg, device, batch, warmup: int, loss_fn=None):
        self.cfg, self.loader, self.times, self.losses = cfg, SimpleNamespace(next_batch=lambda: batch), [], []
        peak_mib = memory_meter(device)
        self.fast = FastPath(model := build().to(device), cfg, device)
        self.optimizer = configure_optimizer(model, cfg, device.type)
        self.args = self.fast.step_args | ({"loss_fn": loss_fn} if loss_fn else {})
        for _ in range(max(warmup, 2 if self.fast.compiled else 1)):  # compiling is never timed
            self.step(timed=False)
        self.peak_mib = peak_mib()

    def step(self, timed: bool = True):
        t0 = time.perf_counter()
        loss, _, _ = train_step(self.fast.model, self.optimizer, self.loader, self.cfg, len(self.losses),
                                scaler=self.fast.scaler, **self.args)
        self.fast.synchronize()
        self.times += [time.perf_counter() - t0] if timed else []
        self.losses.append(loss)

    def result(self, peak_tflops: float | None) -> dict:
        step, flops = statistics.median(self.times), flops_per_token(self.cfg.model, self.cfg.seq_len)
        tokens_per_sec = self.cfg.tokens_per_step / step  # B * T * grad_accum per step
        return {"tokens_per_sec": tokens_per_sec, "step_ms": 1e3 * step, "peak_mem_mib": self.peak_mib,
                "mfu": mfu(tokens_per_sec, flops, peak_tflops), "flops_per_token": flops,
                "first_loss": self.losses[0], "last_loss": self.losses[-1]}

    def close(self):  # TF32 back as it was before this run, and the memory free for the next
        self.fast.close()
        if self.fast.compiled:
            torch.compiler.reset()
        del self.fast, self.optimizer, self.args


def time_steps(pairs: list, steps: int, peak_tflops: float | None):
    """`steps` timed steps of each run in pairs [(row, run)], taking turns; results into rows; runs closed."""
    for _ in range(steps):
        for _, run in pairs:
            run.step()
    for row, run in reversed(pairs):  # closed last to first: each puts back the TF32 it found
        row.update(run.result(peak_tflops))
        run.close()
    pairs.clear()


def ladder(args) -> list[dict]:
    """Measure every rung, writing --json even when stopped part-way; on a CPU the rungs live side by
    side and their steps interleave."""
    on, rows, alive, tf32, batch, vocab = {}, [], [], get_tf32(), fixed_batch(args), padded_vocab(args.model.vocab_size)
    dtype = "fp16, grad scaler" if autocast_dtype(args.device) == torch.float16 else "bf16"
    try:
        for key, name in RUNGS.items():
            reason, name = skip_reason(key, args, on), name.format(dtype=dtype, vocab=vocab)
            print(f"  {name}: {'skipped' if reason else 'warming up'}")
            rows.append(row := {"key": key, "name": name, "status": "skipped" if reason else "ran", "reason": reason})
            if reason:
                continue
            trial = on | ({key: True} if key != "original" else {})
            cfg, build = setup(args, trial)
            try:
                run = TimedTraining(build, cfg, args.device, batch, args.warmup)
            except Exception as e:  # a rung that breaks (compiling, memory) must not hide the others
                row.update(status="failed", reason=f"{type(e).__name__}: {first_line(e)[:120]}")
                continue
            on, row["switches"] = trial, [k for k, v in trial.items() if v]
            alive.append((row, run))
            if args.device.type != "cpu":  # nothing else runs on a GPU: one rung at a time, in less memory
                time_steps(alive, args.steps, args.peak_tflops)
        time_steps(alive, args.steps, args.peak_tflops)
        ran = [r for r in rows if r["status"] == "ran"]
        for r in ran:
            r["speedup"] = r["tokens_per_sec"] / ran[0]["tokens_per_sec"]
    finally:  # also when stopped (Ctrl-C, a time limit): --json keeps the rungs measured so far
        set_tf32(tf32)
        write_json(args, rungs=rows)
    return rows


def table(rows: list[dict], first: str = "rung", last: str = "speedup") -> str:
    head = f"{first:<34}{'tokens/s':>11}{'step ms':>10}{'peak mem':>12}{'MFU':>7}{last:>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ran":
            lines.append(f"{r['name']:<34}{r['status']}: {r['reason']}")
            continue
        mem = "-" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:,.0f} MiB"
        util = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{r['name']:<34}{r['tokens_per_sec']:>11,.0f}{r['step_ms']:>10.1f}{mem:>12}{util:>7}"
                     f"{r['speedup']:>8.2f}x")
    return "\n".join(lines)


def parse_args(description: str, argv=None):
    """The flags both benchmarks take; resolves args.model, .device, .device_name, .peak_tflops, .max_steps."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="sizes from this gpt_helpers preset (default: gpt_helpers.preset_name())")
    for flag in ("--n-layer", "--n-head", "--n-embd", "--batch-size", "--seq-len"):
        p.add_argument(flag, type=int, help="default: the preset's")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; at least 1, 2 compiled)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the fastest here)")
    p.add_argument("--compile-cpu", action="store_true", help="torch.compile off CUDA too (minutes to compile)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for MFU off the GPU table")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    for flag in ("n_layer", "n_head", "n_embd", "batch_size", "seq_len", "grad_accum", "steps", "warmup"):
        if getattr(args, flag) is not None and getattr(args, flag) < (flag != "warmup"):
            p.error(f"--{flag.replace('_', '-')} must be >= {int(flag != 'warmup')}, got {getattr(args, flag)}")
    if (args.peak_tflops or 1) <= 0:
        p.error(f"--peak-tflops must be positive, got {args.peak_tflops}")
    try:
        args.preset = preset_name(args.preset)
        preset, args.device = get_preset(args.preset), torch.device(check_device(args.device))
        m = preset.model
        args.batch_size, args.seq_len = args.batch_size or preset.batch_size, args.seq_len or preset.seq_len
        args.model = GPTConfig(block_size=max(m.block_size, args.seq_len), vocab_size=m.vocab_size,
                               n_layer=args.n_layer or m.n_layer, n_head=args.n_head or m.n_head,
                               n_embd=args.n_embd or m.n_embd)
    except ValueError as e:
        p.error(str(e))
    args.max_steps = max(preset.max_steps, preset.warmup_steps + args.warmup + args.steps + 2)  # LR not yet decayed
    gpu = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else None
    args.device_name = gpu or f"{args.device}, {torch.get_num_threads()} threads"
    args.peak_tflops = args.peak_tflops or (gpu and (peak_tflops(gpu) or (None, None))[1])  # None: no MFU
    return args


def header(args, what: str):
    c, peak = args.model, args.peak_tflops
    print(f"device: {args.device_name}; peak: " + (f"{peak:g} TFLOP/s" if peak else "unknown, no MFU (--peak-tflops)"))
    print(f"model: preset {args.preset}, {c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads, vocab {c.vocab_size:,};"
          f" B={args.batch_size} T={args.seq_len} grad_accum={args.grad_accum}; torch {torch.__version__}")
    print(f"timing: {args.warmup} warm-up steps, then the median of {args.steps}, each gpt_helpers.train_step then"
          f" FastPath.synchronize(); {what}")


def write_json(args, **figures):
    if args.json:
        meta = vars(args) | {"device": str(args.device), "model": asdict(args.model), "torch": torch.__version__}
        Path(args.json).write_text(json.dumps(meta | figures, indent=2))
        print(f"wrote {args.json}")


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    header(args, "the rungs' steps interleaved" if args.device.type == "cpu" else "one rung at a time")
    rows = ladder(args)  # writes --json
    print("\nthe ladder (each rung keeps the ones above it; speedup over the first):\n" + table(rows))
    return rows


if __name__ == "__main__":
    main()
