"""Generation: the KV cache, sampling filters, seeding, padded vocabularies, bad arguments."""

import pytest
import torch

import gpt_helpers
from gpt_helpers import (
    GPT,
    GPT2_VOCAB_SIZE,
    GPTConfig,
    KVCache,
    attention_cached,
    forward_cached,
    generate_text,
    hidden_states_cached,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    m = GPT(tiny_config).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init: argmax ties would hide nothing
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return m


def record_step_logits(monkeypatch):
    """Make generate() hand every step's (B, V) logits to a list as well as to the sampler."""
    seen = []
    real = gpt_helpers.sample_next_token

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(gpt_helpers, "sample_next_token", spy)
    return seen


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("prompt_len", [1, 7, 32])  # 32 = block_size: the first new token already slides
def test_cache_gives_the_same_greedy_tokens_and_logits(model, monkeypatch, batch, prompt_len):
    block = model.config.block_size
    new = block + 8 - min(prompt_len, block // 2)  # every run goes past block_size
    idx = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    seen = record_step_logits(monkeypatch)
    cached = model.generate(idx, new, temperature=0.0, use_cache=True)
    logits_cached = seen[:]
    seen.clear()
    plain = model.generate(idx, new, temperature=0.0, use_cache=False)
    assert cached.shape == (batch, prompt_len + new)
    assert cached.size(1) > block
    assert torch.equal(cached, plain)
    assert len(logits_cached) == len(seen) == new
    for step, (a, b) in enumerate(zip(logits_cached, seen)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"step {step}: max diff {(a - b).abs().max():.2e}"


def test_cache_fed_in_chunks_matches_one_full_forward(model):
    # prefill, then chunks of 3 (the masked branch: several new queries over cached keys), then 1 at a time
    idx = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    pieces = [idx[:, :5], idx[:, 5:8], idx[:, 8:11], *idx[:, 11:].split(1, dim=1)]
    outs = [forward_cached(model, piece, cache) for piece in pieces]
    assert len(cache) == 20
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefill", [1, 6, 31])
def test_prefill_then_one_token_at_a_time_matches_the_full_forward(model, prefill):
    idx = torch.randint(0, model.config.vocab_size, (3, 32), generator=torch.Generator().manual_seed(prefill))
    with torch.no_grad():
        full, _ = model(idx)  # (3, 32, V)
    cache = KVCache(model.config.n_layer)
    first = forward_cached(model, idx[:, :prefill], cache)
    assert first.shape == (3, prefill, model.config.vocab_size) and len(cache) == prefill
    torch.testing.assert_close(first, full[:, :prefill], atol=1e-5, rtol=0)
    for t in range(prefill, 32):
        step = forward_cached(model, idx[:, t : t + 1], cache)  # (3, 1, V): position t, after t cached tokens
        assert len(cache) == t + 1
        torch.testing.assert_close(step, full[:, t : t + 1], atol=1e-5, rtol=0, msg=f"position {t}")


@pytest.mark.parametrize("new", [2, 5])
def test_several_new_tokens_after_a_cache_match_the_full_forward(model, new):
    # T > 1 after a cache: query i sits at position past + i and must not see the tokens after it
    idx = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(new))
    with torch.no_grad():
        full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    forward_cached(model, idx[:, :7], cache)
    out = forward_cached(model, idx[:, 7 : 7 + new], cache)
    assert len(cache) == 7 + new
    torch.testing.assert_close(out, full[:, 7 : 7 + new], atol=1e-5, rtol=0)


def test_kv_cache_keeps_each_layers_keys_and_values(model):
    n_layer, n_head, hs = model.config.n_layer, model.config.n_head, model.config.n_embd // model.config.n_head
    cache = KVCache(n_layer)
    assert len(cache) == 0 and cache.k == [None] * n_layer and cache.v == [None] * n_layer
    k, v = torch.randn(2, n_head, 3, hs), torch.randn(2, n_head, 3, hs)
    assert all(torch.equal(a, b) for a, b in zip(cache.append(0, k, v), (k, v)))
    assert len(cache) == 3
    k2, v2 = torch.randn(2, n_head, 1, hs), torch.randn(2, n_head, 1, hs)
    k_all, v_all = cache.append(0, k2, v2)
    assert torch.equal(k_all, torch.cat([k, k2], dim=2)) and torch.equal(v_all, torch.cat([v, v2], dim=2))
    assert len(cache) == 4 and cache.k[0] is k_all and cache.v[0] is v_all and cache.k[1] is None
    # forward_cached fills every layer with (B, nh, T, hs)
    cache = KVCache(n_layer)
    forward_cached(model, torch.zeros(2, 5, dtype=torch.long), cache)
    assert [tuple(t.shape) for t in cache.k + cache.v] == [(2, n_head, 5, hs)] * (2 * n_layer)


def test_cached_pieces_agree_with_the_model(model):
    # attention_cached on an empty cache is the block's attention; hidden_states_cached is hidden_states
    x = torch.randn(2, 6, model.config.n_embd, generator=torch.Generator().manual_seed(3))
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        torch.testing.assert_close(attention_cached(attn, x, KVCache(1), 0), attn(x), atol=1e-5, rtol=0)
        idx = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(hidden_states_cached(model, idx, KVCache(model.config.n_layer)),
                                   model.hidden_states(idx), atol=1e-5, rtol=0)


def test_cache_refuses_to_grow_past_block_size(model):
    block = model.config.block_size
    cache = KVCache(model.config.n_layer)
    forward_cached(model, torch.zeros(1, block, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=rf"sequence length {block + 1} is longer than block_size {block}: "
                                         "start a new cache"):
        forward_cached(model, torch.zeros(1, 1, dtype=torch.long), cache)
    assert len(cache) == block  # the refused token was not added
    fresh = KVCache(model.config.n_layer)
    forward_cached(model, torch.zeros(1, 10, dtype=torch.long), fresh)
    with pytest.raises(ValueError, match=rf"sequence length {block + 3} is longer than block_size {block}"):
        forward_cached(model, torch.zeros(1, block - 7, dtype=torch.long), fresh)


# ----------------------------------------------------------------------------- sampling

LOGITS = torch.tensor([2.0, 1.5, 1.4, 0.3, 0.2, 0.1, -0.5, -1.0, -3.0, 0.9])  # fixed, no ties
DRAWS = 2000


def draw(**kwargs):
    gen = torch.Generator().manual_seed(0)
    return sample_next_token(LOGITS.expand(DRAWS, -1), generator=gen, **kwargs).flatten()  # (DRAWS,)


def nucleus(logits, p):
    """The smallest set of top tokens whose probability adds up to at least p."""
    probs = torch.softmax(logits, -1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep, mass = set(), 0.0
    for i in order:
        keep.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return keep


INF = float("-inf")


def test_top_k_filter_keeps_exactly_the_k_largest_of_each_row():
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0, 1.0],
                           [4.0, -2.0, 0.0, 1.0, 3.5]])
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([[INF, 3.0, INF, 2.0, INF],
                                                              [4.0, INF, INF, INF, 3.5]]))
    assert torch.equal(top_k_filter(logits, 1), torch.tensor([[INF, 3.0, INF, INF, INF],
                                                              [4.0, INF, INF, INF, INF]]))
    assert torch.equal(top_k_filter(logits, 5), logits)
    assert torch.equal(top_k_filter(logits, 50), logits)  # k past the vocabulary keeps everything


