"""Evaluation scores: every reference of a multi-reference input counts; the limit takes the first inputs."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from prefixtune.data.tasks import Example, Task, TaskSpec
from prefixtune.evaluation import evaluate as ev


NO_TOKENIZER = SimpleNamespace(eos_token_id=0, pad_token_id=0)  # generation is stubbed out


def multi_reference_task() -> Task:
    refs = {"name[A]\n": ["A is a pub.", "There is a pub called A."],
            "name[B]\n": ["B serves food.", "Food is served at B.", "B is a restaurant."]}
    examples = [Example(i, target=r) for i, rs in refs.items() for r in rs]
    return Task(TaskSpec("toy", "generation", template="{mr}\n", target_column="ref"), "test", examples, refs)


@pytest.mark.parametrize("which", [0, 1, -1])
def test_generation_scores_use_every_reference(monkeypatch, which):
    """A model that always says one input's k-th reference scores 100 BLEU, whichever k."""
    task = multi_reference_task()
    monkeypatch.setattr(ev, "generate_texts", lambda model, tok, inputs, *a, **k: [task.references[i][which] for i in inputs])
    scores, records = ev.evaluate(torch.nn.Linear(1, 1), NO_TOKENIZER, task, max_length=32, with_loss=False)
    assert scores["bleu"] == pytest.approx(100.0)
    assert [r["references"] for r in records] == list(task.references.values())
    assert [r["prediction"] for r in records] == [rs[which] for rs in task.references.values()]


def test_limit_takes_the_first_inputs(monkeypatch):
    task = multi_reference_task()
    seen = []
    monkeypatch.setattr(ev, "generate_texts", lambda model, tok, inputs, *a, **k: seen.extend(inputs) or ["x"] * len(inputs))
    _, records = ev.evaluate(torch.nn.Linear(1, 1), NO_TOKENIZER, task, max_length=32, limit=1, with_loss=False)
    assert seen == ["name[A]\n"] and len(records) == 1


def test_a_vanishing_temperature_decodes_greedily(tiny_dir):
    """Sampling at temperature 1e-300 divides the logits into inf (and NaN probabilities): below
    GREEDY_BELOW it is greedy decoding, with the greedy output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    prompts = ["name[Aromi], food[Thai]\n", "hello"]
    greedy = ev.generate_texts(model, tok, prompts, max_new_tokens=6, stop=())
    for t in (1e-300, 0.0, ev.GREEDY_BELOW / 2):
        assert ev.generate_texts(model, tok, prompts, max_new_tokens=6, stop=(), do_sample=True, temperature=t) == greedy


@pytest.mark.parametrize("pairs", [False, True])
def test_classify_texts_predicts_what_evaluate_scores(tiny_bert_dir, tmp_path, pairs):
    """``prefixtune generate`` on a classification run: each text's (or pair's) label, batched and
    padded, equals the prediction ``evaluate`` records for it (encoded as training encodes it). The
    adapter is trained on a task whose label a word gives away (in a pair: in the second text), so the
    labels differ between inputs."""
    from prefixtune.train.commands import _load_run
    from prefixtune.train.config import TrainConfig
    from prefixtune.train.loop import train

    for split, n in (("train", 64), ("dev", 16)):
        rows = ["sentence1\tsentence2\tlabel" if pairs else "sentence\tlabel"]
        for i in range(n):
            word = "wonderful" if i % 2 == 0 else "dreadful"
            film = f"the film number {i} was" + " quite" * (i % 4)
            label = ("entailment", "not_entailment")[i % 2] if pairs else i % 2  # rte's labels, sst2's
            rows.append(f"{film}\tthe critic said {word}\t{label}" if pairs else f"{film} {word}\t{label}")
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    cfg = TrainConfig(model=str(tiny_bert_dir), task="rte" if pairs else "sst2", data=str(tmp_path), steps=40,
                      method="ptuning_v2", adapter={"prefix_length": 2, "pooling": "mean"}, batch_size=16,
                      lr=3e-2, eval_every=0, eval_limit=None, out=str(tmp_path / "run"), max_length=24)
    train(cfg)
    loaded = _load_run(tmp_path / "run", "best")
    spec, model, tok = loaded.spec, loaded.model, loaded.tok
    from prefixtune.data.tasks import load_task

    task = load_task(spec, "dev", data=str(tmp_path))
    _, records = ev.evaluate(model, tok, task, max_length=24)
    texts = [e.text for e in task.examples]
    assert all(isinstance(t, tuple) for t in texts) is pairs
    predicted = ev.classify_texts(model, tok, texts, spec.labels, max_length=24, batch_size=7)
    assert predicted == [r["prediction"] for r in records]
    assert len(set(predicted)) == 2  # the labels differ between inputs: the comparison means something


@pytest.mark.parametrize("level, shown", [(logging.INFO, True), (logging.WARNING, False)])
def test_the_generating_bar_obeys_quiet(tiny_dir, monkeypatch, capsys, level, shown):
    """Four or more batches draw a "generating" bar, except under ``-q`` (as training's bar)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    monkeypatch.setattr(logging.getLogger("prefixtune"), "level", level)
    ev.generate_texts(model, tok, ["a", "b", "c", "d"], batch_size=1, max_new_tokens=1, stop=())
    assert ("generating" in capsys.readouterr().err) is shown
