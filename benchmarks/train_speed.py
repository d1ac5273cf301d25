"""Training throughput of our GPT, one optimization at a time, and against HF's GPT-2.

    python benchmarks/train_speed.py                          # this machine's preset (gpu on CUDA, else cpu)
    python benchmarks/train_speed.py --preset gpu             # GPT-2 124M, B=32, T=256
    python benchmarks/train_speed.py --n-layer 4 --n-embd 256 --batch-size 8 --seq-len 256 --steps 10
    python benchmarks/train_speed.py --preset smoke --steps 2 --json speed.json
    python benchmarks/train_speed.py --preset gpu --device cpu --batch-size 2 --no-ladder   # 124M, ours vs HF only

It prints two tables, every row measured in the same process on the same batch:

1. The ladder. Each rung keeps everything above it and adds one change:
   fp32 with the original explicit masked-softmax attention -> TF32 matmuls ->
   bf16 autocast -> F.scaled_dot_product_attention (flash attention) ->
   torch.compile -> vocabulary padded to a multiple of 128 (50,257 -> 50,304) ->
   fused AdamW -> fused head + loss (gpt_helpers.fused_head_loss: the logits are
   never whole in memory; skipped after torch.compile on CUDA, as train() does). Rungs
   that do not apply to the device are skipped, with the reason.
2. Our GPT with the best settings against HF's GPT2LMHeadModel with the same sizes,
   weights, batch, optimizer and settings, and the ratio of their tokens/s. HF computes
   its loss from the whole logits, as GPT2LMHeadModel(labels=...) does: where the
   settings include the fused head, it is part of our model, not a setting HF has.
   With --no-ladder only this table, with every rung that applies here switched on.

Timing: the first --warmup steps are not timed (allocator, kernel selection and
compilation happen there); every timed step ends with a device synchronize; a row
reports the median step. A step is what train() in gpt_helpers does: zero_grad,
forward with the loss, backward, gradient clipping, optimizer step.

MFU (model FLOPs utilization) = tokens/s * FLOPs per token / the device's peak:
    FLOPs per token = 6 N + 12 L C T
    N = every parameter except the position embeddings (a lookup multiplies nothing);
        the tied wte/lm_head matrix counts once, for lm_head's (C -> V) matmul.
    6 N: 2 FLOPs per parameter per token forward (a multiply and an add), 4 backward.
    12 L C T: attention's scores q k^T and weighted sum att v, 2 T C FLOPs each per token
        and layer forward, times 3 for forward + backward (the causal half is not subtracted).
Peaks are dense bf16/fp16 tensor-core figures (PEAK_TFLOPS); on a CPU MFU is '-'
unless you pass --peak-tflops.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: find gpt_helpers one folder up
    sys.path.insert(0, str(ROOT))

from gpt_helpers import (  # noqa: E402
    GPT,
    GPT2_VOCAB_SIZE,
    CausalSelfAttention,
    GPTConfig,
    TrainConfig,
    _autocast,
    _loss,
    autocast_dtype,
    check_device,
    clip_and_step,
    configure_optimizer,
    first_line,
    get_preset,
    get_tf32,
    preset_name,
    set_seed,
    set_tf32,
    to_hf,
)

# ----------------------------------------------------------------------------- device peaks

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets.
# Matched against torch.cuda.get_device_name(), first match wins (so H100 PCIe before H100).
PEAK_TFLOPS = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200", "H200", 989.0),
    (r"A100", "A100", 312.0),
    (r"\bL4\b", "L4", 121.0),  # not L40 / L40S
    (r"\bT4\b", "T4", 65.0),  # fp16 only: T4 has no bf16
)


def peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(short name, dense bf16/fp16 TFLOP/s) for a GPU name such as 'NVIDIA H100 80GB HBM3',
    or None when the device is not in PEAK_TFLOPS (CPUs, other GPUs)."""
    for pattern, short, tflops in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return short, tflops
    return None


# ----------------------------------------------------------------------------- FLOPs and MFU


