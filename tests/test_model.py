"""The model section of gpt_helpers: config, attention, GPT's forward pass, init, parameter counts.

Parity with HF's GPT-2 lives in test_pretrained.py; the KV cache and generation in their own tests.
"""

import inspect
import math

import pytest
import torch
from torch.nn import functional as F

import gpt_helpers
from gpt_helpers import (
    GPT,
    IGNORE_INDEX,
    CausalSelfAttention,
    FusedHeadLoss,
    GPTConfig,
    fused_head_loss,
    fused_head_model_loss,
)

# ----------------------------------------------------------------------------- config


def test_default_config_is_gpt2_small():
    c = GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd) == (1024, 50257, 12, 12, 768)


@pytest.mark.parametrize("field", ["block_size", "vocab_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("value", [0, -4, 2.0, "8", True, None])
def test_config_rejects_non_positive_int(field, value):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field} must be a positive integer"):
        GPTConfig(**{field: value})


@pytest.mark.parametrize("n_embd, n_head", [(50, 4), (768, 7), (4, 8)])
def test_config_rejects_head_size_that_does_not_divide(n_embd, n_head):
    with pytest.raises(ValueError, match=rf"n_embd \({n_embd}\).*n_head \({n_head}\)"):
        GPTConfig(n_embd=n_embd, n_head=n_head)


def test_gpt_rejects_something_that_is_not_a_config():
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(dict(n_layer=2))


# ----------------------------------------------------------------------------- attention


def masked_softmax_attention(attn: CausalSelfAttention, x):
    """Attention written out: softmax(q k^T / sqrt(hs) + causal mask) v, per head, then c_proj."""
    B, T, C = x.shape
    nh = attn.n_head
    hs = C // nh
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(C, dim=2)  # 3 x (B, T, C)
    heads = []
    for h in range(nh):
        sl = slice(h * hs, (h + 1) * hs)
        scores = q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(hs)  # (B, T, T)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])  # (B, T, hs)
    y = torch.cat(heads, dim=-1)  # (B, T, C)
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


def sdpa_attention(attn: CausalSelfAttention, x):
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.fixture
def attention():
    torch.manual_seed(0)
    attn = CausalSelfAttention(GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=3, n_embd=24))
    with torch.no_grad():  # larger than GPT's init so that the scores are far from uniform
        for p in attn.parameters():
            p.normal_(0.0, 0.3)
    # float64: the outputs reach ~6, where float32 rounding alone is ~7e-7; a real bug is >> 1e-6
    return attn.double()


@pytest.mark.parametrize("reference", [masked_softmax_attention, sdpa_attention])
def test_attention_matches_reference(attention, reference):
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    with torch.no_grad():
        ours = attention(x)
        ref = reference(attention, x)
    assert ours.shape == (2, 9, 24)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_the_mask_matters(attention):
    # without the mask the outputs change (except the last token's, which sees everything anyway):
    # so the comparisons above would catch an attention that forgot the mask
    x = torch.randn(1, 6, 24, dtype=torch.float64)
    B, T, C = x.shape
    with torch.no_grad():
        q, k, v = (t.view(B, T, 3, 8).transpose(1, 2) for t in attention.c_attn(x).split(C, dim=2))
        unmasked = attention.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))
        ours = attention(x)
    assert (ours[:, :-1] - unmasked[:, :-1]).abs().max() > 1e-3
    torch.testing.assert_close(ours[:, -1], unmasked[:, -1], atol=1e-6, rtol=0)


def test_attention_is_causal(attention):
    x = torch.randn(1, 10, 24, dtype=torch.float64)
    for t in range(10):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn(1, 10 - t - 1, 24, dtype=torch.float64)
        with torch.no_grad():
            a, b = attention(x), attention(changed)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), f"position <= {t} saw a later token"
        if t < 9:
            assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_gpt_logits_are_causal(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % tiny_config.vocab_size
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- forward


def test_forward_shapes_and_loss_is_cross_entropy(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    B, T, V = 3, 10, tiny_config.vocab_size
    idx = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    logits, loss = model(idx, targets)
    assert logits.shape == (B, T, V)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1)))
    assert model(idx)[1] is None
    # untrained, the logits are nearly uniform: the loss is about ln(V)
    assert abs(loss.item() - math.log(V)) < 0.1


def test_forward_accepts_int32_ids(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 5))
    torch.testing.assert_close(model(idx.int())[0], model(idx)[0])


def test_forward_at_block_size_works_and_one_more_raises(tiny_config):
    model = GPT(tiny_config)
    T = tiny_config.block_size
    logits, _ = model(torch.zeros(1, T, dtype=torch.long))
    assert logits.shape == (1, T, tiny_config.vocab_size)
    with pytest.raises(ValueError, match=rf"sequence length {T + 1}.*block_size {T}"):
        model(torch.zeros(1, T + 1, dtype=torch.long))


