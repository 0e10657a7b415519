"""P-tuning v2: deep prefix + trainable head, for encoders and decoders."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.core.heads import pool
from tiny import DECODERS, ENCODERS, pad_token, tiny_model, token_ids


def make(family, **cfg):
    cfg.setdefault("prefix_length", 4)
    cfg.setdefault("pooling", "last" if family in DECODERS else "cls")
    cfg.setdefault("dropout", 0.0)
    cfg.setdefault("head_dropout", 0.0)
    cfg.setdefault("init_std", 0.5)
    return pt.wrap(tiny_model(family), pt.PTuningV2Config(**cfg)).eval()


@pytest.mark.parametrize("family", ENCODERS + ("llama", "gpt2", "qwen2"))
def test_sequence_classification_trains_only_prefix_and_head(family):
    pm = make(family, num_labels=3).train()
    ids = token_ids(family, 4, 6)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}
    opt = torch.optim.AdamW(pm.trainable_parameters(), lr=5e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = pm(**batch)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.logits.shape == (4, 3)
    assert losses[-1] < 0.5 * losses[0]
    names = {n.split(".")[0] for n, p in pm.named_parameters() if p.requires_grad}
    assert names == {"prefix", "head"}
    count = pm.count_parameters()
    head = sum(p.numel() for p in pm.head.parameters())
    assert count.trainable == sum(p.numel() for p in pm.prefix.parameters()) + head


@pytest.mark.parametrize("family", ENCODERS + DECODERS)
def test_padded_rows_classify_like_rows_alone(family):
    pm = make(family)
    side = "left" if family in DECODERS else "right"
    rows = [token_ids(family, 1, n, seed=n)[0] for n in (6, 3, 5)]
    ids = torch.full((3, 6), pad_token(family))
    mask = torch.zeros(3, 6, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(6 - len(r), 6) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    batched = pm(input_ids=ids, attention_mask=mask).logits
    for i, r in enumerate(rows):
        alone = pm(input_ids=r[None], attention_mask=torch.ones(1, len(r), dtype=torch.long)).logits
        torch.testing.assert_close(batched[i:i + 1], alone, atol=2e-5, rtol=1e-4)


def test_token_classification():
    pm = make("bert", task="token-classification", num_labels=5)
    ids = token_ids("bert", 2, 6)
    labels = torch.randint(0, 5, (2, 6))
    labels[1, 4:] = -100
    out = pm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert out.logits.shape == (2, 6, 5)
    want = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 5), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)


def test_pooling_reference():
    h = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    assert pool(h, mask, "cls").flatten().tolist() == [1.0, 4.0]
    assert pool(h, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(h, mask, "mean").flatten().tolist() == [1.5, 5.5]


@pytest.mark.parametrize("family, reparam", [("distilbert", "direct"), ("roberta", "mlp"), ("llama", "mlp")])
def test_save_load_keeps_head(tmp_path, family, reparam):
    pm = make(family, num_labels=2, reparameterization=reparam, hidden_size=16)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids = token_ids(family, 2, 5)
    want = pm(input_ids=ids).logits
    pm.save_pretrained(tmp_path)
    loaded = pt.load(tiny_model(family), tmp_path).eval()
    assert isinstance(loaded.adapter_config, pt.PTuningV2Config)
    torch.testing.assert_close(loaded(input_ids=ids).logits, want, rtol=0, atol=0)
    folded = pt.load(tiny_model(family), tmp_path, folded=True).eval()
    torch.testing.assert_close(folded(input_ids=ids).logits, want, atol=1e-6, rtol=1e-5)


def test_generate_is_refused_with_a_head():
    with pytest.raises(TypeError, match="head"):
        make("llama").generate(input_ids=token_ids("llama", 1, 3))


def test_default_positions_are_shifted_like_prefix_config():
    pm = make("bert")
    assert pm.adapter_config.prefix.position_mode == "shifted" and pm.shifted
    gated = pt.PTuningV2Config(gate=True)
    assert gated.prefix.position_mode == "natural"


def test_too_long_input_for_learned_positions_is_a_clear_error():
    pm = make("bert")  # 128 learned positions, prefix 4 shifts positions by 4
    with pytest.raises(ValueError, match="input too long"):
        pm(input_ids=token_ids("bert", 1, 126))
