"""What tools of the Hugging Face ecosystem look for on a model, for :class:`~prefixtune.PrefixModel`.

``transformers.Trainer``, TRL and ``pipeline`` read a model's ``config`` (the base model's
``PretrainedConfig``), ``device``, ``dtype``, ``generation_config``, ``can_generate()``,
``get_input_embeddings()``, ``main_input_name`` and ``num_parameters()``, and call
``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)`` and ``add_model_tags``. This mixin answers them from
the wrapped base model; the adapter's own config is ``adapter_config``. A PEFT user's
``print_trainable_parameters()`` is here too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TransformersModelMixin:
    """Delegates the transformers model interface to ``self.base_model``."""

    base_model: nn.Module

    @property
    def config(self) -> Any:
        """The base model's ``PretrainedConfig`` (the adapter's is :attr:`adapter_config`)."""
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base_model.parameters()).dtype

    @property
    def generation_config(self) -> Any:
        return getattr(self.base_model, "generation_config", None)

    @property
    def main_input_name(self) -> str:
        return getattr(self.base_model, "main_input_name", "input_ids")

    def can_generate(self) -> bool:
        """True when the base model generates and no task head replaces its output."""
        base_can = getattr(self.base_model, "can_generate", lambda: False)()
        return bool(base_can) and getattr(self, "head", None) is None

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters of the base model and the adapter (transformers' signature): ``only_trainable``
        counts the adapter's trainable ones; ``exclude_embeddings`` leaves out embedding tables."""
        embedding = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and not (exclude_embeddings and id(p) in embedding))

    def print_trainable_parameters(self) -> None:
        """PEFT's one-line summary: ``trainable params: N || all params: M || trainable%: P``."""
        trainable, total = self.num_parameters(only_trainable=True), self.num_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Tags for the model card (TRL adds its own, e.g. ``sft``); kept in order, without repeats."""
        tags = [tags] if isinstance(tags, str) else list(tags)
        current = list(getattr(self, "model_tags", None) or [])
        self.model_tags = current + [t for t in tags if t not in current]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **kwargs: Any) -> None:
        """Recompute the base model's layers in backward. Non-reentrant unless told otherwise, so
        prefix gradients flow (the reentrant form needs inputs that require grad)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        **kwargs: Any) -> None:
        """transformers' signature (``every_n_layers``, ``offload`` pass through to the base model)."""
        self.base_model.activation_checkpointing_enable(
            {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.activation_checkpointing_disable()

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.base_model, "is_activation_checkpointing", False))
