"""The CUDA paths, on a GPU: autocast (bf16 from Ampere on, fp16 with a grad scaler before it, both
forced on one GPU), TF32 switched on and put back, fused AdamW, torch.compile, the fused head + loss
in bf16, the KV cache, a checkpoint saved on CUDA and a bit-exact resume, and HF parity.

Skipped where there is no CUDA: scripts/gpu_check.sh runs this file on a GPU machine. Tiny models
throughout: seconds on a GPU, plus one torch.compile. TF32 is off in every test unless it turns it
on (fp32 matmuls exact to fp32), and put back afterwards."""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode, for the exact resume

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import gpt_helpers  # noqa: E402
from tests.test_training import tiny_run  # noqa: E402  (the same 2-layer, 16-wide run)
from gpt_helpers import (  # noqa: E402
    GPT, IGNORE_INDEX, DataLoaderLite, FastPath, GPTConfig, KVCache, TrainConfig, autocast_dtype, can_compile,
    configure_optimizer, forward_cached, fused_head_model_loss, generate, get_tf32, load_checkpoint,
    model_from_checkpoint, model_loss, port, set_tf32, to_hf, train, train_step)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one)")

DEVICE = "cuda"
TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32)
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them.\n")


@pytest.fixture(autouse=True)
def tf32_off():
    before = get_tf32()
    set_tf32(False)
    yield
    set_tf32(before)


@pytest.fixture
def deterministic():
    """CUDA kernels that give the same bits every run (SDPA's backward, for one, does not by default)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 12)  # ~600 GPT-2 tokens: train and val splits hold a few batches each
    return path


def tiny_gpt(config=TINY, seed=0):
    torch.manual_seed(seed)
    return GPT(config).to(DEVICE)


def fixed_batch(B=4, T=32, vocab_size=97, seed=0):
    ids = torch.randint(0, vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(seed))
    x, y = ids[:, :-1].to(DEVICE), ids[:, 1:].to(DEVICE)  # (B, T) each
    return x, y, SimpleNamespace(next_batch=lambda: (x, y))  # a loader that always returns this batch


def run(cfg, text_file, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction)
    return model, train(model, cfg, device=DEVICE, train_loader=loader, **kwargs)


def steps_on_cuda(cfg, loader, n, seed=0):
    """n train_steps of a fresh tiny GPT with cfg's switches applied by FastPath: (losses, model, FastPath)."""
    model = tiny_gpt(cfg.model, seed)
    fast = FastPath(model, cfg, DEVICE)
    try:
        optimizer = configure_optimizer(model, cfg, "cuda")
        losses = [train_step(fast.model, optimizer, loader, cfg, s, scaler=fast.scaler, **fast.step_args)[0]
                  for s in range(n)]
    finally:
        fast.close()
    return losses, model, fast


def small_cfg(**switches) -> TrainConfig:
    return TrainConfig(model=TINY, batch_size=4, seq_len=32, grad_accum_steps=1, max_lr=1e-3, warmup_steps=2,
                       max_steps=10, **switches)


# ----------------------------------------------------------------------------- autocast, TF32, fused AdamW


