"""Saving and loading adapters: safetensors + JSON, written atomically, verified on load.

A saved adapter is a directory holding:

* ``prefixtune_config.json`` — format version, the method and its config, the base model's
  layout, the prefixed layers, and a SHA-256 for every tensor file (written last);
* ``adapter.safetensors`` — what inference needs, each part's folded tensors
  (:meth:`Parts.inference_state <prefixtune.core.parts.Parts.inference_state>`): e.g. the
  prefix K/V per location (``prefix.<location>``: ``(layers, 2, kv_heads, l, head_dim)``) and
  its gates (``prefix.gate.<location>``), the folded prompt (``prompt``: ``(l, d_model)``) and
  the head (``head.<name>``);
* ``trainable.safetensors`` — the full trainable state (embedding + MLP, prompt encoder, head)
  when some part is reparameterized, so training can resume.

These functions work on ``(config, parts, layout)`` and name no part: each part exports and
restores its own tensors. Nothing is ever unpickled. A missing, partial or altered file fails
with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prefixtune.core.layout import ModelLayout, ShapeMismatchError
from prefixtune.core.parts import Parts, StateError
from prefixtune.io.files import CheckpointError, read_verified, write_with_manifest
from prefixtune.methods import MethodConfig, build_parts, config_from_dict

CONFIG_NAME = "prefixtune_config.json"
ADAPTER_NAME = "adapter.safetensors"
TRAINABLE_NAME = "trainable.safetensors"
FORMAT_VERSION = 1

__all__ = ["ADAPTER_NAME", "CONFIG_NAME", "CheckpointError", "FORMAT_VERSION", "TRAINABLE_NAME", "load_parts",
           "read_manifest", "read_tensors", "save_adapter"]


def save_adapter(path: str | os.PathLike, config: MethodConfig, parts: Parts, layout: ModelLayout,
                 base_model: str | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write the adapter ``(config, parts)`` of a model of ``layout`` to directory ``path``."""
    path = Path(path)
    files = {ADAPTER_NAME: st_save(parts.inference_state())}
    if not parts.is_folded:
        files[TRAINABLE_NAME] = st_save(parts.trainable_state())
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "config": config.to_dict(),
        "layout": layout.to_dict(),
        "prefixed_layers": {loc: list(v) for loc, v in parts.prefixed_layers.items()},
        "base_model": base_model,
        "folded": parts.is_folded,
        **(extra or {}),
    }
    write_with_manifest(path, files, manifest, CONFIG_NAME)
    stale = path / TRAINABLE_NAME
    if TRAINABLE_NAME not in files and stale.exists():
        stale.unlink()


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
    data = read_verified(Path(path), name, manifest["files"], CONFIG_NAME)
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{Path(path) / name}: not a readable safetensors file ({e})") from None


def _check_layout(manifest: dict[str, Any], layout: ModelLayout) -> dict[str, tuple[int, ...]]:
    saved = ModelLayout.from_dict(manifest["layout"])
    layers = {loc: tuple(v) for loc, v in manifest.get("prefixed_layers", {}).items()}
    layout.check_compatible(saved, tuple(layers))
    if saved.d_model != layout.d_model:
        raise ShapeMismatchError(f"adapter was made for a model of hidden size {saved.d_model}, this "
                                 f"{layout.model_type} model has {layout.d_model}; load it into the base model it was trained on")
    return layers


def load_parts(path: str | os.PathLike, layout: ModelLayout, folded: bool = False) -> tuple[MethodConfig, Parts]:
    """Read an adapter's config and parts, checked against the model ``layout`` it goes into.

    Args:
        folded: load only the inference tensors even if the trainable state is there.
    """
    path = Path(path)
    manifest = read_manifest(path)
    try:
        config = config_from_dict({**manifest["config"], "method": manifest.get("method")})
    except ValueError as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None
    layers = _check_layout(manifest, layout)
    fresh = build_parts(config, layout, initialize=False)
    if sorted(fresh.prefixed_layers.items()) != sorted(layers.items()):
        raise CheckpointError(f"{path}: prefixed layers {layers} do not follow from its config")
    name = TRAINABLE_NAME if TRAINABLE_NAME in manifest["files"] and not folded else ADAPTER_NAME
    tensors = read_tensors(path, name, manifest)
    try:
        if name == TRAINABLE_NAME:
            fresh.load_trainable_state(tensors)
            return config, fresh
        return config, fresh.from_inference_state(tensors)
    except StateError as e:
        raise CheckpointError(f"{path / name}: {e}") from None
