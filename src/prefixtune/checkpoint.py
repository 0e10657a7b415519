"""Saving and loading adapters: safetensors + JSON, written atomically, verified on load.

A saved adapter is a directory holding:

* ``prefixtune_config.json`` — format version, the :class:`PrefixConfig`, the base model's
  layout, the prefixed layers, and a SHA-256 for every tensor file (written last);
* ``prefix.safetensors`` — the folded K/V per location, ``(layers, 2, kv_heads, l, head_dim)``,
  all inference needs;
* ``trainable.safetensors`` — the full trainable state (embedding + MLP) of an unfolded MLP
  prefix, so training can resume.

Nothing is ever unpickled. A missing, partial or altered file fails with :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import PrefixConfig
from .layout import ModelLayout
from .prefix import DirectPrefix, PrefixStack

CONFIG_NAME = "prefixtune_config.json"
PREFIX_NAME = "prefix.safetensors"
TRAINABLE_NAME = "trainable.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """An adapter directory cannot be loaded; the message says which file and why."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_adapter(model: Any, path: str | os.PathLike, base_model_name: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """Save a :class:`~prefixtune.model.PrefixModel`'s adapter to directory ``path``."""
    path = Path(path)
    stack: PrefixStack = model.prefix
    folded = stack.folded()
    files: dict[str, bytes] = {
        PREFIX_NAME: st_save({loc: enc.kv.detach().float().contiguous().cpu() for loc, enc in folded.encoders.items()}),
    }
    if not stack.is_folded:
        state = {k: v.detach().float().contiguous().cpu() for k, v in stack.state_dict().items()}
        files[TRAINABLE_NAME] = st_save(state)
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": model.config.method,
        "config": model.config.to_dict(),
        "layout": model.layout.to_dict(),
        "prefixed_layers": {loc: list(layers) for loc, layers in stack.layers.items()},
        "base_model": base_model_name or getattr(model.base_model.config, "_name_or_path", None),
        "folded": stack.is_folded,
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    if extra:
        manifest.update(extra)
    for name, data in files.items():
        atomic_write(path / name, data)
    stale = path / TRAINABLE_NAME
    if TRAINABLE_NAME not in files and stale.exists():
        stale.unlink()
    atomic_write(path / CONFIG_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    cfg = path / CONFIG_NAME
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such adapter directory")
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_NAME}; not a prefixtune adapter (or a save that never finished)")
    try:
        manifest = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg}: format version {version!r}, this prefixtune reads {FORMAT_VERSION}")
    return manifest


def read_tensors(path: Path, name: str, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read and verify one tensor file listed in the manifest."""
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (listed in {CONFIG_NAME})")
    data = file.read_bytes()
    if _sha256(data) != manifest["files"][name]:
        raise CheckpointError(f"{file}: checksum mismatch: the file is corrupt or was partly written")
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def load_stack(path: str | os.PathLike, layout: ModelLayout, folded: bool = False) -> tuple[PrefixConfig, PrefixStack]:
    """Read an adapter's config and prefix, checked against the model ``layout`` it goes into.

    Args:
        folded: load only the folded K/V (inference) even if the trainable state is there.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("method") != "prefix":
        raise CheckpointError(f"{path}: adapter method {manifest.get('method')!r} is not a prefix")
    config = PrefixConfig.from_dict(manifest["config"])
    saved = ModelLayout.from_dict(manifest["layout"])
    layers = {loc: tuple(v) for loc, v in manifest["prefixed_layers"].items()}
    layout.check_compatible(saved, tuple(layers))
    fresh = PrefixStack.create(layout, config)
    if tuple(sorted(fresh.layers.items())) != tuple(sorted(layers.items())):
        raise CheckpointError(f"{path}: prefixed layers {layers} do not follow from its config")
    if TRAINABLE_NAME in manifest["files"] and not folded:
        state = read_tensors(path, TRAINABLE_NAME, manifest)
        try:
            fresh.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path / TRAINABLE_NAME}: tensors do not match the config: {e}") from None
        return config, fresh
    kvs = read_tensors(path, PREFIX_NAME, manifest)
    encoders = {}
    for loc in layers:
        if loc not in kvs:
            raise CheckpointError(f"{path / PREFIX_NAME}: no tensor for location {loc!r}")
        kv = kvs[loc]
        shape = layout.location(loc)
        expect = (len(layers[loc]), 2, shape.num_kv_heads, config.prefix_length, shape.head_dim)
        if tuple(kv.shape) != expect:
            raise CheckpointError(f"{path / PREFIX_NAME}: {loc} has shape {tuple(kv.shape)}, expected {expect}")
        encoders[loc] = DirectPrefix(kv, dropout=config.dropout)
    return config, PrefixStack(encoders, layers)


def load(model: Any, path: str | os.PathLike, folded: bool = False) -> Any:
    """Wrap ``model`` with the adapter saved at ``path``; returns a :class:`PrefixModel`.

    The full trainable state is restored when present (training can resume); ``folded=True``
    loads only the static K/V for inference.

    Raises:
        CheckpointError: missing/corrupt files, wrong method or version.
        ShapeMismatchError: the adapter was made for a model of another shape.
    """
    from .hf import describe
    from .model import PrefixModel

    layout, _ = describe(model)
    config, stack = load_stack(path, layout, folded=folded)
    return PrefixModel(model, config, stack)