def test_autocast_is_bf16_from_ampere_on_and_fp16_with_a_scaler_before():
    major, _ = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert autocast_dtype(DEVICE) == expected
    fast = FastPath(tiny_gpt(), small_cfg(autocast=True), DEVICE)
    fast.close()
    assert fast.amp_dtype == expected and (fast.scaler is not None) == (expected == torch.float16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_trains_in_its_dtype_as_fp32_does(monkeypatch, dtype):
    # forced through gpt_helpers.autocast_dtype, so that one GPU runs both: bf16 (Ampere and newer)
    # and fp16 with a GradScaler (older GPUs), whatever this GPU is
    monkeypatch.setattr(gpt_helpers, "autocast_dtype", lambda device: dtype)
    x, y, loader = fixed_batch()
    fp32, _, _ = steps_on_cuda(small_cfg(), loader, 6)
    amp, model, fast = steps_on_cuda(small_cfg(autocast=True), loader, 6)
    assert fast.amp_dtype == dtype and (fast.scaler is not None) == (dtype == torch.float16)
    with fast.autocast():
        logits, loss = model(x, y)
    assert logits.dtype == dtype and loss.dtype == torch.float32  # the loss's softmax runs in fp32
    if fast.scaler is not None:  # fp16: the loss was scaled and the gradients unscaled before clipping
        assert fast.scaler.get_scale() >= 1.0 and all(p.grad is not None for p in model.parameters())
    # the same weights and batch: the low-precision run follows fp32 within its rounding, and learns
    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    assert amp == pytest.approx(fp32, abs=tol)
    assert amp[-1] < amp[0] - 0.1


def test_tf32_is_on_while_training_and_put_back_after(text_file):
    seen = []
    cfg = tiny_run(tf32=True, max_steps=3)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction)
    train(GPT(cfg.model), cfg, device=DEVICE, train_loader=loader, callbacks=[lambda rec: seen.append(get_tf32())])
    assert seen == [(True, True)] * 3
    assert get_tf32() == (False, False)  # train() put back what it found
    set_tf32((True, False))  # a mixed state: FastPath.close restores exactly it
    fast = FastPath(tiny_gpt(), small_cfg(tf32=True), DEVICE)
    assert fast.tf32 and get_tf32() == (True, True)
    fast.close()
    assert get_tf32() == (True, False)
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 tensor cores exist: a fp32 matmul really is coarser
        a, b = torch.randn(2, 512, 512, device=DEVICE, dtype=torch.float64).unbind()
        errors = []
        for on in (False, True):
            set_tf32(on)
            errors.append(((a.float() @ b.float()).double() - a @ b).abs().max().item())
        assert errors[1] > 10 * errors[0]


def test_fused_adamw_on_cuda_matches_the_plain_adamw():
    x, y, _ = fixed_batch()
    models = [tiny_gpt(), tiny_gpt()]  # the same seed: the same weights
    optimizers = [configure_optimizer(m, small_cfg(fused_adamw=f), "cuda") for m, f in zip(models, (False, True))]
    assert optimizers[1].defaults["fused"] is True and not optimizers[0].defaults.get("fused")
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x, y)[1].backward()
            optimizer.step()
    for (name, plain), fused in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- torch.compile, the fused head


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing Inductor
def test_compiled_gpt_trains_as_the_eager_one():
    if not can_compile(DEVICE):
        pytest.skip("torch.compile on CUDA needs Triton, not installed here")
    _, _, loader = fixed_batch()
    eager, eager_model, _ = steps_on_cuda(small_cfg(), loader, 2)
    try:
        compiled, compiled_model, fast = steps_on_cuda(small_cfg(compile=True), loader, 2)
    finally:
        torch.compiler.reset()
    assert fast.compiled and fast.loss_fn is model_loss
    # step 0's loss is the compiled forward; step 1's follows the compiled backward and the update
    assert compiled == pytest.approx(eager, abs=1e-4)
    for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_head_loss_matches_the_plain_loss_on_cuda(monkeypatch, dtype):
    # 4 MiB of fp32 logits is 20 rows of GPT-2's vocabulary: the 128 rows go through in 7 chunks
    monkeypatch.setattr(gpt_helpers, "FUSED_LOSS_CHUNK_MB", 4)
    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    x, y, _ = fixed_batch(vocab_size=config.vocab_size)
    y[:, -1] = IGNORE_INDEX  # targets the loss skips
    results = {}
    for name, loss_fn in (("plain", model_loss), ("fused", fused_head_model_loss)):
        model = tiny_gpt(config)
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model, x, y)
        loss.backward()
        results[name] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    (loss, grads), (ref, ref_grads) = results["fused"], results["plain"]
    assert loss.dtype == ref.dtype == torch.float32
    if dtype is None:  # fp32: the same sums in another order
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    else:  # bf16 matmuls, rounded in different places: within bf16's precision (eps 2^-8)
        torch.testing.assert_close(loss, ref, atol=5e-3, rtol=0)
        for name, g in grads.items():
            assert (g - ref_grads[name]).norm() <= 2e-2 * ref_grads[name].norm(), name


