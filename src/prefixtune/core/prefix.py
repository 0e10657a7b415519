"""Prefix parameterizations: modules that produce per-layer prefix keys/values.

Every module here satisfies one small protocol: ``forward() -> Tensor`` of shape
``(layers, 2, kv_heads, l, head_dim)``, index 0 of dim 1 being keys and 1 values. The output does
not depend on the batch: it is computed once per forward and broadcast over the rows.
"""

from __future__ import annotations

import torch
from torch import nn

from prefixtune.core.layout import LocationShape
from prefixtune.core.parts import StateError, check_shape


class MLPPrefix(nn.Module):
    """Reparameterized prefix (Li & Liang 2021, section 4.3).

    ``embedding (l, d_model) -> Linear(d_model, hidden) -> tanh -> Linear(hidden, layers*2*kv_heads*head_dim)``.
    The flattened output is ordered (layer, key/value, head, dim), the order PEFT stores.
    """

    def __init__(self, length: int, d_model: int, hidden_size: int, num_layers: int, num_kv_heads: int,
                 head_dim: int, dropout: float = 0.0, init_std: float = 0.02) -> None:
        super().__init__()
        self.shape = (num_layers, 2, num_kv_heads, length, head_dim)
        self.embedding = nn.Parameter(torch.randn(length, d_model) * init_std)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, num_layers * 2 * num_kv_heads * head_dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        layers, _, heads, length, dim = self.shape
        flat = self.mlp(self.embedding)  # (l, layers*2*heads*dim)
        kv = flat.view(length, layers, 2, heads, dim).permute(1, 2, 3, 0, 4)  # (layers, 2, heads, l, dim)
        return self.dropout(kv)


class DirectPrefix(nn.Module):
    """Prefix keys/values trained (or stored, once folded) as they are: ``(layers, 2, kv_heads, l, head_dim)``."""

    def __init__(self, kv: torch.Tensor, dropout: float = 0.0) -> None:
        super().__init__()
        if kv.dim() != 5 or kv.shape[1] != 2:
            raise ValueError(f"prefix K/V must have shape (layers, 2, kv_heads, l, head_dim), got {tuple(kv.shape)}")
        self.kv = nn.Parameter(kv)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def random(cls, length: int, num_layers: int, num_kv_heads: int, head_dim: int,
               dropout: float = 0.0, init_std: float = 0.02) -> "DirectPrefix":
        return cls(torch.randn(num_layers, 2, num_kv_heads, length, head_dim) * init_std, dropout)

    def forward(self) -> torch.Tensor:
        return self.dropout(self.kv)


def prefixed_layers(shape: LocationShape, exclude_layers: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Layer indices of ``shape`` that get a prefix: all but ``exclude_layers``."""
    bad = [i for i in exclude_layers if i >= shape.num_layers]
    if bad:
        raise ValueError(
            f"exclude_layers {bad} out of range: {shape.location} has {shape.num_layers} layers (0..{shape.num_layers - 1})"
        )
    layers = tuple(i for i in range(shape.num_layers) if i not in exclude_layers)
    if not layers:
        raise ValueError(f"exclude_layers leaves no layer of {shape.location} with a prefix")
    return layers


class PrefixStack(nn.Module):
    """One prefix module per attention location, each with its own parameters.

    Attributes:
        layers: location -> model layer indices that get a prefix (in the order of dim 0 of
            that location's K/V tensor).
    """

    def __init__(self, encoders: dict[str, nn.Module], layers: dict[str, tuple[int, ...]],
                 gates: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.layers = dict(layers)
        # (prefixed_layers, kv_heads) per location, zero-initialized: see PrefixConfig.gate
        self.gates = nn.ParameterDict({loc: nn.Parameter(g) for loc, g in (gates or {}).items()})

    def forward(self) -> dict[str, torch.Tensor]:
        """Per location: K/V of shape ``(prefixed_layers, 2, kv_heads, l, head_dim)``."""
        return {loc: enc() for loc, enc in self.encoders.items()}

    @property
    def is_folded(self) -> bool:
        return all(isinstance(e, DirectPrefix) for e in self.encoders.values())

    @torch.no_grad()
    def folded(self) -> "PrefixStack":
        """A stack of :class:`DirectPrefix` modules holding this stack's current K/V (no dropout).

        The result gives outputs identical to this stack in eval mode; the MLP is gone.
        """
        was_training = self.training
        self.eval()
        kvs = self()
        self.train(was_training)
        encoders = {}
        for loc, kv in kvs.items():
            direct = DirectPrefix(kv.detach().clone(), dropout=self.encoders[loc].dropout.p)
            encoders[loc] = direct
        return PrefixStack(encoders, self.layers, {loc: g.detach().clone() for loc, g in self.gates.items()})

    # ------------------------------------------------------------------ state (see prefixtune.core.parts)

    def inference_state(self) -> dict[str, torch.Tensor]:
        """``<location>``: folded K/V ``(layers, 2, H_kv, l, d)``; ``gate.<location>``: ``(layers, H_kv)`` if gated."""
        folded = self.folded()
        out = {loc: enc.kv for loc, enc in folded.encoders.items()}
        out.update({f"gate.{loc}": gate for loc, gate in folded.gates.items()})
        return out

    def from_inference_state(self, tensors: dict[str, torch.Tensor]) -> "PrefixStack":
        """A folded stack holding ``tensors``, shaped like this one (the dropout is kept)."""
        encoders, gates = {}, {}
        for loc, enc in self.encoders.items():
            kv = check_shape(loc, tensors.get(loc), self._shape(loc))
            encoders[loc] = DirectPrefix(kv.clone(), dropout=enc.dropout.p)
        for loc, gate in self.gates.items():
            gates[loc] = check_shape(f"gate.{loc}", tensors.get(f"gate.{loc}"), tuple(gate.shape)).clone()
        expected = set(self.encoders) | {f"gate.{loc}" for loc in self.gates}
        unexpected = sorted(set(tensors) - expected)
        if unexpected:
            raise StateError(f"{unexpected[0]} is not part of this prefix (it has {sorted(expected)})")
        return PrefixStack(encoders, self.layers, gates)

    def _shape(self, loc: str) -> tuple[int, ...]:
        enc = self.encoders[loc]
        return tuple(enc.shape) if isinstance(enc, MLPPrefix) else tuple(enc.kv.shape)
