"""The serving engine's padded KV cache: part of the boundary with transformers (with
:mod:`prefixtune.hf.boundary`, the only modules that touch transformers internals).

A :class:`transformers.DynamicCache` whose layers are plain ``DynamicLayer`` s holds, per layer,
keys and values ``(B, H_kv, S, d)``: one row per running request, right-aligned so that column
``S - 1`` is every row's newest token. The engine keeps a ``(B, S)`` mask beside it. Rows join
(:func:`merge`: the narrower cache is padded on the left), leave (:func:`select`) and the columns
no row uses any more are dropped (:func:`drop_left`). A prefix enters as the first keys and values
of a row (:func:`from_prefix`): given, not computed, exactly what prefix attention prepends.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


def from_prefix(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> DynamicCache:
    """A cache holding ``keys[i]``/``values[i]`` ``(B, H_kv, C, d)`` at layer ``i`` (``C`` may be 0:
    an empty cache)."""
    if not keys or keys[0].shape[2] == 0:
        return DynamicCache()
    return DynamicCache(ddp_cache_data=list(zip(keys, values)))


def width(cache: DynamicCache) -> int:
    """``S``: the number of columns (0 for a cache nothing was written to)."""
    return cache.get_seq_length() if len(cache.layers) else 0


def _check(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise TypeError(f"the serving cache holds full-attention layers only, not {type(layer).__name__}")


def _edit(cache: DynamicCache, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    _check(cache)
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)


def select(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep the rows ``rows`` (1-D index), in that order."""
    _edit(cache, lambda t: t.index_select(0, rows.to(t.device)))


def drop_left(cache: DynamicCache, n: int) -> None:
    """Drop the first ``n`` columns."""
    if n > 0:
        _edit(cache, lambda t: t[:, :, n:].contiguous())


def pad_left(cache: DynamicCache, n: int) -> None:
    """Add ``n`` zero columns in front."""
    if n > 0:
        _edit(cache, lambda t: torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], 2))


def merge(into: DynamicCache, other: DynamicCache, rows_into: int) -> DynamicCache:
    """``into``'s rows then ``other``'s, right-aligned (the narrower one padded on the left); ``into``
    may have no rows (``rows_into`` 0), and is then replaced."""
    if rows_into == 0:
        return other
    _check(into)
    _check(other)
    s = max(width(into), width(other))
    pad_left(into, s - width(into))
    pad_left(other, s - width(other))
    return DynamicCache(ddp_cache_data=[(torch.cat([a.keys, b.keys], 0), torch.cat([a.values, b.values], 0))
                                        for a, b in zip(into.layers, other.layers)])


def snapshot(cache: DynamicCache) -> Callable[[], None]:
    """A function that puts ``cache`` back as it is now: its layers and each layer's tensors and
    flags. Cheap (references, no copies): a layer's ``update`` replaces its tensors, never writes
    into them. For undoing a forward that failed halfway (a compiled decoding step rerun eagerly)."""
    layers = list(cache.layers)
    states = [dict(vars(layer)) for layer in layers]

    def restore() -> None:
        cache.layers[:] = layers
        for layer, state in zip(layers, states):
            vars(layer).clear()
            vars(layer).update(state)

    return restore


# --------------------------------------------------------------------------------------------
# generate(): a folded prefix written once into the cache instead of merged at every step


def _expand(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``(1 or R, ...)`` to ``batch`` rows (beam search runs ``R * beams`` rows, beams adjacent)."""
    if t.shape[0] == batch:
        return t
    return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t.repeat_interleave(batch // t.shape[0], 0)


class PrefixLayer(DynamicLayer):
    """A full-attention cache layer whose first ``P`` columns are a given prefix.

    ``get_seq_length`` (and so the masks, cache positions and position ids transformers derives from
    it) counts the real tokens only; the keys/values ``update`` returns start with the prefix.
    Beam reordering, batch selection and cropping act on the stored tensors, prefix included.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        super().__init__()
        self.prefix_key, self.prefix_value = key, value  # (1 or R, H_kv, P, d)
        self.prefix_length = key.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch = key_states.shape[0]
        self.keys = _expand(self.prefix_key.to(key_states), batch).contiguous()
        self.values = _expand(self.prefix_value.to(value_states), batch).contiguous()

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.shape[-2] - self.prefix_length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            tokens_to_remove = max(tokens_to_remove, -self.get_seq_length())
        super().crop(tokens_to_remove)


class PrefixSlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window cache layer with a prefix kept apart (the window never drops it): ``update``
    returns ``[prefix; the window's keys]``."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, sliding_window: int) -> None:
        super().__init__(sliding_window=sliding_window)
        self.prefix_key, self.prefix_value = key, value
        self.prefix_length = key.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch = key_states.shape[0]
        self.prefix_key = _expand(self.prefix_key.to(key_states), batch)
        self.prefix_value = _expand(self.prefix_value.to(value_states), batch)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):  # type: ignore[override]
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        return torch.cat([self.prefix_key, keys], -2), torch.cat([self.prefix_value, values], -2)

    def _rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.is_initialized:
            self.prefix_key, self.prefix_value = fn(self.prefix_key), fn(self.prefix_value)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._rows(lambda t: t.repeat_interleave(repeats, dim=0))
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._rows(lambda t: t[indices, ...])
        super().batch_select_indices(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0:
            self._rows(lambda t: t.index_select(0, beam_idx.to(t.device)))
        super().reorder_cache(beam_idx)


def fresh_dynamic(cache: object) -> bool:
    """Whether ``cache`` is a ``DynamicCache`` nothing was written to, of plain (full or sliding)
    dynamic layers only: one whose layers can be swapped for prefix layers."""
    if type(cache) is not DynamicCache or getattr(cache, "offloading", False):
        return False
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) and not layer.is_initialized
               for layer in cache.layers)


def hold_prefix(cache: DynamicCache, prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make ``cache`` (see :func:`fresh_dynamic`) start layer ``i`` with ``prefixes[i]`` =
    ``(key, value)`` ``(1 or R, H_kv, P, d)``. Layers the cache has not created yet are created
    (full attention, as a ``DynamicCache`` without a config creates them)."""
    while len(cache.layers) <= max(prefixes, default=-1):
        cache.layers.append(DynamicLayer())
    for i, (key, value) in prefixes.items():
        layer = cache.layers[i]
        if type(layer) is DynamicSlidingWindowLayer:
            cache.layers[i] = PrefixSlidingLayer(key, value, layer.sliding_window)
        else:
            cache.layers[i] = PrefixLayer(key, value)