def test_top_p_filter_keeps_exactly_the_nucleus_of_each_row():
    # probabilities 0.5, 0.25, 0.125, 0.075, 0.05 (tokens 2, 0, 4, 3, 1): cumulative 0.5, 0.75, 0.875, 0.95, 1
    logits = torch.log(torch.tensor([[0.25, 0.05, 0.5, 0.075, 0.125]]))
    keep = lambda *ids: torch.tensor([[logits[0, i].item() if i in ids else INF for i in range(5)]])  # noqa: E731
    assert torch.equal(top_p_filter(logits, 0.3), keep(2))  # 0.5 alone reaches 0.3
    assert torch.equal(top_p_filter(logits, 0.49), keep(2))
    assert torch.equal(top_p_filter(logits, 0.51), keep(2, 0))  # 0.5 is short: add the next, 0.75
    assert torch.equal(top_p_filter(logits, 0.74), keep(2, 0))
    assert torch.equal(top_p_filter(logits, 0.8), keep(2, 0, 4))  # 0.875
    assert torch.equal(top_p_filter(logits, 0.9), keep(2, 0, 4, 3))  # 0.95: the least likely token goes
    assert torch.equal(top_p_filter(logits, 0.97), logits)
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    # the most likely token always stays, however small p; each row has its own nucleus
    rows = torch.cat([logits, torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0]])])
    out = top_p_filter(rows, 0.01)
    assert torch.equal(out.isfinite(), torch.tensor([[False, False, True, False, False],
                                                     [False, False, False, True, False]]))
    assert torch.equal(out[1, 3], rows[1, 3])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_samples_only_the_k_most_likely_tokens(k):
    allowed = set(torch.topk(LOGITS, k).indices.tolist())
    assert set(draw(top_k=k).tolist()) == allowed  # nothing outside, and every allowed token shows up


