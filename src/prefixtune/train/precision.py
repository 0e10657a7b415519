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
(:func:`resolve`) takes bf16 only where it is faster; an explicit ``bf16: true`` on hardware where
it is slower is kept, with a warning. A run decides once, at its first start, and records the
choice (:func:`run_choice`), so that resuming on another machine does not switch precision midway.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, ContextManager, Literal

import torch
from torch import nn

from prefixtune.io.files import atomic_write
from prefixtune.runtime import hardware
from prefixtune.train.methods import train_method

log = logging.getLogger(__name__)

FILE = "precision.json"  # in the run directory: the precision the run's first start decided


def resolve(bf16: bool | Literal["auto"], device: torch.device | str) -> bool:
    """Whether a run asking for ``bf16`` (true, false or ``"auto"``) on ``device`` computes in bf16.

    ``"auto"``: bf16 where it is faster (:func:`~prefixtune.runtime.hardware.bf16_is_faster`: on a
    CPU a matmul probe of ~0.1-0.5 s, once per process). ``True`` is kept, with a warning where bf16
    is slower than float32 (emulated). ``False`` probes nothing."""
    if not bf16:
        return False
    device_type = torch.device(device).type
    if bf16 == "auto":
        chosen = hardware.bf16_is_faster(device_type)
        log.info(f"bf16 auto: {'bf16' if chosen else 'float32'} ({hardware.bf16_words(device_type)})")
        return chosen
    if hardware.bf16_is_slower(device_type):
        log.warning(f"bf16: {hardware.bf16_words(device_type)}, so bf16 is emulated and slow here; bf16 auto "
                    "takes it only where it is faster")
    return True


def recorded(out: Path) -> bool | None:
    """Whether the run in ``out`` computes in bf16, as its first start recorded (``precision.json``);
    None for a run without the record (one from before it existed)."""
    file = out / FILE
    return bool(json.loads(file.read_text())["bf16"]) if file.is_file() else None


def run_choice(out: Path, bf16: bool | Literal["auto"], device: torch.device | str) -> bool:
    """The precision of the run in ``out``: what its first start recorded, so that a resumed run
    keeps it (``bf16: auto`` is decided once per run, not once per start), or else decided now by
    :func:`resolve` and recorded in ``precision.json``."""
    saved = recorded(out)
    if saved is not None:
        if bf16 == "auto":
            log.info(f"bf16 auto: {'bf16' if saved else 'float32'}, as {out / FILE} recorded at the run's start")
        return saved
    chosen = resolve(bf16, device)
    atomic_write(out / FILE, json.dumps({"bf16": chosen, "requested": bf16}, indent=2).encode())
    return chosen


def same_choice(out: Path, saved: Any, wanted: Any, device: torch.device | str) -> bool:
    """Whether the run in ``out``, saved with the ``bf16`` option ``saved``, and a rerun asking for
    ``wanted`` compute in the same precision: ``"auto"`` stands for what the run recorded or, for a
    run without the record, what it decides on this machine (so a run saved with ``true`` resumes
    under ``auto`` where bf16 is faster)."""
    def decided(value: Any) -> bool:
        if value != "auto":
            return bool(value)
        made = recorded(out)
        return made if made is not None else resolve(value, device)

    return decided(saved) == decided(wanted)


def label(method: str, bf16: bool) -> str:
    """What a run of ``method`` with ``bf16`` (decided) computes in, in a word or two: ``fp32``,
    ``bf16`` (a bf16 base) or ``bf16 autocast`` (full fine-tuning's fp32 weights)."""
    if not bf16:
        return "fp32"
    return "bf16" if stores_bf16(method, bf16) else "bf16 autocast"


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
