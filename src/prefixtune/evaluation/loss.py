"""The summed loss of one batch: shared by the training loop and evaluation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def batch_loss(model: Any, batch: dict[str, torch.Tensor], kind: str,
               trim_logits: bool = False) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``(sum of losses, number of target tokens or examples, logits)`` of one batch.

    Classification: ``labels`` is ``(B,)``, the logits ``(B, C)``; the loss sums the examples'
    cross-entropies. Generation: ``labels`` is ``(B, n)`` with ``-100`` where there is no target;
    position ``j`` predicts token ``j + 1``; labels are shifted (not the logits, so the ``(B, n, V)``
    logits are never copied). With ``trim_logits`` the model computes its LM head only from the
    position before the batch's first target token on (``logits_to_keep``): the prompt positions
    carry no loss, so the loss is the same and the head's cost shrinks.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if kind == "classification":
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), labels, reduction="sum"), labels.numel(), logits
    n = labels.shape[1]
    first = 1
    if trim_logits:
        has_target = (labels[:, 1:] != -100).any(0)
        first = int(has_target.nonzero()[0]) + 1 if bool(has_target.any()) else n - 1
        inputs["logits_to_keep"] = n - first + 1
    logits = model(**inputs).logits  # (B, n - first + 1, V): positions first-1 .. n-1
    targets = F.pad(labels[:, first:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum()), logits
