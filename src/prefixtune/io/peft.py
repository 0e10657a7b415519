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

from prefixtune.core.layout import LocationShape, ModelLayout, ShapeMismatchError
from prefixtune.core.parts import Parts
from prefixtune.core.prefix import DirectPrefix, PrefixStack
from prefixtune.core.prompt import PromptEmbedding
from prefixtune.io.files import CheckpointError, atomic_write
from prefixtune.methods import MethodConfig
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.methods.prompt import PromptConfig

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


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


def self_attention(layout: ModelLayout) -> LocationShape:
    """The one transformer stack's self-attention (PEFT's prompt-learning formats know no other)."""
    names = [s.location for s in layout.locations]
    if "decoder_self" in names and "encoder_self" in names:
        raise CheckpointError("PEFT prompt-learning adapters for encoder-decoder models are not supported "
                              "(decoder-only and encoder-only models are)")
    return layout.location("decoder_self" if "decoder_self" in names else "encoder_self")


def _prefix_from_table(table: torch.Tensor, cfg: dict[str, Any], shape: LocationShape, file: Path) -> PrefixStack:
    problems = []
    if cfg.get("num_layers", shape.num_layers) != shape.num_layers:
        problems.append(f"adapter has {cfg['num_layers']} layers, model has {shape.num_layers}")
    if cfg.get("num_attention_heads", shape.num_kv_heads) != shape.num_kv_heads:
        problems.append(f"adapter has {cfg['num_attention_heads']} key/value heads, model has {shape.num_kv_heads}")
    if cfg.get("token_dim", shape.kv_width) != shape.kv_width:
        problems.append(f"adapter has key/value width {cfg['token_dim']}, model has {shape.kv_width}")
    if problems:
        raise ShapeMismatchError("PEFT prefix adapter does not fit this model: " + "; ".join(problems))
    l = table.shape[0]
    expect = (l, shape.num_layers * 2 * shape.kv_width)
    if tuple(table.shape) != expect:
        raise CheckpointError(f"{file}: prompt_embeddings has shape {tuple(table.shape)}, expected {expect}")
    kv = table.view(l, shape.num_layers, 2, shape.num_kv_heads, shape.head_dim).permute(1, 2, 3, 0, 4)
    return PrefixStack({shape.location: DirectPrefix(kv.contiguous())}, {shape.location: tuple(range(shape.num_layers))})


def read_peft(path: str | os.PathLike, layout: ModelLayout) -> tuple[MethodConfig, Parts]:
    """The config and (folded) parts of the PEFT adapter at ``path``, for a model of ``layout``.

    Raises:
        CheckpointError: not a PEFT adapter, unsupported type, missing tensor, corrupt file.
        ShapeMismatchError: the adapter was made for a model of another shape.
    """
    path = Path(path)
    cfg, tensors = _read(path)
    kind = cfg.get("peft_type")
    if kind not in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"):
        raise CheckpointError(f"{path}: PEFT adapter type {kind!r} is not supported (PREFIX_TUNING, PROMPT_TUNING, P_TUNING are)")
    if int(cfg.get("num_transformer_submodules", 1)) != 1:
        raise CheckpointError(f"{path}: PEFT adapters for encoder-decoder models (two submodules) are not supported")
    table = _embeddings(tensors, path / PEFT_WEIGHTS)
    l = int(cfg.get("num_virtual_tokens", table.shape[0]))
    if kind == "PREFIX_TUNING":
        shape = self_attention(layout)
        stack = _prefix_from_table(table, cfg, shape, path / PEFT_WEIGHTS)
        config = PrefixConfig(prefix_length=l, reparameterization="direct", locations=(shape.location,),
                              position_mode="shifted")
        return config, Parts(prefix=stack)
    if tuple(table.shape) != (l, layout.d_model):
        if table.shape[-1] != layout.d_model:
            raise ShapeMismatchError(f"PEFT prompt has width {table.shape[-1]}, the model's embeddings have {layout.d_model}")
        raise CheckpointError(f"{path / PEFT_WEIGHTS}: prompt_embeddings has shape {tuple(table.shape)}, expected {(l, layout.d_model)}")
    prompt = PromptEmbedding(l, layout.d_model)
    with torch.no_grad():
        prompt.embedding.copy_(table)
    return PromptConfig(num_virtual_tokens=l), Parts(prompt=prompt)


def write_peft(path: str | os.PathLike, config: MethodConfig, parts: Parts, layout: ModelLayout,
               base_model: str | None = None) -> None:
    """Write ``(config, parts)`` in PEFT's format (loadable with ``PeftModel.from_pretrained``).

    Raises:
        ValueError: the adapter has something PEFT's format cannot hold (a head, gates, excluded
            layers, prefixes outside decoder/encoder self-attention, natural positions,
            an encoder-decoder model).
    """
    try:
        shape = self_attention(layout)
    except CheckpointError:
        raise ValueError("PEFT export supports decoder-only and encoder-only models") from None
    if parts.names() not in (("prefix",), ("prompt",)):
        raise ValueError("PEFT's prompt-learning format holds exactly one of a prefix or a prompt "
                         f"(this adapter has {list(parts.names())}; a task head cannot be exported)")
    tensors = parts.inference_state()
    common = {"base_model_name_or_path": base_model, "inference_mode": True, "num_transformer_submodules": 1,
              "revision": None, "num_layers": shape.num_layers, "num_attention_heads": shape.num_kv_heads,
              "task_type": "CAUSAL_LM" if shape.location == "decoder_self" else "FEATURE_EXTRACTION"}
    if "prompt" in tensors:
        table = tensors["prompt"]
        meta = {**common, "peft_type": "PROMPT_TUNING", "num_virtual_tokens": table.shape[0],
                "token_dim": layout.d_model, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
                "tokenizer_name_or_path": None}
    else:
        if parts.prefixed_layers != {shape.location: tuple(range(shape.num_layers))}:
            raise ValueError("PEFT's prefix format needs a prefix at every self-attention layer and nowhere else")
        if any(k.startswith("prefix.gate.") for k in tensors):
            raise ValueError("PEFT's prefix format has no gates")
        if config.prefix_config.position_mode != "shifted":
            raise ValueError("PEFT shifts positions by the prefix length; export needs position_mode='shifted'")
        kv = tensors[f"prefix.{shape.location}"]  # (layers, 2, H_kv, l, d)
        l = kv.shape[3]
        table = kv.permute(3, 0, 1, 2, 4).reshape(l, -1)
        meta = {**common, "peft_type": "PREFIX_TUNING", "num_virtual_tokens": l, "token_dim": shape.kv_width,
                "prefix_projection": False, "encoder_hidden_size": shape.kv_width}
    path = Path(path)
    atomic_write(path / PEFT_WEIGHTS, st_save({"prompt_embeddings": table.contiguous()}))
    atomic_write(path / PEFT_CONFIG, json.dumps(meta, indent=2, sort_keys=True).encode())
