"""save_pretrained -> load: identical logits, resumable state, clear errors, atomic writes."""

from __future__ import annotations

import json
import re

import pytest
import torch

import prefixtune as pt
from prefixtune.io.checkpoint import ADAPTER_NAME as PREFIX_NAME, CONFIG_NAME, TRAINABLE_NAME
from prefixtune.io.files import atomic_write
from tiny import SEQ2SEQ, tiny_model, token_ids


def kw_for(family):
    ids = token_ids(family, 2, 6)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family in SEQ2SEQ:
        kw["decoder_input_ids"] = ids[:, :3]
    return kw


def trained(family, **cfg):
    pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=1.0, **cfg))
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return pm.eval()


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "distilbert", "t5", "bart"])
def test_round_trip_gives_identical_logits(tmp_path, family, reparam):
    pm = trained(family, reparameterization=reparam)
    kw = kw_for(family)
    want = pm(**kw).logits
    pm.save_pretrained(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert manifest["layout"]["model_type"] == family
    loaded = pt.load(tiny_model(family), tmp_path / "a").eval()
    assert loaded.adapter_config == pm.adapter_config
    torch.testing.assert_close(loaded(**kw).logits, want, rtol=0, atol=0)
    folded = pt.load(tiny_model(family), tmp_path / "a", folded=True).eval()
    assert folded.prefix.is_folded
    torch.testing.assert_close(folded(**kw).logits, want, atol=1e-6, rtol=1e-5)


def test_mlp_state_is_saved_for_resuming(tmp_path):
    pm = trained("llama")
    pm.save_pretrained(tmp_path)
    assert (tmp_path / TRAINABLE_NAME).is_file()
    loaded = pt.load(tiny_model("llama"), tmp_path)
    assert not loaded.prefix.is_folded
    for (n, a), (m, b) in zip(pm.prefix.state_dict().items(), loaded.prefix.state_dict().items()):
        assert n == m and torch.equal(a, b)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {n for n, p in pm.named_parameters() if p.requires_grad}


def test_fold_keeps_outputs_and_saves_only_kv(tmp_path):
    pm = trained("qwen2")
    kw = kw_for("qwen2")
    want = pm(**kw).logits
    pm.fold()
    assert pm.prefix.is_folded
    torch.testing.assert_close(pm(**kw).logits, want, atol=1e-6, rtol=1e-5)
    pm.save_pretrained(tmp_path)
    assert not (tmp_path / TRAINABLE_NAME).exists()
    stored = sum(p.numel() for p in pm.prefix.parameters())
    assert stored == pm.count_parameters().stored


@pytest.mark.parametrize("other, message", [
    (dict(num_hidden_layers=3), "adapter has 2 layers, model has 3"),
    (dict(num_key_value_heads=4), "adapter has 2 key/value heads, model has 4"),
    (dict(hidden_size=64, head_dim=16), "adapter has 8 head size, model has 16"),
])
def test_loading_into_another_shape_names_the_mismatch(tmp_path, other, message):
    import transformers as T

    trained("llama").save_pretrained(tmp_path)
    cfg = tiny_model("llama").config.to_dict()
    cfg.update(other)
    wrong = T.LlamaForCausalLM(T.LlamaConfig(**cfg))
    with pytest.raises(pt.ShapeMismatchError, match=message):
        pt.load(wrong, tmp_path)


def test_corrupt_partial_and_missing_files_are_detected(tmp_path):
    trained("gpt2").save_pretrained(tmp_path)
    model = tiny_model("gpt2")
    data = (tmp_path / TRAINABLE_NAME).read_bytes()
    (tmp_path / TRAINABLE_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(pt.CheckpointError, match="corrupt or was partly written"):
        pt.load(model, tmp_path)
    (tmp_path / TRAINABLE_NAME).unlink()
    with pytest.raises(pt.CheckpointError, match="missing"):
        pt.load(tiny_model("gpt2"), tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(pt.CheckpointError, match="not valid JSON"):
        pt.load(tiny_model("gpt2"), tmp_path)
    with pytest.raises(pt.CheckpointError, match="no such adapter directory"):
        pt.load(tiny_model("gpt2"), tmp_path / "nope")
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(pt.CheckpointError, match="not a prefixtune adapter"):
        pt.load(tiny_model("gpt2"), tmp_path)


def test_pickles_are_never_loaded(tmp_path):
    """A checkpoint whose tensor file is a pickle is refused, not unpickled."""
    import pickle

    trained("gpt2", reparameterization="direct").save_pretrained(tmp_path)
    payload = pickle.dumps({"decoder_self": torch.zeros(1)})
    manifest = json.loads((tmp_path / CONFIG_NAME).read_text())
    import hashlib

    manifest["files"][PREFIX_NAME] = hashlib.sha256(payload).hexdigest()
    (tmp_path / PREFIX_NAME).write_bytes(payload)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(manifest))
    with pytest.raises(pt.CheckpointError, match="not a readable safetensors"):
        pt.load(tiny_model("gpt2"), tmp_path)


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_resave_over_an_mlp_save_after_folding_removes_stale_state(tmp_path):
    pm = trained("llama")
    pm.save_pretrained(tmp_path)
    pm.fold().save_pretrained(tmp_path)
    assert not (tmp_path / TRAINABLE_NAME).exists()
    assert pt.load(tiny_model("llama"), tmp_path).prefix.is_folded


def _rewrite(path, name, tensors):
    """Replace one tensor file with ``tensors`` and fix its checksum, as a forger (or a bug) would."""
    import hashlib

    from safetensors.torch import save as st_save

    data = st_save(tensors)
    (path / name).write_bytes(data)
    manifest = json.loads((path / CONFIG_NAME).read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (path / CONFIG_NAME).write_text(json.dumps(manifest))


def test_tensors_that_do_not_fit_the_config_are_refused_even_with_a_valid_checksum(tmp_path):
    from safetensors.torch import load_file

    trained("llama").save_pretrained(tmp_path / "mlp")  # trainable state: every tensor must be there
    state = load_file(tmp_path / "mlp" / TRAINABLE_NAME)
    dropped = dict(state)
    dropped.pop(next(k for k in state if k.endswith("mlp.0.bias")))
    _rewrite(tmp_path / "mlp", TRAINABLE_NAME, dropped)
    with pytest.raises(pt.CheckpointError, match="do not match the config"):
        pt.load(tiny_model("llama"), tmp_path / "mlp")
    trained("llama", reparameterization="direct").save_pretrained(tmp_path / "direct")  # folded: adapter only
    kv = load_file(tmp_path / "direct" / PREFIX_NAME)["prefix.decoder_self"]
    for bad in ({"prefix.decoder_self": kv[:, :, :, :2].contiguous()}, {}):
        _rewrite(tmp_path / "direct", PREFIX_NAME, bad)
        got = tuple(bad["prefix.decoder_self"].shape) if bad else None
        with pytest.raises(pt.CheckpointError, match=rf"prefix.decoder_self has shape {re.escape(str(got))}, "
                                                     rf"expected \({kv.shape[0]}, 2,"):
            pt.load(tiny_model("llama"), tmp_path / "direct")
    prompt = pt.wrap(tiny_model("llama"), pt.PromptConfig(num_virtual_tokens=3))
    prompt.save_pretrained(tmp_path / "prompt")
    _rewrite(tmp_path / "prompt", PREFIX_NAME, {})
    with pytest.raises(pt.CheckpointError, match="prompt has shape None"):
        pt.load(tiny_model("llama"), tmp_path / "prompt")


def test_atomic_write_goes_through_a_hidden_temporary_file_in_the_same_directory(tmp_path, monkeypatch):
    """``os.replace`` is atomic only within one file system: the temporary file sits next to the target,
    named ``.<name>.*.tmp`` (hidden, and recognisable as a leftover if the process dies)."""
    import os

    seen = []
    real = os.replace
    monkeypatch.setattr("os.replace", lambda src, dst: (seen.append((src, dst)), real(src, dst)))
    atomic_write(tmp_path / "sub" / "f.bin", b"data")
    (src, dst), = seen
    src = os.path.abspath(src)
    assert os.path.dirname(src) == str(tmp_path / "sub") and dst == tmp_path / "sub" / "f.bin"
    name = os.path.basename(src)
    assert name.startswith(".f.bin.") and name.endswith(".tmp")
    assert (tmp_path / "sub" / "f.bin").read_bytes() == b"data"


def test_manifest_records_the_given_base_model_name(tmp_path):
    pm = trained("llama")
    pm.save_pretrained(tmp_path / "named", base_model_name="org/tiny-llama")
    assert json.loads((tmp_path / "named" / CONFIG_NAME).read_text())["base_model"] == "org/tiny-llama"


def test_an_adapter_initialized_from_text_loads_without_a_tokenizer(tmp_path):
    """Loading restores the saved tensors; the config's init (here from text, which needs a tokenizer)
    is not run again."""
    fake_tokenizer = lambda text, add_special_tokens=False: {"input_ids": [5, 6]}  # noqa: E731
    for cfg in (pt.PromptConfig(num_virtual_tokens=3, init="text", init_text="table:"),
                pt.PrefixConfig(prefix_length=3, hidden_size=8, init="text", init_text="table:")):
        pm = pt.wrap(tiny_model("llama"), cfg, tokenizer=fake_tokenizer).eval()
        pm.save_pretrained(tmp_path / cfg.method)
        loaded = pt.load(tiny_model("llama"), tmp_path / cfg.method).eval()
        kw = kw_for("llama")
        torch.testing.assert_close(loaded(**kw).logits, pm(**kw).logits, atol=0, rtol=0)


@pytest.mark.parametrize("reparam", ["direct", "mlp"])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_gated_prefix_keeps_its_gates_through_save_and_load(tmp_path, family, reparam):
    """The gates are part of the adapter: reloaded (full state or folded), the outputs are the same."""
    pm = trained(family, reparameterization=reparam, gate=True)
    with torch.no_grad():
        for g in pm.prefix.gates.values():
            g.normal_()
    kw = kw_for(family)
    want = pm(**kw).logits
    pm.save_pretrained(tmp_path)
    for folded in (False, True):
        loaded = pt.load(tiny_model(family), tmp_path, folded=folded).eval()
        assert set(loaded.prefix.gates) == set(pm.prefix.gates)
        torch.testing.assert_close(loaded(**kw).logits, want, atol=1e-6, rtol=1e-6)
    pm.fold().save_pretrained(tmp_path / "folded")
    torch.testing.assert_close(pt.load(tiny_model(family), tmp_path / "folded").eval()(**kw).logits, want,
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", [TRAINABLE_NAME, PREFIX_NAME])
def test_tensors_of_a_part_the_adapter_does_not_have_are_refused(tmp_path, name):
    """A head's weights in a prefix adapter (a file from another adapter, or edited) are not ignored."""
    from safetensors.torch import load_file

    trained("llama").save_pretrained(tmp_path / "a")
    state = load_file(tmp_path / "a" / name)
    _rewrite(tmp_path / "a", name, {**state, "head.classifier.weight": torch.zeros(2, 32)})
    with pytest.raises(pt.CheckpointError, match=r"unexpected tensors \['head.classifier.weight'\]"):
        pt.load(tiny_model("llama"), tmp_path / "a", folded=name == PREFIX_NAME)


def test_manifest_says_whether_only_folded_tensors_are_saved(tmp_path):
    pm = trained("llama")
    pm.save_pretrained(tmp_path / "mlp")
    pm.fold().save_pretrained(tmp_path / "folded")
    assert json.loads((tmp_path / "mlp" / CONFIG_NAME).read_text())["folded"] is False
    assert json.loads((tmp_path / "folded" / CONFIG_NAME).read_text())["folded"] is True


@pytest.mark.parametrize("config", [pt.PrefixConfig(prefix_length=3, hidden_size=8, dropout=0.4),
                                    pt.PromptConfig(num_virtual_tokens=3, encoder="mlp", encoder_hidden_size=8,
                                                    dropout=0.4)])
def test_dropout_survives_folding_and_loading_the_folded_tensors(tmp_path, config):
    """Training a folded adapter further (e.g. one loaded with folded=True) keeps the config's dropout."""
    pm = pt.wrap(tiny_model("llama"), config)
    pm.save_pretrained(tmp_path / "a")
    folded = pm.fold()
    loaded = pt.load(tiny_model("llama"), tmp_path / "a", folded=True)
    for model in (folded, loaded):
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout) and m is not None}
        assert 0.4 in rates, rates
