"""The prefix a forward pass uses, resolved per attention module and per batch row.

A :class:`PrefixBatch` travels to every attention call as a keyword argument of the model's
forward (transformers passes extra keyword arguments down to the attention function), so it is
also there when gradient checkpointing recomputes a layer and at every step of ``generate()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

#: slot = (location, model layer index)
Slot = tuple[str, int]


@dataclass
class SlotPrefix:
    """Prefix keys/values for one attention module.

    Fields:
        key, value: ``(B or 1, H_kv, P, head_dim)``.
        mask: ``(B or 1, P)`` bool, True where a slot is a real prefix position; None = all real.
        gate: ``(H_kv,)`` gate logits (the prefix's attention is scaled by ``tanh(gate)`` and
            added to the real tokens' attention), or None for plain joint attention.
        in_cache: the keys/values the module attends to already start with this prefix (the KV
            cache holds it), so it is not prepended again.
    """

    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    in_cache: bool = False


class PrefixBatch:
    """Prefix keys/values for one forward, keyed by attention module.

    Args:
        slots: attention module -> its :class:`SlotPrefix`; modules absent get no prefix.
        lengths: ``(B,)`` or ``(1,)`` long, the prefix length of each row (positions shift by it).
    """

    def __init__(self, slots: dict[nn.Module, SlotPrefix], lengths: torch.Tensor,
                 capture: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.slots = slots
        self.lengths = lengths
        #: compute attention weights even where the family does not pass ``output_attentions`` down (GPT-2)
        self.need_weights = False
        #: when a dict, each attention module stores its real keys/values ``(B, H_kv, n, d)`` here
        self.capture = capture

    def get(self, module: nn.Module) -> SlotPrefix | None:
        return self.slots.get(module)

    def cached(self, modules: set[nn.Module]) -> "PrefixBatch":
        """This batch with the prefixes of ``modules`` marked as held by the KV cache."""
        slots = {m: replace(s, in_cache=True) if m in modules else s for m, s in self.slots.items()}
        view = PrefixBatch(slots, self.lengths, self.capture)
        view.need_weights = self.need_weights
        return view

    @classmethod
    def single(cls, kvs: dict[str, torch.Tensor], layers: dict[str, tuple[int, ...]],
               modules: dict[Slot, nn.Module], gates: dict[str, torch.Tensor] | None = None,
               shift: int | None = None) -> "PrefixBatch":
        """One prefix for every row: ``kvs[loc]`` is ``(len(layers[loc]), 2, H_kv, l, d)``;
        ``gates[loc]`` (optional) is ``(len(layers[loc]), H_kv)``; ``shift``: how far the real tokens'
        positions move (default: the prefix length ``l``; 0 for natural positions)."""
        slots: dict[nn.Module, SlotPrefix] = {}
        length = 0
        gates = gates or {}
        for loc, kv in kvs.items():
            length = kv.shape[3]
            gate = gates.get(loc)
            for i, layer in enumerate(layers[loc]):
                slots[modules[(loc, layer)]] = SlotPrefix(kv[i, 0][None], kv[i, 1][None],  # (1, H_kv, l, d)
                                                          gate=None if gate is None else gate[i])
        device = next(iter(kvs.values())).device
        return cls(slots, torch.tensor([length if shift is None else shift], device=device))

    @classmethod
    def per_row(cls, prefixes: list[tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]] | None],
                modules: dict[Slot, nn.Module], device: torch.device | str,
                shifts: list[int] | None = None) -> "PrefixBatch":
        """A prefix per row (None = no prefix), of possibly different lengths and layers.

        Each entry is ``(kvs, layers)`` as in :meth:`single`. Row prefixes are right-padded to the
        longest one; the padding is masked out, so each row attends to its own prefix only.
        ``shifts``: each row's position shift (default: its prefix length, 0 without one).
        """
        rows = len(prefixes)
        lengths = torch.tensor([0 if p is None else next(iter(p[0].values())).shape[3] for p in prefixes],
                               device=device)
        longest = int(lengths.max()) if rows else 0
        by_slot: dict[Slot, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        for row, entry in enumerate(prefixes):
            if entry is None:
                continue
            kvs, layers = entry
            for loc, kv in kvs.items():
                for i, layer in enumerate(layers[loc]):
                    by_slot.setdefault((loc, layer), {})[row] = (kv[i, 0], kv[i, 1])  # (H_kv, l, d) each
        slots: dict[nn.Module, SlotPrefix] = {}
        for slot, row_kv in by_slot.items():
            some_k = next(iter(row_kv.values()))[0]
            heads, _, dim = some_k.shape
            key = some_k.new_zeros(rows, heads, longest, dim)
            value = some_k.new_zeros(rows, heads, longest, dim)
            mask = torch.zeros(rows, longest, dtype=torch.bool, device=device)
            for row, (k, v) in row_kv.items():
                n = k.shape[1]
                key[row, :, :n], value[row, :, :n], mask[row, :n] = k, v, True
            slots[modules[slot]] = SlotPrefix(key, value, mask)
        return cls(slots, lengths if shifts is None else torch.tensor(shifts, dtype=torch.long, device=device))