# ----------------------------------------------------------------------------- the KV cache


@torch.no_grad()
def test_kv_cache_on_cuda_gives_the_logits_and_tokens_of_the_whole_forward():
    model = tiny_gpt().eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    whole, _ = model(idx)
    cache = KVCache(TINY.n_layer)
    # a prefill of 8, then 4 tokens at once (the masked path), then one at a time
    parts = [forward_cached(model, idx[:, :8], cache), forward_cached(model, idx[:, 8:12], cache)]
    parts += [forward_cached(model, idx[:, t:t + 1], cache) for t in range(12, 20)]
    assert len(cache) == 20 and cache.k[0].is_cuda
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=0)
    prompt = idx[:, :4]
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 20}):
        # 4 + 40 tokens passes block_size 32: the cached path then starts its cache over
        cached, plain = (generate(model, prompt, 40, use_cache=use_cache,
                                  generator=torch.Generator(device=DEVICE).manual_seed(0), **kwargs)
                         for use_cache in (True, False))
        assert cached.is_cuda and cached.shape == (2, 44)
        assert torch.equal(cached, plain), kwargs


# ----------------------------------------------------------------------------- saving and resuming


@pytest.mark.parametrize("amp", [None, torch.float16], ids=["fp32", "fp16-scaler"])
def test_a_run_saved_on_cuda_resumes_bit_exactly(text_file, tmp_path, monkeypatch, deterministic, amp):
    # fp16 (forced) puts a GradScaler in the checkpoint too
    monkeypatch.setattr(gpt_helpers, "autocast_dtype", lambda device: amp)
    cfg = tiny_run(autocast=amp is not None)
    model_a, whole = run(cfg, text_file, out_dir=tmp_path / "a")
    _, first = run(cfg, text_file, out_dir=tmp_path / "b", stop_after=3)
    state = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert state["step"] == 3 and (state["scaler"] is not None) == (amp is not None)
    assert set(state["rng"]) >= {"torch", "python", "cuda"}
    # a fresh process would build a fresh model: its other seed must not matter
    model_b, rest = run(cfg, text_file, seed=123, out_dir=tmp_path / "b", resume=True)
    assert [r["step"] for r in rest] == [4, 5, 6, 7]
    for key in ("loss", "lr", "grad_norm", "val_loss"):
        assert [r[key] for r in rest] == [r[key] for r in whole[4:]], key  # bitwise
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert a.is_cuda and torch.equal(a, b), name
    # written from CUDA tensors, read back on the CPU: the same values
    saved = model_from_checkpoint(tmp_path / "a" / "ckpt.pt")
    for (name, a), b in zip(model_a.state_dict().items(), saved.state_dict().values()):
        assert b.device.type == "cpu" and torch.equal(a.cpu(), b), name


# ----------------------------------------------------------------------------- HF parity


@torch.no_grad()
def test_to_hf_on_cuda_gives_our_logits():
    pytest.importorskip("transformers")
    model = tiny_gpt().eval()
    hf = to_hf(model).to(DEVICE)
    x, _, _ = fixed_batch()
    ours = model(x)[0]
    torch.testing.assert_close(hf(x).logits, ours, atol=1e-5, rtol=0)
    back = port(hf).to(DEVICE)
    assert torch.equal(back(x)[0], ours)  # the same weights, the same kernels


@torch.no_grad()
def test_port_of_an_hf_model_built_on_cuda_gives_its_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=97)
    hf = transformers.GPT2LMHeadModel(config).to(DEVICE).eval()
    ours = port(hf).to(DEVICE)
    x, _, _ = fixed_batch(T=128)
    torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-5, rtol=0)
