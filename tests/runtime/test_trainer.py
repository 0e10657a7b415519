"""Trainer checkpoints and TRL: a PrefixModel's state is its adapter, saved and resumed by the tools themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import prefixtune as pt
from prefixtune.io.checkpoint import CheckpointError
from tiny import V, token_ids


def tied_llama(seed: int = 0) -> torch.nn.Module:
    """A tiny Llama whose LM head shares the embedding matrix, as SmolLM2 and GPT-2 do."""
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        tie_word_embeddings=True)
    model = T.LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int = 8):
        ids = token_ids("llama", n, length, seed=3)
        ids[:, ::2] = 5
        self.rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


CONFIGS = {
    "prefix": lambda: pt.PrefixConfig(prefix_length=3, hidden_size=16, dropout=0.0),
    "prompt": lambda: pt.PromptConfig(num_virtual_tokens=3, encoder="mlp", encoder_hidden_size=16, dropout=0.0),
}


def _args(out: Path, **kw) -> T.TrainingArguments:
    base = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=3e-2, report_to=[],
                use_cpu=True, save_strategy="steps", save_steps=3, logging_steps=1, seed=7, dataloader_num_workers=0)
    return T.TrainingArguments(**{**base, **kw})


def _trained(pm: pt.PrefixModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", CONFIGS)
def test_trainer_checkpoints_hold_the_adapter_and_resume_to_the_same_weights(tmp_path, method):
    """Oracle: an uninterrupted 6-step run. Checkpoints of a model with tied embeddings used to crash
    ("Some tensors share memory") and would otherwise hold the whole frozen base."""
    data = _Rows(24)
    whole = pt.wrap(tied_llama(), CONFIGS[method]())
    T.Trainer(model=whole, args=_args(tmp_path / "whole"), train_dataset=data).train()
    saved = load_file(tmp_path / "whole" / "checkpoint-3" / "model.safetensors")
    assert not [k for k in saved if k.startswith("base_model.")]
    assert {k for k in saved if k != "_extra_state"} == set(_trained(whole))

    resumed = pt.wrap(tied_llama(), CONFIGS[method]())  # fresh parts, another init: the checkpoint must win
    with torch.no_grad():
        for p in resumed.trainable_parameters():
            p.add_(1.0)
    trainer = T.Trainer(model=resumed, args=_args(tmp_path / "resumed"), train_dataset=data)
    trainer.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))  # as if killed after step 3
    want, got = _trained(whole), _trained(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_save_model_writes_what_pt_load_reads(tmp_path):
    base = tied_llama()
    pm = pt.wrap(base, CONFIGS["prefix"]())
    trainer = T.Trainer(model=pm, args=_args(tmp_path, max_steps=2, save_strategy="no"), train_dataset=_Rows(8))
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = pt.load(tied_llama(), tmp_path / "final")
    ids = token_ids("llama", 2, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, pm.eval()(input_ids=ids).logits)
    assert isinstance(loaded.adapter_config, pt.PrefixConfig) and loaded.adapter_config == pm.adapter_config


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path):
    pm = pt.wrap(tied_llama(), CONFIGS["prefix"]())
    args = _args(tmp_path, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                 metric_for_best_model="eval_loss", greater_is_better=False, save_total_limit=1)
    trainer = T.Trainer(model=pm, args=args, train_dataset=_Rows(24), eval_dataset=_Rows(8))
    trainer.train()
    best = load_file(Path(trainer.state.best_model_checkpoint) / "model.safetensors")
    for name, p in pm.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), best[name], msg=name)


def test_a_state_of_another_adapter_is_refused_by_name():
    prefix = pt.wrap(tied_llama(), pt.PrefixConfig(prefix_length=3, hidden_size=16))
    longer = pt.wrap(tied_llama(), pt.PrefixConfig(prefix_length=5, hidden_size=16))
    prompt = pt.wrap(tied_llama(), CONFIGS["prompt"]())
    with pytest.raises(CheckpointError, match="prefix_length"):
        longer.load_state_dict(prefix.state_dict())
    with pytest.raises(CheckpointError, match="prefix.*prompt|prompt.*prefix"):
        prompt.load_state_dict(prefix.state_dict())


def test_the_state_dict_is_the_adapter_and_loads_strictly():
    """``state_dict`` holds the trainable parts and what they are (so Trainer's files describe
    themselves); a strict load does not ask for the frozen base's tensors."""
    pm = pt.wrap(tied_llama(), CONFIGS["prompt"]())
    state = pm.state_dict()
    meta = json.loads(bytes(state["_extra_state"].tolist()).decode())
    assert meta["method"] == "prompt" and meta["config"]["num_virtual_tokens"] == 3
    other = pt.wrap(tied_llama(seed=1), CONFIGS["prompt"]())
    result = other.load_state_dict(state)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    for (name, a), (_, b) in zip(pm.named_parameters(), other.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, msg=name)


