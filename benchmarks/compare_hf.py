"""Our GPT against HF's GPT2LMHeadModel: same sizes, weights, batch, optimizer and speed switches.

    python benchmarks/compare_hf.py                        # this machine's preset (gpu on CUDA, else cpu)
    python benchmarks/compare_hf.py --preset smoke --steps 2 --warmup 1 --json hf.json

HF's model is gpt_helpers.to_hf of ours (the same weights). The switches are the best that apply
on the device (gpt_helpers.recommended_switches; --compile-cpu compiles off CUDA too), with the
model's own attention and the padded vocab, as at the bottom of train_speed.py's ladder. Both
models train through gpt_helpers.train_step, timed as train_speed.py times a rung (its TimedTraining and
time_steps), their steps taking turns. HF's loss comes from its labels= argument and the whole
logits; the fused head, where it is on, is ours only.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: gpt_helpers is one folder up

from benchmarks.train_speed import (  # noqa: E402
    TimedTraining, fixed_batch, header, parse_args, setup, table, time_steps, write_json)
from gpt_helpers import IGNORE_INDEX, get_tf32, recommended_switches, set_tf32, to_hf  # noqa: E402


def hf_loss(model, x, y):
    """HF shifts labels= itself: labels=x scores x[:, 1:] from positions 0..T-2. Those are y[:, :-1],
    and y's last column is IGNORE_INDEX, so ours scores the same B * (T-1) tokens (y is not needed)."""
    return model(input_ids=x, labels=x, use_cache=False).loss


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    on = recommended_switches(args.device) | {"sdpa": True, "pad_vocab": True}
    if args.compile_cpu:  # compiled, FastPath keeps the plain loss
        on |= {"compile": True, "fused_head": False}
    header(args, "ours and HF's steps interleaved")
    note = "; the fused head is ours only (HF's loss: labels= over the whole logits)" if on["fused_head"] else ""
    print("switches: " + ", ".join(k for k, v in on.items() if v) + note + "\n")
    x, y = fixed_batch(args)
    y[:, -1] = IGNORE_INDEX  # the one target HF's shifted labels cannot score
    (cfg, build), (hf_cfg, _) = setup(args, on), setup(args, on | {"fused_head": False})
    rows = [{"key": key, "name": name, "status": "ran", "reason": None}
            for key, name in (("ours", "our GPT"), ("hf", "HF GPT2LMHeadModel"))]
    tf32 = get_tf32()
    try:
        ours = TimedTraining(build, cfg, args.device, (x, y), args.warmup)
        hf = TimedTraining(lambda: to_hf(build()).train(), hf_cfg, args.device, (x, y), args.warmup, loss_fn=hf_loss)
        time_steps([(rows[0], ours), (rows[1], hf)], args.steps, args.peak_tflops)
    finally:
        set_tf32(tf32)
    for row in rows:
        row["speedup"] = row["tokens_per_sec"] / rows[1]["tokens_per_sec"]
    print(table(rows, first="model", last="vs HF"))
    print(f"\nfirst loss (the same weights, the same {args.batch_size} x {args.seq_len - 1} targets): "
          f"ours {rows[0]['first_loss']:.5f}, HF {rows[1]['first_loss']:.5f}")
    print(f"ours / HF tokens/s: {rows[0]['speedup']:.2f}x")
    write_json(args, switches=[k for k, v in on.items() if v], ours=rows[0], hf=rows[1], ratio=rows[0]["speedup"])
    return rows


if __name__ == "__main__":
    main()
