"""The numeric precision of a training run (``--bf16``).

With ``bf16`` the frozen base model is *stored* in bfloat16: half its memory, and its matmuls run
on the hardware's bf16 units (AMX / AVX-512 BF16 on CPU, tensor cores on GPU) with no cast at
every step. What trains stays float32: the adapter's parameters, their gradients and AdamW's
moments (:func:`keep_trainables_fp32`). The prefix keys and values are cast to the base's dtype
where they join its attention, whose softmax (and the log-sum-exp of the cached-prefix path) is
accumulated in float32 (:mod:`prefixtune.core.attention`), and the loss is taken on float32
logits (:mod:`prefixtune.evaluation.loss`).

Full fine-tuning trains the base model's own weights, and bf16 weights would round most AdamW
updates away; there the weights stay float32 and the forward runs under bf16 autocast instead
(mixed precision with float32 master weights).

Whether bf16 pays depends on the machine (:mod:`prefixtune.runtime.hardware`): ``bf16: auto``
(:func:`resolve`) takes bf16 only where its matmuls measure faster; an explicit ``bf16: true`` on
hardware where they are slower is kept, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ContextManager, Literal

import torch
from torch import nn

from prefixtune.runtime import hardware
from prefixtune.train.methods import train_method

log = logging.getLogger(__name__)


def resolve(bf16: bool | Literal["auto"], device: torch.device | str) -> bool:
    """Whether a run with ``bf16`` (true, false or ``"auto"``) on ``device`` computes in bf16.

    ``"auto"``: bf16 where its matmuls measure faster (:func:`~prefixtune.runtime.hardware.bf16_is_faster`).
    ``True`` is kept, with a warning where bf16 measures slower than float32."""
    if not bf16:
        return False
    device_type = torch.device(device).type
    speedup = hardware.bf16_speedup(device_type)
    if bf16 == "auto":
        chosen = hardware.bf16_is_faster(device_type)
        log.info(f"bf16 auto: {'bf16' if chosen else 'float32'} (a bf16 matmul runs at {speedup:.2g}x float32's "
                 f"speed on this {device_type})")
        return chosen
    if speedup < 1.0:
        log.warning(f"--bf16: a bf16 matmul runs {1 / speedup:.1f}x slower than float32 on this {device_type} (no "
                    "bf16 units; on a CPU: no AVX-512 BF16 or AMX), so this run will be slow; --bf16 auto uses "
                    "bf16 only where it is faster")
    return True


def stores_bf16(method: str, bf16: bool) -> bool:
    """Whether the base model of a run of ``method`` is stored in bfloat16 (``bf16`` resolved)."""
    return bf16 and method != "full"


def load_kwargs(method: str, bf16: bool) -> dict[str, Any]:
    """``from_pretrained`` keywords for the base model of a run (its dtype)."""
    return {"dtype": torch.bfloat16 if stores_bf16(method, bf16) else torch.float32}


def autocast(method: str, bf16: bool, device_type: str) -> ContextManager[Any]:
    """What the training forward runs under: bf16 autocast for full fine-tuning with ``bf16``
    (float32 master weights), nothing otherwise (a bf16 base computes in bf16 by itself)."""
    if bf16 and not stores_bf16(method, bf16):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keep_trainables_fp32(model: nn.Module) -> int:
    """Cast every trainable floating-point parameter that is not float32 to float32, in place (a
    baseline's library may create its weights in the base model's dtype); returns how many it cast.
    The optimizer, built afterwards, then keeps float32 moments."""
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += 1
    return cast


def describe(method: str, bf16: bool) -> str:
    """A few words for the start-up line."""
    if not bf16:
        return "fp32"
    if stores_bf16(method, bf16):
        return "bf16 base, fp32 " + ("trainable weights" if train_method(method).baseline else "adapter")
    return "fp32 weights, bf16 autocast"
