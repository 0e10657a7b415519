"""A PrefixModel where transformers tools expect a transformers model: Trainer, pipeline, the model interface."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import prefixtune as pt
from tiny import tiny_model, token_ids


def _lm(tiny_dir):
    return T.AutoModelForCausalLM.from_pretrained(tiny_dir), T.AutoTokenizer.from_pretrained(tiny_dir)


CONFIGS = [pt.PrefixConfig(prefix_length=3, hidden_size=16), pt.PromptConfig(num_virtual_tokens=3)]


@pytest.mark.parametrize("config", CONFIGS, ids=["prefix", "prompt"])
def test_text_generation_pipeline_runs_the_adapter(tiny_dir, config):
    base, tok = _lm(tiny_dir)
    pm = pt.wrap(base, config).eval()
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn_like(p) * 5)
    calls = []
    run = pm.runtime.generate
    pm.runtime.generate = lambda *a, **k: calls.append(k) or run(*a, **k)  # the adapter's own generate
    pipe = T.pipeline("text-generation", model=pm, tokenizer=tok)
    got = pipe("name[Place 1], food[Thai]", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    ids = tok("name[Place 1], food[Thai]", return_tensors="pt")
    want = tok.decode(pm.generate(**ids, max_new_tokens=6, do_sample=False)[0], skip_special_tokens=True)
    assert got == want
    assert len(calls) == 2  # once by the pipeline, once for `want`


def test_the_transformers_model_interface_comes_from_the_base_model():
    base = tiny_model("llama")
    pm = pt.wrap(base, pt.PrefixConfig(prefix_length=2, hidden_size=8))
    assert pm.config is base.config and isinstance(pm.adapter_config, pt.PrefixConfig)
    assert pm.device == torch.device("cpu") and pm.dtype == torch.float32
    assert pm.generation_config is base.generation_config and pm.main_input_name == "input_ids"
    assert pm.can_generate() and pm.get_input_embeddings() is base.get_input_embeddings()
    adapter = sum(p.numel() for p in pm.trainable_parameters())
    assert pm.num_parameters(only_trainable=True) == adapter
    assert pm.num_parameters() == adapter + sum(p.numel() for p in base.parameters())
    embeddings = sum(m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Embedding))
    assert pm.num_parameters(exclude_embeddings=True) == pm.num_parameters() - embeddings
    classifier = pt.wrap(tiny_model("bert"), pt.PTuningV2Config(prefix_length=2, num_labels=2))
    assert not classifier.can_generate()  # a head replaces the LM output


def test_print_trainable_parameters_speaks_peft(capsys):
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2, reparameterization="direct"))
    pm.print_trainable_parameters()
    n, total = pm.num_parameters(only_trainable=True), pm.num_parameters()
    assert capsys.readouterr().out.strip() == \
        f"trainable params: {n:,d} || all params: {total:,d} || trainable%: {100 * n / total:.4f}"


class _Rows(torch.utils.data.Dataset):
    """Fixed-length causal-LM rows: the Trainer's default collator stacks them."""

    def __init__(self, n: int, length: int = 8):
        ids = token_ids("llama", n, length, seed=3)
        ids[:, ::2] = 5  # an easy pattern to learn
        self.rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=["prefix", "prompt"])
def test_trainer_with_default_arguments_trains_and_evaluates(tmp_path, config, checkpointing):
    pm = pt.wrap(tiny_model("llama"), config)
    data = _Rows(16)
    args = T.TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4,
                               learning_rate=3e-2, report_to=[], save_strategy="no", use_cpu=True,
                               gradient_checkpointing=checkpointing)
    trainer = T.Trainer(model=pm, args=args, train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()["eval_loss"]  # found: forward names its labels
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.05, (before, after)
    assert pm.is_gradient_checkpointing == checkpointing


class _Labeled(torch.utils.data.Dataset):
    def __init__(self, n: int):
        ids = token_ids("bert", n, 6, seed=4)
        self.rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": torch.tensor(i % 3)}
                     for i, r in enumerate(ids)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_trainer_gradient_accumulation_with_a_head_equals_one_large_batch(tmp_path, accumulation):
    """Oracle: one SGD step on 4 examples at once. Trainer counts the items of the accumulated batch;
    a head's mean loss must then not be summed over micro-batches (it was: the step was 2x, 4x)."""
    def step(batch, accum):
        torch.manual_seed(0)
        pm = pt.wrap(tiny_model("bert"), pt.PTuningV2Config(prefix_length=2, num_labels=3, dropout=0.0,
                                                            head_dropout=0.0))
        for m in pm.modules():  # the frozen base's own dropout would draw other masks per micro-batch size
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        start = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
        args = T.TrainingArguments(output_dir=str(tmp_path / f"{batch}"), max_steps=1, per_device_train_batch_size=batch,
                                   gradient_accumulation_steps=accum, optim="sgd", learning_rate=0.5,
                                   lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], save_strategy="no",
                                   use_cpu=True)  # no clipping: it would hide a scaled loss
        T.Trainer(model=pm, args=args, train_dataset=_Labeled(4)).train()  # one global batch: any order
        return {n: p.detach() - start[n] for n, p in pm.named_parameters() if p.requires_grad}

    want = step(4, 1)
    got = step(4 // accumulation, accumulation)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
