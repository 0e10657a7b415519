"""Prefix tuning (Li & Liang 2021): trainable key/value vectors at every attention layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from prefixtune.core.config import ConfigError, ConfigIO, check_range, option
from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.core.prefix import DirectPrefix, MLPPrefix, PrefixStack, prefixed_layers

#: Attention locations a prefix can be attached to. Decoder-only models have ``decoder_self``,
#: encoder-only models ``encoder_self``, encoder-decoder models all three.
Location = Literal["encoder_self", "decoder_self", "cross"]
Reparameterization = Literal["mlp", "direct"]
PositionMode = Literal["shifted", "natural"]
PrefixInit = Literal["random", "text", "vocab"]
LOCATIONS: tuple[str, ...] = get_args(Location)
REPARAMETERIZATIONS: tuple[str, ...] = get_args(Reparameterization)
POSITION_MODES: tuple[str, ...] = get_args(PositionMode)


@dataclass
class PrefixConfig(ConfigIO):
    """Configuration of a prefix (Li & Liang 2021): trainable K/V vectors at every attention layer.

    Each field's help is beside it (``option(default, help)``); ``prefixtune params --help`` and
    ``prefixtune train --help`` show them with their defaults and choices.
    """

    prefix_length: int = option(10, "number of virtual key/value positions l prepended at each layer")
    reparameterization: Reparameterization = option(
        "mlp", "mlp: train an embedding [l, d_model] passed through Linear(d_model, hidden_size) -> tanh -> "
               "Linear(hidden_size, layers*2*kv_heads*head_dim), the paper's stable form; direct: train the K/V "
               "tensors themselves")
    hidden_size: int = option(512, "width of the MLP's hidden layer (512 in the paper's table-to-text setup)")
    dropout: float = option(0.0, "dropout probability on the prefix keys/values during training")
    locations: tuple[Location, ...] = option(
        LOCATIONS, "attention locations that get a prefix, each with its own parameters (encoder_self, "
                   "decoder_self, cross); locations a model does not have are skipped")
    exclude_layers: tuple[int, ...] = option((), "layer indices (within each location) that get no prefix")
    position_mode: PositionMode | None = option(
        None, "shifted: the real tokens get position ids l..l+n-1, as the paper's GPT-2 code and PEFT (PEFT "
              "checkpoints reproduce exactly); natural: 0..n-1. For models whose forward takes position ids. "
              "None: shifted, or natural with gate=True (a fresh gated prefix then reproduces the base model)")
    init_std: float = option(0.02, "standard deviation of the random init (the embedding for mlp, the K/V "
                                   "tensors for direct)")
    init: PrefixInit = option(
        "random", "random; text: start as the frozen model's own keys/values for init_text (tokenized, repeated "
                  "or cut to l), as in the paper (an MLP is first fitted to produce them); vocab: the same for "
                  "random vocabulary tokens")
    init_text: str | None = option(None, "the text for init=text, e.g. 'table-to-text:'")
    gate: bool = option(False, "a learned per-layer, per-key/value-head gate on the prefix's share of attention, "
                               "zero at the start (LLaMA-Adapter): out = attn(real) + tanh(g) * attn(prefix), so a "
                               "fresh adapter reproduces the base model exactly")
    method: str = field(default="prefix", init=False)

    def __post_init__(self) -> None:
        self.locations = tuple(self.locations)
        self.exclude_layers = tuple(sorted(set(int(i) for i in self.exclude_layers)))
        if not isinstance(self.prefix_length, int) or self.prefix_length < 1:
            raise ConfigError(f"prefix_length must be a positive integer, got {self.prefix_length!r}")
        if self.reparameterization not in REPARAMETERIZATIONS:
            raise ConfigError(
                f"reparameterization must be one of {REPARAMETERIZATIONS}, got {self.reparameterization!r}"
            )
        if self.hidden_size < 1:
            raise ConfigError(f"hidden_size must be positive, got {self.hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        check_range("init_std", self.init_std, low=0.0)
        unknown = [loc for loc in self.locations if loc not in LOCATIONS]
        if unknown or not self.locations:
            raise ConfigError(f"locations must be a non-empty subset of {LOCATIONS}, got {self.locations}")
        if any(i < 0 for i in self.exclude_layers):
            raise ConfigError(f"exclude_layers must hold non-negative layer indices, got {self.exclude_layers}")
        if self.init not in ("random", "text", "vocab"):
            raise ConfigError(f"init must be 'random', 'text' or 'vocab', got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("init='text' needs init_text (e.g. 'table-to-text:')")
        if self.position_mode is None:
            self.position_mode = "natural" if self.gate else "shifted"
        if self.position_mode not in POSITION_MODES:
            raise ConfigError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")


    @property
    def prefix_config(self) -> "PrefixConfig":
        """The prefix part's config (every method config has this property; None = no prefix)."""
        return self


def build_prefix(layout: ModelLayout, config: PrefixConfig) -> PrefixStack:
    """Fresh, randomly initialized prefixes for every location of ``layout`` named in ``config``."""
    encoders, layers, gates = {}, {}, {}
    for shape in layout.locations:
        if shape.location not in config.locations:
            continue
        layers[shape.location] = prefixed_layers(shape, config.exclude_layers)
        n = len(layers[shape.location])
        if config.gate:
            gates[shape.location] = torch.zeros(n, shape.num_kv_heads)
        if config.reparameterization == "mlp":
            encoders[shape.location] = MLPPrefix(
                config.prefix_length, layout.d_model, config.hidden_size, n, shape.num_kv_heads,
                shape.head_dim, config.dropout, config.init_std)
        else:
            encoders[shape.location] = DirectPrefix.random(
                config.prefix_length, n, shape.num_kv_heads, shape.head_dim, config.dropout, config.init_std)
    if not encoders:
        have = [s.location for s in layout.locations]
        raise ValueError(
            f"none of the configured locations {list(config.locations)} exists in this "
            f"{layout.model_type} model (it has {have}); set PrefixConfig.locations accordingly"
        )
    return PrefixStack(encoders, layers, gates)


def build(config: PrefixConfig, layout: ModelLayout, **_: Any) -> Parts:
    """The parts of prefix tuning: a prefix stack."""
    return Parts(prefix=build_prefix(layout, config))
