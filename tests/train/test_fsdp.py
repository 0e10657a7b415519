"""FSDP (``distributed="fsdp"``): two CPU processes (gloo) with the frozen base sharded train the
same adapter as one process, evaluate without hanging, and resume from their checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefixtune.core.config import ConfigError
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train
from test_train import adapter_state, config, launch_two_processes

WORKER = str(Path(__file__).with_name("ddp_worker.py"))


def test_fsdp_is_for_adapter_methods_only():
    with pytest.raises(ConfigError, match="distributed must be one of ddp, fsdp"):
        TrainConfig(distributed="zero3")
    with pytest.raises(ConfigError, match="lora baseline trains base-model weights"):
        TrainConfig(method="lora", distributed="fsdp")
    assert TrainConfig(method="prompt", distributed="fsdp").distributed == "fsdp"


def test_two_process_fsdp_equals_one_process(tiny_dir, e2e_dir, tmp_path):
    """The CLI under torch.distributed.run, evaluating (real decoding) after step 2 and at the end:
    every process takes part in each sharded evaluation, rank 0 alone writes; the adapter is the
    one-process adapter."""
    train(config(tiny_dir, e2e_dir, tmp_path / "single", eval_every=2, steps=4))
    fsdp = config(tiny_dir, e2e_dir, tmp_path / "fsdp", eval_every=2, steps=4, distributed="fsdp")
    (tmp_path / "fsdp.json").write_text(json.dumps(fsdp.to_dict()))
    launch_two_processes(["-m", "prefixtune.cli", "train", "--config", str(tmp_path / "fsdp.json")],
                         tmp_path / "fsdp.log", timeout=300)
    a, b = adapter_state(tmp_path / "single", tiny_dir), adapter_state(tmp_path / "fsdp", tiny_dir)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "split" in r] == [2, 4]  # written once, by rank 0
    single = json.loads((tmp_path / "single" / "result.json").read_text())
    sharded = json.loads((tmp_path / "fsdp" / "result.json").read_text())
    assert sharded["scores"]["loss"] == pytest.approx(single["scores"]["loss"], rel=1e-5)
    assert sharded["scores"]["bleu"] == single["scores"]["bleu"]


def test_two_process_fsdp_resumes_where_it_stopped(tiny_dir, e2e_dir, tmp_path):
    """A P-tuning prompt (embedded outside the base model's forward, so through the root unit):
    two FSDP processes stopped after step 3 resume from the step-2 checkpoint and end with the
    adapter of one uninterrupted process."""
    adapter = {"num_virtual_tokens": 4, "encoder": "mlp", "encoder_hidden_size": 16}
    train(config(tiny_dir, e2e_dir, tmp_path / "single", method="prompt", adapter=adapter, eval_every=0, steps=4))
    cfg = config(tiny_dir, e2e_dir, tmp_path / "fsdp", method="prompt", adapter=adapter, eval_every=0, steps=4,
                 distributed="fsdp")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "scores.json").write_text(json.dumps([10.0]))

    def launch(tag: str, *stop_after: str) -> list[dict]:
        seen = tmp_path / tag
        seen.mkdir()
        launch_two_processes([WORKER, str(tmp_path / "cfg.json"), str(tmp_path / "scores.json"), str(seen), "120",
                              *stop_after], tmp_path / f"{tag}.log", timeout=300)
        return [json.loads((seen / f"rank-{r}.json").read_text()) for r in (0, 1)]

    first = launch("first", "3")
    assert [s["optimizer_steps"] for s in first] == [3, 3]
    assert sorted(p.name for p in (tmp_path / "fsdp" / "checkpoints").iterdir()) == ["step-000002"]
    again = launch("again")
    assert [s["optimizer_steps"] for s in again] == [2, 2]  # steps 3 and 4
    assert again[0]["result"]["steps_done"] == 4 and again[1]["result"] == {}
    a, b = adapter_state(tmp_path / "single", tiny_dir), adapter_state(tmp_path / "fsdp", tiny_dir)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("engine", ["DEEPSPEED", "FSDP"])
def test_accelerate_launched_engines_are_refused(engine):
    """``accelerate launch --use_deepspeed/--use_fsdp`` would take over backward and the optimizer
    step, which this loop does itself: a clear error instead of a silently unsharded run."""
    from types import SimpleNamespace

    from prefixtune.train import distributed

    run = SimpleNamespace(acc=SimpleNamespace(distributed_type=engine, num_processes=2),
                          cfg=TrainConfig(), model=None)
    with pytest.raises(ConfigError, match="--distributed fsdp"):
        distributed.prepare(run)
