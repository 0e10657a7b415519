"""A ``PrefixModel``'s module state (``state_dict``) as tools such as ``transformers.Trainer`` save it.

The module state is the adapter alone: every trainable part's tensors (``prefix.*``, ``prompt.*``,
``head.*``) plus ``_extra_state``, a ``uint8`` tensor holding this JSON::

    {"format": "prefixtune-module-state", "format_version": 1,
     "method": "prefix", "config": {...}, "folded": false}

so a file that holds only tensors (Trainer writes ``model.safetensors``) still says which adapter
it is: loading it into a model with another method or config is refused by name, and
:func:`prefixtune.load` can rebuild the adapter from such a directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from prefixtune.io.files import CheckpointError
from prefixtune.methods import MethodConfig, config_from_dict

FORMAT = "prefixtune-module-state"
VERSION = 1
META_KEY = "_extra_state"
STATE_FILE = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME: what Trainer writes for any nn.Module


def encode_meta(config: MethodConfig, folded: bool) -> torch.Tensor:
    """The ``_extra_state`` tensor: ``(n,)`` uint8, the UTF-8 JSON of the method and its config."""
    text = json.dumps({"format": FORMAT, "format_version": VERSION, "method": config.method,
                       "config": config.to_dict(), "folded": folded}, sort_keys=True)
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def decode_meta(tensor: Any, where: str) -> dict[str, Any]:
    """The JSON held by an ``_extra_state`` tensor.

    Raises:
        CheckpointError: not a prefixtune module state, or another format version.
    """
    try:
        meta = json.loads(bytes(torch.as_tensor(tensor).to(torch.uint8).tolist()).decode())
        ok = isinstance(meta, dict) and meta.get("format") == FORMAT
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{where}: its {META_KEY} is not a prefixtune adapter's description")
    if meta.get("format_version") != VERSION:
        raise CheckpointError(f"{where}: module state format {meta.get('format_version')!r}, "
                              f"this prefixtune reads {VERSION}")
    return meta


def check_meta(meta: dict[str, Any], config: MethodConfig, folded: bool, where: str) -> None:
    """Refuse a state saved from another adapter, naming what differs.

    Raises:
        CheckpointError: another method, other config values, or folded vs trainable.
    """
    if meta.get("method") != config.method:
        raise CheckpointError(f"{where}: the state is of a {meta.get('method')!r} adapter, this model has a "
                              f"{config.method!r} adapter; load it into a model wrapped with that method "
                              "(prefixtune.load builds one from the saved directory)")
    saved, live = meta.get("config") or {}, config.to_dict()
    differ = sorted(k for k in set(saved) | set(live) if saved.get(k) != live.get(k))
    if differ:
        shown = ", ".join(f"{k}: saved {saved.get(k)!r}, here {live.get(k)!r}" for k in differ[:6])
        raise CheckpointError(f"{where}: the state was saved from an adapter with another config ({shown})")
    if bool(meta.get("folded")) != folded:
        raise CheckpointError(f"{where}: the state is of a {'folded' if meta.get('folded') else 'trainable'} "
                              f"adapter, this model's is {'folded' if folded else 'trainable'}")


def is_module_state_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a module-state file (and no prefixtune adapter)."""
    return (Path(path) / STATE_FILE).is_file()


def read_module_state(path: str | os.PathLike) -> tuple[MethodConfig, bool, dict[str, torch.Tensor]]:
    """``(config, folded, state)`` from a directory written by ``Trainer.save_model`` (or its
    checkpoints); ``state`` is the module state, ready for ``load_state_dict``.

    Raises:
        CheckpointError: unreadable file, no adapter description in it, unknown method.
    """
    file = Path(path) / STATE_FILE
    try:
        tensors = load_file(file)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    if META_KEY not in tensors:
        raise CheckpointError(f"{file}: holds no prefixtune adapter description ({META_KEY}); it is another "
                              "model's weights, or was saved by another library")
    meta = decode_meta(tensors[META_KEY], str(file))
    try:
        config = config_from_dict({**meta["config"], "method": meta["method"]})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None
    return config, bool(meta.get("folded")), tensors
