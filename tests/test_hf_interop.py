"""Our GPT in transformers' format: export_hf / to_hf, and back with GPT.from_pretrained.

Everything runs offline: small random models, saved to tmp dirs; GPT-2's tokenizer
is built from the BPE files tiktoken already has (seeded by conftest.py).
"""

import pytest
import torch

from gpt_helpers import GPT, GPT2_VOCAB_SIZE, GPTConfig, export_hf, generate_text, hf_hub_reachable, port, to_hf

transformers = pytest.importorskip("transformers")
PROMPT = "Hello, I'm a language model,"


def tiny(vocab_size=97, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.fixture(scope="module")
def gpt2_vocab_export(tmp_path_factory):
    """A small model with GPT-2's vocabulary, exported with its tokenizer."""
    model = tiny(GPT2_VOCAB_SIZE)
    return model, export_hf(model, tmp_path_factory.mktemp("hf"))


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    model = tiny()
    export_hf(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_round_trip_ours_hf_ours_is_exact(tmp_path):
    model = tiny()
    back = GPT.from_pretrained(export_hf(model, tmp_path))
    assert back.config == model.config
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)
    assert back.lm_head.weight is back.transformer.wte.weight  # still tied
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(idx)[0], back(idx)[0])


def test_port_of_to_hf_gives_back_the_same_model():
    # in memory, no directory: to_hf and port are inverses
    model = tiny()
    back = port(to_hf(model))
    assert back.config == model.config
    sd, sd_back = model.state_dict(), back.state_dict()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model(idx)[0], back(idx)[0])


def test_hf_generate_on_the_export_matches_ours():
    model = tiny()
    hf = to_hf(model)
    idx = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    n = 20
    theirs = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, use_cache=True,
                         max_new_tokens=n, min_new_tokens=n)
    assert torch.equal(model.generate(idx, n, temperature=0.0), theirs)


def test_export_of_a_padded_vocab_never_generates_padding(tmp_path):
    model = tiny(vocab_size=50304)
    with torch.no_grad():  # every hidden state becomes v; the padding rows (10 v) win the argmax
        v = torch.randn(16, generator=torch.Generator().manual_seed(3))
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        model.lm_head.weight[GPT2_VOCAB_SIZE:] = 10 * v
    hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(model, tmp_path, tokenizer=False))
    idx = torch.zeros(2, 3, dtype=torch.long)
    assert hf(idx).logits[:, -1].argmax(-1).min() >= GPT2_VOCAB_SIZE  # unsuppressed, padding would win
    out = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=4, min_new_tokens=4)
    assert out[:, 3:].max() < GPT2_VOCAB_SIZE


def test_export_writes_a_tokenizer_that_agrees_with_tiktoken(gpt2_vocab_export):
    from gpt_helpers import get_tokenizer

    _, directory = gpt2_vocab_export
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    text = PROMPT + " héllo 日本\n\n<|endoftext|>x"
    assert tok(text).input_ids == get_tokenizer().encode(text, allowed_special={"<|endoftext|>"})
    assert tok.eos_token_id == GPT2_VOCAB_SIZE - 1


def test_pipeline_generates_what_generate_text_does(gpt2_vocab_export):
    model, directory = gpt2_vocab_export
    pipe = transformers.pipeline("text-generation", model=str(directory), device="cpu")
    theirs = pipe(PROMPT, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert theirs == generate_text(model, PROMPT, max_new_tokens=8, temperature=0.0)[0]


def test_tokenizer_is_refused_for_a_vocab_that_is_not_gpt2s(tmp_path):
    with pytest.raises(ValueError, match="tokenizer=False"):
        export_hf(tiny(), tmp_path, tokenizer=True)


def test_hub_check_honours_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf_hub_reachable() is False
