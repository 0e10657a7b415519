"""The task head's config, shared by every method that can classify (P-tuning v2, prompts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from torch import nn

from prefixtune.core.config import ConfigError, ConfigIO, option
from prefixtune.core.heads import POOLINGS, Pooling, SequenceClassificationHead, TokenClassificationHead

HeadTask = Literal["sequence-classification", "token-classification"]
TASKS: tuple[str, ...] = get_args(HeadTask)


@dataclass
class HeadConfig(ConfigIO):
    """A trainable classifier on the frozen model's last hidden state (each field's help is beside it)."""

    task: HeadTask = option("sequence-classification", "sequence-classification: one label per input, from a "
                                                       "pooled hidden state; token-classification: one per token")
    num_labels: int = option(2, "number of classes (1 = regression for sequence classification)")
    pooling: Pooling = option("cls", "cls: the first real token; mean; last: the last real token (for decoder-only "
                                     "models); sequence classification only")
    dropout: float = option(0.1, "dropout before the classifier")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ConfigError(f"num_labels must be a positive integer, got {self.num_labels!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head dropout must be in [0, 1), got {self.dropout}")

    def build(self, d_model: int) -> nn.Module:
        """A fresh head for a model of hidden size ``d_model``."""
        if self.task == "token-classification":
            return TokenClassificationHead(d_model, self.num_labels, self.dropout)
        return SequenceClassificationHead(d_model, self.num_labels, self.pooling, self.dropout)
