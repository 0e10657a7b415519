"""Kill a training run at random and chosen moments, resume it, and compare with an uninterrupted run.

Used by tests/train/test_kill_resume.py (a few kills per method, in CI; docs/reliability.md). A
run is killed with SIGKILL (no cleanup, no atexit), either after a random time or at its N-th ``os.replace`` (train_worker.py), then rerun until it finishes;
the finished adapter's files must be byte-identical to those of a run that was never killed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WORKER = Path(__file__).with_name("train_worker.py")
ADAPTER_FILES = ("adapter.safetensors", "trainable.safetensors")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def run_to_end(config_file: Path, timeout: float = 600) -> float:
    """Run (or resume) to completion; returns the wall time. Raises on a failed run."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(WORKER), str(config_file)], env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"training failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def kill_after(config_file: Path, seconds: float) -> bool:
    """Start the run and SIGKILL it after ``seconds``; False if it finished first."""
    p = subprocess.Popen([sys.executable, str(WORKER), str(config_file)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return True


def kill_at_replace(config_file: Path, n: int, timeout: float = 600) -> bool:
    """Run until its ``n``-th ``os.replace`` and die there; False if it finished first."""
    r = subprocess.run([sys.executable, str(WORKER), str(config_file)], env=_env({"KILL_AT_REPLACE": str(n)}),
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode == -9


def adapter_bytes(run: Path) -> dict[str, bytes]:
    """The finished adapter's tensor files."""
    return {name: (run / "adapter" / name).read_bytes() for name in ADAPTER_FILES
            if (run / "adapter" / name).is_file()}


@dataclass
class Outcome:
    """What one killed-and-resumed run went through."""

    kills: list[str] = field(default_factory=list)  # "t=2.31s" / "replace #4", each one that hit
    identical: bool = False


def killed_run(config_file: Path, reference: dict[str, bytes], moments: list[float], replaces: list[int]) -> Outcome:
    """Kill the run of ``config_file`` at each time in ``moments`` and at each ``os.replace``
    number in ``replaces`` (every kill resumes the previous one's run directory), then finish it."""
    out = Outcome()
    for n in replaces:
        if kill_at_replace(config_file, n):
            out.kills.append(f"replace #{n}")
    for t in moments:
        if kill_after(config_file, t):
            out.kills.append(f"t={t:.2f}s")
    run_to_end(config_file)
    out.identical = adapter_bytes(Path(json.loads(config_file.read_text())["out"])) == reference
    return out


def random_moments(rng: random.Random, count: int, start: float, end: float) -> list[float]:
    return sorted(rng.uniform(start, end) for _ in range(count))