@pytest.mark.parametrize("p", [0.3, 0.6, 0.9])
def test_top_p_samples_only_the_nucleus(p):
    allowed = nucleus(LOGITS, p)
    assert 1 <= len(allowed) < len(LOGITS)
    assert set(draw(top_p=p).tolist()) == allowed


def test_top_p_after_temperature_and_top_k():
    # temperature reshapes the distribution before the nucleus is taken, top-k trims it first
    t, k, p = 0.7, 4, 0.8
    top = torch.topk(LOGITS / t, k)
    allowed = {top.indices[i].item() for i in nucleus(top.values, p)}
    assert set(draw(temperature=t, top_k=k, top_p=p).tolist()) == allowed


def test_sampling_follows_the_softmax_at_the_given_temperature():
    t = 1.5
    counts = torch.bincount(draw(temperature=t), minlength=len(LOGITS)).double() / DRAWS
    assert torch.allclose(counts, torch.softmax(LOGITS.double() / t, -1), atol=0.035)


def test_a_vanishing_temperature_samples_greedily_instead_of_overflowing():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0]])
    for t in (1e-6, 1e-40):  # logits / 1e-40 would be inf, and the softmax NaN
        assert sample_next_token(logits, temperature=t).item() == 0


def test_temperature_zero_is_argmax_even_with_filters():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    out = sample_next_token(logits, temperature=0.0, top_k=5, top_p=0.5)
    assert out.shape == (4, 1)
    assert torch.equal(out[:, 0], logits.argmax(-1))


def test_top_p_one_and_large_top_k_leave_the_distribution_alone():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    logits = LOGITS.expand(200, -1)
    plain = sample_next_token(logits, generator=gen())
    assert torch.equal(sample_next_token(logits, top_k=1000, top_p=1.0, generator=gen()), plain)


# ----------------------------------------------------------------------------- seeding


def test_a_seeded_generator_repeats_and_leaves_the_global_rng_alone(model):
    idx = torch.zeros(3, 2, dtype=torch.long)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from the global generator
    b = model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    c = model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_without_a_generator_sampling_uses_the_global_rng(model):
    idx = torch.zeros(2, 2, dtype=torch.long)
    torch.manual_seed(9)
    a = model.generate(idx, 15)
    torch.manual_seed(9)
    assert torch.equal(model.generate(idx, 15), a)


