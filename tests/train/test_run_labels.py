"""Label ids belong to the run: saved with it, used by eval and test scoring whatever labels a split holds."""

from __future__ import annotations

import json
import logging

from prefixtune.train.commands import command_line_text, score_run
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train


def test_a_split_with_other_labels_is_scored_with_the_runs_label_ids(tiny_bert_dir, tmp_path):
    """Before: scoring rebuilt the ids from the split (["good"] -> good = 0, the run's good = 1):
    silently shifted scores, or an IndexError."""
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 64), ("dev", 16)):
        rows = ["sentence\tmood"] + [f"the film {i} was {'wonderful' if i % 2 else 'dreadful'}\t{'good' if i % 2 else 'bad'}"
                                     for i in range(n)]
        (data / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    (data / "only_good.tsv").write_text("sentence\tmood\n" + "".join(f"the film {i} was wonderful\tgood\n"
                                                                      for i in range(8)))
    run = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny_bert_dir), task="mood", data=str(data), input_column="sentence",
                      label_column="mood", method="ptuning_v2", adapter={"prefix_length": 2, "pooling": "mean"}, steps=40, batch_size=16,
                      lr=3e-2, eval_every=0, eval_limit=None, out=str(run), max_length=16)
    assert train(cfg)["scores"]["accuracy"] == 100.0
    assert json.loads((run / "labels.json").read_text()) == {"labels": ["bad", "good"]}
    assert score_run(run, "only_good", None, show=0)["accuracy"] == 100.0


def test_command_line_text_keeps_non_ascii_and_decodes_escapes():
    """Before: ``generate --input Café`` generated from 'CafÃ©'."""
    assert command_line_text("Café ☕ 😀") == "Café ☕ 😀"
    assert command_line_text("name[Café]\\n") == "name[Café]\n"
    assert command_line_text("\\u00e9\\t") == "é\t"


def test_scores_on_a_single_training_file_say_so(tiny_dir, tmp_path, caplog):
    """Before: with one data file, dev, best and test scores were on the training rows without a word."""
    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps({"src": f"name[P{i}]", "tgt": f"P{i} is a place."}) + "\n" for i in range(8)))
    cfg = TrainConfig(model=str(tiny_dir), task="one", data=str(data), input_column="src", target_column="tgt",
                      steps=2, batch_size=4, eval_every=0, eval_limit=2, max_new_tokens=4, out=str(tmp_path / "run"),
                      adapter={"prefix_length": 2, "hidden_size": 8})
    caplog.set_level(logging.WARNING, logger="prefixtune")
    assert train(cfg)["scored_on_training_data"] is True
    assert any("dev scores are on the training data" in r.getMessage() for r in caplog.records)
