"""The boundary: the one module that touches transformers internals.

How prefixes reach a Hugging Face model (see docs/design.md):

* An attention function named ``"prefixtune"`` is registered with transformers'
  ``AttentionInterface`` and the model is switched to it with ``set_attn_implementation``. Every
  supported family calls it with the query, key and value *after* rotary embedding and after the
  KV-cache update, and passes extra forward keyword arguments through to it. The function looks
  its module up in the :class:`~prefixtune.batch.PrefixBatch` given as ``prefixtune_prefix=`` and
  prepends that module's prefix, so ``generate()`` with or without a cache, beam search and
  sampling all see it at every step. A fresh ``DynamicCache`` (what ``generate()`` creates) gets
  the folded prefix written into it once instead (:func:`~prefixtune.hf.cache.hold_prefix`): its
  layers count real tokens only, and the attention function is told that the first keys are the
  prefix, so decoding steps concatenate nothing.
* transformers' SDPA mask function is registered under the same name with
  ``AttentionMaskInterface`` (without it transformers builds no mask at all and padding would be
  ignored). The attention function receives the real padding/causal/sliding-window mask over the
  real keys and adds always-visible prefix columns itself; a mask of None means there is nothing
  to mask, and the kernel then runs SDPA without a mask tensor.
* Which modules are which attention (encoder self, decoder self, cross) and the model's head
  counts are explicit per family below; an unsupported family raises :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from prefixtune.core.attention import prefix_attention
from prefixtune.core.batch import PrefixBatch, Slot
from prefixtune.core.layout import LocationShape, ModelLayout
from prefixtune.hf import cache as kv_cache

ATTN_NAME = "prefixtune"
PREFIX_KWARG = "prefixtune_prefix"
#: forward keyword of per-module key visibility: ``{attention module: (columns, visible)}``, both
#: ``(B, k)`` bool: the columns given are visible exactly where ``visible`` is, whatever the model's
#: own mask says (the serving engine's cached prefix columns: always visible, as prefix attention
#: has them, also past a sliding window; hidden from the layers a prefix leaves out)
KEY_MASK_KWARG = "prefixtune_key_mask"


class UnsupportedModelError(ValueError):
    """The model's family is not one prefixtune knows how to inject into."""


