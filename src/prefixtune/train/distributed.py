"""How several training processes share the model (``TrainConfig.distributed``).

``ddp``: every process holds the whole model; accelerate wraps it in DDP, which averages the
trainable gradients.

``fsdp``: the frozen base model is sharded with PyTorch's FSDP2 (``fully_shard``): every process
keeps ``1/N`` of each base weight and all-gathers one unit's full weights just before that unit
runs (forward, and again in backward, which needs them to carry the gradient back to the prefix
of earlier layers), freeing them right after. The units are the base model's layers (the classes
it names in ``_no_split_modules``, as accelerate's FSDP plugin picks them); everything else of the
base (embeddings, final norm, LM head) is the root unit, the whole :class:`PrefixModel`.

The trainable parts (prefix, prompt, head) are *not* sharded: they are the root's
``ignored_params``, a full copy on every process, and :func:`average_gradients` averages their
gradients with one all-reduce per step, as DDP would. They are small (well under 1% of the base),
and so the optimizer, gradient clipping, checkpoints, resuming and the saved adapter are those of
one process, unchanged: rank 0 writes them alone.

Evaluation: a sharded forward is a collective, so rank 0 cannot evaluate alone while the others
wait. With FSDP every process runs the same evaluation in step (``generate`` with
``synced_gpus``) and rank 0 keeps the scores (:func:`evaluates_here`).

Why not accelerate's ``FullyShardedDataParallelPlugin``: accelerate 1.15 turns FSDP on only for
accelerator devices (with CPU processes it stays in ``MULTI_CPU`` mode, ignores the plugin and
wraps in DDP), and its FSDP2 path shards the trainable parameters with the rest, which would make
every save and load a collective over sharded tensors. ``fully_shard`` itself runs on CPU (gloo)
and GPU (NCCL) alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prefixtune.core.config import ConfigError
from prefixtune.hf.boundary import layer_modules, mark_fsdp_managed


def sharded(run: Any) -> bool:
    """Whether the run's base model is sharded (FSDP with several processes)."""
    return shards(run.cfg, run.acc)


def shards(cfg: Any, acc: Any) -> bool:
    """Whether a run of ``cfg`` under ``acc`` shards its base model (FSDP with several processes)."""
    return cfg.distributed == "fsdp" and acc.num_processes > 1


def prepare(run: Any) -> nn.Module:
    """The model as the training steps call it: ``run.model`` itself with one process or under
    FSDP (sharded in place), else accelerate's DDP wrapper around it.

    Raises:
        ConfigError: launched with accelerate's own DeepSpeed or FSDP (``accelerate launch
            --use_deepspeed/--use_fsdp``): this loop calls ``backward`` and the optimizer itself,
            which those engines do not allow; FSDP is ``--distributed fsdp``.
    """
    if run.acc.distributed_type in ("DEEPSPEED", "FSDP"):  # accelerate's DistributedType is a str enum
        raise ConfigError("prefixtune train does not run under accelerate's DeepSpeed or FSDP engines "
                          "(--use_deepspeed, --use_fsdp): for FSDP use --distributed fsdp; DeepSpeed: docs/training.md")
    if run.acc.num_processes == 1:
        return run.model
    if not sharded(run):
        return run.acc.prepare_model(run.model)
    shard_frozen_base(run.model, run.acc.device, run.acc.num_processes)
    return run.model


def shard_frozen_base(model: nn.Module, device: torch.device, world: int) -> None:
    """Shard ``model``'s (a :class:`~prefixtune.runtime.model.PrefixModel`'s) frozen base over
    ``world`` processes with FSDP2, in place: one unit per base layer, the rest in the root unit
    (the model itself); the trainable parts stay whole on every process, moved to ``device``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world,))
    trainable = set(model.trainable_parameters())
    # reshard_after_forward everywhere, the root too: full weights live only while their unit runs
    for layer in layer_modules(model.base_model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True, ignored_params=trainable)
    register_fsdp_forward_method(model, "generate")  # the root's weights are gathered for generate too
    mark_fsdp_managed(model.base_model)  # generate with synced_gpus
    for _, part in model.parts.items():
        part.to(device)  # FSDP moves only what it manages; the optimizer keeps the same parameters


def average_gradients(run: Any) -> None:
    """With FSDP: replace every trainable gradient by its mean over processes (one all-reduce of
    all of them; a missing gradient counts as zeros). Without FSDP there is nothing to do (DDP
    averaged them in backward)."""
    if not sharded(run):
        return
    params = run.model.trainable_parameters()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= run.acc.num_processes
    for p, grad in zip(params, flat.split([p.numel() for p in params])):
        p.grad = grad.view_as(p).clone()


def evaluates_here(run: Any) -> bool:
    """Whether this process runs the evaluations: rank 0 alone, or every process when the model
    is sharded (each evaluation step is then a collective)."""
    return run.main or sharded(run)
