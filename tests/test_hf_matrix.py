"""The injection matrix: every family x reparameterization x location x padding, against oracles."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.batch import PrefixBatch
from oracle import oracle_copy
from tiny import DECODERS, ENCODERS, FAMILIES, SEQ2SEQ, pad_token, tiny_model, token_ids

L = 3  # prefix length


def inputs(family, ids, mask=None):
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}
    if family in SEQ2SEQ:
        kw["decoder_input_ids"] = token_ids(family, ids.shape[0], 4, seed=7)
    return kw


def positions(family, rows, n, shift):
    base = {"roberta": 2}.get(family, 0)
    return (torch.arange(n) + base + shift)[None].expand(rows, n)


def make(family, reparam="mlp", **cfg):
    model = tiny_model(family)
    config = pt.PrefixConfig(prefix_length=L, reparameterization=reparam, hidden_size=16, init_std=1.0, **cfg)
    return pt.wrap(model, config).eval()


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_handwritten_oracle(family, reparam):
    pm = make(family, reparam)
    ids = token_ids(family, 2, 7)
    kw = inputs(family, ids)
    got = pm(**kw).logits
    oracle = oracle_copy(pm)
    ref_kw = dict(kw)
    if family not in SEQ2SEQ:
        ref_kw["position_ids"] = positions(family, 2, 7, L)
    want = oracle(**ref_kw).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    bare = pm.base_model
    with pm.injection.active(None):
        base_out = bare(**kw).logits
    assert (got - base_out).abs().max() > 1e-5, "the prefix must change the output"


@pytest.mark.parametrize("location", ["encoder_self", "decoder_self", "cross"])
@pytest.mark.parametrize("family", SEQ2SEQ)
def test_each_seq2seq_location_alone(family, location):
    pm = make(family, "direct", locations=(location,))
    assert list(pm.prefix.layers) == [location]
    kw = inputs(family, token_ids(family, 2, 6))
    got = pm(**kw).logits
    torch.testing.assert_close(got, oracle_copy(pm)(**kw).logits, atol=2e-5, rtol=1e-4)
    with pm.injection.active(None):
        assert (got - pm.base_model(**kw).logits).abs().max() > 1e-5


def test_exclude_layers_leaves_those_layers_bare():
    pm = make("llama", "direct", exclude_layers=(1,))
    assert pm.prefix.layers == {"decoder_self": (0,)}
    assert pm.prefix.encoders["decoder_self"].kv.shape[0] == 1
    kw = inputs("llama", token_ids("llama", 2, 6))
    oracle = oracle_copy(pm)
    torch.testing.assert_close(pm(**kw).logits, oracle(**kw, position_ids=positions("llama", 2, 6, L)).logits,
                               atol=2e-5, rtol=1e-4)


def _pad(family, ids_list, side):
    n = max(len(r) for r in ids_list)
    pad = pad_token(family)
    ids = torch.full((len(ids_list), n), pad)
    mask = torch.zeros(len(ids_list), n, dtype=torch.long)
    for i, r in enumerate(ids_list):
        if side == "left":
            ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
        else:
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("position_mode", ["shifted", "natural"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_rows_equal_rows_alone(family, side, position_mode):
    if family == "bart" and side == "left":
        pytest.skip("BART's encoder numbers positions by index and takes no position ids: left padding changes "
                    "the bare model's outputs too (pad BART inputs on the right)")
    pm = make(family, "mlp", position_mode=position_mode)
    rows = [token_ids(family, 1, n, seed=n)[0] for n in (7, 4, 6)]
    ids, mask = _pad(family, rows, side)
    dec = token_ids(family, 3, 4, seed=9) if family in SEQ2SEQ else None
    kw = {"input_ids": ids, "attention_mask": mask}
    if dec is not None:
        kw["decoder_input_ids"] = dec
    batched = pm(**kw).logits
    for i, r in enumerate(rows):
        one = {"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)}
        if dec is not None:
            one["decoder_input_ids"] = dec[i:i + 1]
            torch.testing.assert_close(batched[i], pm(**one).logits[0], atol=2e-5, rtol=1e-4)
            continue
        alone = pm(**one).logits[0]
        real = mask[i].bool()
        torch.testing.assert_close(batched[i][real], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "t5", "bart"])
def test_rows_with_different_prefixes_equal_each_alone(family):
    """A batch whose rows use different prefixes (of different lengths, or none) equals each row alone."""
    model = tiny_model(family)
    a = pt.wrap(model, pt.PrefixConfig(prefix_length=3, reparameterization="direct", init_std=1.0)).eval()
    stack_b = pt.PrefixConfig(prefix_length=5, reparameterization="direct", init_std=1.0)
    from prefixtune.prefix import PrefixStack
    b_stack = PrefixStack.create(a.layout, stack_b)
    inj = a.injection
    ids = token_ids(family, 3, 6)
    kw = inputs(family, ids)
    with torch.no_grad():
        kv_a, kv_b = a.prefix(), b_stack()
    rows = [(kv_a, a.prefix.layers), None, (kv_b, b_stack.layers)]
    mixed = PrefixBatch.per_row(rows, inj.modules, device="cpu")
    with inj.active(mixed):
        got = a.base_model(**inj.inputs(mixed, True, kw)).logits
    for i, entry in enumerate(rows):
        one = {k: v[i:i + 1] for k, v in kw.items()}
        single = None if entry is None else PrefixBatch.single(entry[0], entry[1], inj.modules)
        with inj.active(single):
            want = a.base_model(**inj.inputs(single, True, one)).logits
        torch.testing.assert_close(got[i:i + 1], want, atol=2e-5, rtol=1e-4)


def test_sliding_window_never_hides_the_prefix():
    """Mistral/Gemma2 windows of 4 tokens: the last of 10 tokens still gives the prefix weight."""
    for family in ("mistral", "gemma2"):
        pm = make(family, "direct")
        ids = token_ids(family, 1, 10)
        out = pm(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
        types = getattr(pm.base_model.config, "layer_types", None) or ["sliding_attention"] * 2
        assert "sliding_attention" in types
        for kind, layer_weights in zip(types, out.attentions):  # (1, H, 10, L + 10)
            last = layer_weights[0, :, -1]
            assert (last[:, :L].sum(-1) > 0).all()
            hidden = (last[:, L:L + 6] == 0).all()
            assert hidden if kind == "sliding_attention" else not hidden


def test_unsupported_family_is_named():
    import transformers as T

    cfg = T.GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(pt.UnsupportedModelError, match="gpt_neox"):
        pt.wrap(model)


def test_locations_absent_from_model_are_an_error():
    with pytest.raises(ValueError, match="encoder_self"):
        pt.wrap(tiny_model("llama"), pt.PrefixConfig(locations=("encoder_self",)))


def test_unwrap_restores_the_base_model():
    model = tiny_model("llama")
    ids = token_ids("llama", 1, 5)
    before = model(input_ids=ids).logits
    pm = pt.wrap(model, pt.PrefixConfig(prefix_length=2, init_std=1.0))
    base = pm.unwrap()
    assert base.config._attn_implementation != "prefixtune"
    torch.testing.assert_close(base(input_ids=ids).logits, before)
