"""Trainable task heads for P-tuning v2: sequence and token classification on a frozen model."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from prefixtune.core.parts import StateError

Pooling = Literal["cls", "mean", "last"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


class _Head(nn.Module):
    """State protocol of :mod:`prefixtune.core.parts` for heads: nothing to fold, the state is the weights."""

    is_folded = True

    def folded(self) -> "_Head":
        return self

    def inference_state(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def from_inference_state(self, tensors: dict[str, torch.Tensor]) -> "_Head":
        try:
            self.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise StateError(f"tensors do not match the config: {e}") from None
        return self


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """``(B, n, d) -> (B, d)``: the first real token (``cls``), the mean of real tokens, or the last
    real token (``last``: for decoder-only models; works with left or right padding)."""
    b, n, _ = hidden.shape
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.long, device=hidden.device)
    mask = mask.to(hidden.device)
    if how == "mean":
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    pos = torch.arange(n, device=hidden.device)[None].expand(b, n)
    real = mask.bool()
    if how == "cls":
        index = torch.where(real, pos, n).min(-1).values
    else:
        index = torch.where(real, pos, -1).max(-1).values
    return hidden[torch.arange(b, device=hidden.device), index.clamp(0, n - 1)]


class SequenceClassificationHead(_Head):
    """``dropout -> Linear(d_model, num_labels)`` on a pooled hidden state. ``num_labels == 1`` is regression."""

    def __init__(self, d_model: int, num_labels: int, pooling: str = "cls", dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling, self.num_labels = pooling, num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(pool(hidden, mask, self.pooling).to(self.classifier.weight.dtype)))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class TokenClassificationHead(_Head):
    """``dropout -> Linear(d_model, num_labels)`` on every token; labels of -100 are ignored."""

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None,
                labels: torch.Tensor | None = None) -> TokenClassifierOutput:
        logits = self.classifier(self.dropout(hidden.to(self.classifier.weight.dtype)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)