@pytest.mark.parametrize(
    "idx",
    [
        torch.zeros(8, dtype=torch.long),  # (T,): forgot the batch dimension
        torch.zeros(1, 2, 8, dtype=torch.long),  # one dimension too many
        torch.zeros(2, 8),  # float ids
        torch.zeros(2, 8, dtype=torch.bool),
    ],
    ids=["1d", "3d", "float", "bool"],
)
def test_forward_rejects_bad_idx(tiny_config, idx):
    with pytest.raises(ValueError, match=r"idx must be a \(B, T\) tensor of integer token ids"):
        GPT(tiny_config)(idx)


@pytest.mark.parametrize("shape", [(14,), (2, 8), (1, 7)])
def test_forward_rejects_targets_of_another_shape(tiny_config, shape):
    idx = torch.zeros(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=r"targets must have the shape of idx \(2, 7\)"):
        GPT(tiny_config)(idx, torch.zeros(shape, dtype=torch.long))


def test_gradients_reach_every_parameter(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_hidden_states_feed_the_head_and_forward_has_no_cache_or_logits_switch(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 9))
    h = model.hidden_states(idx)
    assert h.shape == (2, 9, tiny_config.n_embd)
    assert torch.equal(model.lm_head(h), model(idx)[0])  # forward = lm_head(hidden_states)
    # hidden_states is the final LayerNorm's output: zeroing ln_f's gain and setting its bias shows through
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(0.5)
    assert torch.equal(model.hidden_states(idx), torch.full_like(h, 0.5))
    assert list(inspect.signature(GPT.forward).parameters) == ["self", "idx", "targets"]


