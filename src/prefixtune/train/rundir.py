"""A run directory holds one run: the rules that keep two runs from mixing in it.

* Resuming needs the options the run was started with: :func:`check_same_options` refuses a
  rerun whose options would change the result (the learning rate, the adapter's shape, the data,
  ...) and names them, before anything is written. Options that do not change the trained
  adapter (:data:`FREE_TO_CHANGE`) may differ.
* Starting over (``--no-resume``) never mixes runs: :func:`set_aside` moves the earlier run's
  directory to ``<out>.replaced-<time>`` (nothing is deleted) and the new run starts empty.
* Files left half-written by a killed process (``.*.tmp`` files of atomic writes and
  ``checkpoints/.step-*.tmp-*`` directories) are removed at start (:func:`remove_stale`).
* ``metrics.jsonl`` is read by :func:`read_metrics`, which tolerates the one thing a kill can
  leave there, a truncated last line, and says so; rows are written with :func:`metrics_line`
  (standard JSON: a non-finite number is written as null).
* Checkpoints are ordered by their step number (:func:`checkpoint_step`), not by name.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from prefixtune.core.config import ConfigError
from prefixtune.io.files import CheckpointError

log = logging.getLogger(__name__)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LABELS = "labels.json"
# Options that do not change the trained adapter or the choice of best/: a resumed run may change them.
FREE_TO_CHANGE = frozenset({"out", "report_to", "max_seconds", "save_every", "distributed", "test_split", "compile",
                            "test_limit"})


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"adapter": {"prefix_length": 5}}`` -> ``{"adapter.prefix_length": 5}`` (lists as JSON lists)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value))  # tuples and lists alike
    return flat


Equal = dict[str, Callable[[Any, Any], bool]]


def changed_options(saved: dict[str, Any], wanted: dict[str, Any],
                    defaults: dict[str, Any] | None = None, equal: Equal | None = None) -> list[str]:
    """``"name: saved -> wanted"`` for each option (dotted inside ``adapter``) that differs and is
    not free to change. An option ``saved`` lacks (the run predates it) ran at its value in
    ``defaults``, where given. ``equal`` maps an option to a test of two of its values that mean the
    same (``bf16``: ``"auto"`` and what it decided)."""
    old, new = _flatten({**(defaults or {}), **saved}), _flatten(wanted)
    changes = []
    for name in sorted(set(old) | set(new)):
        if name.split(".")[0] in FREE_TO_CHANGE or old.get(name) == new.get(name):
            continue
        if equal and name in equal and equal[name](old.get(name), new.get(name)):
            continue
        changes.append(f"{name}: {old.get(name, '(unset)')!r} -> {new.get(name, '(unset)')!r}")
    return changes


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run (its ``config.json``, written first)."""
    return (out / CONFIG).is_file()


def saved_options(out: Path) -> dict[str, Any] | None:
    """The options in ``out/config.json``, None where there is no such file; a CheckpointError for
    one that cannot be read."""
    file = out / CONFIG
    if not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e}); start over with --no-resume (the old directory is "
                              "kept beside it) or choose another --out") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{file}: not a mapping of options; start over with --no-resume or choose another --out")
    return saved


def check_same_options(out: Path, wanted: dict[str, Any], defaults: dict[str, Any] | None = None,
                       equal: Equal | None = None) -> None:
    """Refuse (ConfigError) to resume the run in ``out`` with options that change its result
    (``defaults``: what an option the run predates ran at; ``equal``: see :func:`changed_options`).

    Nothing is written, so a refused rerun leaves the run as it was.
    """
    saved = saved_options(out)
    if saved is None:
        return
    changes = changed_options(saved, wanted, defaults, equal)
    if changes:
        raise ConfigError(f"{out} holds a run with other options ({'; '.join(changes)}): resuming it would mix "
                          "two runs. Rerun with the same options to resume it, --no-resume to start over (the "
                          "old run is moved aside, not deleted), or another --out")


def set_aside(out: Path) -> Path | None:
    """Move the run in ``out`` to ``<out>.replaced-<UTC time>`` (a free name); returns where, or
    None when ``out`` holds no run. The working directory is never moved (a ConfigError)."""
    if not holds_run(out):
        return None
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"--no-resume would move the run in {out} aside, but it holds the working directory: "
                          "run from elsewhere or choose another --out")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = out.with_name(f"{out.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}.replaced-{stamp}-{n}")
    out.rename(target)
    log.warning(f"--no-resume: the earlier contents of {out} were moved to {target}")
    return target


def remove_stale(out: Path) -> list[Path]:
    """Remove what killed writes left in ``out``: ``.*.tmp`` files anywhere under it and
    ``checkpoints/.step-*.tmp-*`` directories; returns what was removed (logged). Only in a run
    directory (one with ``config.json``)."""
    if not holds_run(out):
        return []
    stale = [p for p in out.rglob(".*.tmp") if p.is_file()]
    stale += [p for p in (out / "checkpoints").glob(".step-*.tmp-*") if p.is_dir()]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if stale:
        log.info(f"removed {len(stale)} partial file(s) left by an interrupted write in {out}")
    return stale


def checkpoint_step(path: Path) -> int | None:
    """The step of checkpoint directory ``step-NNNNNN`` (None for other names)."""
    digits = path.name.removeprefix("step-")
    return int(digits) if path.name.startswith("step-") and digits.isdigit() else None


def checkpoints_by_step(root: Path) -> list[Path]:
    """The checkpoint directories under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def prune(root: Path, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` checkpoints with the highest steps; returns the deleted ones."""
    old = checkpoints_by_step(root)[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def finite_values(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists too) as None, for standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_values(v) for v in value]
    return value


def metrics_line(row: dict[str, Any]) -> str:
    """One ``metrics.jsonl`` line: standard JSON (a NaN or infinity becomes null), newline-terminated."""
    return json.dumps(finite_values(row), allow_nan=False) + "\n"


def read_metrics(file: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (none if it does not exist). A line that is not a JSON object
    (a kill mid-write truncates the last one) is skipped with a warning naming the file and line."""
    if not file.is_file():
        return []
    rows = []
    for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            log.warning(f"{file}:{number}: not a metrics row (cut short by an interrupted write?); skipped")
            continue
        rows.append(row)
    return rows


def rows_of_checkpoint(rows: list[dict[str, Any]], step: int, evaluated: set[int]) -> list[dict[str, Any]]:
    """The rows a run resumed from its step-``step`` checkpoint keeps: one training row per step up
    to ``step`` and the evaluation rows the checkpoint knows of (steps in ``evaluated``); rows
    written after the checkpoint, repeated ones and a final evaluation that is redone are dropped."""
    kept, seen = [], set()
    for row in rows:
        kind = row.get("split", "train")
        key = (row["step"], kind)
        if row["step"] > step or key in seen or (kind != "train" and row["step"] not in evaluated):
            continue
        seen.add(key)
        kept.append(row)
    return kept
