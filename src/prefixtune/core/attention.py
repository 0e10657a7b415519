"""Attention with a prefix: ``softmax(Q·[P_K; K]ᵀ·scale + bias)·[P_V; V]``.

Pure PyTorch, no transformers import. :func:`prefix_attention` is the kernel the Hugging Face
injection calls for every layer; :class:`PrefixAttention` is a complete multi-head attention
layer for people who write their own transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, H_kv, T, d) -> (B, H_kv*n_rep, T, d)``: each key/value head serves ``n_rep`` query heads."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def _rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a per-row tensor to ``batch`` rows: 1 row is expanded; under beam search the
    model runs ``batch = rows * beams`` rows, row ``i*beams + j`` belonging to input row ``i``."""
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    if batch % t.shape[0]:
        raise ValueError(f"prefix has {t.shape[0]} rows but the batch has {batch}")
    return t.repeat_interleave(batch // t.shape[0], dim=0)


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bool ``(1, 1, q, k)``: query ``i`` (the last ``q`` of ``k`` positions) sees keys ``<= k-q+i``."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return (torch.arange(k_len, device=device)[None, :] <= q_pos)[None, None]


def prefix_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    prefix_key: torch.Tensor | None = None,
    prefix_value: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    position_bias: torch.Tensor | None = None,
    need_weights: bool = False,
    prefix_gate: torch.Tensor | None = None,
    prefix_in_keys: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over ``[prefix; keys]``.

    Args:
        query: ``(B, H, q, d)``.
        key, value: ``(B, H_kv, k, d)``; ``H`` must be a multiple of ``H_kv`` (GQA).
        prefix_key, prefix_value: ``(B or 1, H_kv, P, d)``; rows are broadcast (see ``_rows``).
        prefix_mask: ``(B or 1, P)`` bool, True where a prefix slot is real (rows with shorter
            or no prefixes); None means every slot is real.
        attention_mask: mask over the real keys: bool ``(B, 1 or H, q, k)`` (True = attend) or
            additive float of that shape; None means no padding. The prefix is always visible
            (subject to ``prefix_mask``): causality and sliding windows apply to real keys only.
        is_causal: with ``attention_mask=None``, apply a causal mask aligned to the last key.
        scaling: factor on ``Q·Kᵀ``, default ``d ** -0.5``.
        dropout: attention dropout probability (pass 0.0 in eval).
        softcap: if set, logits become ``softcap * tanh(logits / softcap)`` (Gemma 2).
        position_bias: additive ``(B or 1, H, q, k)`` bias over the real keys (T5); the prefix
            gets no bias.
        need_weights: also return the attention probabilities ``(B, H, q, P + k)``.
        prefix_gate: ``(H_kv,)``: attend to the real keys and to the prefix separately and return
            ``attn(real) + tanh(gate) * attn(prefix)`` (LLaMA-Adapter's zero-init gating).
        prefix_in_keys: ``P`` when key/value already start with the prefix (a KV cache holds it): no
            concatenation; masks and causality concern the last ``k - P`` keys; ``prefix_key`` and
            ``prefix_value`` are then None and ``prefix_mask`` marks the real ones of the ``P``.

    Returns:
        ``(out, weights)``: ``out`` is ``(B, H, q, d)``; ``weights`` is None unless asked for.
    """
    batch, heads, q_len, dim = query.shape
    k_len = key.shape[2]
    if heads % key.shape[1]:
        raise ValueError(f"{heads} query heads is not a multiple of {key.shape[1]} key/value heads")
    scaling = dim ** -0.5 if scaling is None else scaling
    gqa = heads != key.shape[1]
    if prefix_in_keys:
        return _cached_prefix(query, key, value, prefix_in_keys, prefix_mask, attention_mask, is_causal, scaling,
                              dropout, softcap, need_weights, gqa)
    if prefix_key is not None:
        prefix_key = _rows(prefix_key.to(key.dtype), batch)
        prefix_value = _rows(prefix_value.to(value.dtype), batch)
    if prefix_key is not None and prefix_gate is not None:
        out, weights = prefix_attention(query, key, value, attention_mask=attention_mask, is_causal=is_causal,
                                        scaling=scaling, dropout=dropout, softcap=softcap,
                                        position_bias=position_bias, need_weights=need_weights)
        return out + _gated_prefix(query, prefix_key, prefix_value, prefix_mask, prefix_gate, heads // key.shape[1],
                                   scaling, softcap), weights

    fast = (attention_mask is None and prefix_mask is None and position_bias is None and softcap is None
            and not need_weights and (not is_causal or q_len == 1 or q_len == k_len))
    if fast:
        return _unmasked(query, key, value, prefix_key, prefix_value, is_causal, scaling, dropout, gqa), None
    mask = attention_mask
    if mask is None and is_causal and (q_len > 1 or k_len > q_len):
        mask = causal_mask(q_len, k_len, query.device)
    if prefix_key is not None:
        key, value, mask, position_bias = _prepend_prefix(query, key, value, prefix_key, prefix_value, prefix_mask,
                                                          mask, position_bias)
    if mask is not None and mask.dtype == torch.bool and (prefix_key is None or prefix_mask is not None):
        mask = _seeing_something(mask)
    if position_bias is not None:
        mask = _biased(position_bias, mask, query.dtype)
    return _attend(query, key, value, mask, scaling, dropout, softcap, need_weights, gqa)


def _seeing_something(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask whose query rows that may see nothing see everything instead.

    Such a row (a padding position with no prefix) would give NaN, and NaN values poison later
    layers through 0 * NaN. Its outputs belong to padding and are never used; rows with a prefix
    always see it.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float,
            dropout: float, softcap: float | None, need_weights: bool, gqa: bool) -> tuple[torch.Tensor,
                                                                                         torch.Tensor | None]:
    """SDPA, or the explicit softmax where softcapping or the weights are needed, or where it is the
    faster of the two (:func:`_explicit_is_faster`)."""
    if softcap is None and not need_weights and not _explicit_is_faster(query):
        return _sdpa(query, key, value, mask, scaling, dropout, gqa), None
    return _explicit_softmax(query, key, value, mask, scaling, softcap, dropout)


def _explicit_is_faster(query: torch.Tensor) -> bool:
    """Training in bf16 on a CPU: torch 2.13's CPU flash-attention backward in bf16 is slower than the
    written-out attention (batch 8, 9 heads, 60 x 70, d 64: 13.2 ms forward + backward against
    7.5 ms; fp32: 6.5 against 8.6 ms), and the written-out softmax runs in float32 as well."""
    return query.dtype == torch.bfloat16 and query.device.type == "cpu" and torch.is_grad_enabled()


def _cached_prefix(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, n_prefix: int,
                   prefix_mask: torch.Tensor | None, attention_mask: torch.Tensor | None, is_causal: bool,
                   scaling: float, dropout: float, softcap: float | None, need_weights: bool,
                   gqa: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`prefix_attention` when key/value ``(B, H_kv, P + k, d)`` already start with the prefix:
    the same masks as :func:`_prepend_prefix` builds, without the concatenation."""
    batch, _, q_len, _ = query.shape
    k_len = key.shape[2] - n_prefix
    mask = attention_mask
    if mask is None and is_causal and q_len > 1:
        mask = causal_mask(q_len, k_len, query.device)
    if mask is not None or prefix_mask is not None:
        mask = _with_prefix_columns(mask, prefix_mask, batch, n_prefix, q_len, k_len, device=query.device)
    if mask is not None and mask.dtype == torch.bool and prefix_mask is not None:
        mask = _seeing_something(mask)
    return _attend(query, key, value, mask, scaling, dropout, softcap, need_weights, gqa)


def _prepend_prefix(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix_key: torch.Tensor,
                    prefix_value: torch.Tensor, prefix_mask: torch.Tensor | None, mask: torch.Tensor | None,
                    position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                                 torch.Tensor | None]:
    """``(key, value, mask, position_bias)`` over ``[prefix; keys]``.

    query ``(B, H, q, d)``; key/value ``(B, H_kv, k, d)`` and prefix key/value ``(B, H_kv, P, d)``
    become ``(B, H_kv, P + k, d)``; the mask over the real keys (or None) gets the prefix's columns
    (see :func:`_with_prefix_columns`) when there is a mask or a ``prefix_mask``; the position bias
    ``(B or 1, H, q, k)`` gets ``P`` zero columns in front (the prefix has no bias).
    """
    batch, _, q_len, _ = query.shape
    k_len, n_prefix = key.shape[2], prefix_key.shape[2]
    key = torch.cat([prefix_key, key], dim=2)
    value = torch.cat([prefix_value, value], dim=2)
    if mask is not None or prefix_mask is not None:
        mask = _with_prefix_columns(mask, prefix_mask, batch, n_prefix, q_len, k_len, device=query.device)
    if position_bias is not None:
        position_bias = F.pad(position_bias, (n_prefix, 0))
    return key, value, mask, position_bias


def _with_prefix_columns(mask: torch.Tensor | None, prefix_mask: torch.Tensor | None, batch: int, n_prefix: int,
                         q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """The mask over ``[prefix; keys]``: ``(B, M, q, P + k)`` from ``mask`` over the real keys.

    ``mask``: bool or additive ``(B or 1, M, q, k)`` with ``M`` 1 or ``H``; None means every real key
    is visible (a bool ``(1, 1, q, k)`` of True). ``prefix_mask``: ``(B or 1, P)`` bool, None means
    every slot is real. The ``P`` prefix columns take the mask's kind: True/False, or 0/dtype min.
    """
    seen = (torch.ones(batch, n_prefix, dtype=torch.bool, device=device)
            if prefix_mask is None else _rows(prefix_mask.to(torch.bool), batch))
    seen = seen[:, None, None, :]  # (B, 1, 1, P)
    real = mask if mask is not None else torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    mask_heads = real.shape[1]
    if real.dtype == torch.bool:
        pre = seen.expand(batch, mask_heads, q_len, n_prefix)
    else:
        zero = torch.zeros((), dtype=real.dtype, device=real.device)
        low = torch.full((), torch.finfo(real.dtype).min, dtype=real.dtype, device=real.device)
        pre = torch.where(seen, zero, low).expand(batch, mask_heads, q_len, n_prefix)
    return torch.cat([pre, real.expand(batch, mask_heads, q_len, k_len)], dim=-1)


def _biased(position_bias: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask ``(B or 1, H, q, P + k)`` in ``dtype``: ``position_bias`` of that shape plus
    ``mask`` (bool, where False becomes dtype min, or additive ``(B or 1, 1 or H, q, P + k)``)."""
    bias = position_bias.to(dtype)
    if mask is not None:
        bias = bias.masked_fill(~mask, torch.finfo(dtype).min) if mask.dtype == torch.bool else bias + mask
    return bias


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float,
          dropout: float, gqa: bool) -> torch.Tensor:
    """PyTorch's SDPA kernel: query ``(B, H, q, d)``, key/value ``(B, H_kv, P + k, d)``, mask bool or
    additive ``(B or 1, 1 or H, q, P + k)`` or None -> ``(B, H, q, d)``.

    SDPA's ``enable_gqa`` takes only a mask shared by all heads, so a per-head mask gets the
    key/value heads repeated instead.
    """
    if gqa and mask is not None and mask.shape[1] != 1:
        n_rep = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
        gqa = False
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                          enable_gqa=gqa)


def _explicit_softmax(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float, softcap: float | None, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, for softcapping and for the weights: query ``(B, H, q, d)``, key/value
    ``(B, H_kv, P + k, d)``, mask as in :func:`_sdpa` -> ``(out, weights)``, ``(B, H, q, d)`` and
    ``(B, H, q, P + k)``. The softmax runs in float32 and its result is cast back to the query's dtype."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)  # (B, H, P + k, d)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, q, P + k)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout, training=True)
    return torch.matmul(weights, value), weights


def _gated_prefix(query: torch.Tensor, prefix_key: torch.Tensor, prefix_value: torch.Tensor,
                  prefix_mask: torch.Tensor | None, prefix_gate: torch.Tensor, n_rep: int, scaling: float,
                  softcap: float | None) -> torch.Tensor:
    """``tanh(gate) * attn(prefix)`` ``(B, H, q, d)``, the prefix's share in LLaMA-Adapter's gating:
    query ``(B, H, q, d)``, prefix key/value ``(B, H_kv, P, d)``, ``prefix_gate`` ``(H_kv,)`` repeated
    ``n_rep = H / H_kv`` times to one gate per query head."""
    gate = torch.tanh(prefix_gate.to(query.dtype)).repeat_interleave(n_rep)[None, :, None, None]  # (1, H, 1, 1)
    return gate * _prefix_only(query, prefix_key, prefix_value, prefix_mask, scaling, softcap)


def _prefix_only(query: torch.Tensor, prefix_key: torch.Tensor, prefix_value: torch.Tensor,
                 prefix_mask: torch.Tensor | None, scaling: float, softcap: float | None) -> torch.Tensor:
    """Attention over the prefix alone ``(B, H, q, d)``; rows without a prefix give zeros."""
    n_rep = query.shape[1] // prefix_key.shape[1]
    scores = torch.matmul(query, repeat_kv(prefix_key, n_rep).transpose(-1, -2)) * scaling  # (B, H, q, P)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if prefix_mask is not None:
        seen = _rows(prefix_mask.to(torch.bool), query.shape[0])[:, None, None, :]
        scores = scores.masked_fill(~seen, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(query.dtype)
    return torch.matmul(weights, repeat_kv(prefix_value, n_rep))


_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _can_merge(*tensors: torch.Tensor) -> bool:
    """The split decode step needs PyTorch's CPU flash kernel (it returns the log-sum-exp) and no
    gradients (that kernel has no derivative for its log-sum-exp output)."""
    return (_CPU_FLASH is not None and all(t.device.type == "cpu" for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _decode_step(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix_key: torch.Tensor,
                 prefix_value: torch.Tensor, scaling: float) -> torch.Tensor:
    """One query per row: attend to the cache and to the prefix separately and merge by log-sum-exp.

    Concatenating ``[prefix; cache]`` at every decoding step would allocate and copy the whole
    cache per layer; this reads it in place. GQA is handled by viewing the ``H`` query heads as
    ``n_rep`` queries per key/value head. Shapes as in :func:`prefix_attention`, ``q = 1``.
    """
    b, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, dim)  # (B, H_kv, n_rep, d)
    out, lse = _CPU_FLASH(q, key, value, 0.0, False, scale=scaling)[:2]  # (B, H_kv, n_rep, d), (B, H_kv, n_rep)
    scores = torch.matmul(q, prefix_key.transpose(-1, -2)).float() * scaling  # (B, H_kv, n_rep, P)
    lse_p = torch.logsumexp(scores, dim=-1)
    out_p = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), prefix_value)
    total = torch.logaddexp(lse.float(), lse_p)
    merged = out.float() * torch.exp(lse.float() - total)[..., None] + out_p.float() * torch.exp(lse_p - total)[..., None]
    return merged.to(query.dtype).reshape(b, heads, 1, dim)


def _unmasked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix_key: torch.Tensor | None,
              prefix_value: torch.Tensor | None, is_causal: bool, scaling: float, dropout: float,
              gqa: bool) -> torch.Tensor:
    """No padding, every prefix slot real: attention without a mask tensor (the fast SDPA kernels).

    Causal attention over ``[prefix; keys]`` is causal attention aligned to the *last* key, which
    SDPA's ``is_causal`` (aligned to the first) gives if ``P`` dummy queries are put in front:
    query ``P+i`` then sees keys ``0..P+i``, i.e. the whole prefix and real keys ``0..i``.
    """
    q_len = query.shape[2]
    causal = is_causal and q_len > 1
    if prefix_key is None:
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=causal,
                                              scale=scaling, enable_gqa=gqa)
    n_prefix = prefix_key.shape[2]
    if q_len == 1 and dropout == 0.0 and _can_merge(query, key, value, prefix_key, prefix_value):
        return _decode_step(query, key, value, prefix_key, prefix_value, scaling)
    key = torch.cat([prefix_key, key], dim=2)
    value = torch.cat([prefix_value, value], dim=2)
    if not causal:
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, enable_gqa=gqa)
    dummy = query.new_zeros(query.shape[0], query.shape[1], n_prefix, query.shape[3])
    out = F.scaled_dot_product_attention(torch.cat([dummy, query], dim=2), key, value, dropout_p=dropout,
                                         is_causal=True, scale=scaling, enable_gqa=gqa)
    return out[:, :, n_prefix:]


class PrefixAttention(nn.Module):
    """Multi-head (optionally grouped-query) attention that accepts prefix keys/values.

    Args:
        d_model: model width.
        num_heads: query heads.
        num_kv_heads: key/value heads (default ``num_heads``; fewer for GQA).
        dropout: attention-probability dropout in training.
        bias: whether the projections have biases.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None,
                 dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, d_model, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix_key: torch.Tensor | None = None,
        prefix_value: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attend over ``[prefix; sequence]``.

        Args:
            hidden_states: ``(B, n, d_model)``.
            attention_mask: ``(B, n)`` padding mask (1 = real token) or a bool/additive mask
                ``(B, 1 or H, n, n)`` over the real keys.
            prefix_key, prefix_value: ``(B or 1, H_kv, P, head_dim)``.
            prefix_mask: ``(B or 1, P)`` bool, True where a prefix slot is real.
            is_causal: causal attention among the real tokens (the prefix stays visible).

        Returns:
            ``(B, n, d_model)``.
        """
        b, n, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, d)
        k = self.k_proj(hidden_states).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, n, d)
        v = self.v_proj(hidden_states).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        mask = attention_mask
        if mask is not None and mask.dim() == 2:
            mask = mask.to(torch.bool)[:, None, None, :].expand(b, 1, n, n)  # (B, 1, n, n)
            if is_causal:
                mask = mask & causal_mask(n, n, hidden_states.device)
        elif mask is not None and is_causal:
            causal = causal_mask(n, n, hidden_states.device)
            mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, torch.finfo(mask.dtype).min)
        out, _ = prefix_attention(
            q, k, v, prefix_key=prefix_key, prefix_value=prefix_value, prefix_mask=prefix_mask,
            attention_mask=mask, is_causal=is_causal and mask is None,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))
