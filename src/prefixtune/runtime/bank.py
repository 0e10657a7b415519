"""A prefix bank: one frozen model, many named adapters, one adapter per batch row.

Adapters are folded once when added (static K/V, static prompt vectors). ``forward`` and
``generate`` take one adapter name for the whole batch or one per row (None = the bare base
model); each row's output equals that row run alone with its own adapter.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from prefixtune.core.batch import PrefixBatch
from prefixtune.io.checkpoint import load_parts
from prefixtune.hf.boundary import Injection
from prefixtune.methods import MethodConfig, Parts
from prefixtune.core.prompt import insert_prompt, prepend_ids


class UnknownAdapterError(KeyError):
    """No adapter of that name is loaded."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class FoldedAdapter:
    """An adapter ready for inference.

    Fields:
        config: the method config.
        kvs: location -> folded prefix K/V ``(layers, 2, H_kv, l, d)``, or None.
        layers: location -> prefixed layer indices.
        prompt: ``(l, d_model)`` prompt vectors, or None.
        shift: position shift of the real tokens (the prefix length in ``"shifted"`` mode, else 0).
    """

    config: MethodConfig
    kvs: dict[str, torch.Tensor] | None
    layers: dict[str, tuple[int, ...]]
    prompt: torch.Tensor | None
    shift: int


class AdapterBank(nn.Module):
    """Many adapters on one frozen base model.

    Args:
        base_model: a transformers model of a supported family (frozen here).
    """

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.injection = Injection(base_model)
        self.base_model = base_model.eval()
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.adapters: dict[str, FoldedAdapter] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    # ------------------------------------------------------------------ managing adapters

    def add(self, name: str, source: Any, replace: bool = False) -> FoldedAdapter:
        """Add adapter ``name`` from a saved directory or a :class:`~prefixtune.PrefixModel`.

        Raises:
            ValueError: the name is taken (and ``replace`` is False), or the adapter has a head
                or gates, which the bank does not serve.
            CheckpointError, ShapeMismatchError: from loading a directory.
        """
        if not name or "/" in name:
            raise ValueError(f"invalid adapter name {name!r}")
        if name in self.adapters and not replace:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        if isinstance(source, (str, os.PathLike)):
            config, parts = load_parts(source, self.injection.layout, folded=True)
        else:
            config, parts = source.config, source.parts
        folded = self._fold(config, parts)
        with self._lock:
            self.adapters[name] = folded
        return folded

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self.adapters:
                raise UnknownAdapterError(f"no adapter named {name!r}")
            del self.adapters[name]

    def names(self) -> list[str]:
        return sorted(self.adapters)

    def has_prompt(self, name: str | None) -> bool:
        adapter = self.adapters.get(name) if name is not None else None
        return adapter is not None and adapter.prompt is not None

    def _fold(self, config: MethodConfig, parts: Parts) -> FoldedAdapter:
        if parts.head is not None:
            raise ValueError("adapters with a task head cannot be served by the bank (it generates text)")
        kvs = layers = None
        if parts.prefix is not None:
            if len(parts.prefix.gates):
                raise ValueError("gated prefixes are not supported in the bank yet")
            stack = parts.prefix.folded()
            kvs = {loc: enc.kv.detach().to(self.device) for loc, enc in stack.encoders.items()}
            layers = dict(stack.layers)
        prompt = parts.prompt.folded().embedding.detach().to(self.device) if parts.prompt is not None else None
        length = next(iter(kvs.values())).shape[3] if kvs else 0
        shift = length if getattr(config, "position_mode", "natural") == "shifted" else 0
        return FoldedAdapter(config, kvs, layers or {}, prompt, shift)

    def _resolve(self, adapter: str | None | Sequence[str | None], rows: int) -> list[FoldedAdapter | None]:
        names = [adapter] * rows if adapter is None or isinstance(adapter, str) else list(adapter)
        if len(names) != rows:
            raise ValueError(f"{len(names)} adapter names for {rows} rows")
        with self._lock:
            missing = sorted({n for n in names if n is not None and n not in self.adapters})
            if missing:
                raise UnknownAdapterError(f"no adapter named {missing[0]!r} (loaded: {self.names()})")
            return [None if n is None else self.adapters[n] for n in names]

    # ------------------------------------------------------------------ running

    def _inputs(self, adapters: list[FoldedAdapter | None],
                kwargs: dict[str, Any]) -> tuple[dict[str, Any], PrefixBatch, torch.Tensor | None]:
        device = self.device
        rows = [(a.kvs, a.layers) if a is not None and a.kvs is not None else None for a in adapters]
        batch = PrefixBatch.per_row(rows, self.injection.modules, device)
        batch.lengths = torch.tensor([a.shift if a is not None else 0 for a in adapters], device=device)
        real_index = None
        prompts = [a.prompt if a is not None else None for a in adapters]
        if any(p is not None for p in prompts):
            ids = kwargs.pop("input_ids", None)
            embeds = kwargs.pop("inputs_embeds", None)
            if embeds is None:
                embeds = self.base_model.get_input_embeddings()(ids)
            n_virtual = max(p.shape[0] for p in prompts if p is not None)
            d = embeds.shape[-1]
            vectors = embeds.new_zeros(len(adapters), n_virtual, d)
            pmask = torch.zeros(len(adapters), n_virtual, dtype=torch.long, device=device)
            for i, p in enumerate(prompts):
                if p is not None:  # right-aligned: unused slots come first and act as left padding
                    vectors[i, n_virtual - p.shape[0]:] = p.to(embeds.dtype)
                    pmask[i, n_virtual - p.shape[0]:] = 1
            extra = {"token_type_ids": kwargs.pop("token_type_ids", None)}
            if "labels" in kwargs and not self.injection.is_encoder_decoder:
                extra["labels"] = kwargs.pop("labels")
            kwargs.pop("position_ids", None)
            embeds, mask, extra, real_index = insert_prompt(vectors, embeds, kwargs.get("attention_mask"), extra, pmask)
            kwargs.update(extra)
            kwargs["inputs_embeds"], kwargs["attention_mask"] = embeds, mask
        return self.injection.inputs(batch, True, kwargs), batch, real_index

    @torch.no_grad()
    def forward(self, adapter: str | None | Sequence[str | None] = None, **kwargs: Any) -> Any:
        """The base model's forward with ``adapter`` (one name, one per row, or None)."""
        ref = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        adapters = self._resolve(adapter, ref.shape[0])
        kwargs, batch, real_index = self._inputs(adapters, dict(kwargs))
        with self.injection.active(batch):
            out = self.base_model(**kwargs)
        if real_index is not None and not self.injection.is_encoder_decoder and getattr(out, "logits", None) is not None:
            index = real_index[..., None].expand(-1, -1, out.logits.shape[-1])
            out["logits"] = out.logits.gather(1, index)
        return out

    @torch.no_grad()
    def generate(self, adapter: str | None | Sequence[str | None] = None, **kwargs: Any) -> Any:
        """``generate`` with ``adapter`` per row; decoder-only outputs start with the input ids."""
        ids = kwargs.get("input_ids")
        ref = ids if ids is not None else kwargs["inputs_embeds"]
        adapters = self._resolve(adapter, ref.shape[0])
        kwargs, batch, real_index = self._inputs(adapters, dict(kwargs))
        with self.injection.active(batch):
            out = self.base_model.generate(**kwargs)
        if real_index is not None and ids is not None and not self.injection.is_encoder_decoder:
            return prepend_ids(out, ids)
        return out
