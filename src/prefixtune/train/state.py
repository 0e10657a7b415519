"""Resumable training checkpoints: adapter + optimizer + scheduler + RNG + progress, atomically.

Each checkpoint is a directory ``checkpoints/step-NNNNNN`` written under a temporary name and
renamed when complete; ``state.json`` lists a SHA-256 for each tensor file. Resuming takes the
newest checkpoint that verifies; a partial or corrupt one is reported and skipped, never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prefixtune.io.checkpoint import read_manifest, read_tensors
from prefixtune.io.files import CheckpointError, read_verified, write_with_manifest
from prefixtune.train.rundir import checkpoints_by_step

log = logging.getLogger(__name__)
STATE = "state.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _unjson(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_unjson(v) for v in value["__tuple__"])
        return {k: _unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


def save_state(root: Path, step: int, model: Any, optimizer: torch.optim.Optimizer,
               scheduler: Any, progress: dict[str, Any]) -> Path:
    """Write checkpoint ``root/step-<step>``; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "adapter")
    opt = optimizer.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items()
               for k, v in s.items() if isinstance(v, torch.Tensor)}
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "step": step,
        "progress": progress,
        "param_groups": _jsonable(opt["param_groups"]),
        "opt_scalars": {str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
                        for i, s in opt["state"].items()},
        "scheduler": _jsonable(scheduler.state_dict()),  # lr_lambdas are stored as None (plain functions)
        "python_random": _jsonable(random.getstate()),
    }
    write_with_manifest(tmp, {"state.safetensors": st_save(tensors)}, meta, STATE, checksums_key="sha256")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def verify(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata if every file is present and intact; else CheckpointError."""
    try:
        meta = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable {STATE} ({e})") from None
    for name in meta["sha256"]:
        read_verified(path, name, meta["sha256"], STATE)
    manifest = read_manifest(path / "adapter")
    for name in manifest["files"]:
        read_tensors(path / "adapter", name, manifest)
    return meta


def latest_valid(root: Path) -> Path | None:
    """The checkpoint with the highest step under ``root`` that verifies (corrupt ones are logged as warnings and skipped)."""
    for path in reversed(checkpoints_by_step(root)):
        try:
            verify(path)
            return path
        except (CheckpointError, KeyError, ValueError) as e:
            log.warning(f"skipping checkpoint {path.name}: {e}")
    return None


def load_state(path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore everything saved by :func:`save_state` into live objects; returns the metadata."""
    meta = verify(path)
    model.load_trainable(path / "adapter")
    tensors = st_load((path / "state.safetensors").read_bytes())
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    for i, scalars in meta["opt_scalars"].items():
        state.setdefault(int(i), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": _unjson(meta["param_groups"])})
    scheduler.load_state_dict(_unjson(meta["scheduler"]))
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate(_unjson(meta["python_random"]))
    return meta
