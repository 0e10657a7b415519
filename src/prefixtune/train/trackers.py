"""Experiment trackers (``report_to``) through accelerate's: TensorBoard, wandb, MLflow, ...

accelerate does the tracking (``Accelerator(log_with=..., project_dir=...)``, ``init_trackers``,
``log``); this module checks the names first, because accelerate drops a tracker whose package
is missing without a word, turns the run config into hyperparameters and the ``metrics.jsonl``
rows into scalars, and closes the trackers. The project is ``prefixtune``; accelerate's
``project_dir`` is ``<out>/trackers`` (TensorBoard's event files: ``<out>/trackers/prefixtune/``),
where wandb is told to write too; other trackers follow their own settings (MLflow's
``MLFLOW_TRACKING_URI``, ...).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefixtune.core.config import ConfigError
from prefixtune.extras import require

log = logging.getLogger(__name__)
PROJECT = "prefixtune"
#: accelerate's tracker names (``accelerate.utils.LoggerType``) -> the pip package each needs
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


def tracker_names(report_to: list[str]) -> list[str]:
    """``report_to`` checked against accelerate: known names whose packages are installed
    (``all``: every installed one accelerate supports). Raises ConfigError for an unknown name and
    ModuleNotFoundError naming the pip package for a missing one."""
    if not report_to:
        return []
    tracking = require("accelerate.tracking", "train", "experiment tracking")
    available = {str(t.value) for t in tracking.get_available_trackers()}
    if "all" in report_to:
        if not available:
            log.warning("report_to all: no tracker package is installed (e.g. pip install tensorboard)")
        return sorted(available)
    for name in report_to:
        if name not in PACKAGES:
            raise ConfigError(f"unknown tracker {name!r} in report_to; known: all, {', '.join(PACKAGES)}")
        if name not in available:
            raise ModuleNotFoundError(f"report_to {name} needs the {PACKAGES[name]} package: "
                                      f"pip install {PACKAGES[name]}", name=PACKAGES[name])
    return list(dict.fromkeys(report_to))


def accelerator_kwargs(cfg: Any) -> dict[str, Any]:
    """What ``Accelerator(...)`` takes for the run's trackers (nothing without ``report_to``)."""
    names = tracker_names(cfg.report_to)
    return {"log_with": names, "project_dir": str(Path(cfg.out) / "trackers")} if names else {}


def hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The run config flattened to scalars: nested mappings as ``adapter.prefix_length``; lists and
    None are left out (trackers take numbers, strings and booleans)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
    return flat


def start(acc: Any, cfg: Any) -> None:
    """Start the trackers (rank 0) with the run config as hyperparameters; wandb's run is named
    after the run directory and writes under ``<out>/trackers`` too."""
    if acc.log_with:
        where = Path(cfg.out) / "trackers"
        where.mkdir(parents=True, exist_ok=True)
        acc.init_trackers(PROJECT, config=hparams(cfg.to_dict()),
                          init_kwargs={"wandb": {"name": Path(cfg.out).name, "dir": str(where)}})


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` row as tracker scalars: a training row's values under their own names
    (``train_loss``, ``grad_norm``, ...), an evaluation row's under ``<split>/<name>`` (``dev/bleu``)."""
    prefix = f"{row['split']}/" if "split" in row else ""
    return {f"{prefix}{k}": v for k, v in row.items()
            if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_row(acc: Any, row: dict[str, Any]) -> None:
    """Send one ``metrics.jsonl`` row to the trackers at its step (rank 0; nothing without trackers)."""
    if acc.trackers:
        acc.log(scalars(row), step=row["step"])


def finish(acc: Any) -> None:
    """Close the trackers (what ``Accelerator.end_training`` does, without also destroying the
    process group: the caller may go on using it)."""
    for tracker in acc.trackers:
        tracker.finish()
    acc.trackers.clear()
