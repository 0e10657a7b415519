"""Saving and loading adapters: safetensors + JSON, written atomically, verified on load.

A saved adapter is a directory holding:

* ``prefixtune_config.json`` — format version, the method and its config, the base model's
  layout, the prefixed layers, and a SHA-256 for every tensor file (written last);
* ``adapter.safetensors`` — what inference needs: the folded prefix K/V per location
  (``prefix.<location>``: ``(layers, 2, kv_heads, l, head_dim)``), the folded prompt
  (``prompt``: ``(l, d_model)``) and the head (``head.<name>``);
* ``trainable.safetensors`` — the full trainable state (embedding + MLP, prompt encoder, head)
  when some part is reparameterized, so training can resume.

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

from prefixtune.core.layout import ModelLayout, ShapeMismatchError
from prefixtune.methods import MethodConfig, Parts, build_parts, config_from_dict
from prefixtune.core.prefix import DirectPrefix, PrefixStack
from prefixtune.core.prompt import PromptEmbedding

CONFIG_NAME = "prefixtune_config.json"
ADAPTER_NAME = "adapter.safetensors"
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


def _cpu(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().float().contiguous().cpu() for k, v in state.items()}


def inference_tensors(parts: Parts) -> dict[str, torch.Tensor]:
    """The folded tensors inference needs, by name."""
    out: dict[str, torch.Tensor] = {}
    if parts.prefix is not None:
        out.update(_cpu({loc: enc.kv for loc, enc in parts.prefix.folded().encoders.items()}, "prefix."))
        out.update(_cpu(dict(parts.prefix.gates), "prefix.gate."))  # (layers, H_kv) per location, if gated
    if parts.prompt is not None:
        out.update(_cpu({"prompt": parts.prompt.folded().embedding}, ""))
    if parts.head is not None:
        out.update(_cpu(parts.head.state_dict(), "head."))
    return out


def _is_folded(parts: Parts) -> bool:
    return (parts.prefix is None or parts.prefix.is_folded) and (parts.prompt is None or parts.prompt.is_folded)


def save_adapter(model: Any, path: str | os.PathLike, base_model_name: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """Save a :class:`~prefixtune.model.PrefixModel`'s adapter to directory ``path``."""
    path = Path(path)
    parts: Parts = model.parts
    files: dict[str, bytes] = {ADAPTER_NAME: st_save(inference_tensors(parts))}
    if not _is_folded(parts):
        state: dict[str, torch.Tensor] = {}
        for name in ("prefix", "prompt", "head"):
            part = getattr(parts, name)
            if part is not None:
                state.update(_cpu(part.state_dict(), f"{name}."))
        files[TRAINABLE_NAME] = st_save(state)
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": model.config.method,
        "config": model.config.to_dict(),
        "layout": model.layout.to_dict(),
        "prefixed_layers": {loc: list(v) for loc, v in parts.prefix.layers.items()} if parts.prefix else {},
        "base_model": base_model_name or getattr(model.base_model.config, "_name_or_path", None),
        "folded": _is_folded(parts),
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


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, file: Path) -> None:
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: tensors do not match the config: {e}") from None


def parts_from_inference_tensors(tensors: dict[str, torch.Tensor], fresh: Parts, file: Path) -> Parts:
    """Folded parts from an ``adapter.safetensors`` mapping, shaped like ``fresh``."""
    parts = Parts(head=fresh.head)
    if fresh.prefix is not None:
        encoders = {}
        for loc, layers in fresh.prefix.layers.items():
            kv = tensors.get(f"prefix.{loc}")
            expect = tuple(fresh.prefix.encoders[loc]().shape)
            if kv is None or tuple(kv.shape) != expect:
                got = None if kv is None else tuple(kv.shape)
                raise CheckpointError(f"{file}: prefix.{loc} has shape {got}, expected {expect}")
            encoders[loc] = DirectPrefix(kv, dropout=fresh.prefix.encoders[loc].dropout.p)
        gates = {}
        for loc, fresh_gate in fresh.prefix.gates.items():
            gate = tensors.get(f"prefix.gate.{loc}")
            if gate is None or gate.shape != fresh_gate.shape:
                raise CheckpointError(f"{file}: prefix.gate.{loc} has shape {None if gate is None else tuple(gate.shape)}, "
                                      f"expected {tuple(fresh_gate.shape)}")
            gates[loc] = gate
        parts.prefix = PrefixStack(encoders, fresh.prefix.layers, gates)
    if fresh.prompt is not None:
        vectors = tensors.get("prompt")
        folded = fresh.prompt.folded()
        if vectors is None or vectors.shape != folded.embedding.shape:
            raise CheckpointError(f"{file}: prompt has shape {None if vectors is None else tuple(vectors.shape)}, "
                                  f"expected {tuple(folded.embedding.shape)}")
        folded.embedding.data.copy_(vectors)
        parts.prompt = folded
    if fresh.head is not None:
        _load_state(fresh.head, tensors, "head.", file)
    return parts


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
    saved = ModelLayout.from_dict(manifest["layout"])
    layers = {loc: tuple(v) for loc, v in manifest.get("prefixed_layers", {}).items()}
    layout.check_compatible(saved, tuple(layers))
    if saved.d_model != layout.d_model:
        raise ShapeMismatchError(f"adapter was made for a model of hidden size {saved.d_model}, this "
                                 f"{layout.model_type} model has {layout.d_model}; load it into the base model it was trained on")
    fresh = build_parts(config, layout, initialize=False)
    if fresh.prefix is not None and tuple(sorted(fresh.prefix.layers.items())) != tuple(sorted(layers.items())):
        raise CheckpointError(f"{path}: prefixed layers {layers} do not follow from its config")
    if TRAINABLE_NAME in manifest["files"] and not folded:
        state = read_tensors(path, TRAINABLE_NAME, manifest)
        for name in ("prefix", "prompt", "head"):
            part = getattr(fresh, name)
            if part is not None:
                _load_state(part, state, f"{name}.", path / TRAINABLE_NAME)
        return config, fresh
    tensors = read_tensors(path, ADAPTER_NAME, manifest)
    return config, parts_from_inference_tensors(tensors, fresh, path / ADAPTER_NAME)


def load(model: Any, path: str | os.PathLike, folded: bool = False) -> Any:
    """Wrap ``model`` with the adapter saved at ``path``; returns a :class:`PrefixModel`.

    The full trainable state is restored when present (training can resume); ``folded=True``
    loads only the static tensors for inference.

    Raises:
        CheckpointError: missing/corrupt files, unknown method or version.
        ShapeMismatchError: the adapter was made for a model of another shape.
    """
    from prefixtune.hf.boundary import describe
    from prefixtune.runtime.model import PrefixModel

    layout, _ = describe(model)
    config, parts = load_parts(path, layout, folded=folded)
    return PrefixModel(model, config, parts)
