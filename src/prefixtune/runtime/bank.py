"""A prefix bank: one frozen model, many named adapters, one adapter per batch row.

Adapters are folded once when added (static K/V, static prompt vectors). ``forward`` and
``generate`` take one adapter name for the whole batch or one per row (None = the bare base
model); each row's output equals that row run alone with its own adapter.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import torch
from torch import nn

from prefixtune.core.parts import Parts
from prefixtune.hf.boundary import Injection
from prefixtune.io.checkpoint import base_fingerprint, load_parts
from prefixtune.methods import MethodConfig
from prefixtune.runtime.adapters import AdapterRuntime, AdapterTensors, Rows


class UnknownAdapterError(KeyError):
    """No adapter of that name is loaded."""

    def __str__(self) -> str:
        return str(self.args[0])


class AdapterBank(nn.Module):
    """Many adapters on one frozen base model.

    Args:
        base_model: a transformers model of a supported family (frozen here).
    """

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.runtime = AdapterRuntime(base_model)
        self.base_model = base_model.eval()
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.adapters: dict[str, AdapterTensors] = {}
        self._lock = threading.Lock()

    @property
    def injection(self) -> Injection:
        return self.runtime.injection

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    # ------------------------------------------------------------------ managing adapters

    def add(self, name: str, source: Any, replace: bool = False) -> AdapterTensors:
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
            config, parts = load_parts(source, self.runtime.layout, folded=True,
                                       base_fingerprint=base_fingerprint(self.runtime.base_model))
        else:
            config, parts = source.adapter_config, source.parts
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

    @torch.no_grad()
    def _fold(self, config: MethodConfig, parts: Parts) -> AdapterTensors:
        if parts.head is not None:
            raise ValueError("adapters with a task head cannot be served by the bank (it generates text)")
        if parts.prefix is not None and len(parts.prefix.gates):
            raise ValueError("gated prefixes are not supported in the bank yet")
        folded = parts.folded()  # a part already folded is the caller's own module: its mode is restored
        modes = [(part, part.training) for part in folded.modules()]
        for part, _ in modes:
            part.eval()  # no dropout in what is served
        try:
            return AdapterTensors.of(config, folded).detached(self.device)
        finally:
            for part, was_training in modes:
                part.train(was_training)

    def _resolve(self, adapter: str | None | Sequence[str | None], rows: int) -> Rows:
        """One adapter for all rows when one name (or None) is given, else one per row."""
        with self._lock:
            if adapter is None or isinstance(adapter, str):
                names = [adapter]
            else:
                names = list(adapter)
                if len(names) != rows:
                    raise ValueError(f"{len(names)} adapter names for {rows} rows")
            missing = sorted({n for n in names if n is not None and n not in self.adapters})
            if missing:
                raise UnknownAdapterError(f"no adapter named {missing[0]!r} (loaded: {self.names()})")
            found = [None if n is None else self.adapters[n] for n in names]
        if adapter is None or isinstance(adapter, str) or all(a is found[0] for a in found):
            return found[0]  # one adapter for every row: broadcast, as PrefixModel runs it
        return found

    # ------------------------------------------------------------------ running

    @torch.no_grad()
    def forward(self, adapter: str | None | Sequence[str | None] = None, **kwargs: Any) -> Any:
        """The base model's forward with ``adapter`` (one name, one per row, or None)."""
        return self.runtime.forward(self._resolve(adapter, self.runtime.rows(kwargs)), kwargs)

    @torch.no_grad()
    def generate(self, adapter: str | None | Sequence[str | None] = None, **kwargs: Any) -> Any:
        """``generate`` with ``adapter`` per row; decoder-only outputs start with the input ids."""
        return self.runtime.generate(self._resolve(adapter, self.runtime.rows(kwargs)), kwargs)
