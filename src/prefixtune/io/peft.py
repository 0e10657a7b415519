"""Reading and writing PEFT adapters (``adapter_config.json`` + ``adapter_model.safetensors``).

Supported: ``PREFIX_TUNING`` (decoder self-attention prefix, as PEFT trains it), ``PROMPT_TUNING``
and ``P_TUNING`` (input prompts; PEFT stores the prompt encoder's output) for models with one
transformer stack (decoder-only and encoder-only). PEFT stores only the folded tensors, so an
imported adapter is folded: it can be trained further as a ``direct`` prefix or plain prompt.
Only safetensors files are read: a pickled ``adapter_model.bin`` is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prefixtune.io.checkpoint import CheckpointError, atomic_write
from prefixtune.core.config import PrefixConfig
from prefixtune.hf.boundary import describe
from prefixtune.core.layout import ShapeMismatchError
from prefixtune.methods import Parts
from prefixtune.core.prefix import DirectPrefix, PrefixStack
from prefixtune.core.prompt import PromptConfig, PromptEmbedding

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
TASK_TYPES = {"causal": "CAUSAL_LM", "encoder": "FEATURE_EXTRACTION"}


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg_file, weights = path / PEFT_CONFIG, path / PEFT_WEIGHTS
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no {PEFT_CONFIG}; not a PEFT adapter directory")
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise CheckpointError(f"{path}: only a pickled adapter_model.bin is there; prefixtune never unpickles "
                                  "files. Re-save it with PEFT as safetensors (save_pretrained(safe_serialization=True)).")
        raise CheckpointError(f"{path}: no {PEFT_WEIGHTS}")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    try:
        tensors = st_load(weights.read_bytes())
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    return config, tensors


def _embeddings(tensors: dict[str, torch.Tensor], file: Path) -> torch.Tensor:
    for name in ("prompt_embeddings", "base_model.prompt_embeddings"):
        if name in tensors:
            return tensors[name].float()
    raise CheckpointError(f"{file}: no prompt_embeddings tensor (has {sorted(tensors)})")


def from_peft(model: Any, path: str | os.PathLike) -> Any:
    """Wrap ``model`` with the PEFT adapter at ``path``; returns a :class:`~prefixtune.PrefixModel`.

    Raises:
        CheckpointError: not a PEFT adapter, unsupported type, missing tensor, corrupt file.
        ShapeMismatchError: the adapter was made for a model of another shape.
    """
    from prefixtune.runtime.model import PrefixModel

    path = Path(path)
    cfg, tensors = _read(path)
    kind = cfg.get("peft_type")
    table = _embeddings(tensors, path / PEFT_WEIGHTS)
    layout, _ = describe(model)
    l = int(cfg.get("num_virtual_tokens", table.shape[0]))
    if kind == "PREFIX_TUNING":
        loc = "decoder_self" if any(s.location == "decoder_self" for s in layout.locations) else "encoder_self"
        shape = layout.location(loc)
        problems = []
        if cfg.get("num_layers", shape.num_layers) != shape.num_layers:
            problems.append(f"adapter has {cfg['num_layers']} layers, model has {shape.num_layers}")
        if cfg.get("num_attention_heads", shape.num_kv_heads) != shape.num_kv_heads:
            problems.append(f"adapter has {cfg['num_attention_heads']} key/value heads, model has {shape.num_kv_heads}")
        if cfg.get("token_dim", shape.kv_width) != shape.kv_width:
            problems.append(f"adapter has key/value width {cfg['token_dim']}, model has {shape.kv_width}")
        if problems:
            raise ShapeMismatchError("PEFT prefix adapter does not fit this model: " + "; ".join(problems))
        expect = (l, shape.num_layers * 2 * shape.kv_width)
        if tuple(table.shape) != expect:
            raise CheckpointError(f"{path / PEFT_WEIGHTS}: prompt_embeddings has shape {tuple(table.shape)}, expected {expect}")
        kv = table.view(l, shape.num_layers, 2, shape.num_kv_heads, shape.head_dim).permute(1, 2, 3, 0, 4)
        config = PrefixConfig(prefix_length=l, reparameterization="direct", locations=(loc,), position_mode="shifted")
        stack = PrefixStack({loc: DirectPrefix(kv.contiguous())}, {loc: tuple(range(shape.num_layers))})
        return PrefixModel(model, config, Parts(prefix=stack))
    if kind in ("PROMPT_TUNING", "P_TUNING"):
        if int(cfg.get("num_transformer_submodules", 1)) != 1:
            raise CheckpointError(f"{path}: PEFT prompts for encoder-decoder models (two submodules) are not supported")
        if tuple(table.shape) != (l, layout.d_model):
            if table.shape[-1] != layout.d_model:
                raise ShapeMismatchError(f"PEFT prompt has width {table.shape[-1]}, the model's embeddings have {layout.d_model}")
            raise CheckpointError(f"{path / PEFT_WEIGHTS}: prompt_embeddings has shape {tuple(table.shape)}, expected {(l, layout.d_model)}")
        prompt = PromptEmbedding(PromptConfig(num_virtual_tokens=l), layout.d_model)
        with torch.no_grad():
            prompt.embedding.copy_(table)
        return PrefixModel(model, prompt.config, Parts(prompt=prompt))
    raise CheckpointError(f"{path}: PEFT adapter type {kind!r} is not supported (PREFIX_TUNING, PROMPT_TUNING, P_TUNING are)")


def save_peft(model: Any, path: str | os.PathLike, base_model_name: str | None = None) -> None:
    """Write ``model``'s adapter in PEFT's format (loadable with ``PeftModel.from_pretrained``).

    Raises:
        ValueError: the adapter has something PEFT's format cannot hold (a head, gates, excluded
            layers, prefixes outside decoder/encoder self-attention, natural positions).
    """
    from prefixtune.io.checkpoint import inference_tensors

    path = Path(path)
    parts: Parts = model.parts
    layout = model.layout
    common = {"base_model_name_or_path": base_model_name or getattr(model.base_model.config, "_name_or_path", None),
              "inference_mode": True, "num_transformer_submodules": 1, "revision": None,
              "num_layers": None, "token_dim": None, "num_attention_heads": None}
    decoder = any(s.location == "decoder_self" for s in layout.locations)
    if model.injection.is_encoder_decoder:
        raise ValueError("PEFT export supports decoder-only and encoder-only models")
    if parts.head is not None:
        raise ValueError("PEFT's prompt-learning format cannot hold a task head")
    tensors = inference_tensors(parts)
    if parts.prefix is not None and parts.prompt is None:
        cfg = model.config
        loc = "decoder_self" if decoder else "encoder_self"
        shape = layout.location(loc)
        if list(parts.prefix.layers) != [loc] or parts.prefix.layers[loc] != tuple(range(shape.num_layers)):
            raise ValueError("PEFT's prefix format needs a prefix at every self-attention layer and nowhere else")
        if len(parts.prefix.gates):
            raise ValueError("PEFT's prefix format has no gates")
        if getattr(cfg, "position_mode", "shifted") != "shifted":
            raise ValueError("PEFT shifts positions by the prefix length; export needs position_mode='shifted'")
        kv = tensors[f"prefix.{loc}"]  # (layers, 2, H_kv, l, d)
        l = kv.shape[3]
        table = kv.permute(3, 0, 1, 2, 4).reshape(l, -1)
        meta = {**common, "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM" if decoder else "FEATURE_EXTRACTION",
                "num_virtual_tokens": l, "num_layers": shape.num_layers, "token_dim": shape.kv_width,
                "num_attention_heads": shape.num_kv_heads, "prefix_projection": False, "encoder_hidden_size": shape.kv_width}
    elif parts.prompt is not None and parts.prefix is None:
        table = tensors["prompt"]
        shape = layout.locations[0]
        meta = {**common, "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM" if decoder else "FEATURE_EXTRACTION",
                "num_virtual_tokens": table.shape[0], "token_dim": layout.d_model, "num_layers": shape.num_layers,
                "num_attention_heads": shape.num_kv_heads, "prompt_tuning_init": "RANDOM",
                "prompt_tuning_init_text": None, "tokenizer_name_or_path": None}
    else:
        raise ValueError("PEFT export needs an adapter with exactly one of a prefix or a prompt")
    atomic_write(path / PEFT_WEIGHTS, st_save({"prompt_embeddings": table.contiguous()}))
    atomic_write(path / PEFT_CONFIG, json.dumps(meta, indent=2, sort_keys=True).encode())
