"""Train the course's GPT-2 on input.txt from the command line.

    python train.py                         # the preset for this machine: gpu on CUDA, else cpu
    python train.py --preset smoke          # seconds: checks that everything runs
    python train.py --preset gpu --batch-size 16 --grad-accum 8   # same tokens per step, less memory
    python train.py --out-dir out --resume  # continue the run saved in out/
    python train.py --data shards/          # token shards made by scripts/make_shards.py, not input.txt
    torchrun --standalone --nproc_per_node=4 train.py   # 4 processes (GPUs) in DDP, notebook 09

Under torchrun each process reads its own slice of the data and runs grad_accum / N of the
micro-batches of a step (tokens per step stay B*T*grad_accum); rank 0 prints and saves.

Writes out_dir/ckpt.pt (model, optimizer, data positions, RNG: an exact resume),
out_dir/metrics.jsonl (one JSON line per step) and out_dir/sample.txt (generated text).
An existing checkpoint is never overwritten: continue it with --resume or pick another
--out-dir. A log left by a run that stopped before its first checkpoint is kept, renamed. Bad flags exit with status 2 and a message; nothing is written then.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from dataclasses import asdict
from pathlib import Path

DEFAULT_PROMPT = "Ham.\n"
PRESET_NAMES = ("cpu", "gpu", "smoke")  # gpt_helpers.PRESETS, named here so --help needs no torch


def lazy_import(name: str):
    """The module, loaded at its first use: gpt_helpers imports torch, which takes seconds,
    and --help or a bad flag should answer at once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gh = lazy_import("gpt_helpers")


def _checked(convert, ok, what):
    """An argparse type: convert the text, then reject values that fail ok()."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a positive number")
seed_int = _checked(int, lambda v: -2**63 <= v < 2**64, "an integer from -2**63 to 2**64 - 1")
non_empty = _checked(str, lambda v: v != "", "a non-empty string")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=PRESET_NAMES,
                   help="model size and training settings: gpu = GPT-2 124M as in the original run, "
                        "cpu = a small model that learns in minutes on a laptop, smoke = seconds, learns "
                        "nothing (default: $GPT_PRESET, else gpu when CUDA is available, else cpu; "
                        "with --resume, the checkpoint's own settings)")
    p.add_argument("--batch-size", type=positive_int, metavar="B", help="sequences per micro-batch")
    p.add_argument("--seq-len", type=positive_int, metavar="T",
                   help="tokens per sequence (at most the model's block_size)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate, reached after warmup")
    p.add_argument("--max-steps", type=positive_int, metavar="N", help="optimizer steps")
    p.add_argument("--grad-accum", type=positive_int, metavar="K",
                   help="micro-batches per optimizer step (tokens per step = B * T * K)")
    p.add_argument("--target-loss", type=float, metavar="L",
                   help="stop early once a step's average training loss is at or below L")
    p.add_argument("--data", metavar="PATH",
                   help="a UTF-8 text file, or a folder of token shards made by scripts/make_shards.py "
                        "(default: input.txt; with --resume, the data the run trained on)")
    p.add_argument("--out-dir", default="out", help="where ckpt.pt, metrics.jsonl and sample.txt go (default: out)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out-dir exactly where it stopped")
    p.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                   help="stop after the first step that ends this many seconds into the run, with a checkpoint "
                        "(then --resume)")
    p.add_argument("--stop-after", type=non_negative_int, metavar="STEP",
                   help="stop after this step with a checkpoint, as an interruption would (then --resume)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the fastest one here)")
    fast = p.add_argument_group(
        "the fast path (notebook 08)",
        "On by default where the device supports it: TF32, autocast, torch.compile and fused AdamW "
        "on CUDA; the fused head + loss wherever the model is not compiled. Each flag turns one part off.")
    fast.add_argument("--no-tf32", action="store_true", help="keep fp32 matmuls exact on CUDA (no TF32 tensor cores)")
    fast.add_argument("--no-autocast", action="store_true", help="train in fp32 on CUDA instead of bf16 (fp16) autocast")
    fast.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="torch.compile the model (default: on with CUDA, off elsewhere, where compiling takes minutes)")
    fast.add_argument("--no-fused-adamw", action="store_true", help="use the plain AdamW instead of its fused kernel")
    fast.add_argument("--no-fused-head", action="store_true",
                      help="compute the loss from the whole logits instead of the fused head + loss")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to out_dir/tensorboard (needs: pip install tensorboard)")
    p.add_argument("--seed", type=seed_int, help="seed for the weights and the sample (default: the preset's, 1337)")
    p.add_argument("--sample-tokens", type=non_negative_int, default=200, metavar="N",
                   help="tokens of text to generate at the end, top-k 50 (0: none; default 200)")
    p.add_argument("--prompt", type=non_empty, default=DEFAULT_PROMPT, help=f"start of the sample (default {DEFAULT_PROMPT!r})")
    return p


FLAG_FIELDS = {"batch_size": "batch_size", "seq_len": "seq_len", "lr": "max_lr", "max_steps": "max_steps",
               "grad_accum": "grad_accum_steps", "target_loss": "target_loss", "seed": "seed"}


def make_config(args, parser, ckpt_path: Path, world_size: int = 1):
    """The run's TrainConfig: the preset (or, resuming, the checkpoint's) plus the flags given.
    Resuming without --data sets it to the data the checkpoint's run trained on."""
    if args.resume:
        try:
            state = gh.load_checkpoint(ckpt_path)
            gh.check_resumable(state, ckpt_path)
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--resume: {e}")
        saved_data = state["extra"].get("data")  # None: input.txt (and checkpoints older than the key)
        if args.data is None and saved_data is not None and not Path(saved_data).exists():
            parser.error(f"--resume: the run trained on {saved_data!r}, which is not there now: pass its --data")
        args.data = args.data or saved_data
    if args.resume and args.preset is None:
        saved = state["train_config"]
        if saved is None:
            parser.error(f"--resume: {str(ckpt_path)!r} holds no training settings: pass --preset and the flags it was trained with")
        try:
            base, source = gh.TrainConfig(**saved), f"checkpoint {ckpt_path.name}"
        except (TypeError, ValueError) as e:  # written by another version of the course, or edited
            parser.error(f"--resume: {str(ckpt_path)!r} holds training settings this course cannot use ({e})")
    else:
        try:
            name = gh.preset_name(args.preset)
        except ValueError as e:  # a bad $GPT_PRESET
            parser.error(str(e))
        base, source = gh.get_preset(name), f"preset {name!r}"
    overrides = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    overrides |= speed_switches(args, world_size)
    try:
        return gh.TrainConfig(**(asdict(base) | overrides)), source
    except ValueError as e:
        parser.error(f"{e} (from the {source} and the flags given)")


