"""GPT.from_pretrained: our GPT against HF's GPT2LMHeadModel, built offline with random weights.

The hub is unreachable here, so every checkpoint is a small random GPT-2 saved to a temporary
directory with save_pretrained; a correct port matches HF's logits to about 2e-7 in fp32.
"""

import json

import pytest
import torch
from torch.nn import functional as F

from transformers import GPT2Config, GPT2LMHeadModel

import gpt_helpers
from gpt_helpers import GPT, HF_PRETRAINED, config_from_hf, load_hf_gpt2, load_hf_state_dict, port

# (n_embd, n_head, n_layer, vocab_size, n_positions): odd sizes, and the real GPT-2 vocabulary
CONFIGS = {
    "odd-48x3x3-v211": dict(n_embd=48, n_head=3, n_layer=3, vocab_size=211, n_positions=40),
    "64x4x2-v50257": dict(n_embd=64, n_head=4, n_layer=2, vocab_size=50257, n_positions=32),
}


def make_hf(seed=0, **sizes) -> GPT2LMHeadModel:
    """A random HF GPT-2 in eval mode, with every weight (biases, LayerNorms too) away from its init."""
    torch.manual_seed(seed)
    eos = 50256 if sizes["vocab_size"] > 50256 else None  # a toy vocabulary has no <|endoftext|>
    config = GPT2Config(**sizes, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        # every weight set here, not by HF's init (which changes between versions); biases away from 0
        # and LayerNorm gains away from 1, so that one copied to the wrong place changes the logits
        for name, p in hf.named_parameters():
            gain = ("ln_" in name) and name.endswith(".weight")
            p.copy_(float(gain) + 0.1 * torch.randn_like(p))
    return hf


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(HF model, our GPT loaded from HF's saved directory, the directory)."""
    hf = make_hf(**CONFIGS[request.param])
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return hf, GPT.from_pretrained(directory), directory


def some_ids(vocab_size, B=2, T=17, seed=1):
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_config_is_read_from_the_checkpoint(pair):
    hf, ours, _ = pair
    c = ours.config
    assert (c.n_embd, c.n_head, c.n_layer, c.vocab_size, c.block_size) == (
        hf.config.n_embd, hf.config.n_head, hf.config.n_layer, hf.config.vocab_size, hf.config.n_positions)


def test_logits_match_hf(pair):
    hf, ours, _ = pair
    idx = some_ids(hf.config.vocab_size)
    with torch.no_grad():
        logits, _ = ours(idx)
        ref = hf(idx).logits
    assert logits.shape == ref.shape
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert ref.std() > 0.1  # the logits are far from constant: a match means something


def test_logits_match_hf_at_full_context(pair):
    hf, ours, _ = pair
    idx = some_ids(hf.config.vocab_size, B=1, T=hf.config.n_positions, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)


def test_loss_matches_cross_entropy_and_hf(pair):
    hf, ours, _ = pair
    idx = some_ids(hf.config.vocab_size, T=12, seed=3)
    with torch.no_grad():
        logits, loss = ours(idx[:, :-1], idx[:, 1:])  # we take targets already shifted
        hf_loss = hf(idx, labels=idx).loss  # HF shifts the labels itself
    V = logits.size(-1)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, V), idx[:, 1:].reshape(-1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=0)


def test_greedy_generation_matches_hf(pair):
    hf, ours, _ = pair
    prompt = some_ids(hf.config.vocab_size, B=2, T=5, seed=4)
    new = 12
    out = ours.generate(prompt, new, temperature=0.0)
    # no min_new_tokens: it would bar <|endoftext|>, which our greedy decoding may pick
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                      do_sample=False, num_beams=1)
    assert out.shape == (2, 5 + new)
    assert torch.equal(out, ref), f"ours {out.tolist()}\nHF   {ref.tolist()}"
    assert len(set(out[0, 5:].tolist())) > 1  # the continuation is not one token repeated


