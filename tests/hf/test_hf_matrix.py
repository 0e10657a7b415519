"""The injection matrix: every family x reparameterization x location x padding, against oracles."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.core.batch import PrefixBatch
from oracle import oracle_copy
from tiny import FAMILIES, SEQ2SEQ, pad_token, tiny_model, token_ids

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
    from prefixtune.methods.prefix import build_prefix
    b_stack = build_prefix(a.layout, stack_b)
    inj = a.injection
    ids = token_ids(family, 3, 6)
    kw = inputs(family, ids)
    with torch.no_grad():
        kv_a, kv_b = a.prefix(), b_stack()
    rows = [(kv_a, a.prefix.layers), None, (kv_b, b_stack.layers)]
    mixed = PrefixBatch.per_row(rows, inj.modules, device="cpu")
    with inj.active(mixed):
        got = a.base_model(**inj.inputs(mixed, kw)).logits
    for i, entry in enumerate(rows):
        one = {k: v[i:i + 1] for k, v in kw.items()}
        single = None if entry is None else PrefixBatch.single(entry[0], entry[1], inj.modules)
        with inj.active(single):
            want = a.base_model(**inj.inputs(single, one)).logits
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


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gemma2"])
def test_attention_weights_include_the_prefix_columns(family):
    """``output_attentions=True``: per layer ``(B, H, q, l + n)`` probabilities equal to the oracle's."""
    pm = make(family)
    ids = token_ids(family, 2, 5)
    kw = inputs(family, ids)
    got = pm(**kw, output_attentions=True).attentions
    ref_kw = {**kw, "output_attentions": True, "position_ids": positions(family, 2, 5, L)}
    want = oracle_copy(pm)(**ref_kw).attentions
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert a.shape == (2, 4, 5, L + 5)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 5))


def test_head_dim_other_than_hidden_over_heads():
    """Families whose head size is set apart from ``hidden_size / heads`` (Gemma 2 here: 4 heads of 16
    in a width of 32) get prefixes of that head size, equal to the oracle."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.Gemma2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=64, vocab_size=96, sliding_window=4, attn_logit_softcapping=5.0,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    pm = pt.wrap(T.Gemma2ForCausalLM(cfg).eval(), pt.PrefixConfig(prefix_length=L, hidden_size=16, init_std=1.0)).eval()
    assert pm.layout.locations[0].head_dim == 16
    assert pm.prefix()["decoder_self"].shape == (2, 2, 2, L, 16)
    ids = token_ids("gemma2", 2, 6)
    got = pm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    want = oracle_copy(pm)(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions("gemma2", 2, 6, L)).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_unmasked_causal_call_with_more_keys_than_queries_is_causal_from_the_first_key():
    """transformers omits the mask for a pre-allocated cache whose tail is unused: queries ``0..q-1``
    against keys ``0..k-1`` must then see keys ``<= i`` (not aligned to the last key)."""
    from prefixtune.hf.boundary import _attention
    from oracle import reference

    module = torch.nn.Module()
    module.is_causal = True
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    out, _ = _attention(module, q, k, v, None)
    allowed = torch.ones(3, 6, dtype=torch.bool).tril()[None]
    torch.testing.assert_close(out.transpose(1, 2).double(), reference(q, k, v, allowed=allowed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_float_and_bool_masks_give_the_same_positions_and_outputs(family):
    """Attention masks come as long, bool or float tensors; positions (left padding) and outputs agree."""
    pm = make(family)
    ids = token_ids(family, 2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    want = pm(input_ids=ids, attention_mask=mask).logits
    for other in (mask.bool(), mask.float()):
        got = pm(input_ids=ids, attention_mask=other).logits
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_explicit_position_ids_are_used_and_shifted_by_the_prefix(family):
    """Given position ids count the real tokens from 0; the prefix shifts them like the default ones."""
    pm = make(family)
    ids = token_ids(family, 2, 6)
    default = pm(input_ids=ids).logits
    natural = torch.arange(6)[None].expand(2, 6)
    torch.testing.assert_close(pm(input_ids=ids, position_ids=natural).logits, default, atol=1e-6, rtol=1e-6)
    oracle = oracle_copy(pm)
    moved = pm(input_ids=ids, position_ids=natural + 5).logits
    torch.testing.assert_close(moved, oracle(input_ids=ids, position_ids=natural + 5 + L).logits, atol=2e-5, rtol=1e-4)
    if family == "gpt2":  # learned absolute positions: other ids, other outputs
        assert (moved - default).abs().max() > 1e-4


def test_learned_position_limit_is_exact():
    """GPT-2's 128 learned positions with a prefix of 3: 125 tokens fit (last id 127), 126 do not."""
    pm = make("gpt2")
    pm(input_ids=token_ids("gpt2", 1, 125))
    with pytest.raises(ValueError, match="input too long"):
        pm(input_ids=token_ids("gpt2", 1, 126))


def test_attention_weights_with_a_prompt_and_no_prefix():
    """GPT-2 does not pass ``output_attentions`` to the attention function: weights come back anyway,
    over the ``l + n`` positions of the prompted input."""
    pm = pt.wrap(tiny_model("gpt2"), pt.PromptConfig(num_virtual_tokens=2)).eval()
    ids = token_ids("gpt2", 2, 5)
    attentions = pm(input_ids=ids, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 4, 7))


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_modules_are_the_blocks_fsdp_shards(family):
    """One per layer (per stack for seq2seq), never the module holding the input embeddings
    (BERT names BertEmbeddings too); DistilBERT names none and is refused."""
    from prefixtune.hf.boundary import UnsupportedModelError, layer_modules

    model = tiny_model(family)
    if family == "distilbert":
        with pytest.raises(UnsupportedModelError, match="no layer classes"):
            layer_modules(model)
        return
    layers = layer_modules(model)
    assert len(layers) == (4 if family in SEQ2SEQ else 2) and len({type(m) for m in layers}) <= 2
    embeddings = model.get_input_embeddings()
    assert not any(sub is embeddings for m in layers for sub in m.modules())
