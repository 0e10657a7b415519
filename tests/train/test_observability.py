"""What a training run reports: the start-up line, the launch warning, trackers (TensorBoard,
offline), plots redrawn at every evaluation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import prefixtune.evaluation.evaluate as ev
from prefixtune.core.config import ConfigError
from prefixtune.train import trackers
from prefixtune.train.config import TrainConfig
from prefixtune.train.logs import devices, launch_warning
from prefixtune.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def config(tiny_dir, e2e_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), steps=4, batch_size=4, lr=1e-2, eval_every=0,
                save_every=2, eval_limit=2, max_new_tokens=2, out=str(out),
                adapter={"prefix_length": 4, "hidden_size": 16})
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def scripted_bleu(monkeypatch):
    """Evaluations return BLEU 10, 20, 30, ... (and loss 1.0) instead of generating."""
    scores = iter(range(10, 1000, 10))
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: ({"loss": 1.0, "bleu": float(next(scores))}, []))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_startup_line_names_world_size_devices_dtype_and_batch(tiny_dir, e2e_dir, tmp_path, caplog, scripted_bleu,
                                                               monkeypatch):
    from prefixtune.runtime import hardware

    monkeypatch.setattr(hardware, "bf16_speedup", lambda: 2.0)  # no slow-bf16 warning on any machine
    caplog.set_level(logging.INFO, logger="prefixtune")
    result = train(config(tiny_dir, e2e_dir, tmp_path / "run", steps=1, grad_accum=2, bf16=True))
    lines = [r for r in caplog.records if r.getMessage().startswith("world size")]
    assert len(lines) == 1 and lines[0].levelname == "INFO" and lines[0].name == "prefixtune.train.loop"
    trainable = result["parameters"]["trainable"]
    assert lines[0].getMessage() == (
        "world size 1 (NO), devices cpu, dtype bfloat16 (bf16 base, fp32 adapter), micro-batch 2 per process x grad_accum 2 "
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
    script.write_text("import json\nfrom accelerate import PartialState\n"
                      "from prefixtune.train.logs import launch_warning\n"
                      "n = PartialState(cpu=True).num_processes\n"
                      "print(json.dumps({'n': n, 'warning': launch_warning(n)}))\n")
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


def test_tensorboard_event_files_hold_the_metrics_and_hparams(tiny_dir, e2e_dir, tmp_path, scripted_bleu):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(config(tiny_dir, e2e_dir, run, eval_every=2, report_to=["tensorboard"]))
    where = run / "trackers" / "prefixtune"
    assert list(where.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(where))
    events.Reload()
    logged = rows(run)
    training = [r for r in logged if "train_loss" in r]
    assert {"train_loss", "grad_norm", "lr", "tokens_per_s", "dev/bleu", "dev/loss"} <= set(events.Tags()["scalars"])
    for name in ("train_loss", "grad_norm", "lr"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [r["step"] for r in training] == [1, 2, 3, 4]
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in training], rel=1e-6)  # float32
    bleu = [(s.step, s.value) for s in events.Scalars("dev/bleu")]
    assert bleu == [(r["step"], r["bleu"]) for r in logged if "split" in r] == [(2, 10.0), (4, 20.0)]
    hparams = yaml.safe_load(next(where.glob("*/hparams.yml")).read_text())
    assert hparams["lr"] == 0.01 and hparams["steps"] == 4 and hparams["adapter.prefix_length"] == 4
    assert "stop" not in hparams and "report_to" not in hparams and "data" in hparams  # lists left out


def test_hparams_are_the_config_flattened_to_scalars():
    flat = trackers.hparams({"lr": 0.1, "adapter": {"r": 2, "inner": {"x": True}}, "stop": ["\n"], "patience": None})
    assert flat == {"lr": 0.1, "adapter.r": 2, "adapter.inner.x": True}


def test_a_tracker_without_its_package_is_named_before_the_run_starts(tiny_dir, e2e_dir, tmp_path, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])  # as if tensorboard were not installed
    with pytest.raises(ModuleNotFoundError, match="report_to tensorboard needs the tensorboard package: "
                                                  "pip install tensorboard"):
        train(config(tiny_dir, e2e_dir, tmp_path / "run", report_to=["tensorboard"]))
    assert not (tmp_path / "run").exists()  # nothing loaded or written
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'.*tensorboard, wandb, mlflow"):
        trackers.tracker_names(["tensorbord"])


def test_report_to_takes_a_comma_separated_string_and_none():
    assert TrainConfig(report_to="tensorboard, mlflow").report_to == ["tensorboard", "mlflow"]
    assert TrainConfig(report_to="none").report_to == [] == TrainConfig().report_to


def test_plots_are_redrawn_at_each_evaluation(tiny_dir, e2e_dir, tmp_path, scripted_bleu, monkeypatch):
    """Evaluations at steps 2 and 4 of 6: killed after step 3, the run already has its plots (of the
    step-2 evaluation); resumed to the end, every evaluation (2, 4 and the final one) redrew them."""
    import prefixtune.train.plots as plots

    drawn = []
    plot_run = plots.plot_run
    monkeypatch.setattr(plots, "plot_run", lambda *a, **k: drawn.append(1) or plot_run(*a, **k))
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", steps=6, eval_every=2)
    assert train(cfg, stop_after=3) == {"stopped_at": 3}
    assert len(drawn) == 1
    for name in ("loss.png", "bleu.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000
    train(cfg)
    assert len(drawn) == 3