def test_greedy_generation_matches_argmax_loop_without_cache(pair):
    hf, ours, _ = pair
    idx = some_ids(hf.config.vocab_size, B=1, T=3, seed=5)
    out = ours.generate(idx, 8, temperature=0.0, use_cache=False)
    with torch.no_grad():
        for _ in range(8):
            idx = torch.cat([idx, hf(idx).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_loaded_model_keeps_weights_tied(pair):
    _, ours, _ = pair
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_export_round_trip(pair, tmp_path):
    # our GPT -> HF directory -> our GPT: same logits
    hf, ours, _ = pair
    gpt_helpers.export_hf(ours, tmp_path / "export")
    again = GPT.from_pretrained(tmp_path / "export")
    idx = some_ids(hf.config.vocab_size, T=9, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], ours(idx)[0], atol=0, rtol=0)


def test_port_of_the_hf_model_equals_from_pretrained_of_its_directory(pair):
    hf, ours, directory = pair
    ported = port(hf)
    assert isinstance(ported, GPT) and not ported.training and ported.config == ours.config
    assert ported.lm_head.weight is ported.transformer.wte.weight
    idx = some_ids(hf.config.vocab_size, T=11, seed=7)
    with torch.no_grad():
        logits = ported(idx)[0]
        assert torch.equal(logits, ours(idx)[0])  # the same weights: bit for bit
        torch.testing.assert_close(logits, hf(idx).logits, atol=1e-5, rtol=0)
    # copies, not views of HF's tensors: training one must not change the other
    hf_storage = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    assert not hf_storage & {p.untyped_storage().data_ptr() for p in ported.parameters()}


def test_load_hf_gpt2_reads_a_local_directory(pair):
    hf, _, directory = pair
    loaded = load_hf_gpt2(directory)
    assert isinstance(loaded, GPT2LMHeadModel)
    sd, sd_hf = loaded.state_dict(), hf.state_dict()
    assert all(torch.equal(sd[k], sd_hf[k]) for k in sd_hf)


def test_config_from_hf_reads_the_sizes_and_names_an_unsupported_variant():
    sizes = CONFIGS["odd-48x3x3-v211"]
    c = config_from_hf(GPT2Config(**sizes))
    assert (c.n_embd, c.n_head, c.n_layer, c.vocab_size, c.block_size) == (48, 3, 3, 211, 40)
    with pytest.raises(ValueError, match=r"'my-ckpt': this GPT-2 variant is not supported \(it differs in n_inner\)"):
        config_from_hf(GPT2Config(**sizes, n_inner=100), "my-ckpt")


# ----------------------------------------------------------------------------- the Conv1D transpose


def test_parity_catches_a_port_that_forgets_to_transpose_attn_c_proj(pair, monkeypatch):
    # attn.c_proj is square, so a port without its transpose passes every shape check: only logits tell
    hf, ours, _ = pair
    monkeypatch.setattr(gpt_helpers, "HF_TRANSPOSED",
                        tuple(k for k in gpt_helpers.HF_TRANSPOSED if k != "attn.c_proj.weight"))
    broken = load_hf_state_dict(GPT(ours.config), hf.state_dict())  # no error: shapes all fit
    idx = some_ids(hf.config.vocab_size)
    with torch.no_grad():
        diff = (broken(idx)[0] - hf(idx).logits).abs().max().item()
        good = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff > 1e-3, "a port without the c_proj transpose would pass the parity test"
    assert good < 1e-5


def test_every_conv1d_weight_is_transposed(pair):
    hf, ours, _ = pair
    sd, sd_hf = ours.state_dict(), hf.state_dict()
    for k in sd:
        if k.endswith(gpt_helpers.HF_TRANSPOSED):
            assert torch.equal(sd[k], sd_hf[k].t()), k
        else:
            assert torch.equal(sd[k], sd_hf[k]), k


# ----------------------------------------------------------------------------- bad inputs


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gpt3'") as e:
        GPT.from_pretrained("gpt3")
    for name in HF_PRETRAINED:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown model"):
        GPT.from_pretrained(tmp_path / "does-not-exist")


def test_directory_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="has no config.json"):
        GPT.from_pretrained(tmp_path)


def test_directory_with_a_broken_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a JSON object"):
        GPT.from_pretrained(tmp_path)


def test_directory_holding_another_architecture(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'bert' checkpoint, not GPT-2"):
        GPT.from_pretrained(tmp_path)


def test_directory_without_weights(tmp_path):
    make_hf(**CONFIGS["odd-48x3x3-v211"]).config.save_pretrained(tmp_path)  # config.json only
    with pytest.raises(ValueError, match="not a loadable GPT-2 checkpoint: .*model.safetensors"):
        GPT.from_pretrained(tmp_path)


def test_checkpoint_with_a_tampered_weight_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    make_hf(**CONFIGS["odd-48x3x3-v211"]).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    sd = load_file(weights)
    key = "transformer.h.1.mlp.c_fc.weight"
    sd[key] = sd[key][:, :-1].clone()  # one output column short
    save_file(sd, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not a loadable GPT-2 checkpoint: transformer\.h\.1\.mlp\.c_fc\.weight "
                                         r"has shape \(48, 191\) but its config.json says \(48, 192\)"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_weights_file_is_named_with_its_checkpoint(tmp_path, damage):
    make_hf(**CONFIGS["odd-48x3x3-v211"]).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"x" * 1000}[damage])
    with pytest.raises(ValueError, match=rf"{str(tmp_path)!r} is not a loadable GPT-2 checkpoint: SafetensorError"):
        GPT.from_pretrained(tmp_path)


def test_hub_name_without_a_network_fails_fast_with_the_course_message(tmp_path, monkeypatch):
    import socket
    import time

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)  # no network, and HF_HUB_OFFLINE unset
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty HF cache
    start = time.monotonic()
    with pytest.raises(OSError, match="'gpt2' could not be loaded from the HF hub or its local cache.*connect"):
        GPT.from_pretrained("gpt2")
    assert time.monotonic() - start < 10  # not HF's retries (about 24 s)


def test_state_dict_with_a_wrong_shape_names_the_key(pair):
    hf, ours, _ = pair
    sd = dict(hf.state_dict())
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:-1]
    with pytest.raises(ValueError, match=r"shape mismatch for transformer\.wpe\.weight"):
        load_hf_state_dict(GPT(ours.config), sd)


def test_state_dict_with_missing_or_extra_keys(pair):
    hf, ours, _ = pair
    sd = dict(hf.state_dict())
    del sd["transformer.h.0.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing \['transformer\.h\.0\.mlp\.c_fc\.bias'\]"):
        load_hf_state_dict(GPT(ours.config), sd)
    sd = dict(hf.state_dict()) | {"transformer.h.0.attn.q_proj.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected \['transformer\.h\.0\.attn\.q_proj\.weight'\]"):
        load_hf_state_dict(GPT(ours.config), sd)


@pytest.mark.parametrize("change, field", [
    (dict(activation_function="relu"), "activation_function"),
    (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    (dict(n_inner=100), "n_inner"),
])
def test_gpt2_variants_we_cannot_represent(tmp_path, change, field):
    sizes = CONFIGS["odd-48x3x3-v211"]
    GPT2LMHeadModel(GPT2Config(**sizes, **change, bos_token_id=None, eos_token_id=None)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"not supported \(it differs in {field}\)"):
        GPT.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
