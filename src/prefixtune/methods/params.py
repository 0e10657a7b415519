"""Parameter accounting: what a prefix trains and what it stores, against the base model."""

from __future__ import annotations

from dataclasses import dataclass

from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.core.prefix import prefixed_layers
from prefixtune.hf.boundary import describe
from prefixtune.methods import build_parts
from prefixtune.methods.prefix import PrefixConfig


@dataclass(frozen=True)
class ParameterCount:
    """Fields: ``trainable`` (trained, incl. the MLP), ``stored`` (kept for inference after
    folding: ``l × layers × 2 × kv_heads × head_dim`` per location), ``base`` (base model)."""

    trainable: int
    stored: int
    base: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.base if self.base else 0.0

    @property
    def stored_percent(self) -> float:
        return 100.0 * self.stored / self.base if self.base else 0.0

    def __str__(self) -> str:
        return (f"trainable {self.trainable:,} ({self.trainable_percent:.3f}% of {self.base:,}); "
                f"stored {self.stored:,} ({self.stored_percent:.3f}%)")


def expected_counts(layout: ModelLayout, config: PrefixConfig) -> ParameterCount:
    """Counts from the formula, before any module exists (for planning and the CLI's ``params``)."""
    stored = trainable = 0
    for shape in layout.locations:
        if shape.location not in config.locations:
            continue
        layers = len(prefixed_layers(shape, config.exclude_layers))
        out = layers * 2 * shape.kv_width
        stored += config.prefix_length * out
        if config.reparameterization == "mlp":
            h, d = config.hidden_size, layout.d_model
            trainable += config.prefix_length * d + (d * h + h) + (h * out + out)
        else:
            trainable += config.prefix_length * out
        if config.gate:  # one gate per prefixed layer and key/value head, trained and stored
            trainable += layers * shape.num_kv_heads
            stored += layers * shape.num_kv_heads
    return ParameterCount(trainable, stored, layout.base_parameters)


def count_parts(parts: Parts, base: int) -> ParameterCount:
    """Counts of built parts: trainable, and stored once folded (what ``adapter.safetensors`` holds)."""
    trainable = sum(p.numel() for m in parts.modules() for p in m.parameters())
    stored = sum(t.numel() for t in parts.inference_state().values())
    return ParameterCount(trainable, stored, base)


def count_parameters(model: object, config: object | None = None) -> ParameterCount:
    """Trainable and stored adapter parameters, absolute and as % of the base model.

    Args:
        model: a :class:`~prefixtune.PrefixModel`, or a plain transformers model together
            with ``config`` (to plan before wrapping anything).
    """
    if hasattr(model, "count_parameters") and config is None:
        return model.count_parameters()
    layout, _ = describe(model)
    config = config or PrefixConfig()
    if isinstance(config, PrefixConfig):
        return expected_counts(layout, config)
    return count_parts(build_parts(config, layout, initialize=False), layout.base_parameters)
