"""Every method and every option, saved and loaded back every way: the same outputs.

The cases are generated from the method registry: each registered config (and each sub-config
it is made of) is varied one option at a time from a small base, so a new method or a new option
cannot be forgotten (``test_every_option_has_variants`` fails until it is listed here). Each case
is checked through every path an adapter takes: the full trainable state, the folded inference
tensors, resuming into a live model, folding before saving, and the bank (alone and next to a
bare row), or the bank's refusal where it does not serve the adapter.
"""

from __future__ import annotations


import pytest
import torch

import prefixtune as pt
from prefixtune.core.config import ComposedConfig, init_fields
from prefixtune.methods import REGISTRY
from prefixtune.runtime.bank import AdapterBank
from tiny import SEQ2SEQ, V, tiny_model, token_ids

HC = pt.HeadConfig
#: the small config each variant starts from
BASE = {
    pt.PrefixConfig: lambda: pt.PrefixConfig(prefix_length=3, hidden_size=16),
    pt.PromptConfig: lambda: pt.PromptConfig(num_virtual_tokens=3, encoder_hidden_size=8),
    pt.PTuningV2Config: lambda: pt.PTuningV2Config(prefix=BASE[pt.PrefixConfig](), head=BASE[HC]()),
    HC: lambda: HC(num_labels=2, dropout=0.0),
}
#: per config class and option: the values to try (a dict sets several options at once)
VARIANTS = {
    pt.PrefixConfig: {
        "prefix_length": [5], "reparameterization": ["direct"], "hidden_size": [7], "dropout": [0.3],
        "locations": [("decoder_self",), ("encoder_self",), ("cross",), ("encoder_self", "cross")],
        "exclude_layers": [(1,)], "position_mode": ["natural"], "init_std": [0.5],
        "init": ["vocab", {"init": "vocab", "reparameterization": "direct"}],
        "init_text": [{"init": "text", "init_text": "table to text"}],
        "gate": [True, {"gate": True, "reparameterization": "direct"}, {"gate": True, "position_mode": "shifted"}],
    },
    pt.PromptConfig: {
        "num_virtual_tokens": [1], "init": ["vocab"], "init_text": [{"init": "text", "init_text": "summarize"}],
        "label_words": [{"init": "labels", "label_words": ("good", "bad")}], "init_range": [0.05],
        "encoder": ["mlp", "lstm"], "encoder_hidden_size": [{"encoder": "mlp", "encoder_hidden_size": 6}],
        "dropout": [0.3], "head": "subconfig",
    },
    pt.PTuningV2Config: {"prefix": "subconfig", "head": "subconfig"},
    HC: {"task": ["token-classification"], "num_labels": [1, 3], "pooling": ["mean", "last"], "dropout": [0.4]},
}


def variants(cls: type) -> list:
    """The base config of ``cls`` and one variant per listed value (sub-configs: each of their variants)."""
    base = BASE[cls]()
    out = [base]
    for name, values in VARIANTS[cls].items():
        if values == "subconfig":
            out += [_replace(base, {name: sub}) for sub in variants(cls.SUBCONFIGS[name])]
        else:
            out += [_replace(base, v if isinstance(v, dict) else {name: v}) for v in values]
    return out


def _replace(config, changes: dict):
    options = {f.name: getattr(config, f.name) for f in init_fields(type(config))}
    if "position_mode" in options and "position_mode" not in changes:
        options["position_mode"] = None  # recomputed from gate
    return type(config)(**{**options, **changes})


def _fields(cls: type) -> set[str]:
    return {f.name for f in init_fields(cls)}


def test_every_option_has_variants():
    classes = [m.config for m in REGISTRY.values()]
    seen = set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        assert cls in VARIANTS and cls in BASE, f"{cls.__name__} (a registered config) has no round-trip cases"
        assert set(VARIANTS[cls]) == _fields(cls), f"{cls.__name__}: options without round-trip variants: " \
                                                   f"{sorted(_fields(cls) - set(VARIANTS[cls]))}"
        if issubclass(cls, ComposedConfig):
            classes += list(cls.SUBCONFIGS.values())


