"""What a training run says about itself when it starts: the start-up line, the launch warning.

The start-up line is the one place that shows how the run is spread out (world size, devices,
dtype, per-process and effective batch), so a launcher that silently starts one process instead
of several shows up in the first lines of the log, and :func:`launch_warning` names the case we
know of.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Mapping

from prefixtune.extras import require
from prefixtune.train import precision


def devices(names: list[str]) -> str:
    """``["cpu", "cpu"]`` -> ``"cpu x2"``; ``["cuda:0", "cuda:1"]`` -> ``"cuda:0, cuda:1"``."""
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in Counter(names).items())


def startup_line(cfg: Any, acc: Any, model: Any) -> str:
    """The run's shape in one line: world size and distributed type, every process's device, the
    frozen weights' dtype and the run's precision (:mod:`prefixtune.train.precision`), the batch (micro-batch per process x grad_accum x processes =
    ``batch_size``), the method and its trainable parameters.

    Collective: every process must call it (the devices are gathered); only rank 0 needs to log it.
    """
    names = require("accelerate.utils", "train", "training").gather_object([str(acc.device)])
    world = acc.num_processes
    micro = cfg.batch_size // cfg.grad_accum // world
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    dtype = str((frozen if frozen is not None else next(model.parameters())).dtype).removeprefix("torch.")
    autocast = precision.describe(cfg.method, cfg.bf16)
    if acc.mixed_precision != "no":
        autocast += f", accelerate mixed precision {acc.mixed_precision}"
    count = model.count_parameters()
    return (f"world size {world} ({acc.distributed_type.value}), devices {devices(names)}, "
            f"dtype {dtype} ({autocast}), micro-batch {micro} per process x grad_accum {cfg.grad_accum} "
            f"x {world} process{'es' if world > 1 else ''} = effective batch {cfg.batch_size}, "
            f"method {cfg.method}, trainable parameters {count.trainable:,} "
            f"({count.trainable_percent:.3f}% of {count.base:,})")


def launch_warning(num_processes: int, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why a run that was meant to have several processes has one, when the environment shows it.

    ``accelerate launch --num_processes N`` (N > 1) without ``--multi_gpu`` (which accelerate adds
    itself only when it sees several GPUs) and without an accelerate config starts one process, the
    script itself, on a CPU-only or one-GPU machine: its simple launcher sets ``ACCELERATE_USE_CPU``,
    and ``MASTER_PORT`` only when given N > 1, but nothing sets ``WORLD_SIZE``. (``MASTER_PORT``
    exported by hand for a one-process run reads the same, hence a warning, not an error.)
    """
    if num_processes != 1 or "WORLD_SIZE" in environ:
        return None
    if "ACCELERATE_USE_CPU" in environ and "MASTER_PORT" in environ:
        return ("this run has 1 process, but it looks like `accelerate launch --num_processes N` with N > 1: "
                "unless it sees several GPUs, accelerate starts a single process without --multi_gpu "
                "(`accelerate launch --multi_gpu --num_processes N ...` starts N processes, over gloo on CPU), "
                "or use `torchrun --nproc_per_node N -m prefixtune.cli train ...`")
    return None