def flops_params(config: GPTConfig) -> int:
    """N of the 6N rule: the parameters a token is multiplied by, i.e. all but the position
    embeddings; the tied wte/lm_head matrix counts once (as lm_head)."""
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    per_block = 12 * C * C + 13 * C  # c_attn 3C^2+3C, attn c_proj C^2+C, c_fc 4C^2+4C, mlp c_proj 4C^2+C, 2 LayerNorms 4C
    return L * per_block + 2 * C + V * C  # + ln_f + lm_head


def flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward): 6 N + 12 L C T."""
    return 6 * flops_params(config) + 12 * config.n_layer * config.n_embd * seq_len


def mfu(tokens_per_sec: float, flops_token: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak (peak in TFLOP/s); None when the peak is unknown."""
    if not peak:
        return None
    return tokens_per_sec * flops_token / (peak * 1e12)


def _flops_token(model_config: GPTConfig, settings, seq_len: int) -> int:
    """flops_per_token of the model a rung builds (its vocabulary padded when settings say so)."""
    vocab = padded_vocab(model_config.vocab_size) if settings.pad_vocab else model_config.vocab_size
    return flops_per_token(replace(model_config, vocab_size=vocab), seq_len)


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    """The next multiple of `multiple` (50,257 -> 50,304 = 393 * 128): GPU matmul tiles come in
    powers of two, so an odd dimension leaves a ragged last tile that runs on a slow path."""
    return -(-vocab_size // multiple) * multiple


# ----------------------------------------------------------------------------- the original attention


class ExplicitCausalSelfAttention(CausalSelfAttention):
    """The original notebook's attention: build the (T, T) score matrix, mask the future with
    -inf, softmax, multiply by v. Same weights and result as CausalSelfAttention, but the
    (B, nh, T, T) matrix is written to memory and read back several times, where
    F.scaled_dot_product_attention fuses it all into one kernel."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        mask = torch.ones(config.block_size, config.block_size, dtype=torch.bool).tril()
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size), persistent=False)

    def forward(self, x, kv_cache=None, layer: int = 0):
        if kv_cache is not None:
            raise ValueError("ExplicitCausalSelfAttention is for training benchmarks only: "
                             "generate with CausalSelfAttention (no kv_cache here)")
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))  # no peeking ahead
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


def use_explicit_attention(model: GPT) -> GPT:
    """Swap every block's attention for ExplicitCausalSelfAttention, sharing its Linear layers
    (same parameters, so weights and optimizer state carry over). Returns the model."""
    for block in model.transformer.h:
        old = block.attn
        new = ExplicitCausalSelfAttention(model.config).to(old.c_attn.weight.device)
        new.c_attn, new.c_proj = old.c_attn, old.c_proj
        block.attn = new
    return model


# ----------------------------------------------------------------------------- the ladder


@dataclass(frozen=True)
class Settings:
    """One point on the ladder: which optimizations are on."""

    tf32: bool = False  # TF32 tensor cores for fp32 matmuls (CUDA, Ampere+)
    amp: bool = False  # autocast: bf16 (fp16 + grad scaler where the GPU has no bf16)
    sdpa: bool = False  # F.scaled_dot_product_attention instead of the explicit softmax
    compile: bool = False  # torch.compile the model
    pad_vocab: bool = False  # vocab_size rounded up to a multiple of 128
    fused: bool = False  # AdamW's fused kernel (one launch for all parameters)
    fused_loss: bool = False  # lm_head + cross-entropy + backward chunk by chunk (our GPT only)

    def describe(self) -> str:
        on = [k for k, v in asdict(self).items() if v]
        return ", ".join(on) if on else "fp32, explicit attention"


# (key, row name, the field the rung switches on); the first rung is the original, all off
RUNGS = (
    ("original", "fp32, explicit attention", None),
    ("tf32", "+ TF32 matmuls", "tf32"),
    ("bf16", "+ bf16 autocast", "amp"),
    ("sdpa", "+ flash attention (SDPA)", "sdpa"),
    ("compile", "+ torch.compile", "compile"),
    ("vocab", "+ vocab padded to x128", "pad_vocab"),
    ("fused", "+ fused AdamW", "fused"),
    ("fusedloss", "+ fused head + loss", "fused_loss"),
)


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16
    matmuls do twice the work per instruction of fp32; elsewhere bf16 is emulated and slower."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:
        return False


def bench_amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the bf16 rung: train()'s choice on a GPU, bf16 on a CPU."""
    return autocast_dtype(device) if device.type == "cuda" else torch.bfloat16


def skip_reason(key: str, device: torch.device, compile_cpu: bool = False, vocab_size: int = GPT2_VOCAB_SIZE,
                settings: Settings | None = None, native_bf16: bool | None = None) -> str | None:
    """Why a rung does not apply to this device (on top of `settings`), or None when it runs."""
    cuda = device.type == "cuda"
    if key == "tf32":
        if not cuda:
            return "TF32 is an NVIDIA tensor-core format (Ampere and newer)"
        if torch.cuda.get_device_capability(device)[0] < 8:
            return "this GPU predates TF32 (needs compute capability 8.0+)"
    if key == "bf16" and device.type == "cpu":
        if not (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
            return "no AVX512-BF16 or AMX found (checked on x86 only): emulated bf16 is slower than fp32"
    elif key == "bf16" and not cuda:
        return "bf16 autocast is measured on CUDA and on CPUs with native bf16 only"
    if key == "compile" and not cuda and not compile_cpu:
        return "compiling on CPU takes minutes; pass --compile-cpu to include it"
    if key == "vocab" and padded_vocab(vocab_size) == vocab_size:
        return f"vocab {vocab_size:,} is already a multiple of 128"
    if key == "fusedloss" and cuda and settings is not None and settings.compile:
        return "compiled on CUDA, train() keeps the plain loss (Inductor fuses its softmax; the fused head is eager)"
    return None


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rss_mib() -> float | None:
    """Resident memory of this process in MiB (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _release_memory(device: torch.device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif platform.system() == "Linux":
        try:  # give freed heap pages back to the OS so the next RSS baseline is honest
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def make_batch(batch_size: int, seq_len: int, device, vocab_size: int = GPT2_VOCAB_SIZE, seed: int = 1337):
    """A fixed (B, T) batch of random token ids and its targets (shifted by one).
    Speed does not depend on the text, so no tokenizer is needed."""
    g = torch.Generator().manual_seed(seed)
    buf = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)
    return buf[:, :-1].contiguous().to(device), buf[:, 1:].contiguous().to(device)


def build_gpt(model_config: GPTConfig, settings: Settings, device, seed: int = 1337) -> GPT:
    """Our GPT for a rung: padded vocab and the explicit attention as the settings say."""
    if settings.pad_vocab:
        model_config = replace(model_config, vocab_size=padded_vocab(model_config.vocab_size))
    set_seed(seed)
    model = GPT(model_config)
    if not settings.sdpa:
        use_explicit_attention(model)
    return model.to(device)


def build_hf(model_config: GPTConfig, settings: Settings, device, seed: int = 1337):
    """HF's GPT2LMHeadModel with the same sizes and weights as build_gpt, dropout 0."""
    ours = build_gpt(model_config, replace(settings, sdpa=True), "cpu", seed)
    hf = to_hf(ours).train()
    return hf.to(device)


def gpt_loss(model, x, y, settings: Settings | None = None):
    return _loss(model, x, y, settings is not None and settings.fused_loss)  # as train() computes it


def hf_loss(model, x, y, settings: Settings | None = None):
    # use_cache=False: HF would otherwise fill a KV cache during training, work we do not do.
    # The loss is what HF's labels= path computes (fp32 logits, F.cross_entropy), but on our
    # already-shifted targets, so both models score the same B*T tokens, in any HF version.
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))