class WordTokenizer:
    """Enough of a tokenizer for inits from text: one id per word."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + sum(map(ord, w)) % (V - 3) for w in text.split()]}


def cases():
    for name, method in REGISTRY.items():
        for i, config in enumerate(variants(method.config)):
            has_head = getattr(config, "head", None) is not None
            for family in (("llama", "bert") if has_head else ("llama", "bert", "bart")):
                yield pytest.param(config, family, id=f"{name}-{i}-{family}")


def inputs(family: str) -> dict:
    ids = token_ids(family, 2, 6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # one left-padded row
    kw = {"input_ids": ids, "attention_mask": mask}
    if family in SEQ2SEQ:
        kw["decoder_input_ids"] = ids[:, :3]
    return kw


def perturbed(family: str, config):
    """A wrapped tiny model whose every trainable tensor (gates, heads included) is away from its init."""
    try:
        pm = pt.wrap(tiny_model(family), config, tokenizer=WordTokenizer())
    except ValueError as e:
        if "none of the configured locations" in str(e):
            pytest.skip(f"{family} has none of {config.prefix_config.locations}")
        raise
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return pm.eval()


def outputs(model, kw: dict) -> torch.Tensor:
    return model(**kw).logits


@pytest.mark.parametrize("config,family", list(cases()))
def test_round_trip(tmp_path, config, family):
    pm = perturbed(family, config)
    kw = inputs(family)
    want = outputs(pm, kw)
    pm.save_pretrained(tmp_path / "a")
    for folded in (False, True):  # the full trainable state, and the inference tensors only
        loaded = pt.load(tiny_model(family), tmp_path / "a", folded=folded).eval()
        assert loaded.adapter_config == config
        torch.testing.assert_close(outputs(loaded, kw), want, rtol=1e-5, atol=1e-5, msg=f"folded={folded}")
    resumed = pt.wrap(tiny_model(family), config, tokenizer=WordTokenizer())
    resumed.load_trainable(tmp_path / "a")
    torch.testing.assert_close(outputs(resumed.eval(), kw), want, rtol=1e-5, atol=1e-5)
    pm.fold().save_pretrained(tmp_path / "b")
    torch.testing.assert_close(outputs(pt.load(tiny_model(family), tmp_path / "b").eval(), kw), want,
                               rtol=1e-5, atol=1e-5)
    bank = AdapterBank(tiny_model(family))
    if pm.head is not None or (pm.prefix is not None and len(pm.prefix.gates)):
        with pytest.raises(ValueError, match="head|gated"):
            bank.add("a", tmp_path / "a")
        return
    bank.add("a", tmp_path / "a")
    torch.testing.assert_close(bank(adapter="a", **kw).logits, want, rtol=1e-5, atol=1e-5)
    mixed = bank(adapter=["a", None], **kw).logits  # per-row path: row 0 has the adapter, row 1 none
    torch.testing.assert_close(mixed[0], want[0], rtol=1e-5, atol=1e-5)
    # the bare model on the left-padded row alone; without its padding where positions count from the mask
    # (encoder-decoder models keep their own positions: there it runs padded, as the bank runs it)
    unpad = family not in SEQ2SEQ
    if not unpad and pm.prompt is not None:
        return  # known limitation (docs/design.md): the unused prompt slots of a bare row are left padding,
        # which moves BART's learned encoder positions
    alone = {k: v[1:, 2:] if unpad and k in ("input_ids", "attention_mask") else v[1:] for k, v in kw.items()}
    bare = tiny_model(family)(**alone).logits
    got = mixed[1:, 2:] if unpad else mixed[1:]
    torch.testing.assert_close(got, bare, rtol=1e-5, atol=1e-5)