# --------------------------------------------------------------------------------------------
# Registration with transformers


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               is_causal: bool | None = None, softcap: float | None = None,
               position_bias: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers attention-function signature; query ``(B, H, q, d)``, key/value ``(B, H_kv, k, d)``.

    Returns ``(B, q, H, d)`` as transformers expects, and the weights if ``output_attentions``.
    """
    batch: PrefixBatch | None = kwargs.get(PREFIX_KWARG)
    slot = batch.get(module) if batch is not None else None
    if batch is not None and batch.capture is not None:
        batch.capture[module] = (key.detach(), value.detach())
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", False))
    in_cache = slot.key.shape[2] if slot is not None and slot.in_cache else 0  # the first keys are the prefix
    q_len, k_len = query.shape[2], key.shape[2] - in_cache
    if attention_mask is None and causal and 1 < q_len < k_len:
        # transformers skips the mask here only when the keys past the queries are unused slots
        # of a pre-allocated cache (queries start at 0): causality aligned to the first key.
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()[None, None]
    overrides = kwargs.get(KEY_MASK_KWARG)
    if overrides and module in overrides:
        attention_mask = _override_keys(attention_mask, *overrides[module], causal, q_len, k_len)
    out, weights = prefix_attention(
        query, key, value,
        prefix_key=slot.key if slot and not in_cache else None,
        prefix_value=slot.value if slot and not in_cache else None,
        prefix_mask=slot.mask if slot else None,
        attention_mask=attention_mask,
        is_causal=causal and attention_mask is None,
        scaling=scaling,
        dropout=dropout,
        softcap=softcap,
        position_bias=position_bias,
        need_weights=bool(kwargs.get("output_attentions", False) or (batch is not None and batch.need_weights)),
        prefix_gate=slot.gate if slot else None,
        prefix_in_keys=in_cache,
    )
    return out.transpose(1, 2).contiguous(), weights


def _override_keys(mask: torch.Tensor | None, columns: torch.Tensor, visible: torch.Tensor, causal: bool,
                   q_len: int, k_len: int) -> torch.Tensor:
    """``mask`` (bool or additive ``(B or 1, M, q, k)``, or None: all visible but causal) with the key
    columns where ``columns`` ``(B, k)`` is True visible exactly where ``visible`` ``(B, k)`` is."""
    columns, visible = columns.to(torch.bool)[:, None, None, :], visible.to(torch.bool)[:, None, None, :]
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=columns.device)
        mask = (mask.tril(k_len - q_len) if causal else mask)[None, None]
    if mask.dtype == torch.bool:
        return torch.where(columns, visible, mask)
    zero = torch.zeros((), dtype=mask.dtype, device=mask.device)
    low = torch.full((), torch.finfo(mask.dtype).min, dtype=mask.dtype, device=mask.device)
    return torch.where(columns, torch.where(visible, zero, low), mask)


def sliding_layers(config: Any) -> set[int]:
    """The decoder layers whose attention has a sliding window (``layer_types``, or every layer of
    a model that gives ``sliding_window`` but no layer types, as Mistral)."""
    types = getattr(config, "layer_types", None)
    if types:
        return {i for i, t in enumerate(types) if "sliding" in t}
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return set(range(config.num_hidden_layers))
    return set()


# transformers builds no mask at all for an attention name it has no mask function for; with
# SDPA's mask function the mask is None exactly when there is nothing to mask (no padding, a
# pure causal or full pattern), which the kernel turns into its mask-free fast path.
AttentionInterface.register(ATTN_NAME, _attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


# --------------------------------------------------------------------------------------------
# Model families


@dataclass(frozen=True)
class Family:
    """How to find one family's attention modules and read its shape.

    Fields:
        patterns: location -> regex over ``named_modules()`` names; group 1 is the layer index.
        shape: config -> location -> (layers, kv_heads, head_dim).
        d_model: config -> hidden size.
        position_base: config -> position id of the first real token (RoBERTa starts after its
            padding index).
        max_positions: config -> number of learned absolute positions (None for rotary/relative).
    """

    patterns: dict[str, str]
    shape: Callable[[Any], dict[str, tuple[int, int, int]]]
    d_model: Callable[[Any], int]
    position_base: Callable[[Any], int] = lambda c: 0
    max_positions: Callable[[Any], int | None] = lambda c: None  # size of a learned absolute position table


def _llama_like(c: Any) -> dict[str, tuple[int, int, int]]:
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {"decoder_self": (c.num_hidden_layers, kv, head_dim)}


def _bert_like(c: Any) -> dict[str, tuple[int, int, int]]:
    return {"encoder_self": (c.num_hidden_layers, c.num_attention_heads, c.hidden_size // c.num_attention_heads)}


_DECODER = {"decoder_self": r"(?:^|\.)layers\.(\d+)\.self_attn$"}
_BERT = {"encoder_self": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self$"}

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        {"decoder_self": r"(?:^|\.)h\.(\d+)\.attn$"},
        lambda c: {"decoder_self": (c.n_layer, c.n_head, c.n_embd // c.n_head)},
        lambda c: c.n_embd, max_positions=lambda c: c.n_positions),
    "llama": Family(_DECODER, _llama_like, lambda c: c.hidden_size),
    "qwen2": Family(_DECODER, _llama_like, lambda c: c.hidden_size),
    "mistral": Family(_DECODER, _llama_like, lambda c: c.hidden_size),
    "gemma2": Family(_DECODER, _llama_like, lambda c: c.hidden_size),
    "bert": Family(_BERT, _bert_like, lambda c: c.hidden_size, max_positions=lambda c: c.max_position_embeddings),
    "roberta": Family(_BERT, _bert_like, lambda c: c.hidden_size, lambda c: c.pad_token_id + 1,
                      lambda c: c.max_position_embeddings),
    "distilbert": Family(
        {"encoder_self": r"(?:^|\.)transformer\.layer\.(\d+)\.attention$"},
        lambda c: {"encoder_self": (c.n_layers, c.n_heads, c.dim // c.n_heads)},
        lambda c: c.dim, max_positions=lambda c: c.max_position_embeddings),
    "t5": Family(
        {"encoder_self": r"(?:^|\.)encoder\.block\.(\d+)\.layer\.0\.SelfAttention$",
         "decoder_self": r"(?:^|\.)decoder\.block\.(\d+)\.layer\.0\.SelfAttention$",
         "cross": r"(?:^|\.)decoder\.block\.(\d+)\.layer\.1\.EncDecAttention$"},
        lambda c: {"encoder_self": (c.num_layers, c.num_heads, c.d_kv),
                   "decoder_self": (c.num_decoder_layers, c.num_heads, c.d_kv),
                   "cross": (c.num_decoder_layers, c.num_heads, c.d_kv)},
        lambda c: c.d_model),
    "bart": Family(
        {"encoder_self": r"(?:^|\.)encoder\.layers\.(\d+)\.self_attn$",
         "decoder_self": r"(?:^|\.)decoder\.layers\.(\d+)\.self_attn$",
         "cross": r"(?:^|\.)decoder\.layers\.(\d+)\.encoder_attn$"},
        lambda c: {"encoder_self": (c.encoder_layers, c.encoder_attention_heads, c.d_model // c.encoder_attention_heads),
                   "decoder_self": (c.decoder_layers, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads),
                   "cross": (c.decoder_layers, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads)},
        lambda c: c.d_model),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model`` (a transformers model, or a PEFT model around one) computes its LM head on
    the last ``logits_to_keep`` positions only (decoder-only families in transformers 5)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return False


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else args


def contiguous_head_input(model: nn.Module) -> bool:
    """Make the LM head's input contiguous before it runs (once per model; returns whether it has an
    LM head to hook).

    With ``logits_to_keep`` transformers runs the head on ``hidden[:, -k:, :]``, a strided view; a
    linear layer on a strided 3-D input is a batched matmul with the ``(V, d)`` weight expanded and
    copied per row (SmolLM2, batch 8, bf16 on CPU: 842 ms for the head's forward and backward,
    against 107 ms on a contiguous copy of the same view; fp32 548 vs 372 ms). A pre-hook that
    copies the view (``(B, k, d)``, small) gives the head a plain matmul; the values are the same.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        return False
    if not getattr(head, "_prefixtune_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._prefixtune_contiguous = True
    return True


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (decoder or encoder layers): the modules whose class transformers
    names in ``_no_split_modules`` (what must stay whole on one device; FSDP makes each one unit),
    except one that holds the input embeddings (BERT's ``BertEmbeddings``): a prompt is embedded
    outside the model's forward, so the embeddings must not sit in a unit of their own.

    Raises:
        UnsupportedModelError: the model names none, or none of them is instantiated.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    layers = [m for m in model.modules() if type(m).__name__ in names
              and not any(sub is embeddings for sub in m.modules())]
    if not layers:
        raise UnsupportedModelError(f"{type(model).__name__} names no layer classes in _no_split_modules "
                                    f"({sorted(names)}), so its layers cannot be found for FSDP")
    return layers


def mark_fsdp_managed(model: nn.Module) -> None:
    """Tell transformers that ``model``'s weights are sharded with FSDP2: its ``generate`` then keeps
    every process stepping until all are done (``synced_gpus``), as each step is a collective. The
    flag is the one transformers' own FSDP2 integration sets (``distributed/fsdp.py``)."""
    model._is_fsdp_managed_module = True


def family_of(model: PreTrainedModel) -> Family:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"prefixtune does not support model type {model_type!r} ({type(model).__name__}); "
            f"supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return FAMILIES[model_type]


def describe(model: PreTrainedModel) -> tuple[ModelLayout, dict[Slot, nn.Module]]:
    """The model's layout and its attention modules by (location, layer).

    The location order is fixed (encoder self, decoder self, cross). Locations the model's
    classes do not instantiate (a T5 encoder-only model has no decoder) are left out.

    Raises:
        UnsupportedModelError: unknown family, or modules not found where the family puts them.
    """
    family = family_of(model)
    config = model.config
    shapes = family.shape(config)
    found: dict[Slot, nn.Module] = {}
    for name, module in model.named_modules():
        for loc, pattern in family.patterns.items():
            m = re.search(pattern, name)
            if m:
                found[(loc, int(m.group(1)))] = module
    locations = []
    for loc in ("encoder_self", "decoder_self", "cross"):
        layers = sorted(layer for (l, layer) in found if l == loc)
        if not layers:
            continue
        n, kv, head_dim = shapes[loc]
        if layers != list(range(n)):
            raise UnsupportedModelError(
                f"{type(model).__name__}: expected {n} {loc} attention modules, found layers {layers}; "
                "this model variant is not supported"
            )
        locations.append(LocationShape(loc, n, kv, head_dim))
    if not locations:
        raise UnsupportedModelError(f"{type(model).__name__}: no attention modules found for {config.model_type}")
    base = sum(p.numel() for p in model.parameters())
    layout = ModelLayout(config.model_type, int(family.d_model(config)), tuple(locations), base)
    return layout, found


# --------------------------------------------------------------------------------------------
# Installing into a model and building its inputs


class Injection:
    """A Hugging Face model switched to prefix attention.

    Args:
        model: a transformers ``PreTrainedModel`` of a supported family.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.family = family_of(model)
        self.layout, self.modules = describe(model)
        self.previous_attn = model.config._attn_implementation
        if self.previous_attn != ATTN_NAME:
            model.set_attn_implementation(ATTN_NAME)
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params and not self.is_encoder_decoder
        self.position_base = int(self.family.position_base(model.config))
        # learned absolute positions index a table and would fail obscurely past its end
        self.absolute_positions = self.family.max_positions(model.config)
        self._active: PrefixBatch | None = None
        # generate() rejects keyword arguments it does not know and calls the encoder of an
        # encoder-decoder model directly, so the prefix is added by pre-hooks on both entries.
        entries = [model]
        if self.is_encoder_decoder and hasattr(model, "get_encoder"):
            entries.append(model.get_encoder())
        self._hooks = [m.register_forward_pre_hook(self._add_prefix, with_kwargs=True) for m in entries]

    def _add_prefix(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if self._active is not None and kwargs.get(PREFIX_KWARG) is None:
            kwargs[PREFIX_KWARG] = self._cached_view(self._active, kwargs)
        return args, kwargs

    def _cached_view(self, batch: PrefixBatch, kwargs: dict[str, Any]) -> PrefixBatch:
        """``batch``, or, when the call carries a KV cache that holds (or can hold) its decoder
        prefixes, ``batch`` with those marked as in the cache (see docs/design.md, "Positions" and
        "Serving"). A fresh ``DynamicCache`` gets the prefixes written into it here, once: decoding
        steps then attend to them as cached keys instead of concatenating them every time."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or not batch.slots or self.is_encoder_decoder:
            return batch
        held = getattr(cache, "_prefixtune_held", None)
        if held is not None:
            return held[1] if held[0] is batch else batch
        slots = {layer: batch.get(m) for (loc, layer), m in self.modules.items() if loc == "decoder_self"}
        slots = {layer: s for layer, s in slots.items() if s is not None}
        grads = torch.is_grad_enabled() and any(s.key.requires_grad or s.value.requires_grad for s in slots.values())
        if (not slots or grads or batch.capture is not None or batch.need_weights
                or any(s.gate is not None for s in slots.values()) or not kv_cache.fresh_dynamic(cache)):
            return batch
        kv_cache.hold_prefix(cache, {layer: (s.key, s.value) for layer, s in slots.items()})
        view = batch.cached({self.modules[("decoder_self", layer)] for layer in slots})
        cache._prefixtune_held = (batch, view)
        return view

    @contextlib.contextmanager
    def active(self, batch: PrefixBatch | None) -> Iterator[None]:
        """Within this block, every call of the model (and its encoder) uses ``batch``."""
        previous, self._active = self._active, batch
        try:
            yield
        finally:
            self._active = previous

    def remove(self) -> None:
        """Switch the model back to the attention implementation it had and drop the hooks."""
        for hook in self._hooks:
            hook.remove()
        self.model.set_attn_implementation(self.previous_attn)

    def position_ids(self, attention_mask: torch.Tensor | None, shape: tuple[int, int],
                     shift: torch.Tensor, device: torch.device, past: int = 0) -> torch.Tensor:
        """Position ids ``(B, n)`` of the real tokens, counting from the family's base plus ``shift``.

        Args:
            attention_mask: ``(B, past + n)`` padding mask, or None.
            shape: ``(B, n)`` of the current input.
            shift: ``(B,)`` or ``(1,)`` per-row offset (the prefix length, or 0).
            past: tokens already in the cache when there is no mask.
        """
        rows, n = shape
        if attention_mask is None:
            pos = torch.arange(past, past + n, device=device)[None].expand(rows, n)
        else:
            mask = attention_mask.to(device=device, dtype=torch.long)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -n:]
        return pos + self.position_base + shift.to(device)[:, None]

    def inputs(self, batch: PrefixBatch | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Forward/generate keyword arguments with position ids added where the model takes them,
        shifted per row by ``batch.lengths`` (0 for rows whose prefix keeps natural positions).

        The prefix itself is supplied by :meth:`active`.
        """
        kwargs = dict(kwargs)
        if batch is not None and kwargs.get("output_attentions"):
            batch.need_weights = True
        if not self.takes_position_ids:
            return kwargs
        ref = kwargs.get("input_ids")
        if ref is None:
            ref = kwargs.get("inputs_embeds")
        if ref is None:
            return kwargs
        shift = batch.lengths if batch is not None else torch.zeros(1, dtype=torch.long)
        if kwargs.get("position_ids") is not None:
            if batch is not None:
                kwargs["position_ids"] = kwargs["position_ids"] + shift.to(ref.device)[:, None]
            return kwargs
        past_kv = kwargs.get("cache", kwargs.get("past_key_values"))
        past = past_kv.get_seq_length() if past_kv is not None and hasattr(past_kv, "get_seq_length") else 0
        rows, n = ref.shape[0], ref.shape[1]
        kwargs["position_ids"] = self.position_ids(kwargs.get("attention_mask"), (rows, n), shift, ref.device, past)
        limit = self.absolute_positions
        if limit is not None and int(kwargs["position_ids"].max()) >= limit:
            raise ValueError(
                f"input too long: {self.layout.model_type} has {limit} learned positions, and this input needs "
                f"position {int(kwargs['position_ids'].max())} (the prefix shifts positions by its length); shorten "
                "the input or use position_mode='natural'")
        return kwargs
