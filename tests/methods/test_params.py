"""Parameter accounting equals the guide's formula (with GQA) and the modules' real sizes."""

from __future__ import annotations

import pytest

import prefixtune as pt
from tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
@pytest.mark.parametrize("family", FAMILIES)
def test_counts_match_modules_and_formula(family, reparam):
    config = pt.PrefixConfig(prefix_length=5, hidden_size=24, reparameterization=reparam)
    model = tiny_model(family)
    base = sum(p.numel() for p in model.parameters())
    planned = pt.count_parameters(model, config)
    pm = pt.wrap(model, config)
    counted = pt.count_parameters(pm)
    assert counted == planned
    assert counted.base == base
    assert counted.trainable == sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert counted.stored == sum(p.numel() for p in pm.prefix.folded().parameters())
    # Guide: l x L x 2 x H_kv x d_head per location.
    expect = sum(5 * s.num_layers * 2 * s.num_kv_heads * s.head_dim for s in pm.layout.locations)
    assert counted.stored == expect
    assert counted.trainable_percent == pytest.approx(100 * counted.trainable / base)


def test_gqa_direct_count_is_2_l_L_nkv_dhead():
    pm = pt.wrap(tiny_model("qwen2"), pt.PrefixConfig(prefix_length=7, reparameterization="direct"))
    # qwen2 tiny: 2 layers, 1 KV head of size 8
    assert pm.count_parameters().trainable == 2 * 7 * 2 * 1 * 8


def test_excluded_layers_are_not_counted():
    config = pt.PrefixConfig(prefix_length=4, reparameterization="direct", exclude_layers=(0,))
    assert pt.count_parameters(tiny_model("gpt2"), config).stored == 4 * 1 * 2 * 4 * 8


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_planned_counts_of_a_gated_prefix_include_the_gates(family, reparam):
    config = pt.PrefixConfig(prefix_length=3, hidden_size=8, reparameterization=reparam, gate=True, exclude_layers=(1,))
    model = tiny_model(family)
    planned = pt.count_parameters(model, config)
    pm = pt.wrap(model, config)
    assert planned == pt.count_parameters(pm)
    gates = sum(g.numel() for g in pm.prefix.gates.values())
    assert gates == sum(s.num_kv_heads for s in pm.layout.locations)  # one prefixed layer per location
    assert planned.trainable == sum(p.numel() for p in pm.trainable_parameters())
