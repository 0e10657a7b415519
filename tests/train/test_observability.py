"""What a training run reports: the start-up line, the launch warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prefixtune.evaluation.evaluate as ev
from prefixtune.train.config import TrainConfig
from prefixtune.train.logs import devices, launch_warning
from prefixtune.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def config(tiny_dir, e2e_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), steps=4, batch_size=4, lr=1e-2, eval_every=0,
                save_every=2, eval_limit=2, max_new_tokens=2, out=str(out), adapter={"prefix_length": 4, "hidden_size": 16})
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def scripted_bleu(monkeypatch):
    """Evaluations return BLEU 10, 20, 30, ... (and loss 1.0) instead of generating."""
    scores = iter(range(10, 1000, 10))
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: ({"loss": 1.0, "bleu": float(next(scores))}, []))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_startup_line_names_world_size_devices_dtype_and_batch(tiny_dir, e2e_dir, tmp_path, caplog, scripted_bleu):
    caplog.set_level(logging.INFO, logger="prefixtune")
    result = train(config(tiny_dir, e2e_dir, tmp_path / "run", steps=1, grad_accum=2, bf16=True))
    lines = [r for r in caplog.records if r.getMessage().startswith("world size")]
    assert len(lines) == 1 and lines[0].levelname == "INFO" and lines[0].name == "prefixtune.train.loop"
    trainable = result["parameters"]["trainable"]
    assert lines[0].getMessage() == (
        "world size 1 (NO), devices cpu, dtype float32 (bf16 autocast), micro-batch 2 per process x grad_accum 2 "
        f"x 1 process = effective batch 4, method prefix, trainable parameters {trainable:,} "
        f"({result['parameters']['trainable_percent']:.3f}% of {result['parameters']['base']:,})")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_devices_are_counted():
    assert devices(["cpu"]) == "cpu"
    assert devices(["cpu:0", "cpu:0"]) == "cpu:0 x2"
    assert devices(["cuda:0", "cuda:1"]) == "cuda:0, cuda:1"


def test_accelerate_launch_without_multi_gpu_runs_one_process_and_is_warned_about(tmp_path):
    """On this CPU machine ``accelerate launch --num_processes 2`` starts one process (the reason
    docs/training.md says ``--multi_gpu``); the environment it leaves is what the warning reads."""
    script = tmp_path / "probe.py"
    script.write_text("import json\nfrom accelerate import PartialState\nfrom prefixtune.train.logs import launch_warning\n"
                      "n = PartialState(cpu=True).num_processes\nprint(json.dumps({'n': n, 'warning': launch_warning(n)}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", str(script)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(outputs) == 1 and outputs[0]["n"] == 1  # one process, not two
    assert "--multi_gpu" in outputs[0]["warning"] and "torchrun --nproc_per_node" in outputs[0]["warning"]


@pytest.mark.parametrize("environ", [
    {},  # plain python
    {"WORLD_SIZE": "1", "RANK": "0", "MASTER_PORT": "29500"},  # torchrun --nproc_per_node 1
    {"ACCELERATE_USE_CPU": "False"},  # accelerate launch, one process asked for
])
def test_no_launch_warning_when_one_process_was_asked_for(environ):
    assert launch_warning(1, environ) is None


def test_no_launch_warning_with_several_processes():
    assert launch_warning(2, {"ACCELERATE_USE_CPU": "False", "MASTER_PORT": "29500"}) is None

