"""Divergence stops a run: a non-finite loss, gradient norm or parameter is an error, never a checkpoint.

A step whose loss or gradient norm is NaN or infinite is refused before the optimizer applies it,
and parameters are checked after each update, so the checkpoints, ``best/`` and ``adapter/`` of
a run only ever hold finite weights.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

HINT = ("lower --lr, keep gradient clipping on (--max-grad-norm 1.0), or try without --bf16; then rerun with "
        "--no-resume (resuming needs the same options)")


class DivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient or parameter; the message names the step and the fix."""


def check_step(step: int, loss: float, grad_norm: float, lr: float) -> None:
    """Raise :class:`DivergedError` unless step ``step``'s loss and gradient norm are finite."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    raise DivergedError(f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm} at learning "
                        f"rate {lr:g}; the step was not applied and the checkpoints hold only earlier, finite "
                        f"weights. {HINT}")


def check_parameters(parameters: Iterable[torch.Tensor], step: int, lr: float) -> None:
    """Raise :class:`DivergedError` if any of ``parameters`` holds a NaN or an infinity after step ``step``."""
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in parameters]).all()
    if not bool(finite):
        raise DivergedError(f"training diverged at step {step}: the update at learning rate {lr:g} made the "
                            f"adapter's weights non-finite; nothing of it was saved. {HINT}")
