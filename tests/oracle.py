"""Independent references used by the tests.

``oracle_attention`` is a naive eager attention written from the paper's equation,
``softmax(Q·[P_K; K]ᵀ·scale + bias)·[P_V; V]``, registered with transformers under its own name.
It shares no code with prefixtune's kernel; it reads the prefix from ``ORACLE_PREFIX``
(attention module -> (keys, values) of shape ``(H_kv, l, d)``).
"""

from __future__ import annotations

import copy
import math

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ORACLE_PREFIX: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}


def oracle_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                     position_bias=None, **kwargs):
    b, h, q_len, d = query.shape
    entry = ORACLE_PREFIX.get(module)
    n_prefix = 0
    if entry is not None:
        pk, pv = entry
        n_prefix = pk.shape[1]
        key = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), value], dim=2)
    rep = h // key.shape[1]
    key = key.repeat_interleave(rep, dim=1)
    value = value.repeat_interleave(rep, dim=1)
    scale = scaling if scaling is not None else d ** -0.5
    scores = torch.einsum("bhqd,bhkd->bhqk", query.double(), key.double()) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if position_bias is not None:
        scores[..., n_prefix:] = scores[..., n_prefix:] + position_bias.double()
    k_len = key.shape[2] - n_prefix
    if attention_mask is None:
        allowed = torch.ones(b, 1, q_len, k_len, dtype=torch.bool)
        if getattr(module, "is_causal", False):
            allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)[None, None]
    else:
        allowed = attention_mask.bool()
    allowed = torch.cat([torch.ones(*allowed.shape[:3], n_prefix, dtype=torch.bool), allowed.expand(b, -1, -1, -1)], -1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhqk,bhkd->bhqd", probs, value.double()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs.to(query.dtype)


def _oracle_mask(*args, **kwargs):
    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register("oracle_prefix", oracle_attention)
AttentionMaskInterface.register("oracle_prefix", _oracle_mask)


def oracle_copy(prefix_model):
    """A deep copy of the base model on the oracle attention, with the prefix's folded K/V set.

    Returns the copy; its modules are registered in ``ORACLE_PREFIX``.
    """
    from prefixtune.hf.boundary import describe

    base = copy.deepcopy(prefix_model.base_model)
    for hook in list(base._forward_pre_hooks):
        del base._forward_pre_hooks[hook]
    if base.config.is_encoder_decoder:
        enc = base.get_encoder()
        for hook in list(enc._forward_pre_hooks):
            del enc._forward_pre_hooks[hook]
    base.set_attn_implementation("oracle_prefix")
    _, modules = describe(base)
    prefix_model.eval()
    with torch.no_grad():
        kvs = prefix_model.prefix()
    for loc, kv in kvs.items():
        for i, layer in enumerate(prefix_model.prefix.layers[loc]):
            ORACLE_PREFIX[modules[(loc, layer)]] = (kv[i, 0].detach(), kv[i, 1].detach())
    return base


def reference(q, k, v, pk=None, pv=None, allowed=None, prefix_allowed=None, scale=None, softcap=None, bias=None):
    """Per row, per head, per query: softmax over [prefix; keys] written with plain loops (float64)."""
    b, h, nq, d = q.shape
    hk = k.shape[1]
    out = torch.zeros(b, h, nq, d, dtype=torch.float64)
    scale = scale or 1 / math.sqrt(d)
    for r in range(b):
        for head in range(h):
            g = head // (h // hk)
            keys = k[r, g].double()
            vals = v[r, g].double()
            n_pre = 0
            if pk is not None:
                keys = torch.cat([pk[r if pk.shape[0] > 1 else 0, g].double(), keys])
                vals = torch.cat([pv[r if pv.shape[0] > 1 else 0, g].double(), vals])
                n_pre = pk.shape[2]
            for i in range(nq):
                logits = []
                for j in range(keys.shape[0]):
                    if j < n_pre:
                        ok = True if prefix_allowed is None else bool(prefix_allowed[r, j])
                    else:
                        ok = True if allowed is None else bool(allowed[r, i, j - n_pre])
                    if not ok:
                        logits.append(-math.inf)
                        continue
                    s = float(q[r, head, i].double() @ keys[j]) * scale
                    if softcap:
                        s = softcap * math.tanh(s / softcap)
                    if bias is not None and j >= n_pre:
                        s += float(bias[0, head, i, j - n_pre])
                    logits.append(s)
                w = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                out[r, head, i] = w @ vals
    return out
