"""Decisions that every training process takes together (one process: the value itself).

With several processes only rank 0 evaluates, writes files and logs; anything that ends the loop
must still be the same on every process, or the others go on to a collective that rank 0 never
joins and the run hangs. These two helpers are the only ways such values cross processes;
:func:`sum_over_processes` adds up what each process measured (the logged loss and tokens).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from prefixtune.extras import require

T = TypeVar("T")


def any_process(flag: bool, acc: Any) -> bool:
    """True on every process when ``flag`` is true on any (an all-reduce with MAX).

    ``acc`` is the run's ``accelerate.Accelerator``; the flag travels as a ``(1,)`` tensor on its
    device (NCCL reduces only GPU tensors).
    """
    if acc.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: T, acc: Any) -> T:
    """Rank 0's ``value`` on every process (any picklable object; the others' values are ignored)."""
    if acc.num_processes == 1:
        return value
    box = [value]
    require("accelerate.utils", "train", "training").broadcast_object_list(box, from_process=0)
    return box[0]


def sum_over_processes(values: tuple[float, ...] | list[float], acc: Any) -> list[float]:
    """Each of ``values`` summed over all processes (accelerate's ``reduce``, in float64); with one
    process, the values themselves. A collective: every process must call it."""
    if acc.num_processes == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=acc.device)
    return acc.reduce(tensor, reduction="sum").tolist()
