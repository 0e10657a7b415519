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
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prefixtune.core.layout import ModelLayout, ShapeMismatchError
from prefixtune.core.parts import Parts, StateError
from prefixtune.io.files import CheckpointError, read_verified, sha256, write_with_manifest
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
    """The manifest of the saved directory ``path`` (an adapter's, or a baseline's: its fields are
    checked where they are read, e.g. by :func:`load_parts`).

    Raises:
        CheckpointError: no directory or manifest, not JSON (or nested too deeply) or not an object,
            another format version.
    """
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
    except RecursionError:  # arrays or objects nested thousands deep
        raise CheckpointError(f"{cfg}: not a manifest (nested too deeply to parse)") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg}: format version {version!r}, this prefixtune reads {FORMAT_VERSION}")
    return manifest


def _check_fields(manifest: dict[str, Any], cfg: Path) -> None:
    """Each field the loader reads has the type it expects."""
    def fail(field: str, want: str) -> None:
        raise CheckpointError(f"{cfg}: field {field!r} must be {want}, got {manifest.get(field)!r:.80}")

    for field in ("config", "layout"):
        if not isinstance(manifest.get(field), dict):
            fail(field, "an object")
    if not isinstance(manifest.get("method"), str):
        fail("method", "a method name")
    files = manifest.get("files")
    if not isinstance(files, dict) or ADAPTER_NAME not in files or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        fail("files", f"an object of file name -> SHA-256 that lists {ADAPTER_NAME}")
    layers = manifest.get("prefixed_layers", {})
    if not isinstance(layers, dict) or not all(
            isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
            for v in layers.values()):
        fail("prefixed_layers", "an object of location -> layer indices")
    if not isinstance(manifest.get("folded", False), bool):
        fail("folded", "true or false")
    for field in ("base_model", "base_fingerprint"):
        if not isinstance(manifest.get(field), (str, type(None))):
            fail(field, "a string or null")


def read_tensors(path: Path, name: str, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read and verify one tensor file listed in the manifest."""
    data = read_verified(Path(path), name, manifest["files"], CONFIG_NAME)
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{Path(path) / name}: not a readable safetensors file ({e})") from None


def _config(manifest: dict[str, Any], path: Path) -> MethodConfig:
    try:
        return config_from_dict({**manifest["config"], "method": manifest["method"]})
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # ConfigError, or values of odd types
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None


def _check_layout(manifest: dict[str, Any], layout: ModelLayout, path: Path) -> dict[str, tuple[int, ...]]:
    try:
        saved = ModelLayout.from_dict(manifest["layout"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: field 'layout' is malformed ({type(e).__name__}: {e})") from None
    layers = {loc: tuple(v) for loc, v in manifest.get("prefixed_layers", {}).items()}
    unknown = sorted(set(layers) - {s.location for s in saved.locations})
    if unknown:
        raise CheckpointError(f"{path / CONFIG_NAME}: prefixed_layers names locations {unknown} that its layout "
                              f"does not have ({[s.location for s in saved.locations]})")
    layout.check_compatible(saved, tuple(layers))
    if saved.d_model != layout.d_model:
        raise ShapeMismatchError(f"adapter was made for a model of hidden size {saved.d_model}, this "
                                 f"{layout.model_type} model has {layout.d_model}; load it into the base model it was trained on")
    return layers


def _check_sizes(config: MethodConfig, layout: ModelLayout, tensors: dict[str, torch.Tensor], inference: bool,
                 where: Path) -> None:
    """The config's parts, built on the meta device, against the file's tensors: every tensor the
    config implies is in the file with that shape, so the real parts, built next, are never larger
    than what is on disk."""
    try:
        with torch.device("meta"):
            shapes = build_parts(config, layout, initialize=False).shapes(inference)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{where}: its config cannot be built on this model ({e})") from None
    for key in sorted(shapes):
        got = tuple(tensors[key].shape) if key in tensors else None
        if got != shapes[key]:
            raise CheckpointError(f"{where}: tensors do not match the config: {key} has shape {got}, "
                                  f"expected {shapes[key]}")


def _check_agree(parts: Parts, inference: dict[str, torch.Tensor], where: Path) -> None:
    """The trainable state, folded, gives the stored inference tensors (neither file was swapped)."""
    derived = parts.inference_state()
    bad = sorted(set(derived) ^ set(inference)) or [
        k for k in sorted(derived) if not torch.allclose(derived[k], inference[k].float(), rtol=1e-4, atol=1e-6)]
    if bad:
        raise CheckpointError(f"{where}: {ADAPTER_NAME} and {TRAINABLE_NAME} do not match (at {bad[:3]}): one of "
                              "them was replaced; save the adapter again from the model that made it")


def fingerprint(weight: torch.Tensor) -> str | None:
    """A short hash of a sample of a base model's input embedding ``(V, d)``, rounded to bf16 so that
    the same weights in fp32 or bf16 agree; None for weights that are not materialized (meta, sharded)."""
    if weight.device.type == "meta" or type(weight).__name__ == "DTensor":
        return None
    flat = weight.detach().reshape(-1)
    sample = flat[::max(1, flat.numel() // 4096)][:4096].to(torch.bfloat16).float().cpu().numpy()
    return sha256(sample.tobytes() + repr(tuple(weight.shape)).encode())[:16]


def base_fingerprint(model: Any) -> str | None:
    """:func:`fingerprint` of ``model``'s input embeddings (None for a model without them)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return fingerprint(embeddings.weight) if embeddings is not None else None


def _check_base(manifest: dict[str, Any], live: str | None, path: Path) -> None:
    saved = manifest.get("base_fingerprint")
    if saved and live and saved != live:
        warnings.warn(f"{path}: this adapter was trained on another base model ({manifest.get('base_model')!r}, "
                      "same shape, other weights); its outputs here are not what it learned. Load it into "
                      "the base model it was trained on.", UserWarning, stacklevel=4)


def load_parts(path: str | os.PathLike, layout: ModelLayout, folded: bool = False,
               base_fingerprint: str | None = None) -> tuple[MethodConfig, Parts]:
    """Read an adapter's config and parts, checked against the model ``layout`` it goes into.

    Every listed file is verified; sizes are checked before any part is allocated; the trainable
    state must fold to the stored inference tensors.

    Args:
        folded: load only the inference tensors even if the trainable state is there.
        base_fingerprint: :func:`fingerprint` of the model it goes into: another base's warns.
    """
    path = Path(path)
    manifest = read_manifest(path)
    _check_fields(manifest, path / CONFIG_NAME)
    config = _config(manifest, path)
    layers = _check_layout(manifest, layout, path)
    _check_base(manifest, base_fingerprint, path)
    inference = read_tensors(path, ADAPTER_NAME, manifest)
    trainable = read_tensors(path, TRAINABLE_NAME, manifest) \
        if TRAINABLE_NAME in manifest["files"] and not folded else None
    name = ADAPTER_NAME if trainable is None else TRAINABLE_NAME
    _check_sizes(config, layout, inference if trainable is None else trainable, trainable is None, path / name)
    fresh = build_parts(config, layout, initialize=False)
    if sorted(fresh.prefixed_layers.items()) != sorted(layers.items()):
        raise CheckpointError(f"{path}: prefixed layers {layers} do not follow from its config")
    try:
        if trainable is not None:
            fresh.load_trainable_state(trainable)
            _check_agree(fresh, inference, path)
            return config, fresh
        return config, fresh.from_inference_state(inference)
    except StateError as e:
        raise CheckpointError(f"{path / name}: {e}") from None
