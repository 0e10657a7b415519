"""Comparison baselines with the training interface of :class:`~prefixtune.PrefixModel`:
LoRA (through PEFT, an optional extra) and full fine-tuning.

``prefixtune compare`` and ``prefixtune train --method lora|full`` use them so every method runs
through the same loop, data, schedule and evaluation. For classification tasks both put the
library's :class:`~prefixtune.heads.SequenceClassificationHead` on the base model's last hidden
state, like P-tuning v2, so the only difference between methods is what is trained.

Saved form (``save_pretrained``): ``trainable.safetensors`` (the trained tensors only: LoRA
matrices and head, or every parameter for full fine-tuning) and ``prefixtune_config.json`` with
its checksum, written atomically like an adapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from prefixtune.core.config import ComposedConfig, ConfigError, option
from prefixtune.io.checkpoint import CONFIG_NAME, FORMAT_VERSION, TRAINABLE_NAME, read_manifest, read_tensors
from prefixtune.io.files import CheckpointError, write_with_manifest
from prefixtune.methods.head import HeadConfig
from prefixtune.extras import require
from prefixtune.methods.params import ParameterCount


@dataclass(init=False)
class LoraConfig(ComposedConfig):
    """LoRA (Hu et al. 2021) through PEFT (each field's help is beside it). For classification
    tasks a head on the last hidden state (:class:`HeadConfig`; its fields may be given flat:
    ``num_labels``, ``pooling``, ``head_dropout``)."""

    r: int = option(8, "rank of the update B @ A")
    alpha: int = option(16, "scaling numerator (the update is scaled by alpha / r)")
    dropout: float = option(0.05, "dropout on the LoRA input")
    target_modules: list[str] | None = option(None, "module names to adapt; None: PEFT's default for the model "
                                                    "family (query and value projections)")
    head: HeadConfig | None = option(None, "classification tasks: a head on the last hidden state")
    method: str = field(default="lora", init=False)

    SUBCONFIGS = {"head": HeadConfig}
    ALIASES = {"head_dropout": ("head", "dropout")}

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"r must be >= 1, got {self.r}")

    prefix_config = None


@dataclass(init=False)
class FullConfig(ComposedConfig):
    """Full fine-tuning: every parameter of the base model trains (plus a head for classification)."""

    head: HeadConfig | None = option(None, "classification tasks: a head on the last hidden state")
    method: str = field(default="full", init=False)

    SUBCONFIGS = {"head": HeadConfig}
    ALIASES = {"head_dropout": ("head", "dropout")}

    prefix_config = None


BASELINE_CONFIGS: dict[str, type] = {"lora": LoraConfig, "full": FullConfig}


class BaselineModel(nn.Module):
    """A base model trained by LoRA or in full, optionally with a classification head.

    ``forward`` takes the base model's arguments; with a head it returns the head's output
    (``logits (B, num_labels)``), otherwise the base model's (``logits (B, n, V)``).
    """

    def __init__(self, base_model: nn.Module, config: LoraConfig | FullConfig) -> None:
        super().__init__()
        self.config = config
        self.base_parameters = sum(p.numel() for p in base_model.parameters())
        if isinstance(config, LoraConfig):
            try:
                peft = require("peft", "peft", "LoRA baseline")
            except ImportError as e:
                raise ConfigError(str(e)) from None
            for p in base_model.parameters():
                p.requires_grad_(False)
            lora = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                   target_modules=config.target_modules)
            try:
                self.net = peft.get_peft_model(base_model, lora)
            except ValueError as e:
                raise ConfigError(f"LoRA cannot adapt this model: {e}. Pass target_modules explicitly") from None
        else:
            for p in base_model.parameters():
                p.requires_grad_(True)
            self.net = base_model
        self.head: nn.Module | None = None
        if config.head is not None:
            d_model = base_model.config.hidden_size
            self.head = config.head.build(d_model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            kwargs["input_ids"] = args[0]
        if self.head is None:
            return self.net(**kwargs)
        labels = kwargs.pop("labels", None)
        out = self.net(**kwargs, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
        return self.head(hidden, kwargs.get("attention_mask"), labels)

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if self.head is not None:
            raise TypeError("this model has a classification head; call the model, not generate()")
        if args:
            kwargs["input_ids"] = args[0]
        return self.net.generate(**kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self._trainable()]

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        seen: set[int] = set()
        out = []
        for name, p in self.named_parameters():  # named_parameters skips tied duplicates
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((name, p))
        return out

    def count_parameters(self) -> ParameterCount:
        """Trainable parameters; stored = trainable (nothing folds away); base = the base model's."""
        n = sum(p.numel() for p in self.trainable_parameters())
        return ParameterCount(n, n, self.base_parameters)

    def gradient_checkpointing_enable(self) -> None:
        base = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        base.activation_checkpointing_enable({"use_reentrant": False})
        if hasattr(base, "enable_input_require_grads") and isinstance(self.config, LoraConfig):
            base.enable_input_require_grads()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self._trainable()}

    def save_pretrained(self, path: str | os.PathLike, base_model_name: str | None = None) -> None:
        """``trainable.safetensors`` + ``prefixtune_config.json`` (checksummed, atomic)."""
        path = Path(path)
        base = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        manifest = {"format_version": FORMAT_VERSION, "method": self.config.method, "config": self.config.to_dict(),
                    "base_model": base_model_name or getattr(base.config, "_name_or_path", None)}
        write_with_manifest(path, {TRAINABLE_NAME: st_save(self.trainable_state_dict())}, manifest, CONFIG_NAME)

    def load_trainable(self, path: str | os.PathLike) -> None:
        """Load tensors saved by :meth:`save_pretrained` (checksum verified; names must match)."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("method") != self.config.method:
            raise CheckpointError(f"{path}: a {manifest.get('method')!r} checkpoint, this model is {self.config.method!r}")
        tensors = read_tensors(path, TRAINABLE_NAME, manifest)
        live = dict(self._trainable())
        if set(tensors) != set(live):
            missing, extra = sorted(set(live) - set(tensors))[:3], sorted(set(tensors) - set(live))[:3]
            raise CheckpointError(f"{path}: tensors do not match this model (missing {missing}, unexpected {extra})")
        with torch.no_grad():
            for name, value in tensors.items():
                if live[name].shape != value.shape:
                    raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, "
                                          f"the model has {tuple(live[name].shape)}")
                live[name].copy_(value)


def load_baseline(model: nn.Module, path: str | os.PathLike) -> BaselineModel:
    """A :class:`BaselineModel` on ``model`` with the tensors saved at ``path``."""
    manifest = read_manifest(path)
    method = manifest.get("method")
    if method not in BASELINE_CONFIGS:
        raise ConfigError(f"{path}: method {method!r} is not a baseline (lora, full)")
    bm = BaselineModel(model, BASELINE_CONFIGS[method].from_dict(manifest["config"]))
    bm.load_trainable(path)
    return bm.eval()
