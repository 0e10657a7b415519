"""Shape of a model's attention, as far as prefixes care: plain data, no transformers import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ShapeMismatchError(ValueError):
    """An adapter was made for a model of another shape; the message names what differs."""


@dataclass(frozen=True)
class LocationShape:
    """One attention location (e.g. the decoder's self-attention) of a model.

    Fields:
        location: one of ``prefixtune.config.LOCATIONS``.
        num_layers: number of attention layers at this location in the base model.
        num_kv_heads: key/value heads per layer (fewer than query heads under GQA).
        head_dim: size of one key/value head.
    """

    location: str
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_width(self) -> int:
        """Width of one layer's keys (or values): ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class ModelLayout:
    """Everything about a base model that a prefix's shape depends on.

    Fields:
        model_type: the Hugging Face ``config.model_type`` (``"llama"``, ``"t5"``, ...).
        d_model: hidden size of the model (the embedding width of the MLP reparameterization).
        locations: the attention locations the model has, in a fixed order.
        base_parameters: number of parameters of the base model (for percentages).
    """

    model_type: str
    d_model: int
    locations: tuple[LocationShape, ...]
    base_parameters: int

    def location(self, name: str) -> LocationShape:
        for shape in self.locations:
            if shape.location == name:
                return shape
        have = [s.location for s in self.locations]
        raise KeyError(f"model type {self.model_type!r} has no {name!r} attention (it has {have})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "d_model": self.d_model,
            "base_parameters": self.base_parameters,
            "locations": [
                {"location": s.location, "num_layers": s.num_layers, "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim}
                for s in self.locations
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelLayout":
        return cls(
            model_type=data["model_type"],
            d_model=int(data["d_model"]),
            base_parameters=int(data.get("base_parameters", 0)),
            locations=tuple(LocationShape(**s) for s in data["locations"]),
        )

    def check_compatible(self, saved: "ModelLayout", used_locations: tuple[str, ...]) -> None:
        """Raise :class:`ShapeMismatchError` naming every difference that matters for an adapter.

        ``saved`` is the layout recorded with an adapter; ``self`` is the model it is loaded into.
        Only the locations the adapter uses are compared; the model type may differ (a Llama
        adapter fits a Mistral of the same shape).
        """
        problems = []
        for name in used_locations:
            want = saved.location(name)
            try:
                have = self.location(name)
            except KeyError:
                problems.append(f"{name}: the adapter has a prefix here but the model has no such attention")
                continue
            for attr, label in (("num_layers", "layers"), ("num_kv_heads", "key/value heads"), ("head_dim", "head size")):
                a, b = getattr(want, attr), getattr(have, attr)
                if a != b:
                    problems.append(f"{name}: adapter has {a} {label}, model has {b}")
        if problems:
            raise ShapeMismatchError(
                f"adapter was trained for a {saved.model_type} model of another shape than this "
                f"{self.model_type} model: " + "; ".join(problems)
                + ". Load it into the base model it was trained on."
            )
