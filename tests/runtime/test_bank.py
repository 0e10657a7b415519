"""The prefix bank: many adapters on one model, one per row; each row equals itself alone."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.runtime.bank import AdapterBank, UnknownAdapterError
from tiny import pad_token, tiny_model, token_ids


def adapters(family):
    made = {
        "p3": pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=1.0)),
        "p5": pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=5, reparameterization="direct", init_std=1.0)),
        "nat": pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=2, reparameterization="direct", init_std=1.0,
                                                           position_mode="natural")),
        "prompt4": pt.wrap(tiny_model(family), pt.PromptConfig(num_virtual_tokens=4)),
        "prompt2": pt.wrap(tiny_model(family), pt.PromptConfig(num_virtual_tokens=2, encoder="mlp",
                                                               encoder_hidden_size=16)),
    }
    return {k: v.eval() for k, v in made.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_mixed_rows_equal_each_adapter_alone(family, tmp_path):
    ads = adapters(family)
    bank = AdapterBank(tiny_model(family))
    for name, pm in ads.items():
        if name == "p5":
            pm.save_pretrained(tmp_path / name)
            bank.add(name, tmp_path / name)
        else:
            bank.add(name, pm)
    names = ["p3", None, "prompt4", "p5", "nat", "prompt2", "p3"]
    rows = [token_ids(family, 1, n, seed=n)[0] for n in (6, 4, 5, 6, 3, 6, 2)]
    n = 6
    left = family != "bert"
    ids = torch.full((len(rows), n), pad_token(family))
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(n - len(r), n) if left else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    mixed = bank(names, input_ids=ids, attention_mask=mask).logits
    for i, (name, r) in enumerate(zip(names, rows)):
        one = {"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)}
        if name is None:
            with ads["p3"].injection.active(None):
                want = ads["p3"].base_model(**one).logits
        else:
            want = ads[name](**one).logits
        torch.testing.assert_close(mixed[i][mask[i].bool()], want[0], atol=2e-5, rtol=1e-4)


def test_mixed_generation_equals_each_alone():
    ads = adapters("llama")
    bank = AdapterBank(tiny_model("llama"))
    for name, pm in ads.items():
        bank.add(name, pm)
    names = ["p3", "prompt4", None, "p5", "prompt2"]
    rows = [token_ids("llama", 1, n, seed=n)[0] for n in (5, 3, 4, 5, 2)]
    ids = torch.zeros(len(rows), 5, dtype=torch.long)
    mask = torch.zeros(len(rows), 5, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 5 - len(r):], mask[i, 5 - len(r):] = r, 1
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = bank.generate(names, input_ids=ids, attention_mask=mask, **kw)[:, 5:]
    for i, (name, r) in enumerate(zip(names, rows)):
        alone = bank.generate(name, input_ids=r[None], attention_mask=torch.ones(1, len(r), dtype=torch.long), **kw)
        assert torch.equal(out[i], alone[0, len(r):]), name
        if name is not None:
            own = ads[name].generate(input_ids=r[None], attention_mask=torch.ones(1, len(r), dtype=torch.long), **kw)
            assert torch.equal(alone, own), name


def test_add_remove_and_errors(tmp_path):
    bank = AdapterBank(tiny_model("llama"))
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2))
    bank.add("a", pm)
    assert bank.names() == ["a"]
    with pytest.raises(ValueError, match="already loaded"):
        bank.add("a", pm)
    with pytest.raises(UnknownAdapterError, match="'b'"):
        bank(["a", "b"], input_ids=token_ids("llama", 2, 3))
    bank.remove("a")
    assert bank.names() == []
    with pytest.raises(UnknownAdapterError):
        bank.remove("a")
    with pytest.raises(ValueError, match="head"):
        bank.add("cls", pt.wrap(tiny_model("llama"), pt.PTuningV2Config(prefix_length=2, pooling="last")))
    with pytest.raises(pt.CheckpointError):
        bank.add("missing", tmp_path / "nothing")


def test_a_saved_gated_adapter_is_refused_not_served_without_its_gates(tmp_path):
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2, reparameterization="direct", gate=True))
    pm.save_pretrained(tmp_path)
    bank = AdapterBank(tiny_model("llama"))
    with pytest.raises(ValueError, match="gated"):
        bank.add("gated", tmp_path)


def test_adding_a_model_in_training_mode_serves_it_without_dropout_and_leaves_it_training():
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, reparameterization="direct", dropout=0.5))
    pm.train()
    bank = AdapterBank(tiny_model("llama"))
    bank.add("a", pm)
    assert pm.training and pm.prefix.training  # the bank changed nothing in the caller's model
    ids = token_ids("llama", 2, 5)
    pm.eval()
    want = pm(input_ids=ids).logits
    torch.testing.assert_close(bank(adapter="a", input_ids=ids).logits, want)
    kv = pm.prefix.encoders["decoder_self"].kv
    assert bank.adapters["a"].kvs["decoder_self"].data_ptr() != kv.data_ptr()  # a copy, not the live parameter


def test_detached_adapter_tensors_keep_gates_and_own_their_storage():
    from prefixtune.runtime.adapters import AdapterTensors

    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2, reparameterization="direct", gate=True))
    with torch.no_grad():
        pm.prefix.gates["decoder_self"].add_(0.5)
    live = AdapterTensors.of(pm.adapter_config, pm.parts)
    copy = live.detached("cpu")
    assert set(copy.gates) == {"decoder_self"} and torch.equal(copy.gates["decoder_self"], live.gates["decoder_self"])
    assert copy.gates["decoder_self"].data_ptr() != live.gates["decoder_self"].data_ptr()
    assert not copy.gates["decoder_self"].requires_grad and copy.shift == live.shift == 0  # gated: natural positions
