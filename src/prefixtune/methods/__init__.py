"""The method registry: which methods exist, their configs, and how each builds its parts.

A method composes parts instead of branching in the model: prefix tuning is a prefix; prompt
tuning and P-tuning are a prompt (plus a head for classification when the config has one);
P-tuning v2 is a prefix and a head. Everything that lists methods (the CLI, training, parameter
accounting, comparison, checkpoint loading) reads :data:`REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from prefixtune.core.config import ConfigError
from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.methods import prefix, prompt, ptuning_v2
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.methods.prompt import PromptConfig
from prefixtune.methods.ptuning_v2 import PTuningV2Config

MethodConfig = Union[PrefixConfig, PromptConfig, PTuningV2Config]


@dataclass(frozen=True)
class Method:
    """One registered method.

    Fields:
        name: the ``method`` value of its config (``--method`` on the command line).
        config: its config class.
        build: ``build(config, layout, input_embeddings=None, tokenizer=None, initialize=True) -> Parts``.
        tasks: the task kinds it trains for (``"generation"``, ``"classification"``).
        summary: one line for help texts.
    """

    name: str
    config: type
    build: Callable[..., Parts]
    tasks: tuple[str, ...]
    summary: str


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("prefix", PrefixConfig, prefix.build, ("generation",),
           "prefix tuning: trainable key/value vectors at every attention layer"),
    Method("prompt", PromptConfig, prompt.build, ("generation", "classification"),
           "prompt tuning / P-tuning (encoder=mlp|lstm): trainable input vectors, a head for classification"),
    Method("ptuning_v2", PTuningV2Config, ptuning_v2.build, ("classification",),
           "P-tuning v2: a prefix at every layer and a task head"),
)}


def method(name: str) -> Method:
    if name not in REGISTRY:
        raise ConfigError(f"unknown adapter method {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """The method config a saved mapping describes (its ``method`` key picks the class)."""
    return method(data.get("method", "prefix")).config.from_dict(data)


def build_parts(config: MethodConfig, layout: ModelLayout, input_embeddings: Any = None,
                tokenizer: Any = None, initialize: bool = True) -> Parts:
    """Fresh parts for ``config`` on a model of ``layout``.

    Args:
        input_embeddings: the model's input embedding weight ``(V, d)`` (prompt inits that
            sample or copy token embeddings need it).
        tokenizer: needed by inits from text or label words.
        initialize: apply the configured prompt init (off when a checkpoint's tensors follow).
    """
    return method(config.method).build(config, layout, input_embeddings=input_embeddings, tokenizer=tokenizer,
                                       initialize=initialize)


__all__ = ["REGISTRY", "Method", "MethodConfig", "Parts", "PTuningV2Config", "PrefixConfig", "PromptConfig",
           "build_parts", "config_from_dict", "method"]
