"""Prefix init from real activations, and zero-init gating."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from tiny import tiny_model, token_ids


class Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 90 + 3 for c in text]}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_direct_prefix_starts_as_the_models_own_kv(family):
    """Oracle: the KV cache the bare model builds for the init text (post-rotary keys)."""
    pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=5, reparameterization="direct", init="text",
                                                     init_text="table:"), tokenizer=Tok())
    ids = torch.tensor([[ord(c) % 90 + 3 for c in "table"]])
    bare = tiny_model(family)
    cache = bare(input_ids=ids, use_cache=True).past_key_values
    kv = pm.prefix.encoders["decoder_self"].kv
    for layer in range(2):
        keys, values = cache.layers[layer].keys[0], cache.layers[layer].values[0]
        n = keys.shape[1]  # a sliding-window layer's cache keeps only the last tokens
        assert n == 5 or family == "gemma2"
        torch.testing.assert_close(kv[layer, 0][:, -n:], keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kv[layer, 1][:, -n:], values, atol=1e-5, rtol=1e-5)


def _heads(x, heads):
    """``(1, n, H*d) -> (H, n, d)``."""
    return x[0].view(x.shape[1], heads, -1).transpose(0, 1)


def test_seq2seq_gets_all_three_locations_from_activations():
    """Oracle from BART's own projections: encoder self-attention K/V are ``k_proj``/``v_proj`` of each
    encoder layer's input, decoder self-attention those of each decoder layer's input (the init ids as
    decoder input), cross-attention those of the encoder's final output."""
    init_ids = [5, 9, 17]
    fake_tokenizer = lambda text, add_special_tokens=False: {"input_ids": init_ids}  # noqa: E731
    pm = pt.wrap(tiny_model("bart"), pt.PrefixConfig(prefix_length=4, reparameterization="direct", init="text",
                                                     init_text="anything"), tokenizer=fake_tokenizer)
    ids = torch.tensor([init_ids + init_ids[:1]])  # repeated and cut to l = 4
    base = pm.base_model
    with pm.injection.active(None), torch.no_grad():
        out = base(input_ids=ids, decoder_input_ids=ids, output_hidden_states=True)
        heads = base.config.encoder_attention_heads
        for loc, layers, states in (("encoder_self", base.model.encoder.layers, out.encoder_hidden_states),
                                    ("decoder_self", base.model.decoder.layers, out.decoder_hidden_states),
                                    ("cross", base.model.decoder.layers, None)):
            kv = pm.prefix.encoders[loc].kv
            for i, layer in enumerate(layers):
                attn = layer.encoder_attn if loc == "cross" else layer.self_attn
                source = out.encoder_last_hidden_state if loc == "cross" else states[i]
                torch.testing.assert_close(kv[i, 0], _heads(attn.k_proj(source), heads), atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(kv[i, 1], _heads(attn.v_proj(source), heads), atol=1e-5, rtol=1e-5)


def test_mlp_is_fitted_to_the_activations():
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=4, hidden_size=64, init="vocab"))
    assert pm.init_errors["decoder_self"] < 0.1
    direct = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=4, reparameterization="direct", init="vocab"))
    assert direct.init_errors == {"decoder_self": 0.0}


@pytest.mark.parametrize("family", ["llama", "bert", "t5"])
def test_zero_gate_reproduces_the_base_model_then_learns(family):
    pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=1.0, gate=True))
    ids = token_ids(family, 2, 6)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "t5":
        kw["decoder_input_ids"] = ids[:, :3].contiguous()
    with pm.injection.active(None):
        bare = pm.base_model(**kw).logits
    torch.testing.assert_close(pm(**kw).logits, bare, atol=1e-6, rtol=1e-6)
    pm.train()
    opt = torch.optim.Adam(pm.trainable_parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        out = pm(**kw, labels=kw["input_ids"] if family != "t5" else kw["decoder_input_ids"])
        out.loss.backward()
        assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in pm.prefix.gates.values())
        opt.step()
    pm.eval()
    assert (pm(**kw).logits - bare).abs().max() > 1e-4
