"""P-tuning v2 (Liu et al. 2022): a prefix at every layer plus a trainable task head.

For understanding tasks on encoders (BERT, RoBERTa, DistilBERT, MiniLM) and decoders (pooling
the last real token). Only the prefix and the head train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefixtune.core.config import ComposedConfig, option
from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.methods.head import HeadConfig
from prefixtune.methods.prefix import PrefixConfig, build_prefix

#: the paper's prefix for understanding tasks (the rest as in PrefixConfig)
PREFIX_DEFAULTS: dict[str, Any] = {"prefix_length": 16, "reparameterization": "direct", "dropout": 0.1}


@dataclass(init=False)
class PTuningV2Config(ComposedConfig):
    """Configuration of P-tuning v2: a :class:`PrefixConfig` and a :class:`HeadConfig`.

    Either sub-config may be given as an object, or its fields flat:
    ``PTuningV2Config(prefix_length=16, num_labels=3, pooling="mean")``. Flat names go to the
    prefix first (``dropout`` is the prefix's); ``head_dropout`` is the head's dropout.
    Defaults: prefix length 16, ``direct`` reparameterization, dropout 0.1 (the paper's); the
    head's defaults (sequence classification, 2 labels, ``cls`` pooling).

    """

    prefix: PrefixConfig = option(help="the prefix at every layer", factory=lambda: PrefixConfig(**PREFIX_DEFAULTS))
    head: HeadConfig = option(help="the task head (task, num_labels, pooling, dropout)", factory=HeadConfig)
    method: str = field(default="ptuning_v2", init=False)

    SUBCONFIGS = {"prefix": PrefixConfig, "head": HeadConfig}
    ALIASES = {"head_dropout": ("head", "dropout")}
    SUB_DEFAULTS = {"prefix": PREFIX_DEFAULTS}

    @property
    def prefix_config(self) -> PrefixConfig:
        return self.prefix


def build(config: PTuningV2Config, layout: ModelLayout, **_: Any) -> Parts:
    """The parts of P-tuning v2: a prefix stack and a head."""
    return Parts(prefix=build_prefix(layout, config.prefix), head=config.head.build(layout.d_model))
