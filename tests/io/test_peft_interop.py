"""PEFT checkpoints in and out: same logits as PEFT's own forward, both ways (needs the peft extra)."""

from __future__ import annotations

import json

import pytest
import torch

import prefixtune as pt
from tiny import tiny_model, token_ids

peft = pytest.importorskip("peft")
from peft import (PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType,  # noqa: E402
                  get_peft_model)


def peft_adapter(family, kind, tmp_path, length=4):
    base = tiny_model(family)
    if kind == "ptuning":
        cfg = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=length, encoder_hidden_size=16)
    else:
        cfg = (PrefixTuningConfig if kind == "prefix" else PromptTuningConfig)(task_type=TaskType.CAUSAL_LM,
                                                                                num_virtual_tokens=length)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0.0, 1.0)
    model.eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("kind", ["prefix", "prompt", "ptuning"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_peft_adapter_loads_with_same_logits(tmp_path, family, kind):
    ref = peft_adapter(family, kind, tmp_path)
    ids = token_ids(family, 3, 7)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
    ours = pt.from_peft(tiny_model(family), tmp_path).eval()
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits
    if kind != "prefix":
        want = want[:, 4:]  # PEFT returns logits for the virtual tokens too
    assert (got - ours.unwrap()(input_ids=ids, attention_mask=mask).logits).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_our_export_loads_in_peft_with_same_logits(tmp_path, family, kind):
    if kind == "prefix":
        config = pt.PrefixConfig(prefix_length=4, hidden_size=16, init_std=1.0)
    else:
        config = pt.PromptConfig(num_virtual_tokens=4, encoder="mlp", encoder_hidden_size=16)
    ours = pt.wrap(tiny_model(family), config).eval()
    ids = token_ids(family, 2, 6)
    with torch.no_grad():
        want = ours(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    ours.save_peft(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == ("PREFIX_TUNING" if kind == "prefix" else "PROMPT_TUNING")
    theirs = PeftModel.from_pretrained(tiny_model(family), tmp_path).eval()
    with torch.no_grad():
        got = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    if kind == "prompt":
        got = got[:, 4:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and back into prefixtune
    again = pt.from_peft(tiny_model(family), tmp_path).eval()
    torch.testing.assert_close(again(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, want, atol=1e-5, rtol=1e-5)


def test_incompatible_peft_checkpoints_fail_clearly(tmp_path):
    peft_adapter("llama", "prefix", tmp_path)
    import transformers as T

    cfg = tiny_model("llama").config.to_dict()
    cfg["num_hidden_layers"] = 3
    with pytest.raises(pt.ShapeMismatchError, match="adapter has 2 layers, model has 3"):
        pt.from_peft(T.LlamaForCausalLM(T.LlamaConfig(**cfg)), tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta["peft_type"] = "LORA"
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(pt.CheckpointError, match="LORA"):
        pt.from_peft(tiny_model("llama"), tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(pt.CheckpointError, match="not a readable safetensors"):
        pt.from_peft(tiny_model("llama"), tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(pt.CheckpointError, match="never unpickles"):
        pt.from_peft(tiny_model("llama"), tmp_path)


def test_unexportable_adapters_are_refused(tmp_path):
    gated = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2, gate=True, position_mode="shifted"))
    with pytest.raises(ValueError, match="gates"):
        gated.save_peft(tmp_path)
    head = pt.wrap(tiny_model("bert"), pt.PTuningV2Config(prefix_length=2))
    with pytest.raises(ValueError, match="head"):
        head.save_peft(tmp_path)


def test_export_records_the_base_model_name(tmp_path):
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2, reparameterization="direct"))
    pm.save_peft(tmp_path / "named", base_model_name="org/tiny-llama")
    assert json.loads((tmp_path / "named" / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == "org/tiny-llama"
    pm.base_model.config._name_or_path = "local/tiny"
    pm.save_peft(tmp_path / "default")
    assert json.loads((tmp_path / "default" / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == "local/tiny"
