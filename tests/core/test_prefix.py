"""The prefix parts against their formulas, written out here independently of the modules."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.core.layout import LocationShape, ModelLayout
from prefixtune.core.prefix import DirectPrefix, MLPPrefix
from prefixtune.methods.prefix import build_prefix
from tiny import tiny_model, token_ids


def test_mlp_prefix_is_linear_tanh_linear_in_peft_order():
    """``kv[layer, k/v, head, pos, :] = (W2·tanh(W1·e_pos + b1) + b2)[((layer*2 + k/v)*heads + head)*d : ...]``."""
    layers, heads, length, dim, d_model, hidden = 3, 2, 4, 5, 6, 7
    mlp = MLPPrefix(length, d_model, hidden, layers, heads, dim, init_std=1.0).eval()
    first, second = mlp.mlp[0], mlp.mlp[2]
    with torch.no_grad():
        kv = mlp()
        e = mlp.embedding.double()
        flat = torch.tanh(e @ first.weight.double().T + first.bias.double()) @ second.weight.double().T + second.bias.double()
    assert kv.shape == (layers, 2, heads, length, dim)
    for layer in range(layers):
        for which in range(2):
            for head in range(heads):
                start = ((layer * 2 + which) * heads + head) * dim
                torch.testing.assert_close(kv[layer, which, head].double(), flat[:, start:start + dim],
                                           atol=1e-6, rtol=1e-6)


def test_direct_prefix_is_its_tensor_and_dropout_only_in_training():
    kv = torch.randn(2, 2, 3, 4, 5)
    direct = DirectPrefix(kv.clone(), dropout=0.5)
    assert torch.equal(direct.eval()(), kv)
    torch.manual_seed(0)
    trained = direct.train()()
    zeroed = trained == 0
    assert zeroed.any() and not zeroed.all()
    torch.testing.assert_close(trained[~zeroed], kv[~zeroed] * 2)  # inverted dropout scaling 1/(1-p)
    for bad in (torch.randn(2, 3, 4), torch.randn(2, 3, 3, 4, 5), torch.randn(2, 2, 3, 4)):
        with pytest.raises(ValueError, match="shape"):
            DirectPrefix(bad)


LAYOUT = ModelLayout("llama", 8, (LocationShape("decoder_self", 3, 2, 4),), 0)


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
def test_fold_in_training_mode_drops_dropout(reparam):
    """A stack folded while training (as the loop saves) holds the eval-mode K/V, not a dropout sample."""
    cfg = pt.PrefixConfig(prefix_length=4, hidden_size=8, dropout=0.4, reparameterization=reparam, init_std=1.0,
                          gate=True)
    stack = build_prefix(LAYOUT, cfg)
    with torch.no_grad():
        stack.gates["decoder_self"].normal_()
        want = stack.eval()()["decoder_self"]
    stack.train()
    folded = stack.folded()
    assert stack.training, "folding must not change the caller's mode"
    got = folded.eval()()["decoder_self"]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert folded.is_folded and folded.layers == stack.layers
    torch.testing.assert_close(folded.gates["decoder_self"], stack.gates["decoder_self"], atol=0, rtol=0)
    assert folded.encoders["decoder_self"].dropout.p == 0.4  # kept for further training of the folded form


def test_prefixed_layers_respect_exclude_layers():
    layout = ModelLayout("llama", 8, (LocationShape("decoder_self", 4, 2, 4),), 0)
    stack = build_prefix(layout, pt.PrefixConfig(prefix_length=2, hidden_size=8, exclude_layers=(1, 3)))
    assert stack.layers == {"decoder_self": (0, 2)}
    assert stack()["decoder_self"].shape == (2, 2, 2, 2, 4)
    with pytest.raises(ValueError, match="out of range"):
        build_prefix(layout, pt.PrefixConfig(exclude_layers=(4,)))
    with pytest.raises(ValueError, match="no layer"):
        build_prefix(layout, pt.PrefixConfig(exclude_layers=(0, 1, 2, 3)))


def test_model_fold_and_save_in_training_mode_keep_eval_outputs(tmp_path):
    """``PrefixModel.fold`` and ``save_pretrained`` called in train mode (dropout > 0) give the
    adapter whose eval outputs are those of the unfolded model."""
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, hidden_size=16, dropout=0.3, init_std=1.0))
    ids = token_ids("llama", 2, 6)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        want = pm.eval()(**kw).logits
    pm.train()
    pm.save_pretrained(tmp_path / "a")
    folded_copy = pt.load(tiny_model("llama"), tmp_path / "a", folded=True).eval()
    pm.fold()
    with torch.no_grad():
        torch.testing.assert_close(pm.eval()(**kw).logits, want, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(folded_copy(**kw).logits, want, atol=1e-6, rtol=1e-6)
