"""The continuous-batching engine's tensors: rows that are being prefilled, and the running batch.

Each row of the padded cache (:mod:`prefixtune.hf.cache`) is laid out as

    [padding | the adapter's prefix keys/values (l) | padding | prompt vectors (v) | prompt tokens | new tokens]

right-aligned, with a ``(B, S)`` mask of the real columns. The prefix is in the cache as given
keys and values (its attention is then the bare model's attention over ``l`` more keys), the
prompt vectors are fed as input embeddings, and every real token carries the position id it has
when the request runs alone (``shift + position base + index``), so padding and the gaps between
the regions change nothing. A layer an adapter's prefix leaves out sees that row's prefix columns
hidden at that layer, and prefix columns stay visible past a sliding window (both through the
boundary's per-layer key visibility), as prefix attention has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prefixtune.hf import cache as kv
from prefixtune.hf.boundary import KEY_MASK_KWARG, accepts_logits_to_keep, sliding_layers
from prefixtune.runtime.adapters import AdapterTensors
from prefixtune.runtime.compiled import MaybeCompiled
from prefixtune.serve.request import Request

LOCATION = "decoder_self"


@dataclass
class Row:
    """One running request: its adapter's tensors (None: the bare model), the position id of
    the next token it feeds, its own sampling generator (None: the global one)."""

    req: Request
    adapter: AdapterTensors | None
    position: int = 0
    generator: torch.Generator | None = None
    counts: dict[int, int] = field(default_factory=dict)  # token -> times generated (penalties)


@dataclass
class Model:
    """What the batch needs of the model: the transformers model, its attention modules by
    layer, the cache's head count and size, its dtype, pad id and position base; ``compile``:
    run the forwards under ``torch.compile`` (:class:`~prefixtune.runtime.compiled.MaybeCompiled`:
    eager after a failure, the cache put back first)."""

    model: nn.Module
    modules: dict[int, nn.Module]
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    pad_id: int
    position_base: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        self.logits_to_keep = accepts_logits_to_keep(self.model)
        self.sliding = sliding_layers(self.model.config)
        self.call = MaybeCompiled(self.model, self.compile, what="decoding")

    def forward(self, cache: Any, cols: "Columns", position_ids: torch.Tensor, input_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, upto: int | None = None) -> torch.Tensor:
        """One forward over the new columns; returns the last column's logits ``(B, V)`` in float32.

        ``cols``: the masks over cached and new columns (``(B, S + n)``, or their first ``upto``
        columns); ``position_ids``: ``(B, n)``.
        """
        view = (lambda name: cols.get(name)[:, :upto]) if upto is not None else cols.get  # noqa: E731
        kwargs: dict[str, Any] = dict(attention_mask=view("mask"), position_ids=position_ids,
                                      cache=cache, use_cache=True)
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        layers = self.sliding | {int(n.split(":")[1]) for n in cols.names if n.startswith("hidden:")}
        if layers and bool(view("prefix").any()):
            prefix = view("prefix")
            kwargs[KEY_MASK_KWARG] = {self.modules[i]: (prefix, prefix & ~view(f"hidden:{i}") if f"hidden:{i}" in cols.names
                                                        else prefix) for i in layers}
        undo = kv.snapshot(cache) if self.call.compiled else None
        out = self.call.call(undo, input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
        return out.logits[:, -1].float()


class Columns:
    """Named per-column tensors ``(B, S)`` that move together with the cache: ``mask`` (long:
    1 at real columns), ``prefix`` (bool: prefix columns) and ``hidden:<layer>`` (bool: prefix
    columns that layer does not see)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    @property
    def names(self) -> set[str]:
        return set(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @property
    def width(self) -> int:
        return self.tensors["mask"].shape[1]

    def _or_empty(self, name: str) -> torch.Tensor:
        """``hidden:*`` entries a side lacks are all False."""
        if name in self.tensors:
            return self.tensors[name]
        return torch.zeros_like(self.tensors["prefix"])

    def stacked(self, other: "Columns") -> "Columns":
        """These rows then ``other``'s, right-aligned."""
        s = max(self.width, other.width)
        left = lambda m, n: torch.cat([m.new_zeros(m.shape[0], n), m], 1)  # noqa: E731
        return Columns({name: torch.cat([left(self._or_empty(name), s - self.width),
                                         left(other._or_empty(name), s - other.width)], 0)
                        for name in self.names | other.names})

    def rows(self, index: torch.Tensor) -> "Columns":
        return Columns({k: t[index] for k, t in self.tensors.items()})

    def from_column(self, start: int) -> "Columns":
        return Columns({k: t[:, start:] for k, t in self.tensors.items()})

    def appended(self) -> "Columns":
        """One more real, non-prefix column."""
        extra = {"mask": 1, "prefix": False}
        return Columns({k: torch.cat([t, t.new_full((t.shape[0], 1), extra.get(k, False))], 1)
                        for k, t in self.tensors.items()})


def _prefix_region(model: Model, rows: list[Row]) -> tuple[list[torch.Tensor], list[torch.Tensor], Columns]:
    """Keys, values ``(G, H_kv, C, d)`` per layer, and the columns of the prefix region (``C`` the
    longest prefix; shorter ones right-aligned)."""
    lengths = [r.adapter.kvs[LOCATION].shape[3] if r.adapter is not None and r.adapter.kvs else 0 for r in rows]
    c, g, n_layers = max(lengths, default=0), len(rows), len(model.modules)
    shape = (g, model.kv_heads, c, model.head_dim)
    keys = [torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in range(n_layers)]
    values = [torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in range(n_layers)]
    prefix = torch.zeros(g, c, dtype=torch.bool, device=model.device)
    hidden: dict[str, torch.Tensor] = {}
    for i, (row, n) in enumerate(zip(rows, lengths)):
        if not n:
            continue
        prefix[i, c - n:] = True
        stacked, layers = row.adapter.kvs[LOCATION], row.adapter.layers[LOCATION]  # (L_a, 2, H_kv, n, d)
        for j, layer in enumerate(layers):
            keys[layer][i, :, c - n:] = stacked[j, 0].to(model.dtype)
            values[layer][i, :, c - n:] = stacked[j, 1].to(model.dtype)
        for layer in set(range(n_layers)) - set(layers):
            hidden.setdefault(f"hidden:{layer}", torch.zeros_like(prefix))[i, c - n:] = True
    return keys, values, Columns({"mask": prefix.long(), "prefix": prefix, **hidden})


class Prefill:
    """Rows being prefilled, a chunk of columns at a time, before they join the running batch.

    Args:
        model: the :class:`Model`.
        rows: the new rows (adapters resolved).
        embed: the model's input embeddings (used when a row has prompt vectors).
    """

    def __init__(self, model: Model, rows: list[Row], embed: nn.Module) -> None:
        self.model, self.rows = model, rows
        keys, values, prefix_cols = _prefix_region(model, rows)
        self.cache = kv.from_prefix(keys, values)
        lengths = [self._virtual(r) + len(r.req.input_ids) for r in rows]
        n, g, dev = max(lengths), len(rows), model.device
        ids = torch.full((g, n), model.pad_id, dtype=torch.long, device=dev)
        self.positions = torch.zeros(g, n, dtype=torch.long, device=dev)
        token_mask = torch.zeros(g, n, dtype=torch.long, device=dev)
        for i, (row, m) in enumerate(zip(rows, lengths)):
            ids[i, n - len(row.req.input_ids):] = torch.tensor(row.req.input_ids, device=dev)
            start = model.position_base + (row.adapter.shift if row.adapter is not None else 0)
            self.positions[i, n - m:] = torch.arange(start, start + m, device=dev)
            token_mask[i, n - m:] = 1
            row.position = start + m
        self.ids, self.embeds = ids, None
        if any(self._virtual(r) for r in rows):
            self.embeds = embed(ids)  # (G, n, D)
            for i, (row, m) in enumerate(zip(rows, lengths)):
                if self._virtual(row):
                    v = row.adapter.prompt.shape[0]
                    self.embeds[i, n - m:n - m + v] = row.adapter.prompt.to(self.embeds.dtype)
        tokens = Columns({"mask": token_mask, **{k: torch.zeros(g, n, dtype=torch.bool, device=dev)
                                                  for k in prefix_cols.names if k != "mask"}})
        self.cols = Columns({k: torch.cat([prefix_cols.get(k), tokens.get(k)], 1) for k in prefix_cols.names})
        self.prefix_width, self.done = prefix_cols.width, 0

    @staticmethod
    def _virtual(row: Row) -> int:
        return row.adapter.prompt.shape[0] if row.adapter is not None and row.adapter.prompt is not None else 0

    @property
    def columns(self) -> int:
        return self.ids.shape[1]

    def step(self, chunk: int) -> torch.Tensor | None:
        """Run the next ``chunk`` columns; the last column's logits ``(G, V)`` once all have run."""
        a, b = self.done, min(self.columns, self.done + max(1, chunk))
        logits = self.model.forward(
            self.cache, self.cols, self.positions[:, a:b], upto=self.prefix_width + b,
            input_ids=None if self.embeds is not None else self.ids[:, a:b],
            inputs_embeds=self.embeds[:, a:b] if self.embeds is not None else None)
        self.done = b
        return logits if self.done == self.columns else None


class Running:
    """The running batch: rows, the padded cache and its columns."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.rows: list[Row] = []
        self.cache = kv.from_prefix([], [])
        dev = model.device
        self.cols = Columns({"mask": torch.zeros(0, 0, dtype=torch.long, device=dev),
                             "prefix": torch.zeros(0, 0, dtype=torch.bool, device=dev)})
        self.last = torch.zeros(0, dtype=torch.long, device=dev)  # (B,) the token each row feeds next

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, prefill: Prefill, first: list[int]) -> None:
        """Add ``prefill``'s rows (all columns run) with their first new tokens ``first``."""
        self.cache = kv.merge(self.cache, prefill.cache, len(self.rows))
        self.cols = self.cols.stacked(prefill.cols)
        self.rows += prefill.rows
        self.last = torch.cat([self.last, torch.tensor(first, dtype=torch.long, device=self.last.device)])

    def keep(self, index: list[int]) -> None:
        """Keep the rows at ``index`` (in order); drop the columns no kept row uses."""
        if len(index) == len(self.rows):
            return
        if not index:
            self.__init__(self.model)
            return
        rows = torch.tensor(index, dtype=torch.long, device=self.model.device)
        self.rows = [self.rows[i] for i in index]
        self.last = self.last[rows]
        self.cols = self.cols.rows(rows)
        kv.select(self.cache, rows)
        unused = int(self.cols.get("mask").any(0).long().argmax())  # the first column some row uses
        if unused:
            kv.drop_left(self.cache, unused)
            self.cols = self.cols.from_column(unused)
        self.cols.tensors = {k: t for k, t in self.cols.tensors.items()
                             if k in ("mask", "prefix") or bool(t.any())}  # layers no kept row hides from

    def step(self) -> torch.Tensor:
        """One decoding step: every row feeds its last token; returns the logits ``(B, V)``."""
        self.cols = self.cols.appended()
        positions = torch.tensor([r.position for r in self.rows], dtype=torch.long, device=self.model.device)
        logits = self.model.forward(self.cache, self.cols, positions[:, None], input_ids=self.last[:, None])
        for r in self.rows:
            r.position += 1
        return logits
