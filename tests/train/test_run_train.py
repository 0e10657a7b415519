"""``prefixtune train``'s command (``run_train``): a finished run's test scores, for every kind of
model a run trains (an adapter, a LoRA or fully fine-tuned baseline), and a rerun that scores a run
killed between its last step and its test scores."""

from __future__ import annotations

import json

import pytest

from prefixtune.train.commands import run_train
from prefixtune.train.config import TrainConfig


@pytest.mark.parametrize("method, adapter", [("prefix", {"prefix_length": 2, "hidden_size": 8}), ("lora", {"r": 2}),
                                             ("full", {})])
def test_a_finished_run_whose_test_scores_are_missing_is_scored_on_rerun(tiny_dir, e2e_dir, tmp_path, capsys,
                                                                         method, adapter):
    cfg = TrainConfig(model=str(tiny_dir), task="e2e", data=str(e2e_dir), method=method, adapter=adapter, steps=2,
                      batch_size=4, lr=1e-3, eval_every=0, eval_limit=2, save_every=2, max_new_tokens=3,
                      test_split="dev", test_limit=3, out=str(tmp_path / "run"))
    run_train(cfg)
    scores = tmp_path / "run" / "scores-dev.json"
    first = json.loads(scores.read_text())
    assert first["inputs"] == 3 and first["device"] == "cpu" and first["bf16"] is False
    scores.unlink()  # killed after training, before the test scores were written
    capsys.readouterr()
    run_train(cfg)
    assert "already trained (2 steps)" in capsys.readouterr().out
    again = json.loads(scores.read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
