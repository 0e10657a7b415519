"""LoRA (through PEFT) and full fine-tuning baselines: start state, counts, save/load, heads, checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

from prefixtune.train.baselines import BaselineModel, FullConfig, LoraConfig, load_baseline
from prefixtune.io.checkpoint import CheckpointError
from prefixtune.core.config import ConfigError
from tiny import pad_token, tiny_model, token_ids


def _step(model: BaselineModel, ids: torch.Tensor, lr: float = 1e-1) -> None:
    opt = torch.optim.SGD(model.trainable_parameters(), lr=lr)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.eval()


def test_fresh_lora_is_the_base_model_and_training_changes_it():
    base = tiny_model("llama")
    ids = token_ids("llama", 2, 7)
    expected = base(input_ids=ids).logits
    bm = BaselineModel(copy.deepcopy(base), LoraConfig(r=4, dropout=0.0)).eval()
    torch.testing.assert_close(bm(input_ids=ids).logits, expected, rtol=0, atol=0)  # B starts at zero
    _step(bm, ids)
    assert (bm(input_ids=ids).logits - expected).abs().max() > 1e-4


def test_lora_parameter_count_matches_the_formula():
    base = tiny_model("llama")  # 2 layers, d=32, 4 heads, 2 kv heads of 8 -> q: 32->32, v: 32->16
    bm = BaselineModel(base, LoraConfig(r=4))
    per_layer = 4 * (32 + 32) + 4 * (32 + 16)  # PEFT's default Llama targets: q_proj, v_proj
    count = bm.count_parameters()
    assert count.trainable == count.stored == 2 * per_layer
    assert count.base == sum(p.numel() for p in tiny_model("llama").parameters())


def test_full_fine_tuning_trains_every_parameter_once():
    base = tiny_model("gpt2")  # tied input and output embeddings: counted once
    n = sum(p.numel() for p in base.parameters())
    bm = BaselineModel(base, FullConfig())
    assert bm.count_parameters().trainable == n == bm.count_parameters().base
    assert len(bm.trainable_parameters()) == len(list(base.parameters()))


@pytest.mark.parametrize("config", [LoraConfig(r=2, dropout=0.0), FullConfig()], ids=["lora", "full"])
def test_save_then_load_gives_the_same_logits(config, tmp_path):
    ids = token_ids("llama", 2, 6)
    bm = BaselineModel(tiny_model("llama"), config)
    _step(bm, ids)
    bm.save_pretrained(tmp_path / "a")
    loaded = load_baseline(tiny_model("llama"), tmp_path / "a")
    torch.testing.assert_close(loaded(input_ids=ids).logits, bm(input_ids=ids).logits, rtol=0, atol=0)
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(input_ids=ids, **greedy), bm.generate(input_ids=ids, **greedy))


def test_wrong_or_damaged_checkpoints_are_refused(tmp_path):
    BaselineModel(tiny_model("llama"), LoraConfig(r=2)).save_pretrained(tmp_path / "lora")
    with pytest.raises(CheckpointError, match="'lora' checkpoint"):
        BaselineModel(tiny_model("llama"), FullConfig()).load_trainable(tmp_path / "lora")
    with pytest.raises(CheckpointError, match="do not match"):
        BaselineModel(tiny_model("llama"), LoraConfig(r=2, target_modules=["k_proj"])).load_trainable(tmp_path / "lora")
    blob = (tmp_path / "lora" / "trainable.safetensors").read_bytes()
    (tmp_path / "lora" / "trainable.safetensors").write_bytes(blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:]))
    with pytest.raises(CheckpointError, match="checksum"):
        load_baseline(tiny_model("llama"), tmp_path / "lora")


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="r must be"):
        LoraConfig(r=0)
    with pytest.raises(ConfigError, match="pooling"):
        FullConfig(num_labels=2, pooling="max")
    with pytest.raises(ConfigError, match="target_modules"):
        BaselineModel(tiny_model("llama"), LoraConfig(target_modules=["no_such_module"]))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_classification_head_padded_rows_equal_rows_alone(method):
    torch.manual_seed(0)
    config = LoraConfig(r=2, num_labels=3, pooling="mean") if method == "lora" else FullConfig(num_labels=3, pooling="mean")
    bm = BaselineModel(tiny_model("bert"), config).eval()
    ids = token_ids("bert", 2, 7)
    mask = torch.ones_like(ids)
    ids[1, 4:], mask[1, 4:] = pad_token("bert"), 0
    both = bm(input_ids=ids, attention_mask=mask).logits
    assert both.shape == (2, 3)
    alone = bm(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-4)
    labels = torch.tensor([0, 2])
    out = bm(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(both, labels))
    with pytest.raises(TypeError, match="classification head"):
        bm.generate(input_ids=ids)


@pytest.mark.parametrize("config", [LoraConfig(r=2, dropout=0.0), FullConfig()], ids=["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(config):
    ids = token_ids("llama", 2, 6)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        bm = BaselineModel(tiny_model("llama"), copy.deepcopy(config))
        if isinstance(config, LoraConfig):  # B = 0 makes A's gradient zero: give B a value
            with torch.no_grad():
                for name, p in bm.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        if checkpointing:
            bm.gradient_checkpointing_enable()
            base = bm.net.get_base_model() if hasattr(bm.net, "get_base_model") else bm.net
            assert base.is_activation_checkpointing
        bm.train()
        bm(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in bm.trainable_parameters()])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
