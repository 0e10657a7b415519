"""``PrefixModel``: a frozen Hugging Face model plus a trainable prefix."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .batch import PrefixBatch
from .config import PrefixConfig
from .hf import Injection
from .layout import ModelLayout
from .params import ParameterCount, expected_counts
from .prefix import PrefixStack


class PrefixModel(nn.Module):
    """A frozen base model whose attention layers see a trained prefix.

    Use :func:`prefixtune.wrap` to make one. ``forward`` and ``generate`` take the base model's
    arguments; the prefix is added at every attention layer of the configured locations.

    Attributes:
        base_model: the wrapped transformers model (all its parameters frozen).
        config: the :class:`PrefixConfig`.
        layout: the base model's :class:`ModelLayout`.
        prefix: the :class:`PrefixStack` holding the trainable parameters.
    """

    def __init__(self, base_model: nn.Module, config: PrefixConfig, prefix: PrefixStack | None = None) -> None:
        super().__init__()
        self.injection = Injection(base_model)
        self.base_model = base_model
        self.config = config
        for p in base_model.parameters():
            p.requires_grad_(False)
        device = next(base_model.parameters()).device
        self.prefix = (prefix or PrefixStack.create(self.layout, config)).to(device)

    @property
    def layout(self) -> ModelLayout:
        return self.injection.layout

    def prefix_batch(self) -> PrefixBatch:
        """The prefix for this forward: the MLP runs once, its output is shared by all rows."""
        return PrefixBatch.single(self.prefix(), self.prefix.layers, self.injection.modules)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Same arguments and outputs as the base model's forward (``input_ids`` may be positional)."""
        if args:
            if len(args) > 1:
                raise TypeError("pass arguments other than input_ids by keyword")
            kwargs["input_ids"] = args[0]
        batch = self.prefix_batch()
        with self.injection.active(batch):
            return self.base_model(**self.injection.inputs(batch, self.shifted, kwargs))

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``transformers`` ``generate`` with the prefix at every step (greedy, beam, sampling)."""
        if args:
            kwargs["input_ids"] = args[0]
        batch = self.prefix_batch()
        with self.injection.active(batch):
            return self.base_model.generate(**self.injection.inputs(batch, self.shifted, kwargs))

    @property
    def shifted(self) -> bool:
        return self.config.position_mode == "shifted"

    def fold(self) -> "PrefixModel":
        """Replace the MLP reparameterization by the static K/V it produces (same outputs). Returns self."""
        if not self.prefix.is_folded:
            self.prefix = self.prefix.folded()
        return self

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the base model's layers in backward (non-reentrant, so prefix gradients flow)."""
        self.base_model.activation_checkpointing_enable({"use_reentrant": False})

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.activation_checkpointing_disable()

    def count_parameters(self) -> ParameterCount:
        return expected_counts(self.layout, self.config)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.prefix.parameters() if p.requires_grad]

    def save_pretrained(self, path: str | os.PathLike, base_model_name: str | None = None) -> None:
        """Write the adapter to ``path`` (see :mod:`prefixtune.checkpoint`)."""
        from .checkpoint import save_adapter

        save_adapter(self, path, base_model_name=base_model_name)

    def unwrap(self) -> nn.Module:
        """Give the base model back with its original attention implementation."""
        self.injection.remove()
        return self.base_model


def wrap(model: nn.Module, config: PrefixConfig | None = None) -> PrefixModel:
    """Freeze ``model`` and give it a fresh prefix described by ``config`` (default ``PrefixConfig()``)."""
    return PrefixModel(model, config or PrefixConfig())
