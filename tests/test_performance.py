"""Section 08 of gpt_helpers (performance): FLOPs and MFU, GPU peaks, the padded vocab, the original
attention, FastPath's choices for a GPU; and the two benchmark scripts, run end to end.

The fused head + loss has its own tests in test_model.py. No timing is asserted: speed is what the
benchmarks print. The benchmarks are run as scripts, never imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_helpers import (
    GPT, GPT2_VOCAB_SIZE, FastPath, GPTConfig, OriginalAttention, TrainConfig, flops_params, flops_per_token,
    fused_head_model_loss, get_tf32, mfu, padded_vocab, peak_tflops, recommended_switches, set_tf32,
    use_original_attention,
)

ROOT = Path(__file__).resolve().parent.parent
RUNGS = ["original", "tf32", "autocast", "sdpa", "compile", "pad_vocab", "fused_adamw", "fused_head"]

# ----------------------------------------------------------------------------- FLOPs, MFU, peaks


def test_flops_params_by_hand_and_from_the_model(tiny_config):
    # tiny_config: L=2, C=16, V=97; per block 12*C^2 + 13*C = 3072 + 208 = 3280
    # N = 2*3280 + ln_f 2*16 + lm_head 97*16 = 6560 + 32 + 1552 = 8144
    assert flops_params(tiny_config) == 8144
    model = GPT(tiny_config)  # all but the position embeddings; the tied matrix once
    assert flops_params(tiny_config) == model.num_parameters() - model.transformer.wpe.weight.numel()
    # GPT-2 124M: 124,439,808 parameters minus 1024*768 position embeddings
    assert flops_params(GPTConfig()) == 124_439_808 - 1024 * 768


def test_flops_per_token_is_6n_plus_12lct(tiny_config):
    # 6*8144 + 12*L*C*T at T=32: 48864 + 12*2*16*32 = 48864 + 12288
    assert flops_per_token(tiny_config, 32) == 61152
    c = GPTConfig()
    assert flops_per_token(c, 1024) == 6 * flops_params(c) + 12 * 12 * 768 * 1024
    assert flops_per_token(c, 512) < flops_per_token(c, 1024)  # attention's part grows with T


def test_mfu():
    # 1,000 tokens/s at 1 GFLOP each is 1 TFLOP/s: 1% of a 100 TFLOP/s device
    assert mfu(1000, 1e9, 100.0) == pytest.approx(0.01)
    assert mfu(1000, 1e9, None) is None  # an unknown peak: no MFU


@pytest.mark.parametrize("name, short, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H200", "H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA L4", "L4", 121.0),
    ("Tesla T4", "T4", 65.0),
])
def test_peak_tflops_of_known_gpus(name, short, tflops):
    assert peak_tflops(name) == (short, tflops)


@pytest.mark.parametrize("name", ["NVIDIA L40S", "NVIDIA GeForce RTX 4090", "cpu", ""])
def test_peak_tflops_of_other_devices_is_none(name):
    assert peak_tflops(name) is None


@pytest.mark.parametrize("vocab, padded", [(GPT2_VOCAB_SIZE, 50304), (50304, 50304), (97, 128), (128, 128)])
def test_padded_vocab(vocab, padded):
    assert padded_vocab(vocab) == padded
    assert padded % 128 == 0 and 0 <= padded - vocab < 128


# ----------------------------------------------------------------------------- the original attention


def test_original_attention_keeps_the_parameters_and_the_result(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))
    targets = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))

    def logits_and_grads():
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    params, keys = list(model.parameters()), model.state_dict().keys()
    logits, grads = logits_and_grads()
    assert use_original_attention(model) is model
    assert all(isinstance(block.attn, OriginalAttention) for block in model.transformer.h)
    after = list(model.parameters())
    assert len(after) == len(params) and all(a is b for a, b in zip(after, params))  # an optimizer carries over
    assert model.state_dict().keys() == keys  # no new buffer or weight
    logits_o, grads_o = logits_and_grads()
    torch.testing.assert_close(logits_o, logits, atol=1e-5, rtol=0)
    for name, g, g_o in zip([n for n, _ in model.named_parameters()], grads, grads_o):
        torch.testing.assert_close(g_o, g, atol=1e-6, rtol=0, msg=name)


def test_original_attention_masks_the_future(tiny_config):
    model = use_original_attention(GPT(tiny_config))
    idx = torch.randint(0, tiny_config.vocab_size, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % tiny_config.vocab_size
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # earlier positions never see the last token
    assert not torch.allclose(a[:, -1], b[:, -1])


# ----------------------------------------------------------------------------- FastPath on a GPU
# (FastPath on a CPU and recommended_switches are tested in test_training.py)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_fast_path_on_cuda_picks_autocast_and_scaler_and_restores_tf32(tiny_config, monkeypatch, capability, dtype):
    # FastPath does not move the model, so its choices for a GPU can be checked without one
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    tf32 = get_tf32()
    cfg = TrainConfig(model=tiny_config, seq_len=8, tf32=True, autocast=True, fused_head=True)
    try:
        set_tf32(False)
        fast = FastPath(GPT(tiny_config), cfg, "cuda")
        assert get_tf32() == (True, True)
        assert fast.amp_dtype == dtype and fast.tf32
        assert (fast.scaler is not None) == (dtype == torch.float16)  # fp16 needs a grad scaler, bf16 does not
        assert fast.loss_fn is fused_head_model_loss
        fast.close()
        assert get_tf32() == (False, False)  # put back as it was
    finally:
        set_tf32(tf32)


# ----------------------------------------------------------------------------- the benchmark scripts


def run_script(name, *args, cwd):
    cmd = [sys.executable, str(ROOT / "benchmarks" / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=dict(os.environ))


def test_train_speed_measures_the_ladder(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_script("train_speed.py", "--preset", "smoke", "--device", "cpu", "--grad-accum", "2", "--steps", "1",
                      "--warmup", "1", "--peak-tflops", "1", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["key"]: r for r in result["rungs"]}
    assert [r["key"] for r in result["rungs"]] == RUNGS
    for row in result["rungs"]:
        assert row["name"] in proc.stdout
    for key in ("tf32", "autocast", "compile"):  # CUDA only, or --compile-cpu
        assert rows[key]["status"] == "skipped" and f"skipped: {rows[key]['reason']}" in proc.stdout
    assert "--compile-cpu" in rows["compile"]["reason"]
    assert rows["fused_head"]["switches"] == ["sdpa", "pad_vocab", "fused_adamw", "fused_head"]  # each keeps the rest
    assert rows["original"]["switches"] == [] and rows["original"]["speedup"] == 1.0
    assert rows["pad_vocab"]["name"] == "+ vocab padded to 50304"
    for key in ("original", "sdpa", "pad_vocab", "fused_adamw", "fused_head"):
        row = rows[key]
        assert row["status"] == "ran" and row["tokens_per_sec"] > 0
        assert row["tokens_per_sec"] * row["step_ms"] / 1e3 == pytest.approx(4 * 32 * 2)  # B * T * grad_accum
        assert row["mfu"] == pytest.approx(row["tokens_per_sec"] * row["flops_per_token"] / 1e12)  # --peak-tflops 1
        assert row["speedup"] == pytest.approx(row["tokens_per_sec"] / rows["original"]["tokens_per_sec"])
    assert rows["pad_vocab"]["flops_per_token"] > rows["sdpa"]["flops_per_token"]  # 47 more rows in the head
    # the same weights and batch: the original attention and SDPA start from the same loss
    assert rows["sdpa"]["first_loss"] == pytest.approx(rows["original"]["first_loss"], abs=1e-4)


def test_compare_hf_races_the_same_model(tmp_path):
    out = tmp_path / "hf.json"
    proc = run_script("compare_hf.py", "--preset", "smoke", "--device", "cpu", "--steps", "1", "--warmup", "1",
                      "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    ours, hf = result["ours"], result["hf"]
    assert ours["status"] == hf["status"] == "ran" and ours["tokens_per_sec"] > 0 and hf["tokens_per_sec"] > 0
    assert result["ratio"] == pytest.approx(ours["tokens_per_sec"] / hf["tokens_per_sec"])
    assert result["switches"] == [k for k, v in recommended_switches("cpu").items() if v] + ["sdpa", "pad_vocab"]
    # the same weights scoring the same tokens (ours through the fused head, HF through labels=)
    assert ours["first_loss"] == pytest.approx(hf["first_loss"], abs=1e-4)
    for text in ("our GPT", "HF GPT2LMHeadModel", "ours / HF tokens/s"):
        assert text in proc.stdout


@pytest.mark.parametrize("script, args, message", [
    ("train_speed.py", ["--device", "tpu"], "'tpu' is not a device: use cpu, cuda, cuda:N or mps"),
    ("compare_hf.py", ["--device", "tpu"], "'tpu' is not a device: use cpu, cuda, cuda:N or mps"),
    ("train_speed.py", ["--steps", "0"], "--steps must be >= 1"),
])
def test_bad_arguments_are_usage_errors(tmp_path, script, args, message):
    proc = run_script(script, "--preset", "smoke", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