class Runner:
    """One model training on one fixed batch, a step at a time, as train() in gpt_helpers
    does it: zero_grad, forward with the loss (under autocast when settings.amp), backward,
    clip the gradient norm, optimizer step; every step ends with a device synchronize.

    Peak memory is what the model needed beyond what was allocated before it was built:
    on CUDA max_memory_allocated over a step minus that baseline; on CPU the largest RSS
    seen right after forward and after backward minus the RSS before the build (approximate).
    """

    def __init__(self, build, loss_fn, settings: Settings, device, batch, train_config: TrainConfig | None = None):
        self.device = device = torch.device(device)
        self.settings, self.loss_fn, self.batch = settings, loss_fn, batch
        self.cfg = train_config or TrainConfig()  # AdamW betas, weight decay, lr, grad clip
        _release_memory(device)
        self.mem_base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mib()
        self.model = build(settings, device)
        self.amp_dtype = bench_amp_dtype(device) if settings.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.optimizer = configure_optimizer(self.model, self.cfg, device.type, fused=settings.fused)
        self.step_model = torch.compile(self.model) if settings.compile else self.model
        self.times, self.losses, self.mem_peak = [], [], None
        self.track_memory = self.mem_base is not None

    def _probe(self):
        if self.track_memory and self.device.type == "cpu":
            self.mem_peak = max(self.mem_peak or 0.0, (_rss_mib() or 0.0) - self.mem_base)

    def step(self, timed: bool = True) -> float:
        """One training step; its time in seconds is kept when timed."""
        device, opt, scaler = self.device, self.optimizer, self.scaler
        x, y = self.batch
        if device.type == "cuda" and self.track_memory:
            torch.cuda.reset_peak_memory_stats(device)
        if device.type == "cuda":
            set_tf32(self.settings.tf32)  # a global switch: set it for whichever model steps next
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with _autocast(device, self.amp_dtype):
            loss = self.loss_fn(self.step_model, x, y, self.settings)
        self._probe()  # activations are alive now
        (scaler.scale(loss) if scaler else loss).backward()
        self._probe()  # and the gradients
        clip_and_step(self.model, opt, self.cfg.grad_clip, scaler)
        _sync(device)
        dt = time.perf_counter() - t0
        if device.type == "cuda" and self.track_memory:
            peak = torch.cuda.max_memory_allocated(device) / 2**20 - self.mem_base
            self.mem_peak = max(self.mem_peak or 0.0, peak)
        if timed:
            self.times.append(dt)
        self.losses.append(loss.detach())
        return dt

    def warmup(self, steps: int):
        # the first call of a compiled model compiles: never time it
        for _ in range(max(steps, 2) if self.settings.compile else steps):
            self.step(timed=False)

    def result(self) -> dict:
        """tokens_per_sec and step_ms from the median timed step, peak_mem_mib, first/last loss."""
        step = statistics.median(self.times)
        return {"tokens_per_sec": self.batch[0].numel() / step, "step_ms": step * 1e3,
                "peak_mem_mib": self.mem_peak, "first_loss": self.losses[0].item(),
                "last_loss": self.losses[-1].item()}

    def close(self):
        compiled = self.settings.compile
        del self.model, self.step_model, self.optimizer
        if compiled:
            torch._dynamo.reset()
        _release_memory(self.device)


