"""The one adapter runtime: what a batch's adapters contribute to a forward or ``generate``.

Both :class:`~prefixtune.runtime.model.PrefixModel` (one adapter, trainable) and
:class:`~prefixtune.runtime.bank.AdapterBank` (many folded adapters, one per row) run through
:class:`AdapterRuntime`: it turns the adapters of a batch into per-layer prefix keys/values
(:class:`~prefixtune.core.batch.PrefixBatch`), inserts prompts, shifts positions, extends masks
and labels, and gives outputs back in the caller's terms. The model-family quirks (encoder-decoder
inputs, ``generate`` from embeddings returning only new tokens) are handled here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from prefixtune.core.batch import PrefixBatch
from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.core.prompt import insert_prompt, prepend_ids
from prefixtune.hf.boundary import Injection


@dataclass
class AdapterTensors:
    """What one adapter contributes to a forward pass.

    Fields:
        kvs: location -> prefix K/V ``(layers, 2, H_kv, l, d)``; empty without a prefix.
        layers: location -> the model layers of dim 0 of ``kvs[location]``.
        gates: location -> gate logits ``(layers, H_kv)`` of a gated prefix; empty otherwise.
        prompt: the prompt vectors ``(l, d_model)``, or None.
        shift: how far the real tokens' positions move (the prefix length in ``"shifted"`` mode, else 0).
    """

    kvs: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt: torch.Tensor | None = None
    shift: int = 0

    @classmethod
    def of(cls, config: Any, parts: Parts) -> "AdapterTensors":
        """The adapter's tensors now: the prefix MLP and prompt encoder run once (gradients flow,
        dropout applies in train mode); the result is shared by every row of the batch."""
        kvs = parts.prefix() if parts.prefix is not None else {}
        prefix_cfg = config.prefix_config
        shifted = prefix_cfg is not None and prefix_cfg.position_mode == "shifted"
        length = next(iter(kvs.values())).shape[3] if kvs else 0
        return cls(kvs, parts.prefixed_layers, dict(parts.prefix.gates) if parts.prefix is not None else {},
                   parts.prompt() if parts.prompt is not None else None, length if shifted else 0)

    def detached(self, device: torch.device | str) -> "AdapterTensors":
        """A copy on ``device`` with no autograd history and its own storage (for serving: later
        training of the source model does not change it)."""
        move = lambda t: t.detach().to(device, copy=True)  # noqa: E731
        return AdapterTensors({k: move(v) for k, v in self.kvs.items()}, dict(self.layers),
                              {k: move(v) for k, v in self.gates.items()},
                              None if self.prompt is None else move(self.prompt), self.shift)


#: one adapter for every row, or one per row (None = the bare base model)
Rows = AdapterTensors | None | Sequence[AdapterTensors | None]


@dataclass
class Prepared:
    """The base model's keyword arguments for one call, and how to map its outputs back.

    Fields:
        kwargs: forward/generate arguments (prompts inserted, positions shifted).
        batch: the prefix of every attention module.
        real_index: ``(B, n)``: where each input token sits after prompt insertion, or None.
        virtual: number of prompt slots inserted per row.
    """

    kwargs: dict[str, Any]
    batch: PrefixBatch
    real_index: torch.Tensor | None
    virtual: int


def _take(t: torch.Tensor, real_index: torch.Tensor) -> torch.Tensor:
    """``(B, l+n, ...) -> (B, n, ...)`` at the original tokens' positions."""
    index = real_index.view(*real_index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return t.gather(1, index)


def _per_item_loss(out: Any, labels: torch.Tensor | None, items: Any) -> Any:
    """A head's mean loss as ``sum / items`` when the caller counts the items of a whole accumulated
    batch (``transformers.Trainer`` passes ``num_items_in_batch`` and then does not divide by the
    accumulation steps itself): labeled items are labels other than -100."""
    if items is None or labels is None or out.loss is None:
        return out
    count = (labels != -100).sum() if labels.dtype == torch.long else torch.tensor(labels.numel())
    out["loss"] = out.loss * count.to(out.loss.device) / torch.as_tensor(items, device=out.loss.device)
    return out


class _SeesInputIds(StoppingCriteria):
    """Generating from embeddings, transformers hands stopping criteria only the new tokens;
    this gives ``criterion`` the input ids in front, as without a prompt."""

    def __init__(self, criterion: Any, ids: torch.Tensor) -> None:
        self.criterion, self.ids = criterion, ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        ids = self.ids.to(input_ids.device).repeat_interleave(input_ids.shape[0] // self.ids.shape[0], 0)
        return self.criterion(torch.cat([ids, input_ids], 1), scores, **kwargs)


class AdapterRuntime:
    """A frozen transformers model switched to prefix attention, run with per-batch adapters.

    Args:
        base_model: a transformers model of a supported family.
    """

    def __init__(self, base_model: nn.Module) -> None:
        self.base_model = base_model
        self.injection = Injection(base_model)

    @property
    def layout(self) -> ModelLayout:
        return self.injection.layout

    @property
    def is_encoder_decoder(self) -> bool:
        return self.injection.is_encoder_decoder

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    # ------------------------------------------------------------------ preparing a batch

    @staticmethod
    def rows(kwargs: dict[str, Any]) -> int:
        """The batch size of a call's ``input_ids`` (or ``inputs_embeds``)."""
        ref = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise ValueError("pass input_ids or inputs_embeds")
        return ref.shape[0]

    def _prefix_batch(self, adapters: Rows) -> PrefixBatch:
        device = self.device
        if adapters is None or isinstance(adapters, AdapterTensors):
            one = adapters
            if one is not None and one.kvs:
                return PrefixBatch.single(one.kvs, one.layers, self.injection.modules, one.gates, shift=one.shift)
            return PrefixBatch({}, torch.zeros(1, dtype=torch.long, device=device))  # prompts keep natural positions
        if any(a is not None and a.gates for a in adapters):
            raise ValueError("gated prefixes run one adapter per batch, not one per row")
        entries = [(a.kvs, a.layers) if a is not None and a.kvs else None for a in adapters]
        return PrefixBatch.per_row(entries, self.injection.modules, device,
                                   shifts=[a.shift if a is not None else 0 for a in adapters])

    def _prompts(self, adapters: Rows, rows: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(vectors, slot_mask)``: ``(l, d)`` and None for one adapter; ``(B, l, d)`` and
        ``(B, l)`` per row, right-aligned so that unused slots come first and act as left padding."""
        if adapters is None or isinstance(adapters, AdapterTensors):
            return (adapters.prompt if adapters is not None else None), None
        prompts = [a.prompt if a is not None else None for a in adapters]
        present = [p for p in prompts if p is not None]
        if not present:
            return None, None
        n = max(p.shape[0] for p in present)
        vectors = present[0].new_zeros(rows, n, present[0].shape[-1])
        slots = torch.zeros(rows, n, dtype=torch.long, device=present[0].device)
        for i, p in enumerate(prompts):
            if p is not None:
                vectors[i, n - p.shape[0]:] = p
                slots[i, n - p.shape[0]:] = 1
        return vectors, slots

    def prepare(self, adapters: Rows, kwargs: dict[str, Any], extend_labels: bool) -> Prepared:
        """The base model's arguments with ``adapters`` (one for all rows, or one per row).

        With prompts, token ids become embeddings with the prompt in front of each row's first
        real token; the attention mask, token type ids and (``extend_labels``) labels follow, and
        position ids are recomputed from the new mask.
        """
        kwargs = dict(kwargs)
        rows = self.rows(kwargs)
        if not (adapters is None or isinstance(adapters, AdapterTensors)) and len(adapters) != rows:
            raise ValueError(f"{len(adapters)} adapters for {rows} rows")
        batch = self._prefix_batch(adapters)
        vectors, slots = self._prompts(adapters, rows)
        real_index, virtual = None, 0
        if vectors is not None:
            ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
            if embeds is None:
                embeds = self.base_model.get_input_embeddings()(ids)
            extra = {"token_type_ids": kwargs.pop("token_type_ids", None)}
            if extend_labels:
                extra["labels"] = kwargs.pop("labels", None)
            kwargs.pop("position_ids", None)  # recomputed from the new mask
            embeds, mask, extra, real_index = insert_prompt(vectors, embeds, kwargs.get("attention_mask"), extra, slots)
            kwargs.update(extra, inputs_embeds=embeds, attention_mask=mask)
            virtual = vectors.shape[-2]
        return Prepared(self.injection.inputs(batch, kwargs), batch, real_index, virtual)

    # ------------------------------------------------------------------ running

    def forward(self, adapters: Rows, kwargs: dict[str, Any], head: nn.Module | None = None) -> Any:
        """The base model's forward with ``adapters``; outputs keep one position per input token.

        With a ``head``, the output is the head's on the real tokens' last hidden states
        (``labels`` go to the head, not the base model).
        """
        kwargs = dict(kwargs)
        labels = kwargs.pop("labels", None) if head is not None else None
        items = kwargs.pop("num_items_in_batch", None) if head is not None else None
        mask = kwargs.get("attention_mask")
        prepared = self.prepare(adapters, kwargs, extend_labels=not self.is_encoder_decoder)
        if head is not None:
            prepared.kwargs["output_hidden_states"] = True
        with self.injection.active(prepared.batch):
            out = self.base_model(**prepared.kwargs)
        if head is not None:
            hidden = getattr(out, "last_hidden_state", None)
            hidden = out.hidden_states[-1] if hidden is None else hidden
            if prepared.real_index is not None:
                hidden = _take(hidden, prepared.real_index)
            return _per_item_loss(head(hidden, mask, labels), labels, items)
        if prepared.real_index is not None and not self.is_encoder_decoder:
            for name in ("logits", "last_hidden_state"):
                value = getattr(out, name, None)
                if isinstance(value, torch.Tensor) and value.dim() >= 2 \
                        and value.shape[1] == prepared.real_index.shape[1] + prepared.virtual:
                    out[name] = _take(value, prepared.real_index)
        return out

    def generate(self, adapters: Rows, kwargs: dict[str, Any]) -> Any:
        """``generate`` with ``adapters``; decoder-only outputs start with the input ids, also with
        prompts (and stopping criteria see them too)."""
        ids = kwargs.get("input_ids")
        prepared = self.prepare(adapters, kwargs, extend_labels=False)
        from_embeddings = prepared.real_index is not None and ids is not None and not self.is_encoder_decoder
        if from_embeddings and prepared.kwargs.get("stopping_criteria") is not None:
            prepared.kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_SeesInputIds(c, ids) for c in prepared.kwargs["stopping_criteria"]])
        with self.injection.active(prepared.batch):
            out = self.base_model.generate(**prepared.kwargs)
        return prepend_ids(out, ids) if from_embeddings else out

    @torch.no_grad()
    def capture_kv(self, ids: torch.Tensor) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
        """The bare model's keys/values ``(H_kv, l, d)`` at every attention module for token ``ids``
        ``(l,)``, by ``(location, layer)``. Encoder-decoder models read ``ids`` as both the encoder
        and the decoder input (the cross-attention K/V are then those of the encoder's output)."""
        ids = ids.to(self.device)[None]
        capture: dict = {}
        batch = PrefixBatch({}, torch.zeros(1, dtype=torch.long, device=self.device), capture=capture)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.is_encoder_decoder:
            kwargs["decoder_input_ids"] = ids
        with self.injection.active(batch):
            self.base_model(**self.injection.inputs(batch, kwargs))
        return {slot: (capture[module][0][0], capture[module][1][0]) for slot, module in self.injection.modules.items()
                if module in capture}
