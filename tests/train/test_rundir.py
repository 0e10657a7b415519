"""A run directory is one run: --no-resume starts clean, changed options are refused by name,
checkpoints are pruned by step, divergence stops the run, metrics.jsonl has one row per step."""

from __future__ import annotations

import json
import logging

import pytest

from prefixtune.cli.main import main
from prefixtune.core.config import ConfigError
from prefixtune.evaluation.metrics import meteor
from prefixtune.train import rundir
from prefixtune.train.guard import DivergedError
from prefixtune.train.loop import train
from test_train import config


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def keys(run):
    return [(r["step"], r.get("split", "train")) for r in rows(run)]


def test_no_resume_moves_the_old_run_aside_and_starts_clean(tiny_dir, e2e_dir, tmp_path):
    """Before: the old run's step-8 checkpoints stayed, pruning by name deleted the new run's, and
    the next rerun resumed the old run."""
    run = tmp_path / "run"
    train(config(tiny_dir, e2e_dir, run, steps=8, eval_every=0, save_every=2))
    train(config(tiny_dir, e2e_dir, run, steps=4, eval_every=0, save_every=2), resume=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert keys(run) == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "dev")]
    (old,) = tmp_path.glob("run.replaced-*")
    assert json.loads((old / "config.json").read_text())["steps"] == 8  # moved aside, not deleted
    assert (old / "checkpoints" / "step-000008").is_dir()


def test_changed_options_are_refused_by_name_before_anything_is_written(tiny_dir, e2e_dir, tmp_path):
    """Before: config.json was rewritten, then the old optimizer state won (or a changed
    prefix_length crashed)."""
    run = tmp_path / "run"
    train(config(tiny_dir, e2e_dir, run, steps=4, eval_every=0), stop_after=2)
    before = (run / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"lr: 0\.01 -> 0\.0001.*--no-resume"):
        train(config(tiny_dir, e2e_dir, run, steps=4, eval_every=0, lr=1e-4))
    with pytest.raises(ConfigError, match=r"adapter\.prefix_length: 4 -> 6"):
        train(config(tiny_dir, e2e_dir, run, steps=4, eval_every=0, adapter={"prefix_length": 6, "hidden_size": 16}))
    assert (run / "config.json").read_bytes() == before
    train(config(tiny_dir, e2e_dir, run, steps=4, eval_every=0, save_every=1, max_seconds=999.0))  # free to change
    assert keys(run)[-1] == (4, "dev")


def test_an_option_the_run_predates_ran_at_its_default(tiny_dir, e2e_dir, tmp_path):
    """Before: a run written before an option existed (its config.json lacks it) could not be
    resumed by a newer prefixtune ("no_repeat_ngram: '(unset)' -> 0")."""
    run = tmp_path / "run"
    train(config(tiny_dir, e2e_dir, run, steps=3, eval_every=0), stop_after=1)
    saved = json.loads((run / "config.json").read_text())
    del saved["no_repeat_ngram"]
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"no_repeat_ngram: 0 -> 3"):  # not the default: still another run
        train(config(tiny_dir, e2e_dir, run, steps=3, eval_every=0, no_repeat_ngram=3))
    train(config(tiny_dir, e2e_dir, run, steps=3, eval_every=0))
    assert keys(run)[-1] == (3, "dev")