def speed_switches(args, world_size: int = 1) -> dict:
    """Notebook 08's switches: the device's fast path, less what the flags turn off. Under DDP the
    loss goes through the wrapper's forward, so not through the fused head (notebook 09)."""
    switches = gh.recommended_switches(args.device)
    if args.compile is not None:
        switches |= {"compile": args.compile, "fused_head": not args.compile}
    if world_size > 1:
        switches["fused_head"] = False
    for name in gh.SPEED_SWITCHES:
        if getattr(args, f"no_{name}", False):
            switches[name] = False
    return switches


def pick_device(args, parser) -> str:
    try:
        return gh.check_device(args.device)
    except ValueError as e:
        parser.error(f"--device {e}")


def stop_on_sigterm():
    """SIGTERM (how timeout, schedulers and notebook hosts stop a process) as Ctrl-C: train()
    then saves the last finished step."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def check_out_dir(args, parser, out_dir: Path):
    """Refuse a run that would overwrite or cannot find its folder, before anything is written."""
    ckpt_path = out_dir / "ckpt.pt"
    if args.resume and not ckpt_path.is_file():
        parser.error(f"--resume: there is no checkpoint {str(ckpt_path)!r}: train without --resume first")
    if not args.resume and ckpt_path.exists():  # a log with no checkpoint is set aside by train()
        parser.error(f"{str(ckpt_path)!r} already exists: add --resume to continue that run, "
                     "or choose another --out-dir")
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists() or p == Path(p.anchor or "."))
    if existing.exists() and not existing.is_dir():
        parser.error(f"--out-dir {str(out_dir)!r}: {str(existing)!r} is a file, not a folder; choose another --out-dir")


def describe(cfg, model, source: str, args, out_dir: Path, world):
    flags = " + flags" if any(getattr(args, f) is not None for f in FLAG_FIELDS) else ""
    print(f"settings: {source}{flags}, device {world.device}, {'resuming' if args.resume else 'writing'} {out_dir}/")
    print(f"model: {cfg.model} -> {model.num_parameters():,} parameters")
    print("training: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items() if k != "model"))
    print(f"data: {args.data or 'input.txt'}")
    n = world.world_size
    accum = f"accum {cfg.grad_accum_steps}" + (f" = {cfg.grad_accum_steps // n} x {n} processes" if n > 1 else "")
    print(f"tokens per step: {cfg.tokens_per_step:,} (B {cfg.batch_size} x T {cfg.seq_len} x {accum})")
    if n > 1:
        print(f"processes: {n} in DDP over {'NCCL' if world.device.type == 'cuda' else 'gloo'}; rank 0 logs and saves")
    on = [name for name in gh.SPEED_SWITCHES if getattr(cfg, name)]
    print(f"fast path: {', '.join(on) or 'off'} (each where {args.device} supports it)")


def report(rec):
    """Validation losses as lines that stay above the progress bar."""
    from tqdm.auto import tqdm

    if rec["val_loss"] is not None:
        tqdm.write(f"step {rec['step']:>6}: train loss {rec['loss']:.4f}, val loss {rec['val_loss']:.4f}, "
                   f"lr {rec['lr']:.2e}, {rec['tokens_per_sec']:,.0f} tokens/s")


def finish(history, cfg, model, args, out_dir: Path):
    """The run's last losses, and a sample of what the model writes."""
    if not history:
        print(f"nothing to do: the run in {out_dir}/ had already reached max_steps {cfg.max_steps}")
        return
    last = history[-1]
    if last["loss"] <= cfg.target_loss:
        print(f"reached the target loss {cfg.target_loss} at step {last['step']}")
    elif last["step"] == args.stop_after and last["step"] < cfg.max_steps - 1:
        print(f"stopped after step {last['step']} (--stop-after): --resume continues")
    elif args.time_limit and last["step"] != cfg.max_steps - 1:
        print(f"stopped at the time limit ({args.time_limit:g} s) after step {last['step']}: --resume continues")
    print(f"finished at step {last['step']}: train loss {last['loss']:.4f}"
          + (f", val loss {last['val_loss']:.4f}" if last["val_loss"] is not None else "")
          + f", {last['elapsed']:.0f} s in all")
    print(f"saved {out_dir / 'ckpt.pt'} and {out_dir / 'metrics.jsonl'}")
    if args.sample_tokens:
        text = gh.generate_text(model, args.prompt, max_new_tokens=args.sample_tokens, top_k=50, seed=cfg.seed)[0]
        (out_dir / "sample.txt").write_text(text + "\n")
        print(f"--- sample ({args.sample_tokens} tokens, top-k 50), also in {out_dir / 'sample.txt'} ---")
        print(text)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    check_out_dir(args, parser, out_dir)
    args.device = pick_device(args, parser)
    world = gh.Distributed(args.device)  # the processes torchrun started (notebook 09), or this one alone
    try:
        return run(args, parser, world, out_dir)
    finally:
        world.close()


