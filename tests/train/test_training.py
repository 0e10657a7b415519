"""Training: only the prefix trains, the base model stays bit-identical, checkpointing and autocast work."""

from __future__ import annotations

import copy

import pytest
import torch

import prefixtune as pt
from tiny import ENCODERS, FAMILIES, SEQ2SEQ, tiny_model, token_ids


def batch(family, rows=2, n=6):
    ids = token_ids(family, rows, n)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    if family in SEQ2SEQ:
        kw["labels"] = token_ids(family, rows, 4, seed=5)
    if family in ENCODERS:
        kw["labels"][:, ::2] = -100
    return kw


def no_dropout(model):
    """Training mode without randomness, so two runs can be compared exactly."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("dropout", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def grads(pm, kw):
    pm.zero_grad(set_to_none=True)
    pm(**kw).loss.backward()
    return {n: p.grad.clone() for n, p in pm.prefix.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_only_prefix_trains_and_base_is_bit_identical(family):
    model = tiny_model(family)
    before = copy.deepcopy(model.state_dict())
    pm = pt.wrap(model, pt.PrefixConfig(prefix_length=4, hidden_size=16))
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefix.") for n in trainable)
    pm.train()
    opt = torch.optim.AdamW(pm.trainable_parameters(), lr=1e-2)
    kw = batch(family)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = pm(**kw).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family, reparam):
    pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=3, hidden_size=16, reparameterization=reparam,
                                                     init_std=0.5))
    pm.train()
    no_dropout(pm)
    kw = batch(family)
    plain = grads(pm, kw)
    pm.gradient_checkpointing_enable()
    assert pm.base_model.is_activation_checkpointing
    ckpt = grads(pm, kw)
    pm.gradient_checkpointing_disable()
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert plain[name].abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "bert", "t5"])
def test_bf16_autocast_trains(family):
    pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=0.5)).train()
    kw = batch(family)
    fp32 = pm(**kw).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pm(**kw)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - fp32.item()) < 0.05 * fp32.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pm.trainable_parameters())


def test_bf16_base_model_with_fp32_prefix():
    """A bf16 base with an fp32 prefix: the prefix and its gradients stay fp32, and loss and gradients
    agree with the same prefix on the fp32 base (to bf16 precision)."""
    cfg = pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=0.5)
    pm32 = pt.wrap(tiny_model("llama"), cfg)
    pm16 = pt.wrap(tiny_model("llama").to(torch.bfloat16), cfg)
    pm16.prefix.load_state_dict(pm32.prefix.state_dict())
    kw = batch("llama")
    out32, out16 = pm32(**kw), pm16(**kw)
    out32.loss.backward()
    out16.loss.backward()
    assert out16.logits.dtype == torch.bfloat16
    assert out16.loss.item() == pytest.approx(out32.loss.item(), rel=2e-2)
    for (name, a), b in zip(pm32.prefix.named_parameters(), pm16.prefix.parameters(), strict=True):
        assert b.dtype == torch.float32 and b.grad.dtype == torch.float32, name
        assert torch.isfinite(b.grad).all() and a.grad.abs().sum() > 0, name
        cosine = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert cosine > 0.98, (name, float(cosine))


def test_mlp_runs_once_per_forward_regardless_of_batch():
    pm = pt.wrap(tiny_model("gpt2"), pt.PrefixConfig(prefix_length=3, hidden_size=16))
    calls = []
    pm.prefix.encoders["decoder_self"].mlp.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    pm(**batch("gpt2", rows=5))
    assert calls == [torch.Size([3, 2 * 2 * 4 * 8])]  # (l, layers*2*heads*head_dim), no batch dim


def test_prefix_dropout_is_active_in_training_only():
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=4, hidden_size=16, dropout=0.5, init_std=1.0))
    kw = batch("llama")
    pm.eval()
    a, b = pm(**kw).logits, pm(**kw).logits
    assert torch.equal(a, b)
    pm.train()
    torch.manual_seed(1)
    c = pm(**kw).logits
    torch.manual_seed(2)
    assert not torch.equal(c, pm(**kw).logits)