def test_evaluate_with_compute_metrics_needs_no_label_names(tmp_path):
    calls = []

    def metrics(pred: T.EvalPrediction) -> dict[str, float]:
        calls.append(pred.label_ids.shape)
        return {"tokens": float(pred.label_ids.size)}

    pm = pt.wrap(tied_llama(), CONFIGS["prefix"]())
    trainer = T.Trainer(model=pm, args=_args(tmp_path, save_strategy="no"), eval_dataset=_Rows(8),
                        compute_metrics=metrics)
    scores = trainer.evaluate()
    assert "eval_loss" in scores and scores["eval_tokens"] == 8 * 8 and calls


# ---------------------------------------------------------------- TRL

SFT_CONFIGS = {"prefix": lambda: pt.PrefixConfig(prefix_length=3, hidden_size=16, dropout=0.0, init_std=0.5),
               "prompt": lambda: pt.PromptConfig(num_virtual_tokens=3, dropout=0.0)}


@pytest.mark.parametrize("method", SFT_CONFIGS)
def test_trl_sft_trainer_trains_through_the_adapter(tiny_dir, tmp_path, method):
    """TRL patches ``forward`` with its fused LM head; the patch goes under the adapter. Oracle: the
    fused loss equals the adapter's own loss (and differs from the bare model's), then training lowers it."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    tok = T.AutoTokenizer.from_pretrained(tiny_dir)
    base = T.AutoModelForCausalLM.from_pretrained(tiny_dir)
    pm = pt.wrap(base, SFT_CONFIGS[method]())
    texts = [f"name[Place {i % 4}] food[Thai] -> Place {i % 4} serves Thai food." for i in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8, learning_rate=5e-2,
                         report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, seed=0)
    trainer = trl.SFTTrainer(model=pm, args=args, train_dataset=datasets.Dataset.from_dict({"text": texts}),
                             processing_class=tok)
    batch = tok(texts[:3], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        own = pm(**batch, labels=labels).loss
        fused = pm(**batch, labels=labels, fused_lm_head=True).loss
        bare = base(**batch, labels=labels).loss
    torch.testing.assert_close(fused, own, rtol=1e-4, atol=1e-5)
    assert abs(float(own) - float(bare)) > 1e-3  # the adapter changes the loss: it is on the path
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.01, losses


class _Classes(torch.utils.data.Dataset):
    """Two classes told apart by the first token."""

    def __init__(self, n: int):
        ids = token_ids("bert", n, 6, seed=5)
        ids[:, 0] = torch.tensor([7 if i % 2 else 9 for i in range(n)])
        self.rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": torch.tensor(i % 2)}
                     for i, r in enumerate(ids)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("config", [pt.PTuningV2Config(prefix_length=3, num_labels=2, pooling="mean"),
                                    pt.PromptConfig(num_virtual_tokens=3, encoder="lstm", num_labels=2)],
                         ids=["ptuning_v2", "ptuning-lstm-head"])
def test_trainer_trains_heads_and_compute_metrics_sees_their_logits(tmp_path, config):
    from tiny import tiny_model

    pm = pt.wrap(tiny_model("bert"), config)
    seen = []

    def accuracy(pred: T.EvalPrediction) -> dict[str, float]:
        seen.append(pred.predictions.shape)
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = T.Trainer(model=pm, args=_args(tmp_path, max_steps=15, save_strategy="no", learning_rate=5e-2),
                        train_dataset=_Classes(16), eval_dataset=_Classes(16), compute_metrics=accuracy)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.05, (before, after)
    assert seen[-1] == (16, 2) and "eval_accuracy" in after
