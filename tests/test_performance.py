"""The pieces of benchmarks/train_speed.py: the ladder must compare like with like,
the FLOPs and MFU arithmetic must be right, and the script must run end to end.
No timing is asserted: speed is what the script prints."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.train_speed import (
    RUNGS,
    ExplicitCausalSelfAttention,
    Runner,
    Settings,
    build_gpt,
    cpu_has_native_bf16,
    flops_params,
    flops_per_token,
    gpt_loss,
    make_batch,
    mfu,
    padded_vocab,
    parse_args,
    peak_tflops,
    planned_settings,
    skip_reason,
    use_explicit_attention,
)
from gpt_helpers import GPT, GPT2_VOCAB_SIZE, GPTConfig, TrainConfig, sample_next_token

ROOT = Path(__file__).resolve().parent.parent


def test_explicit_attention_matches_sdpa(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    original = use_explicit_attention(copy.deepcopy(model))
    assert all(isinstance(b.attn, ExplicitCausalSelfAttention) for b in original.transformer.h)
    assert original.state_dict().keys() == model.state_dict().keys()  # the mask is not a weight
    idx = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))
    targets = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))
    logits, loss = model(idx, targets)
    logits_o, loss_o = original(idx, targets)
    torch.testing.assert_close(logits_o, logits, atol=1e-5, rtol=0)
    loss.backward()
    loss_o.backward()
    for (name, p), p_o in zip(model.named_parameters(), original.parameters()):
        torch.testing.assert_close(p_o.grad, p.grad, atol=1e-6, rtol=0, msg=name)


def test_explicit_attention_shares_the_weights_and_masks_the_future(tiny_config):
    model = GPT(tiny_config)
    c_attn = model.transformer.h[0].attn.c_attn
    n_params = model.num_parameters()
    use_explicit_attention(model)
    assert model.transformer.h[0].attn.c_attn is c_attn  # the optimizer sees the same tensors
    assert model.num_parameters() == n_params
    # changing a later token must not change an earlier position's output
    idx = torch.randint(0, tiny_config.vocab_size, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % tiny_config.vocab_size
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])
    with pytest.raises(ValueError, match="kv_cache"):
        model.transformer.h[0].attn(torch.zeros(1, 2, tiny_config.n_embd), kv_cache=object())


@pytest.mark.parametrize("vocab, padded", [(GPT2_VOCAB_SIZE, 50304), (50304, 50304), (97, 128), (128, 128)])
def test_padded_vocab(vocab, padded):
    assert padded_vocab(vocab) == padded
    assert padded % 128 == 0 and 0 <= padded - vocab < 128


def test_padded_vocab_model_trains_and_never_samples_padded_ids():
    config = GPTConfig(block_size=16, vocab_size=GPT2_VOCAB_SIZE, n_layer=1, n_head=2, n_embd=16)
    batch = make_batch(2, 16, "cpu")
    runner = Runner(lambda s, d: build_gpt(config, s, d), gpt_loss, Settings(sdpa=True, pad_vocab=True),
                    "cpu", batch, TrainConfig(model=config, seq_len=16, max_lr=1e-2, weight_decay=0.0))
    assert runner.model.config.vocab_size == 50304
    for _ in range(8):
        runner.step()
    result = runner.result()
    assert result["last_loss"] < result["first_loss"] - 1.0  # it learns the batch
    model = runner.model
    # make the padded rows win every softmax: ln_f outputs the all-ones vector, the padded
    # rows of the (tied) head are all ones, the real rows almost zero
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.mul_(0.01)
        model.lm_head.weight[GPT2_VOCAB_SIZE:] = 1.0
        logits = model(batch[0][:, :4])[0][:, -1, :]
    g = torch.Generator().manual_seed(0)
    assert (sample_next_token(logits, generator=g) >= GPT2_VOCAB_SIZE).all()  # unmasked: padded ids win
    out = model.generate(batch[0][:, :4], max_new_tokens=5, generator=g)
    assert out.max().item() < GPT2_VOCAB_SIZE


def test_flops_per_token_by_hand(tiny_config):
    # tiny_config: L=2, C=16, V=97; per block 12*C^2 + 13*C = 3072 + 208 = 3280
    # N = 2*3280 + ln_f 2*16 + lm_head 97*16 = 6560 + 32 + 1552 = 8144
    assert flops_params(tiny_config) == 8144
    model = GPT(tiny_config)
    assert flops_params(tiny_config) == model.num_parameters() - model.transformer.wpe.weight.numel()
    # 6N + 12*L*C*T at T=32: 6*8144 + 12*2*16*32 = 48864 + 12288
    assert flops_per_token(tiny_config, 32) == 61152
    # GPT-2 124M: 124,439,808 parameters minus 1024*768 position embeddings
    assert flops_params(GPTConfig()) == 124_439_808 - 1024 * 768


@pytest.mark.parametrize("name, short, tflops", [
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100-PCIE-40GB", "A100", 312.0),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H200", "H200", 989.0),
    ("NVIDIA L4", "L4", 121.0),
    ("Tesla T4", "T4", 65.0),
])
def test_peak_lookup(name, short, tflops):
    assert peak_tflops(name) == (short, tflops)


@pytest.mark.parametrize("name", ["NVIDIA L40S", "NVIDIA GeForce RTX 4090", "cpu", ""])
def test_peak_lookup_unknown_device(name):
    assert peak_tflops(name) is None


def test_mfu():
    # 1,000 tokens/s at 1 GFLOP each is 1 TFLOP/s: 1% of a 100 TFLOP/s device
    assert mfu(1000, 1e9, 100.0) == pytest.approx(0.01)
    assert mfu(1000, 1e9, None) is None


def test_rungs_that_do_not_apply_on_cpu_say_why():
    cpu = torch.device("cpu")
    for key in ("tf32", "compile"):
        assert skip_reason(key, cpu)
    assert "no AVX512-BF16 or AMX" in skip_reason("bf16", cpu, native_bf16=False)
    assert skip_reason("bf16", cpu, native_bf16=True) is None  # AVX512-BF16 / AMX: measured
    assert skip_reason("compile", cpu, compile_cpu=True) is None
    for key in ("original", "sdpa", "vocab", "fused", "fusedloss"):
        assert skip_reason(key, cpu) is None
    assert "multiple of 128" in skip_reason("vocab", cpu, vocab_size=50304)
    # compiled on CUDA, train() keeps the plain loss, and so does the ladder; on a CPU the fused head runs
    assert "compiled on CUDA" in skip_reason("fusedloss", torch.device("cuda"), settings=Settings(compile=True))
    assert skip_reason("fusedloss", cpu, settings=Settings(compile=True)) is None


def test_planned_settings_switch_on_every_rung_that_applies():
    native_bf16 = cpu_has_native_bf16()
    assert planned_settings("cpu") == Settings(amp=native_bf16, sdpa=True, pad_vocab=True, fused=True, fused_loss=True)
    assert planned_settings("cpu", compile_cpu=True) == Settings(amp=native_bf16, sdpa=True, compile=True,
                                                                 pad_vocab=True, fused=True, fused_loss=True)
    assert not planned_settings("cpu", vocab_size=50304).pad_vocab


@pytest.mark.parametrize("argv, message", [
    (["--no-ladder", "--no-hf"], "nothing to measure"),
    (["--n-embd", "30", "--n-head", "4"], "n_embd"),
    (["--steps", "0"], "--steps"),
    (["--warmup", "-1"], "--warmup"),
    (["--preset", "huge"], "huge"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "nope"], "--device"),
])
def test_bad_arguments_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_script_runs_end_to_end(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--device", "cpu", "--n-layer", "1",
           "--n-embd", "16", "--n-head", "2", "--batch-size", "2", "--seq-len", "16", "--steps", "2",
           "--warmup", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout
    for _, name, _ in RUNGS:
        assert name in table
    assert "HF GPT2LMHeadModel" in table and "ours / HF tokens/s" in table
    assert "FLOPs/token = 6N + 12*L*C*T" in table
    result = json.loads(out.read_text())
    rungs = {r["key"]: r for r in result["rungs"]}
    assert [r["key"] for r in result["rungs"]] == [key for key, _, _ in RUNGS]
    native_bf16 = cpu_has_native_bf16()
    assert rungs["tf32"]["status"] == "skipped"
    assert rungs["bf16"]["status"] == ("ran" if native_bf16 else "skipped")
    assert rungs["fusedloss"]["status"] == "ran"
    amp = "amp, " if native_bf16 else ""
    assert rungs["fusedloss"]["settings"] == amp + "sdpa, pad_vocab, fused, fused_loss"  # each rung keeps the ones before
    assert rungs["original"]["tokens_per_sec"] > 0 and rungs["original"]["speedup"] == 1.0
    # same weights, same batch: both models start from the same loss, so the race is fair
    cmp = result["hf_comparison"]
    assert cmp["settings"] == rungs["fusedloss"]["settings"]
    assert "whole logits" in cmp["note"] and "whole logits" in table
    assert cmp["ours"]["first_loss"] == pytest.approx(cmp["hf"]["first_loss"], abs=2e-2 if native_bf16 else 1e-4)
    assert cmp["ratio"] == pytest.approx(cmp["ours"]["tokens_per_sec"] / cmp["hf"]["tokens_per_sec"])
    # every rung starts from the same weights too (the padded vocab only adds rows)
    assert rungs["sdpa"]["first_loss"] == pytest.approx(rungs["original"]["first_loss"], abs=2e-2 if native_bf16 else 1e-4)


def test_script_without_the_ladder_compares_ours_and_hf_only(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--device", "cpu", "--n-layer", "1",
           "--n-embd", "16", "--n-head", "2", "--batch-size", "2", "--seq-len", "16", "--steps", "1",
           "--warmup", "1", "--no-ladder", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the ladder" not in proc.stdout and "fp32, explicit attention" not in proc.stdout
    result = json.loads(out.read_text())
    assert result["rungs"] == []
    cmp = result["hf_comparison"]
    assert cmp["settings"] == planned_settings("cpu").describe()
    assert cmp["ours"]["status"] == cmp["hf"]["status"] == "ran" and cmp["ratio"] > 0
