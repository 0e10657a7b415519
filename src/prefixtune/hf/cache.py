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
from transformers.cache_utils import DynamicLayer


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