def _failure(e: Exception) -> str:
    return f"{type(e).__name__}: {first_line(e)[:120]}"


def run_ladder(model_config: GPTConfig, batch_size: int, seq_len: int, device, steps: int = 10,
               warmup: int = 2, compile_cpu: bool = False, peak: float | None = None,
               interleave: bool | None = None, keys=None, log=print) -> list[dict]:
    """Measure the rungs of RUNGS (or only those in `keys`, still cumulative) in this process.

    interleave (default: off on CUDA, on elsewhere) keeps every rung's model alive and
    alternates their timed steps, so load from other processes hits all rungs alike; on a
    GPU, where nothing else runs, each rung is built, timed and freed in turn (less memory).
    Each row: key, name, status ('ran', 'skipped', 'failed'), reason, settings, and for rows
    that ran tokens_per_sec, step_ms, peak_mem_mib, mfu, speedup (over the first that ran).
    """
    device = torch.device(device)
    interleave = device.type != "cuda" if interleave is None else interleave
    batch = make_batch(batch_size, seq_len, device)
    settings = Settings()
    rows, runners, tf32 = [], {}, get_tf32()
    try:
        for key, name, field_name in RUNGS:
            if keys is not None and key not in keys:
                continue
            if key == "bf16" and device.type == "cuda" and autocast_dtype(device) == torch.float16:
                name = "+ fp16 autocast, grad scaler"  # the GPU has no bf16 (T4, V100)
            row = {"key": key, "name": name, "status": "ran", "reason": None, "settings": settings.describe()}
            rows.append(row)
            reason = skip_reason(key, device, compile_cpu, model_config.vocab_size, settings)
            if reason:
                row.update(status="skipped", reason=reason)
                log(f"  {name:<28} skipped: {reason}")
                continue
            trial = replace(settings, **{field_name: True}) if field_name else settings
            runner = None
            try:
                runner = Runner(lambda s, d: build_gpt(model_config, s, d), gpt_loss, trial, device, batch)
                if interleave:  # memory is measured over the warm-up, while the others sit still
                    runner.warmup(max(warmup, 1))
                    runner.track_memory = False
                    runners[key] = runner
                else:
                    runner.warmup(warmup)
                    for _ in range(steps):
                        runner.step()
                    row.update(runner.result())
                    runner.close()
            except Exception as e:  # a rung that breaks here must not hide the others
                if runner is not None:
                    runners.pop(key, None)
                    runner.close()
                row.update(status="failed", reason=_failure(e))
                log(f"  {name:<28} failed: {row['reason']}")
                continue
            settings = trial
            row.update(settings=settings.describe(), _settings=settings)
            log(f"  {name:<28} ready" if interleave else f"  {name:<28} {row['tokens_per_sec']:>12,.0f} tokens/s")
        if interleave and runners:
            log(f"  timing {len(runners)} rungs, their steps interleaved ...")
            for _ in range(steps):
                for r in runners.values():
                    r.step()
            for row in rows:
                if row["key"] in runners:
                    row.update(runners[row["key"]].result())
    finally:
        for r in runners.values():
            r.close()
        set_tf32(tf32)  # the rungs flip this global switch: put it back
    base = None
    for row in rows:
        if row["status"] == "ran":
            ftok = _flops_token(model_config, row["_settings"], seq_len)
            base = base or row["tokens_per_sec"]
            row.update(mfu=mfu(row["tokens_per_sec"], ftok, peak), speedup=row["tokens_per_sec"] / base)
    return rows


