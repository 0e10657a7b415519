"""Helpers shared by the newer bench scripts: logging, peak memory, environment, doc sections."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from prefixtune.compare.markdown import replace_section  # noqa: F401  (re-exported for the bench scripts)
from prefixtune.train.memory import reset_peak_rss  # noqa: F401  (re-exported)
from prefixtune.train.memory import status_kib as _status_kib

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), 0 where unavailable."""
    return _status_kib(field) or 0


def maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def environment(threads: int | None = None) -> dict[str, Any]:
    """Versions (from package metadata, without importing torch), CPU, git commit, date."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                                    cwd=ROOT, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        head, dirty = None, None
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": v("torch"), "transformers": v("transformers"),
            "peft": v("peft"), "accelerate": v("accelerate"), "nproc": os.cpu_count(), "torch_threads": threads,
            "cpu": cpu, "git_commit": head, "src_dirty": dirty}


def env_line(env: dict[str, Any]) -> str:
    return (f"{env['date']} · prefixtune at git {env['git_commit']}{' (src modified)' if env['src_dirty'] else ''} · "
            f"torch {env['torch']} · transformers {env['transformers']} · peft {env['peft']} · "
            f"accelerate {env['accelerate']} · {env['nproc']} CPUs ({env['cpu']}), torch threads {env['torch_threads']}")
