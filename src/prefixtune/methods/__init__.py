"""Which parts each method is made of: a prefix, an input prompt, a task head (any subset).

Methods compose these parts instead of branching on the method in the model: prefix tuning is a
prefix; prompt tuning and P-tuning are a prompt (plus a head for classification when
``num_labels`` is set); P-tuning v2 is a prefix and a head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from torch import nn

from prefixtune.core.config import ConfigError, PrefixConfig
from prefixtune.core.heads import SequenceClassificationHead, TokenClassificationHead
from prefixtune.core.layout import ModelLayout
from prefixtune.core.prefix import PrefixStack
from prefixtune.core.prompt import PromptConfig, PromptEmbedding
from prefixtune.methods.ptuning_v2 import PTuningV2Config

MethodConfig = Union[PrefixConfig, PromptConfig, PTuningV2Config]
CONFIGS: dict[str, type] = {"prefix": PrefixConfig, "prompt": PromptConfig, "ptuning_v2": PTuningV2Config}


@dataclass
class Parts:
    """The trainable parts of an adapter; absent parts are None."""

    prefix: PrefixStack | None = None
    prompt: PromptEmbedding | None = None
    head: nn.Module | None = None


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    method = data.get("method", "prefix")
    if method not in CONFIGS:
        raise ConfigError(f"unknown adapter method {method!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[method].from_dict(data)


def prefix_config_of(config: MethodConfig) -> PrefixConfig | None:
    if isinstance(config, PrefixConfig):
        return config
    if isinstance(config, PTuningV2Config):
        return config.prefix_config()
    return None


def build_parts(config: MethodConfig, layout: ModelLayout, input_embeddings: Any = None,
                tokenizer: Any = None, initialize: bool = True) -> Parts:
    """Fresh parts for ``config`` on a model of ``layout``.

    Args:
        input_embeddings: the model's input embedding weight ``(V, d)`` (prompt inits that
            sample or copy token embeddings need it).
        tokenizer: needed by prompt inits from text or label words.
        initialize: apply the configured prompt init (off when a checkpoint's tensors follow).
    """
    parts = Parts()
    prefix_cfg = prefix_config_of(config)
    if prefix_cfg is not None:
        parts.prefix = PrefixStack.create(layout, prefix_cfg)
    if isinstance(config, PromptConfig):
        parts.prompt = PromptEmbedding(config, layout.d_model)
        if initialize and config.init != "random":
            if input_embeddings is None:
                raise ConfigError(f"prompt init {config.init!r} needs the model's input embeddings")
            parts.prompt.initialize(input_embeddings.detach().float(), tokenizer)
    if isinstance(config, PromptConfig) and config.num_labels is not None:
        parts.head = SequenceClassificationHead(layout.d_model, config.num_labels, config.pooling, config.head_dropout)
    if isinstance(config, PTuningV2Config):
        if config.task == "sequence-classification":
            parts.head = SequenceClassificationHead(layout.d_model, config.num_labels, config.pooling,
                                                    config.head_dropout)
        else:
            parts.head = TokenClassificationHead(layout.d_model, config.num_labels, config.head_dropout)
    return parts