def test_the_cli_refuses_a_changed_option_in_one_line(tiny_dir, e2e_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(tiny_dir, e2e_dir, run, steps=2, eval_every=0), stop_after=1)
    saved = json.loads((run / "config.json").read_text())
    saved["lr"] = 3e-3
    file = tmp_path / "changed.json"
    file.write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["train", "--config", str(file)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr: 0.01 -> 0.003" in err and "Traceback" not in err


def test_checkpoints_are_pruned_by_step_not_by_name(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (999999, 1000000, 1000001, 7):
        (root / f"step-{step:06d}").mkdir(parents=True)
    (root / "notes").mkdir()
    assert [p.name for p in rundir.checkpoints_by_step(root)] == ["step-000007", "step-999999", "step-1000000",
                                                                  "step-1000001"]
    rundir.prune(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-1000000", "step-1000001"]


EXPLODING = {"prefix_length": 4, "hidden_size": 16, "reparameterization": "direct", "init_std": 1e30}


@pytest.mark.parametrize("kw", [{"adapter": EXPLODING, "max_grad_norm": 0.0}, {"adapter": EXPLODING}])
def test_divergence_stops_the_run_and_never_becomes_best(tiny_dir, e2e_dir, tmp_path, kw):
    """Before: ``--lr inf`` exited 0 with an all-NaN best/; metrics.jsonl held NaN tokens."""
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match="diverged at step"):
        train(config(tiny_dir, e2e_dir, run, steps=6, eval_every=1, save_every=1, **kw))
    # where the first step already diverges (it depends on the CPU's kernels at 1e30) no row is written
    metrics = run / "metrics.jsonl"
    assert not (run / "best").exists() or rundir.finite_values(rows(run)) == rows(run)
    for line in (metrics.read_text() if metrics.exists() else "").splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert not (run / "result.json").exists()


def test_non_finite_options_are_config_errors():
    for kw in ({"lr": float("inf")}, {"lr": float("nan")}, {"max_grad_norm": -1.0}, {"warmup_ratio": 1.5},
               {"weight_decay": -0.1}, {"lr": 1e30}, {"weight_decay": 1e6}):
        with pytest.raises(ConfigError, match=next(iter(kw))):
            config("m", "d", "o", **kw)


def test_metrics_rows_are_written_once_per_step(tiny_dir, e2e_dir, tmp_path):
    """Before: a kill before the first checkpoint and every rerun of a finished run added rows again."""
    run = tmp_path / "run"
    cfg = config(tiny_dir, e2e_dir, run, steps=4, eval_every=2, save_every=3)
    train(cfg, stop_after=2)  # killed before the first checkpoint (step 3), after the step-2 evaluation
    train(cfg)
    once = keys(run)
    assert once == [(1, "train"), (2, "train"), (2, "dev"), (3, "train"), (4, "train"), (4, "dev")]
    assert train(cfg)["already_complete"] and keys(run) == once  # a finished run redoes nothing
    (run / "result.json").unlink()  # killed while finishing, after the final evaluation was logged
    train(cfg)
    assert keys(run) == once


def test_a_truncated_last_metrics_line_and_stale_temporary_files(tiny_dir, e2e_dir, tmp_path, caplog):
    run = tmp_path / "run"
    cfg = config(tiny_dir, e2e_dir, run, steps=4, eval_every=0, save_every=2)
    train(cfg, stop_after=3)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train_lo')  # a kill mid-line
    stale = [run / ".config.json.abc123.tmp", run / "best" / ".adapter.safetensors.x.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    (run / "checkpoints" / ".step-000004.tmp-4242" / "adapter").mkdir(parents=True)
    caplog.set_level(logging.INFO, logger="prefixtune")
    train(cfg)
    assert any("metrics.jsonl:4: not a metrics row" in r.getMessage() for r in caplog.records)
    assert keys(run) == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "dev")]
    assert not any(p.exists() for p in stale) and not list((run / "checkpoints").glob(".step-*"))


def test_peak_memory_covers_the_processes_resumed_from(tiny_dir, e2e_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = config(tiny_dir, e2e_dir, run, steps=4, eval_every=0, save_every=2)
    from prefixtune.train import memory

    monkeypatch.setattr(memory.PeakMemory, "peak_mib", lambda self: 5000.0)
    train(cfg, stop_after=2)
    monkeypatch.setattr(memory.PeakMemory, "peak_mib", lambda self: 10.0)
    assert train(cfg)["peak_memory_mib"] == 5000.0


def test_meteor_is_always_or_never_reported():
    """Before: without WordNet data, METEOR was reported when every word matched exactly and not otherwise."""
    same, different = meteor(["the cat sat"], [["the cat sat"]]), meteor(["the cat sat"], [["a dog ran"]])
    assert (same is None) == (different is None)