def test_hidden_states_check_their_input_as_forward_does(tiny_config):
    model = GPT(tiny_config)
    T = tiny_config.block_size
    with pytest.raises(ValueError, match=rf"sequence length {T + 1} is longer than block_size {T}"):
        model.hidden_states(torch.zeros(1, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx must be a \(B, T\) tensor of integer token ids"):
        model.hidden_states(torch.zeros(8, dtype=torch.long))


# ----------------------------------------------------------------------------- the fused head + loss


def _loss_and_grads(model, idx, targets, fused):
    """The loss and every parameter's gradient: the plain path (model(idx, targets), whose logits
    are returned) or the fused head + loss (fused_head_model_loss, no logits: None)."""
    model.zero_grad()
    if fused:
        logits, loss = None, fused_head_model_loss(model, idx, targets)
    else:
        logits, loss = model(idx, targets)
    loss.backward()
    return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


# 1e-9 MiB: one row per chunk; 0.003 MiB: 8 rows of V=97, which does not divide B*T=30
@pytest.mark.parametrize("chunk_mb", [1e-9, 0.003, 64.0])
def test_fused_head_loss_equals_the_plain_loss_and_its_gradients(tiny_config, chunk_mb, monkeypatch):
    monkeypatch.setattr(gpt_helpers, "FUSED_LOSS_CHUNK_MB", chunk_mb)  # the chunking fused_head_model_loss uses
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (3, 10))
    targets = torch.randint(0, tiny_config.vocab_size, (3, 10))
    _, loss, grads = _loss_and_grads(model, idx, targets, fused=False)
    head_calls = []  # the fused path must never run lm_head: its (B, T, V) logits are never built whole
    model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    _, fused, fused_grads = _loss_and_grads(model, idx, targets, fused=True)
    assert not head_calls and fused.shape == ()
    torch.testing.assert_close(fused, loss, atol=1e-5, rtol=0)
    for name, g in grads.items():  # the tied wte/lm_head gets both of its gradients
        torch.testing.assert_close(fused_grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_fused_head_loss_skips_ignored_targets_as_cross_entropy_does(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    targets = torch.randint(0, tiny_config.vocab_size, (2, 8))
    targets[0, :5] = IGNORE_INDEX  # e.g. a prompt that should not be learned
    _, loss, grads = _loss_and_grads(model, idx, targets, fused=False)
    _, fused, fused_grads = _loss_and_grads(model, idx, targets, fused=True)
    torch.testing.assert_close(fused, loss, atol=1e-5, rtol=0)
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("chunk_mb", [0.003, 64.0])  # several chunks, one chunk
def test_fused_head_loss_under_bf16_autocast_in_chunks(tiny_config, chunk_mb, monkeypatch):
    monkeypatch.setattr(gpt_helpers, "FUSED_LOSS_CHUNK_MB", chunk_mb)
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (3, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls, fp32 softmax, as autocast runs the plain path
        _, loss, grads = _loss_and_grads(model, idx, idx, fused=False)
        _, fused, fused_grads = _loss_and_grads(model, idx, idx, fused=True)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, loss, atol=2e-2, rtol=0)
    for name, g in grads.items():
        assert fused_grads[name].dtype == torch.float32
        torch.testing.assert_close(fused_grads[name], g, atol=2e-2 * g.abs().max().item(), rtol=0, msg=name)


def test_fused_head_loss_of_a_bf16_model_without_autocast(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).to(torch.bfloat16)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    _, loss, grads = _loss_and_grads(model, idx, idx, fused=False)
    _, fused, fused_grads = _loss_and_grads(model, idx, idx, fused=True)
    torch.testing.assert_close(fused.float(), loss.float(), atol=5e-2, rtol=0)
    for name, g in grads.items():
        assert fused_grads[name].dtype == torch.bfloat16, name
        torch.testing.assert_close(fused_grads[name].float(), g.float(), atol=5e-2 * g.abs().max().item(), rtol=0,
                                   msg=name)


@pytest.mark.parametrize("frozen", ["h", "weight"])
def test_fused_head_loss_with_one_input_frozen(frozen):
    torch.manual_seed(0)
    h, w = torch.randn(6, 8, requires_grad=frozen != "h"), torch.randn(11, 8, requires_grad=frozen != "weight")
    targets = torch.randint(0, 11, (6,))
    F.cross_entropy(h @ w.T, targets).backward()
    expected = (h.grad, w.grad)
    h.grad = w.grad = None
    fused_head_loss(h, w, targets).backward()
    for got, want in zip((h.grad, w.grad), expected):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_fused_head_loss_of_an_empty_batch_and_on_a_device_autocast_does_not_know():
    h, w = torch.randn(0, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    loss = fused_head_loss(h, w, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.isnan() and (w.grad == 0).all()  # as F.cross_entropy: nan loss, nothing to learn
    # autocast has no "meta" (nor "mps" before torch 2.5): the loss must not ask it
    h, w = torch.randn(6, 8, device="meta", requires_grad=True), torch.randn(11, 8, device="meta", requires_grad=True)
    loss = fused_head_loss(h, w, torch.zeros(6, dtype=torch.long, device="meta"))
    loss.backward()
    assert loss.device.type == "meta" and w.grad.shape == w.shape


def test_fused_head_loss_computes_no_gradients_under_no_grad(tiny_config, monkeypatch):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    scatters = []  # the fused loss calls scatter_add_ only to build gradients
    scatter_add_ = torch.Tensor.scatter_add_
    monkeypatch.setattr(torch.Tensor, "scatter_add_", lambda *a: scatters.append(1) or scatter_add_(*a))
    with torch.no_grad():  # evaluation: the loss only, no gradients computed
        torch.testing.assert_close(fused_head_model_loss(model, idx, idx), model(idx, idx)[1], atol=1e-5, rtol=0)
    assert not scatters
    fused_head_model_loss(model, idx, idx).backward()
    assert scatters


def test_fused_head_loss_when_every_target_is_ignored(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    targets = torch.full_like(idx, IGNORE_INDEX)
    _, loss, grads = _loss_and_grads(model, idx, targets, fused=False)
    _, fused, fused_grads = _loss_and_grads(model, idx, targets, fused=True)
    assert loss.isnan() and fused.isnan()  # 0 / 0, as F.cross_entropy says
    for name, g in grads.items():  # nothing to learn: zero gradients, not nan
        torch.testing.assert_close(fused_grads[name], g, atol=0, rtol=0, msg=name)


def test_fused_head_loss_in_float64_matches_to_float64_rounding(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).double()
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    logits = model(idx)[0]  # (B, T, V) float64 (forward's plain loss would round it to float32)
    loss = F.cross_entropy(logits.view(-1, tiny_config.vocab_size), idx.view(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    _, fused, fused_grads = _loss_and_grads(model, idx, idx, fused=True)
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused, loss, atol=1e-12, rtol=0)
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("bad", [97, 1000, -1])
def test_forward_rejects_token_ids_outside_the_vocabulary(tiny_config, bad):
    idx = torch.zeros(2, 5, dtype=torch.long)
    idx[1, 2] = bad
    with pytest.raises(ValueError, match=rf"idx holds token id {bad}, outside this model's vocabulary 0..96"):
        GPT(tiny_config)(idx)


def test_fused_head_loss_gives_the_same_gradients_on_a_second_backward(tiny_config):
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    loss = fused_head_model_loss(model, idx, idx)
    loss.backward(retain_graph=True)
    first = model.lm_head.weight.grad.clone()
    loss.backward()  # accumulates: twice the first gradient, not a rescaled one
    torch.testing.assert_close(model.lm_head.weight.grad, 2 * first, atol=1e-7, rtol=1e-6)


def test_fused_head_loss_rejects_bad_arguments(tiny_config):
    h, w = torch.randn(2, 8, tiny_config.n_embd), torch.randn(tiny_config.vocab_size, tiny_config.n_embd)
    with pytest.raises(ValueError, match=r"targets must have the shape of h without its last dim \(2, 8\)"):
        fused_head_loss(h, w, torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_mb must be positive"):
        fused_head_loss(h, w, torch.zeros(2, 8, dtype=torch.long), chunk_mb=0)
    for bad in (tiny_config.vocab_size, -1):  # past the vocabulary, or negative but not IGNORE_INDEX
        targets = torch.zeros(2, 8, dtype=torch.long)
        targets[1, 3] = bad
        with pytest.raises(RuntimeError, match=rf"index {bad} is out of bounds"):  # never a silent wrong loss
            fused_head_loss(h, w, targets)


def test_fused_head_model_loss_rejects_targets_of_another_shape(tiny_config):
    idx = torch.zeros(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=r"targets must have the shape of h without its last dim \(2, 7\)"):
        fused_head_model_loss(GPT(tiny_config), idx, torch.zeros(2, 8, dtype=torch.long))


def test_fused_head_loss_function_applied_directly_in_chunks_of_three_rows():
    # FusedHeadLoss is the autograd Function under fused_head_loss: (h (N, C), weight (V, C), targets (N,),
    # rows per chunk, matmul dtype, grad mode); 7 rows in chunks of 3 leave a short last chunk
    torch.manual_seed(0)
    h, w = torch.randn(7, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    loss = F.cross_entropy(h @ w.T, targets)
    loss.backward()
    want = loss.detach(), h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    fused = FusedHeadLoss.apply(h, w, targets, 3, torch.float32, True)
    assert type(fused.grad_fn).__name__ == "FusedHeadLossBackward"
    fused.backward()
    for got, expected in zip((fused.detach(), h.grad, w.grad), want):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # and it is what fused_head_loss runs
    assert type(fused_head_loss(h, w, targets).grad_fn) is type(fused.grad_fn)


# ----------------------------------------------------------------------------- weights


def test_embedding_and_head_share_one_matrix(tiny_config):
    model = GPT(tiny_config)
    assert model.transformer.wte.weight is model.lm_head.weight
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert ("lm_head.weight" in names) + ("transformer.wte.weight" in names) == 1  # listed once
    with torch.no_grad():  # a change through one name shows through the other
        model.lm_head.weight[3, 2] = 7.0
    assert model.transformer.wte(torch.tensor([3]))[0, 2].item() == 7.0


def test_parameter_names_follow_hf_gpt2(tiny_config):
    keys = set(GPT(tiny_config).state_dict())
    for k in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
              "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias",
              "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
              "transformer.h.0.ln_1.weight", "transformer.h.0.ln_2.bias", "lm_head.weight"]:
        assert k in keys


@pytest.mark.parametrize("vocab_size, expected", [(50257, 124_439_808), (50304, 124_475_904)])
def test_gpt2_small_parameter_count(vocab_size, expected):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = GPT(GPTConfig(vocab_size=vocab_size))
    assert model.num_parameters() == expected
    assert sum(p.numel() for p in model.parameters()) == expected
    # without the embeddings: the 85M "non-embedding" figure
    assert model.num_parameters(exclude_embeddings=True) == expected - vocab_size * 768 - 1024 * 768


def test_parameter_count_formula(tiny_config):
    c = tiny_config
    C, L, V = c.n_embd, c.n_layer, c.vocab_size
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    expected = V * C + c.block_size * C + L * per_block + 2 * C
    assert GPT(c).num_parameters() == expected


def test_init_statistics():
    torch.manual_seed(0)
    config = GPTConfig(block_size=256, vocab_size=2048, n_layer=4, n_head=4, n_embd=256)
    model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            expected = residual_std
        elif p.dim() == 2:
            expected = 0.02
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), f"{name} should start at {expected}"
            continue
        else:
            assert torch.all(p == 0), f"bias {name} should start at zero"
            continue
        std = p.std().item()
        assert abs(std - expected) < 0.1 * expected, f"{name}: std {std:.5f}, expected {expected:.5f}"
        assert abs(p.mean().item()) < 0.1 * expected, f"{name}: mean {p.mean().item():.5f}, expected 0"
