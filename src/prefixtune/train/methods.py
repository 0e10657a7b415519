"""Every method ``prefixtune train`` and ``prefixtune compare`` can run: the adapter methods of
the registry (:data:`prefixtune.methods.REGISTRY`) and the comparison baselines (LoRA, full
fine-tuning), with how to build, save-compatible load, and configure each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from prefixtune.core.config import ConfigError
from prefixtune.methods import REGISTRY
from prefixtune.runtime.model import load, wrap
from prefixtune.train.baselines import FullConfig, LoraConfig, BaselineModel, load_baseline

TASK_KINDS = ("generation", "classification")


@dataclass(frozen=True)
class TrainMethod:
    """A method training can run.

    Fields:
        name: ``--method`` value.
        config: its config class (options come from ``--set KEY=VALUE`` / ``adapter:``).
        tasks: the task kinds it trains for.
        summary: one line for help texts.
        baseline: True for the comparison baselines (they train base-model weights).
    """

    name: str
    config: type
    tasks: tuple[str, ...]
    summary: str
    baseline: bool = False


TRAIN_METHODS: dict[str, TrainMethod] = {
    **{m.name: TrainMethod(m.name, m.config, m.tasks, m.summary) for m in REGISTRY.values()},
    "lora": TrainMethod("lora", LoraConfig, TASK_KINDS, "baseline: LoRA through PEFT (pip install peft)", True),
    "full": TrainMethod("full", FullConfig, TASK_KINDS, "baseline: full fine-tuning of every weight", True),
}


#: ``TrainConfig.method``'s type: the names of :data:`TRAIN_METHODS` (``--method``'s choices)
MethodName = Literal[tuple(TRAIN_METHODS)]  # type: ignore[valid-type]


def train_method(name: str) -> TrainMethod:
    if name not in TRAIN_METHODS:
        raise ConfigError(f"method must be one of {', '.join(TRAIN_METHODS)}, got {name!r}")
    return TRAIN_METHODS[name]


def methods_for(kind: str) -> list[str]:
    """The methods that train for task kind ``kind``."""
    return [name for name, m in TRAIN_METHODS.items() if kind in m.tasks]


def method_config(name: str, options: dict[str, Any], kind: str, num_labels: int = 2) -> Any:
    """The config of method ``name`` from its ``options``; for classification tasks it gets a
    head of ``num_labels`` classes unless the options say otherwise."""
    method = train_method(name)
    if kind not in method.tasks:
        raise ConfigError(f"{kind} tasks train with --method {', '.join(methods_for(kind))}, not {name!r}")
    options = dict(options)
    if kind == "classification" and "head" not in options:
        options.setdefault("num_labels", num_labels)
    return method.config(**options)


def model_task(kind: str) -> str:
    """Which transformers head class to load the base model with for a task of ``kind``."""
    return "base" if kind == "classification" else "causal-lm"


def build_model(name: str, config: Any, base: nn.Module, tokenizer: Any) -> nn.Module:
    """The trainable model: a prefixtune adapter on ``base``, or a baseline."""
    if train_method(name).baseline:
        return BaselineModel(base, config)
    return wrap(base, config, tokenizer=tokenizer)


def load_trained(name: str, base: nn.Module, path: Path) -> nn.Module:
    """A trained model of method ``name`` saved at ``path``, for inference."""
    if train_method(name).baseline:
        return load_baseline(base, path)
    return load(base, path, folded=True)