def test_cache_does_not_change_sampled_tokens(model):
    idx = torch.zeros(2, 3, dtype=torch.long)
    kw = dict(temperature=0.9, top_p=0.9, top_k=20)
    a = model.generate(idx, 40, use_cache=True, generator=torch.Generator().manual_seed(4), **kw)
    b = model.generate(idx, 40, use_cache=False, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- padded vocabulary


def test_padded_vocab_ids_are_never_generated():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # make the padding rows win: every hidden state is `v`, padded rows are 10 v
        v = torch.randn(16)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        model.lm_head.weight[GPT2_VOCAB_SIZE:] = 10 * v
    idx = torch.zeros(4, 2, dtype=torch.long)
    assert model(idx)[0][:, -1].argmax(-1).min() >= GPT2_VOCAB_SIZE  # unmasked, padding would be picked
    greedy = model.generate(idx, 5, temperature=0.0)
    sampled = model.generate(idx, 30, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert greedy[:, 2:].max() < GPT2_VOCAB_SIZE
    assert sampled[:, 2:].max() < GPT2_VOCAB_SIZE


# ----------------------------------------------------------------------------- text in, text out


@pytest.fixture(scope="module")
def gpt2_vocab_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=GPT2_VOCAB_SIZE, n_layer=1, n_head=2, n_embd=16)).eval()


def test_generate_text_returns_prompt_plus_continuation(gpt2_vocab_model):
    prompt = "Hello, I'm a language model,"
    out = generate_text(gpt2_vocab_model, prompt, max_new_tokens=6, num_samples=3, seed=42)
    assert len(out) == 3 and all(s.startswith(prompt) and len(s) > len(prompt) for s in out)
    assert generate_text(gpt2_vocab_model, prompt, max_new_tokens=6, num_samples=3, seed=42) == out


def test_generate_text_greedy_matches_generate(gpt2_vocab_model):
    enc = gpt_helpers.get_tokenizer()
    prompt = "<|endoftext|>The"
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    assert ids[0] == GPT2_VOCAB_SIZE - 1
    want = gpt2_vocab_model.generate(torch.tensor([ids]), 8, temperature=0.0)[0].tolist()
    assert generate_text(gpt2_vocab_model, prompt, 8, temperature=0.0) == [enc.decode(want)]


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=-3), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.1), "top_p"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2.0), "max_new_tokens"),
    ],
)
def test_bad_generate_arguments_are_named(model, kwargs, match):
    kwargs = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        model.generate(torch.zeros(1, 2, dtype=torch.long), **kwargs)
    if "max_new_tokens" not in match:  # the sampler checks its own arguments too
        kwargs.pop("max_new_tokens")
        with pytest.raises(ValueError, match=match):
            sample_next_token(torch.zeros(1, 5), **kwargs)


@pytest.mark.parametrize(
    "idx, match",
    [
        (torch.zeros(2, 0, dtype=torch.long), "non-empty"),  # empty prompt
        (torch.zeros(5, dtype=torch.long), r"\(B, T\)"),  # one row without its batch dimension
        ([[1, 2, 3]], r"\(B, T\)"),  # a list, not a tensor
        (torch.tensor([[1, 97]]), "vocabulary"),  # tiny_config's vocab is 97: ids 0..96
        (torch.tensor([[-1, 2]]), "vocabulary"),
        (torch.zeros(1, 3), "integer token ids"),  # floats, as torch.zeros gives by default
        (torch.ones(1, 3, dtype=torch.bool), "integer token ids"),
    ],
)
def test_bad_prompts_are_named(model, idx, match):
    with pytest.raises(ValueError, match=match):
        model.generate(idx, 3)


def test_sampler_wants_a_batch_of_logits():
    with pytest.raises(ValueError, match=r"logits\[None\]"):
        sample_next_token(torch.zeros(5))


@pytest.mark.parametrize("kwargs, match", [(dict(prompt=""), "prompt"), (dict(num_samples=0), "num_samples"),
                                           (dict(seed="a"), "seed must be an integer"), (dict(seed=2**64), "seed")])
def test_bad_generate_text_arguments(gpt2_vocab_model, kwargs, match):
    kwargs = dict(prompt="Hi") | kwargs
    with pytest.raises(ValueError, match=match):
        generate_text(gpt2_vocab_model, max_new_tokens=2, **kwargs)


def test_zero_new_tokens_returns_the_prompt(model):
    idx = torch.tensor([[3, 1, 4]])
    assert torch.equal(model.generate(idx, 0), idx)

