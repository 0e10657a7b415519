"""Run a comparison: every run in its own process, finished runs skipped, unfinished ones resumed.

Each run is ``prefixtune train --config <run>/request.json`` in a fresh Python process, so its
peak memory is its own and one failing run does not stop the others. A run is finished when its
``result.json`` (and, with a test split, ``scores-<split>.json``) exist; running the comparison
again skips finished runs and resumes an interrupted one from its last checkpoint. Progress goes to
the ``prefixtune.compare.runner`` logger; each run logs to its train.log at info (debug with ``-v``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prefixtune import progress
from prefixtune.compare.config import CompareConfig, RunSpec
from prefixtune.extras import require
from prefixtune.train import precision
from prefixtune.train.config import TrainConfig

log = logging.getLogger(__name__)


class CompareError(ValueError):
    """A comparison cannot run as asked (e.g. its directory holds runs of another configuration)."""


def run_dir(spec: RunSpec) -> Path:
    return Path(spec.config.out)


def is_finished(spec: RunSpec) -> bool:
    d = run_dir(spec)
    if not (d / "result.json").is_file():
        return False
    return spec.config.test_split is None or (d / f"scores-{spec.config.test_split}.json").is_file()


def _training_device() -> str:
    """Where a run's training goes (``prefixtune.train.loop.setup``: CUDA where there is one)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_same_config(spec: RunSpec) -> None:
    saved = run_dir(spec) / "config.json"
    if saved.is_file():
        now = spec.config.to_dict()
        # an option the saved run predates ran at what is now its default
        before = {**TrainConfig().to_dict(), **json.loads(saved.read_text())}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and not (
            k == "bf16" and precision.same_choice(run_dir(spec), before.get(k), now.get(k), _training_device())))
        if changed:
            raise CompareError(f"{run_dir(spec)} holds a run with different options ({', '.join(changed)}); "
                               "use another 'out' directory or delete that run to redo it")


def _last_step(metrics: Path) -> dict[str, Any] | None:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "train_loss" in record:
            return record
    return None


def run_one(spec: RunSpec, on_progress: Callable[[str], None] = lambda s: None, poll_s: float = 2.0) -> int:
    """Train (or resume) one run in a subprocess; returns its exit code. Output goes to ``train.log``."""
    d = run_dir(spec)
    d.mkdir(parents=True, exist_ok=True)
    request = d / "request.json"
    request.write_text(json.dumps(spec.config.to_dict(), indent=2))
    env = {**os.environ, "TQDM_MININTERVAL": "30"}  # the log gets a progress line every 30 s, not every step
    # train.log is read afterwards: at least info in it, debug when the comparison itself logs debug
    level = "debug" if logging.getLogger("prefixtune").isEnabledFor(logging.DEBUG) else "info"
    cmd = [sys.executable, "-m", "prefixtune.cli", "--log-level", level, "train", "--config", str(request)]
    with open(d / "train.log", "a") as train_log:
        train_log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        train_log.flush()
        proc = subprocess.Popen(cmd, stdout=train_log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(poll_s)
            last = _last_step(d / "metrics.jsonl")
            if last:
                on_progress(f"step {last['step']}/{spec.config.steps} loss {last['train_loss']:.3f}")
    return proc.returncode


def run_comparison(cfg: CompareConfig, only: str | None = None) -> list[dict[str, Any]]:
    """Run every unfinished run (``only``: those whose name contains this text); returns one status per run."""
    redirect = require("tqdm.contrib.logging", "train", "comparison").logging_redirect_tqdm

    specs = [s for s in cfg.runs() if only is None or only in s.name]
    for spec in specs:
        _check_same_config(spec)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    todo = [s for s in specs if not is_finished(s)]
    if len(todo) < len(specs):
        log.info(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; skipping them")
    statuses = [{"name": s.name, "status": "finished"} for s in specs if is_finished(s)]
    with redirect(loggers=[logging.root, logging.getLogger("prefixtune")]):  # log lines above the bar
        bar = progress.bar(todo, what="comparison", desc=f"comparison {cfg.name}", unit="run")
        for spec in bar:
            bar.set_description(f"{cfg.name}: {spec.name}")
            t0 = time.perf_counter()
            code = run_one(spec, on_progress=lambda text: bar.set_postfix_str(text))
            took = time.perf_counter() - t0
            if code == 0 and is_finished(spec):
                statuses.append({"name": spec.name, "status": "finished", "seconds": took})
                log.info(f"{spec.name}: finished in {took:.0f} s")
            else:
                tail = (run_dir(spec) / "train.log").read_text().strip().splitlines()[-1:] or [""]
                statuses.append({"name": spec.name, "status": "failed", "exit_code": code, "error": tail[0]})
                log.error(f"{spec.name}: FAILED (exit code {code}): {tail[0]} — see {run_dir(spec) / 'train.log'}")
        bar.close()
    return statuses