def run(args, parser, world, out_dir: Path) -> int:
    """Build the model and the data, train, and report: every process trains, rank 0 reports."""
    cfg, source = make_config(args, parser, out_dir / "ckpt.pt", world.world_size)
    import torch

    torch.manual_seed(cfg.seed)
    model = gh.GPT(cfg.model)
    callbacks, prog = [report], "train.py" + (f" (rank {world.rank})" if world.world_size > 1 else "")
    try:
        world.share(cfg, {})  # raises if the processes cannot share a step
        if world.is_main:
            describe(cfg, model, source, args, out_dir, world)
        if args.tensorboard:
            callbacks.append(TensorBoardLog(out_dir))
        callbacks.append(ProgressBar(cfg.max_steps))
        loader = gh.data_loader(args.data, cfg.batch_size, cfg.seq_len, "train", cfg.val_fraction,
                                rank=world.rank, world_size=world.world_size)
        try:
            history = gh.train(model, cfg, train_loader=loader, out_dir=out_dir, resume=args.resume, callbacks=callbacks,
                               stop_after=args.stop_after, time_limit=args.time_limit, world=world)
        finally:  # the bar ends before any message below
            for callback in callbacks[1:]:
                callback.close()
    except (FileExistsError, FileNotFoundError, ImportError, ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)  # no usage block: not a misspelt flag
        sys.exit(2)
    except FloatingPointError as e:
        kept = " (--resume keeps the checkpoint's settings; the checkpoint is kept as it was)"
        print(f"{prog}: {e}\n{prog}: start again with a lower --lr"
              + (f" in a new --out-dir{kept}" if (out_dir / "ckpt.pt").is_file() else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        ckpt = out_dir / "ckpt.pt"
        saved = f"the last checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was saved yet"
        if world.is_main:
            print(f"\ninterrupted: {saved}; continue with: python train.py --out-dir {out_dir} --resume", file=sys.stderr)
        return 130
    if world.is_main:
        finish(history, cfg, model, args, out_dir)
    return 0


# ----------------------------------------------------------------------------- callbacks of a run


class ProgressBar:
    """A tqdm bar over the steps, as a train() callback, shown from the first step on; close() at the end."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __call__(self, rec):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=rec["step"], desc="training", dynamic_ncols=True)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_sec']:,.0f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class TensorBoardLog:
    """The run's metrics as TensorBoard scalars in out_dir/tensorboard, as a train() callback.
    The event file is made at the first step: a run refused before it writes nothing."""

    def __init__(self, out_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logging needs the tensorboard package, which is not installed: "
                              "pip install tensorboard (or train without it)") from None
        self.make_writer = lambda: SummaryWriter(Path(out_dir) / "tensorboard")
        self.writer = None

    def __call__(self, rec):
        self.writer = self.writer or self.make_writer()
        for k in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_sec"):
            if rec[k] is not None:
                self.writer.add_scalar(k, rec[k], rec["step"])

    def close(self):
        if self.writer is not None:
            self.writer.close()


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