def best_settings(rows: list[dict]) -> Settings:
    """The settings of the last rung that ran (every rung keeps the ones before it)."""
    ran = [r for r in rows if r["status"] == "ran"]
    return ran[-1]["_settings"] if ran else Settings(sdpa=True)


def planned_settings(device, compile_cpu: bool = False, vocab_size: int = GPT2_VOCAB_SIZE) -> Settings:
    """Every rung that applies to this device switched on, unmeasured: what the ladder's last
    rung would be if none failed (for --no-ladder)."""
    device, settings = torch.device(device), Settings()
    for key, _, field_name in RUNGS:
        if field_name and skip_reason(key, device, compile_cpu, vocab_size, settings) is None:
            settings = replace(settings, **{field_name: True})
    return settings


def run_hf_comparison(model_config: GPTConfig, batch_size: int, seq_len: int, device, settings: Settings,
                      steps: int = 10, warmup: int = 2, peak: float | None = None) -> dict:
    """Our GPT and HF's GPT2LMHeadModel, same settings, sizes, weights, batch and optimizer.

    Both models live side by side and their timed steps alternate (ours, HF, ours, ...), so a
    burst of load from elsewhere hits both alike. Peak memory is taken over each model's own
    warm-up steps (ours before HF exists; HF's minus what was allocated before it was built).
    Returns {"ours": row, "hf": row, "ratio": ours tokens/s / HF tokens/s, "settings": ...}.
    """
    device = torch.device(device)
    batch = make_batch(batch_size, seq_len, device)
    ftok = _flops_token(model_config, settings, seq_len)
    contestants = (
        ("ours", lambda s, d: build_gpt(model_config, s, d), gpt_loss),
        ("hf", lambda s, d: build_hf(model_config, s, d), hf_loss),
    )
    out, runners, tf32 = {"settings": settings.describe(), "ratio": None}, {}, get_tf32()
    if settings.fused_loss:
        out["note"] = "HF's loss is from the whole logits, as GPT2LMHeadModel(labels=...) computes it"
    try:
        for who, build, loss_fn in contestants:
            try:
                runners[who] = r = Runner(build, loss_fn, settings, device, batch)
                r.warmup(max(warmup, 1))  # memory is measured here, so at least one step
                r.track_memory = False
            except Exception as e:
                if runners.pop(who, None) is not None:
                    r.close()
                out[who] = {"status": "failed", "reason": _failure(e)}
        for _ in range(steps):
            for r in runners.values():
                r.step()
        for who, r in runners.items():
            out[who] = r.result() | {"status": "ran", "reason": None}
            out[who]["mfu"] = mfu(out[who]["tokens_per_sec"], ftok, peak)
    finally:
        for r in runners.values():
            r.close()
        set_tf32(tf32)
    if "ours" in runners and "hf" in runners:
        out["ratio"] = out["ours"]["tokens_per_sec"] / out["hf"]["tokens_per_sec"]
    return out


