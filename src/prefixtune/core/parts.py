"""The trainable parts of an adapter and the protocol by which each part owns its state.

An adapter is a subset of three parts: a prefix stack (:class:`~prefixtune.core.prefix.PrefixStack`),
an input prompt (:class:`~prefixtune.core.prompt.PromptEmbedding`) and a task head
(:mod:`prefixtune.core.heads`). Every part is an ``nn.Module`` that also provides:

* ``is_folded`` and ``folded()``: the part with reparameterizations replaced by their outputs;
* ``inference_state() -> dict[str, Tensor]``: the folded tensors inference needs, by name;
* ``from_inference_state(tensors) -> part``: called on a freshly built part of the right shape,
  the folded part holding ``tensors`` (shapes checked, :class:`StateError` otherwise).

The trainable state is the part's ``state_dict``. :class:`Parts` applies these part by part and
names each tensor ``<part>.<name>``, so checkpoint and PEFT I/O never name a part themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator

import torch
from torch import nn


class StateError(ValueError):
    """Saved tensors do not fit a part: a tensor is missing, has another shape, or is unexpected."""


def check_shape(key: str, tensor: torch.Tensor | None, expected: tuple[int, ...]) -> torch.Tensor:
    """``tensor`` if it has shape ``expected``; else :class:`StateError` naming ``key``."""
    if tensor is None or tuple(tensor.shape) != tuple(expected):
        got = None if tensor is None else tuple(tensor.shape)
        raise StateError(f"{key} has shape {got}, expected {tuple(expected)}")
    return tensor


def _join(part: str, key: str) -> str:
    return f"{part}.{key}" if key else part


def _sub(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == part:
            out[""] = value
        elif key.startswith(part + "."):
            out[key[len(part) + 1:]] = value
    return out


@dataclass
class Parts:
    """The parts of one adapter; absent parts are None."""

    prefix: Any = None
    prompt: Any = None
    head: Any = None

    def items(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, part)`` for every part present, in a fixed order."""
        for f in fields(self):
            part = getattr(self, f.name)
            if part is not None:
                yield f.name, part

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.items())

    def modules(self) -> list[nn.Module]:
        return [part for _, part in self.items()]

    def to(self, device: torch.device | str) -> "Parts":
        return Parts(**{name: part.to(device) for name, part in self.items()})

    @property
    def is_folded(self) -> bool:
        return all(part.is_folded for _, part in self.items())

    def folded(self) -> "Parts":
        """Every part folded (identical outputs in eval mode; reparameterizations gone). Parts
        that are already folded are kept as they are (the same modules and parameters)."""
        return Parts(**{name: part if part.is_folded else part.folded() for name, part in self.items()})

    @property
    def prefixed_layers(self) -> dict[str, tuple[int, ...]]:
        """Location -> layer indices that get a prefix (empty without a prefix)."""
        return dict(self.prefix.layers) if self.prefix is not None else {}

    # ------------------------------------------------------------------ state

    def _named(self, state_of: Any) -> dict[str, torch.Tensor]:
        return {_join(name, key): value.detach().float().contiguous().cpu()
                for name, part in self.items() for key, value in state_of(part).items()}

    def shapes(self, inference: bool) -> dict[str, tuple[int, ...]]:
        """The shapes of :meth:`inference_state` (``inference``) or :meth:`trainable_state`, named
        alike; works on parts built on the meta device (nothing is allocated)."""
        return {_join(name, key): tuple(value.shape) for name, part in self.items()
                for key, value in (part.inference_state() if inference else part.state_dict()).items()}

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The folded tensors inference needs: ``<part>.<name>`` -> tensor (fp32, CPU, contiguous)."""
        return self._named(lambda part: part.inference_state())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every part's full state (embedding + MLP, prompt encoder, head): ``<part>.<name>`` -> tensor."""
        return self._named(lambda part: part.state_dict())

    def _check_no_strays(self, state: dict[str, torch.Tensor]) -> None:
        names = self.names()
        strays = sorted(k for k in state if k.split(".", 1)[0] not in names)
        if strays:
            raise StateError(f"unexpected tensors {strays[:5]} (this adapter has the parts {list(names)})")

    def from_inference_state(self, state: dict[str, torch.Tensor]) -> "Parts":
        """Folded parts holding ``state``; ``self`` are fresh parts of the right shape."""
        self._check_no_strays(state)
        out = {}
        for name, part in self.items():
            try:
                out[name] = part.from_inference_state(_sub(state, name))
            except StateError as e:
                msg = str(e)  # a part names its own tensor ("" for a part stored as one tensor)
                raise StateError(name + (msg if msg.startswith(" ") else "." + msg)) from None
        return Parts(**out)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`trainable_state` into these parts, in place (strict)."""
        self._check_no_strays(state)
        for name, part in self.items():
            sub = _sub(state, name)
            try:
                part.load_state_dict(sub, strict=True)
            except RuntimeError as e:
                raise StateError(f"{name}: tensors do not match the config: {e}") from None