# ----------------------------------------------------------------------------- reporting


def describe_device(device) -> tuple[str, tuple[str, float] | None]:
    """A readable device name and its peak from PEAK_TFLOPS (None off the table)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return name, peak_tflops(name)
    if device.type == "cpu":
        return f"CPU, {torch.get_num_threads()} threads ({platform.machine()})", None
    return device.type, None


def _fmt_mem(mib):
    return "-" if mib is None else f"{mib:,.0f} MiB"


def _fmt_mfu(m):
    return "-" if m is None else f"{100 * m:.1f}%"


def format_table(rows: list[dict], comparison: dict | None = None) -> str:
    """The ladder (and the comparison, when given) as aligned text."""
    head = f"{'rung':<30}{'tokens/s':>12}{'step ms':>10}{'peak mem':>13}{'MFU':>8}{'speedup':>9}"
    lines = [head, "-" * len(head)] if rows else []
    for r in rows:
        if r["status"] != "ran":
            lines.append(f"{r['name']:<30}  {r['status']}: {r['reason']}")
            continue
        lines.append(f"{r['name']:<30}{r['tokens_per_sec']:>12,.0f}{r['step_ms']:>10.1f}"
                     f"{_fmt_mem(r['peak_mem_mib']):>13}{_fmt_mfu(r['mfu']):>8}{r['speedup']:>8.2f}x")
    if comparison:
        lines += ["", f"same settings ({comparison['settings']}), same batch, same optimizer:", head[:73], "-" * 73]
        lines = lines[1:] if not rows else lines  # no ladder: no blank line first
        for who, name in (("ours", "our GPT"), ("hf", "HF GPT2LMHeadModel")):
            r = comparison[who]
            if r["status"] != "ran":
                lines.append(f"{name:<30}  failed: {r['reason']}")
                continue
            lines.append(f"{name:<30}{r['tokens_per_sec']:>12,.0f}{r['step_ms']:>10.1f}"
                         f"{_fmt_mem(r['peak_mem_mib']):>13}{_fmt_mfu(r['mfu']):>8}")
        if comparison.get("note"):
            lines.append(f"({comparison['note']})")
        if comparison["ratio"] is not None:
            lines.append(f"ours / HF tokens/s: {comparison['ratio']:.2f}x")
    return "\n".join(lines)


def flops_line(model_config: GPTConfig, seq_len: int) -> str:
    c, T = model_config, seq_len
    n = flops_params(c)
    return (f"FLOPs/token = 6N + 12*L*C*T = 6*{n:,} + 12*{c.n_layer}*{c.n_embd}*{T} = "
            f"{flops_per_token(c, T) / 1e6:,.1f} MFLOP  (N = all parameters but the position "
            f"embeddings, lm_head counted once; vocab {c.vocab_size:,})")


# ----------------------------------------------------------------------------- command line


def _positive(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {value}")
        return value
    return parse


def _non_negative(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--warmup must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--warmup must be >= 0, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="gpt_helpers preset for sizes (smoke, cpu, gpu); default: $GPT_PRESET, "
                                    "else gpu on CUDA and cpu elsewhere")
    p.add_argument("--n-layer", type=_positive("--n-layer"))
    p.add_argument("--n-head", type=_positive("--n-head"))
    p.add_argument("--n-embd", type=_positive("--n-embd"))
    p.add_argument("--batch-size", type=_positive("--batch-size"))
    p.add_argument("--seq-len", type=_positive("--seq-len"))
    p.add_argument("--steps", type=_positive("--steps"), default=10, help="timed steps per row (default 10)")
    p.add_argument("--warmup", type=_non_negative, default=2, help="untimed steps first (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the fastest here)")
    p.add_argument("--compile-cpu", action="store_true", help="also run the torch.compile rung on CPU (slow to compile)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for MFU on a device not in the table")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="keep all rungs' models alive and alternate their timed steps (default: on "
                        "unless on CUDA; steadier on a busy CPU, needs memory for every model)")
    p.add_argument("--no-hf", action="store_true", help="skip the comparison with HF's GPT2LMHeadModel")
    p.add_argument("--no-ladder", action="store_true",
                   help="skip the ladder: only ours vs HF, every rung that applies here switched on")
    p.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    try:
        args.preset = preset_name(args.preset)
        preset = get_preset(args.preset)
    except ValueError as e:
        p.error(str(e))
    m = preset.model
    args.batch_size = args.batch_size or preset.batch_size
    args.seq_len = args.seq_len or preset.seq_len
    n_embd = args.n_embd or m.n_embd
    n_head = args.n_head or (m.n_head if n_embd % m.n_head == 0 else 1)
    try:
        args.model = GPTConfig(block_size=max(m.block_size, args.seq_len), vocab_size=m.vocab_size,
                               n_layer=args.n_layer or m.n_layer, n_head=n_head, n_embd=n_embd)
    except ValueError as e:
        p.error(f"{e} (--n-embd / --n-head)")
    try:
        args.device = check_device(args.device)
    except ValueError as e:
        p.error(f"--device {e}")
    if args.no_ladder and args.no_hf:
        p.error("--no-ladder with --no-hf leaves nothing to measure: drop one of them")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error(f"--peak-tflops must be positive, got {args.peak_tflops}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dev_name, known = describe_device(device)
    peak = args.peak_tflops or (known[1] if known else None)
    c = args.model
    print(f"device: {dev_name}; peak: "
          + (f"{peak:g} TFLOP/s dense bf16/fp16" + (f" ({known[0]})" if known and not args.peak_tflops else "")
             if peak else "unknown, so no MFU (pass --peak-tflops)"))
    print(f"model: {c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads, vocab {c.vocab_size:,}; "
          f"batch B={args.batch_size} T={args.seq_len} ({args.batch_size * args.seq_len:,} tokens/step); "
          f"torch {torch.__version__}")
    inter = args.interleave if args.interleave is not None else device.type != "cuda"
    print(f"timing: median of {args.steps} steps after {args.warmup} warm-up steps, synchronized"
          + ("; rungs' steps interleaved" if inter else "; one rung at a time")
          + "; on a shared machine the figures are noisy")
    print(flops_line(c, args.seq_len))
    rows = []
    if not args.no_ladder:
        print("\nthe ladder (each rung keeps the ones above it):")
        rows = run_ladder(c, args.batch_size, args.seq_len, device, args.steps, args.warmup, args.compile_cpu, peak,
                          interleave=args.interleave)
    comparison = None
    if not args.no_hf:
        settings = planned_settings(device, args.compile_cpu, c.vocab_size) if args.no_ladder else best_settings(rows)
        which = "every rung that applies here, unmeasured" if args.no_ladder else "the best settings"
        print(f"\nours vs HF with {which} ({settings.describe()}):")
        comparison = run_hf_comparison(c, args.batch_size, args.seq_len, device, settings,
                                       args.steps, args.warmup, peak)
    mem = "CUDA max_memory_allocated" if device.type == "cuda" else "RSS growth during a step, approximate"
    print(f"\npeak mem: {mem}" + ("; speedup: tokens/s over the first rung" if rows else "") + "\n")
    print(format_table(rows, comparison))
    result = {
        "device": str(device), "device_name": dev_name, "peak_tflops": peak, "torch": torch.__version__,
        "model": asdict(c), "batch_size": args.batch_size, "seq_len": args.seq_len,
        "steps": args.steps, "warmup": args.warmup, "flops_per_token": flops_per_token(c, args.seq_len),
        "rungs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "hf_comparison": comparison,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
