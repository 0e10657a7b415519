"""The attention kernel and the standalone PrefixAttention layer against a hand-written reference."""

from __future__ import annotations


import pytest
import torch

from oracle import reference
from prefixtune import PrefixAttention, prefix_attention


def rand(*shape):
    return torch.randn(*shape)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_matches_reference(heads, kv_heads, causal):
    b, n, p, d = 2, 5, 3, 8
    q, k, v = rand(b, heads, n, d), rand(b, kv_heads, n, d), rand(b, kv_heads, n, d)
    pk, pv = rand(1, kv_heads, p, d), rand(1, kv_heads, p, d)
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    allowed = pad[:, None, :].expand(b, n, n).clone()
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    mask = allowed[:, None]
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, attention_mask=mask)
    want = reference(q, k, v, pk, pv, allowed)
    real = pad[1].nonzero().flatten()
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1][:, real].double(), want[1][:, real], atol=1e-5, rtol=1e-5)


def test_causal_flag_aligns_to_the_last_key_and_keeps_prefix_visible():
    b, h, nq, nk, p, d = 1, 2, 2, 5, 3, 4
    q, k, v = rand(b, h, nq, d), rand(b, h, nk, d), rand(b, h, nk, d)
    pk, pv = rand(1, h, p, d), rand(1, h, p, d)
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
    allowed = torch.ones(nk, nk, dtype=torch.bool).tril()[-nq:][None]
    torch.testing.assert_close(got.double(), reference(q, k, v, pk, pv, allowed), atol=1e-5, rtol=1e-5)


def test_per_row_prefix_mask_softcap_and_position_bias():
    b, h, n, p, d = 3, 2, 4, 5, 8
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    pk, pv = rand(b, h, p, d), rand(b, h, p, d)
    prefix_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    bias = rand(1, h, n, n)
    for softcap in (None, 2.0):
        got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_mask=prefix_mask,
                                  softcap=softcap, position_bias=bias)
        want = reference(q, k, v, pk, pv, None, prefix_mask, softcap=softcap, bias=bias)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_weights_path_equals_sdpa_path_and_sums_to_one():
    q, k, v = rand(2, 4, 3, 8), rand(2, 2, 3, 8), rand(2, 2, 3, 8)
    pk, pv = rand(1, 2, 2, 8), rand(1, 2, 2, 8)
    fast, none = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
    slow, weights = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True, need_weights=True)
    assert none is None
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 3))


def test_beam_rows_take_their_input_rows_prefix():
    q, k, v = rand(4, 2, 1, 4), rand(4, 2, 3, 4), rand(4, 2, 3, 4)
    pk, pv = rand(2, 2, 2, 4), rand(2, 2, 2, 4)
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv)
    want = reference(q, k, v, pk.repeat_interleave(2, 0), pv.repeat_interleave(2, 0))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_padding_query_rows_stay_finite_without_prefix():
    q, k, v = rand(1, 1, 3, 4), rand(1, 1, 3, 4), rand(1, 1, 3, 4)
    mask = torch.tensor([[[[False, False, False], [False, True, False], [False, True, True]]]])
    out, _ = prefix_attention(q, k, v, attention_mask=mask)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prefix_attention_layer_matches_reference(kv_heads):
    torch.manual_seed(0)
    layer = PrefixAttention(d_model=16, num_heads=4, num_kv_heads=kv_heads).eval()
    x = rand(2, 5, 16)
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pk, pv = rand(1, kv_heads, 3, 4), rand(1, kv_heads, 3, 4)
    got = layer(x, attention_mask=pad, prefix_key=pk, prefix_value=pv, is_causal=True)
    with torch.no_grad():
        q = (x @ layer.q_proj.weight.T + layer.q_proj.bias).view(2, 5, 4, 4).transpose(1, 2)
        k = (x @ layer.k_proj.weight.T + layer.k_proj.bias).view(2, 5, kv_heads, 4).transpose(1, 2)
        v = (x @ layer.v_proj.weight.T + layer.v_proj.bias).view(2, 5, kv_heads, 4).transpose(1, 2)
        allowed = pad.bool()[:, None, :].expand(2, 5, 5) & torch.ones(5, 5, dtype=torch.bool).tril()
        att = reference(q, k, v, pk, pv, allowed).float()
        want = att.transpose(1, 2).reshape(2, 5, 16) @ layer.o_proj.weight.T + layer.o_proj.bias
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1, :3], want[1, :3], atol=1e-5, rtol=1e-5)


def test_prefix_attention_layer_rejects_bad_heads():
    with pytest.raises(ValueError, match="multiple"):
        PrefixAttention(d_model=16, num_heads=4, num_kv_heads=3)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("q_len", [1, 5])
def test_mask_free_fast_path_matches_reference(heads, kv_heads, q_len):
    """No mask tensor: causal over [prefix; keys] via dummy queries, and single-query decoding."""
    b, n, p, d = 2, 5, 3, 8
    q, k, v = rand(b, heads, q_len, d), rand(b, kv_heads, n, d), rand(b, kv_heads, n, d)
    pk, pv = rand(1, kv_heads, p, d), rand(1, kv_heads, p, d)
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[-q_len:][None].expand(b, -1, -1)
    torch.testing.assert_close(got.double(), reference(q, k, v, pk, pv, allowed), atol=1e-5, rtol=1e-5)
    full, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=False)
    torch.testing.assert_close(full.double(), reference(q, k, v, pk, pv), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (6, 1)])
def test_decode_step_merge_matches_reference_without_grad(heads, kv_heads):
    """Inference decoding merges cache and prefix attention by log-sum-exp instead of concatenating."""
    q, k, v = rand(3, heads, 1, 8), rand(3, kv_heads, 9, 8), rand(3, kv_heads, 9, 8)
    pk, pv = rand(1, kv_heads, 4, 8), rand(1, kv_heads, 4, 8)
    with torch.no_grad():
        got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
        bf16, _ = prefix_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), prefix_key=pk, prefix_value=pv,
                                   is_causal=True)
    want = reference(q, k, v, pk, pv)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bf16.double(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prefix_attention_layer_left_padded_row_equals_the_row_alone(kv_heads):
    """Causality must not hide the padding mask: a left-padded row sees neither its pads nor them it."""
    torch.manual_seed(0)
    layer = PrefixAttention(d_model=16, num_heads=4, num_kv_heads=kv_heads).eval()
    x = rand(2, 6, 16)
    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    pk, pv = rand(1, kv_heads, 3, 4), rand(1, kv_heads, 3, 4)
    with torch.no_grad():
        got = layer(x, attention_mask=pad, prefix_key=pk, prefix_value=pv, is_causal=True)
        alone = layer(x[1:, 3:], prefix_key=pk, prefix_value=pv, is_causal=True)
        first = layer(x[:1], prefix_key=pk, prefix_value=pv, is_causal=True)
        bool_mask = pad.bool()[:, None, None, :].expand(2, 1, 6, 6)
        as_4d = layer(x, attention_mask=bool_mask, prefix_key=pk, prefix_value=pv, is_causal=True)
    torch.testing.assert_close(got[1, 3:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], first[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_4d[1, 3:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_decode_merge_is_exact_for_large_logits(heads, kv_heads):
    """The log-sum-exp merge must subtract the running maximum: with queries x200 the softmax is
    nearly one-hot and any other shift over- or underflows."""
    q = rand(2, heads, 1, 8) * 200
    k, v = rand(2, kv_heads, 7, 8), rand(2, kv_heads, 7, 8)
    pk, pv = rand(1, kv_heads, 4, 8), rand(1, kv_heads, 4, 8)
    pk[..., 0, :] *= 3  # one prefix slot dominates some heads, a cached key others
    with torch.no_grad():
        merged, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
    # the same inputs with gradients on take the concatenating path (no merge)
    q_grad = q.clone().requires_grad_(True)
    joint, _ = prefix_attention(q_grad, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
    want = reference(q, k, v, pk, pv)
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged.double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged, joint.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (6, 3), (4, 4)])
def test_gated_prefix_is_real_attention_plus_tanh_gate_times_prefix_attention(heads, kv_heads):
    """``out = attn(real keys) + tanh(gate[g]) * attn(prefix)``, where query head ``h`` reads
    key/value head ``g = h // (heads / kv_heads)`` and its gate (GQA order, not tiled)."""
    b, n, p, d = 2, 5, 3, 8
    q, k, v = rand(b, heads, n, d), rand(b, kv_heads, n, d), rand(b, kv_heads, n, d)
    pk, pv = rand(1, kv_heads, p, d), rand(2, kv_heads, p, d)  # keys shared, values per row
    gate = torch.linspace(-1.5, 2.0, kv_heads)
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    allowed = pad[:, None, :].expand(b, n, n) & torch.ones(n, n, dtype=torch.bool).tril()
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_gate=gate,
                              attention_mask=allowed[:, None])
    real = reference(q, k, v, allowed=allowed)
    prefix_only = reference(q, pk.expand(b, -1, -1, -1), pv)
    per_head = torch.tanh(gate.double()).repeat_interleave(heads // kv_heads)[None, :, None, None]
    want = real + per_head * prefix_only
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1][:, 2:].double(), want[1][:, 2:], atol=1e-5, rtol=1e-5)
    causal, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_gate=gate, is_causal=True)
    want_causal = reference(q, k, v, allowed=torch.ones(n, n, dtype=torch.bool).tril()[None].expand(b, -1, -1))
    torch.testing.assert_close(causal.double(), want_causal + per_head * prefix_only, atol=1e-5, rtol=1e-5)


def test_additive_float_mask_with_per_row_prefix_mask():
    """An additive float mask (0 / large negative) over the real keys gets prefix columns of 0 or the
    dtype's minimum, per row; equal to the boolean-mask reference."""
    b, h, n, p, d = 2, 2, 4, 3, 8
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    pk, pv = rand(b, h, p, d), rand(b, h, p, d)
    allowed = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)[:, None, :].expand(b, n, n)
    additive = torch.zeros(b, 1, n, n).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    prefix_mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_mask=prefix_mask, attention_mask=additive)
    want = reference(q, k, v, pk, pv, allowed, prefix_mask)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    weights_path, w = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_mask=prefix_mask,
                                       attention_mask=additive, need_weights=True)
    torch.testing.assert_close(weights_path.double(), want, atol=1e-5, rtol=1e-5)
    assert float(w[1, :, :, 1:p].abs().max()) == 0.0  # masked prefix slots get no weight


def test_gqa_with_a_per_head_mask():
    """A mask with one entry per query head under GQA (key/value heads repeated for SDPA)."""
    b, heads, kv_heads, n, p, d = 2, 4, 2, 5, 2, 8
    q, k, v = rand(b, heads, n, d), rand(b, kv_heads, n, d), rand(b, kv_heads, n, d)
    pk, pv = rand(1, kv_heads, p, d), rand(1, kv_heads, p, d)
    per_head = torch.rand(b, heads, n, n) > 0.3
    per_head[..., 0] = True
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, attention_mask=per_head)
    for head in range(heads):
        one = reference(q[:, head:head + 1], k[:, head // 2:head // 2 + 1], v[:, head // 2:head // 2 + 1],
                        pk[:, head // 2:head // 2 + 1], pv[:, head // 2:head // 2 + 1], per_head[:, head])
        torch.testing.assert_close(got[:, head:head + 1].double(), one, atol=1e-5, rtol=1e-5)


def test_attention_dropout_on_the_weights_path_is_unbiased():
    """Softcapped attention (the explicit-weights path) with dropout: outputs vary, their mean is the
    output without dropout (inverted dropout)."""
    q, k, v = rand(1, 2, 3, 4), rand(1, 2, 3, 4), rand(1, 2, 3, 4)
    pk, pv = rand(1, 2, 2, 4), rand(1, 2, 2, 4)
    plain, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, softcap=3.0)
    torch.manual_seed(0)
    draws = torch.stack([prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, softcap=3.0, dropout=0.3)[0]
                         for _ in range(3000)])
    assert (draws[0] - draws[1]).abs().max() > 1e-3
    torch.testing.assert_close(draws.mean(0), plain, atol=0.05, rtol=0.05)


def test_gated_prefix_with_per_row_prefix_mask_softcap_bias_and_weights():
    """The gated form with rows of shorter or no prefix, a softcap, a position bias and weights asked for:
    each part against the reference (a row without prefix gets exactly its real-key attention)."""
    b, h, n, p, d = 3, 2, 4, 3, 8
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    pk, pv = rand(b, h, p, d), rand(b, h, p, d)
    prefix_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    gate = torch.tensor([0.7, -1.1])
    bias = rand(1, h, n, n)
    got, weights = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_mask=prefix_mask,
                                    prefix_gate=gate, softcap=2.0, position_bias=bias, need_weights=True)
    real = reference(q, k, v, softcap=2.0, bias=bias)
    prefix_only = reference(q, pk, pv, allowed=prefix_mask[:, None, :].expand(b, n, p), softcap=2.0)
    prefix_only[2] = 0.0  # a row with no prefix slot gets no prefix term
    tanh = torch.tanh(gate.double())[None, :, None, None]
    torch.testing.assert_close(got.double(), real + tanh * prefix_only, atol=1e-5, rtol=1e-5)
    assert weights.shape == (b, h, n, n)  # the weights of the real-key attention


def test_single_query_with_trainable_prefix_gives_reference_gradients():
    """One query per row while the prefix trains (the log-sum-exp merge has no backward, so it must not
    be used): output and prefix gradients equal the reference's."""
    q, k, v = rand(2, 4, 1, 8), rand(2, 2, 6, 8), rand(2, 2, 6, 8)
    pk, pv = rand(1, 2, 3, 8).requires_grad_(True), rand(1, 2, 3, 8).requires_grad_(True)
    got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True)
    got.square().sum().backward()
    rk, rv = pk.detach().double().requires_grad_(True), pv.detach().double().requires_grad_(True)
    # differentiable float64 reference: one query sees the whole prefix and every cached key
    keys = torch.cat([rk.expand(2, -1, -1, -1), k.double()], 2).repeat_interleave(2, dim=1)
    values = torch.cat([rv.expand(2, -1, -1, -1), v.double()], 2).repeat_interleave(2, dim=1)
    want = torch.softmax(q.double() @ keys.transpose(-1, -2) * 8 ** -0.5, -1) @ values
    want.square().sum().backward()
    torch.testing.assert_close(got.double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.detach().double(), reference(q, k, v, pk.detach(), pv.detach()), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pk.grad.double(), rk.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pv.grad.double(), rv.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scaling", [0.0625, 0.9])
def test_decode_merge_uses_the_given_scaling(scaling):
    q, k, v = rand(2, 4, 1, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 8)
    pk, pv = rand(1, 2, 3, 8), rand(1, 2, 3, 8)
    with torch.no_grad():
        got, _ = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, is_causal=True, scaling=scaling)
    torch.testing.assert_close(got.double(), reference(q, k, v, pk, pv, scale=scaling), atol=1e-5, rtol=1e-5)


def test_prefix_attention_layer_without_bias():
    layer = PrefixAttention(d_model=16, num_heads=4, bias=False)
    assert all(getattr(layer, n).bias is None for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert torch.equal(layer(torch.zeros(1, 3, 16)), torch.zeros(1, 3, 16))  # linear without bias: 0 -> 0


def test_gated_prefix_returns_weights_when_asked_without_softcap():
    q, k, v = rand(1, 2, 3, 4), rand(1, 2, 3, 4), rand(1, 2, 3, 4)
    pk, pv = rand(1, 2, 2, 4), rand(1, 2, 2, 4)
    out, weights = prefix_attention(q, k, v, prefix_key=pk, prefix_value=pv, prefix_gate=torch.zeros(2),
                                    need_weights=True)
    assert weights is not None and weights.shape == (1, 2, 3, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 3))
    torch.testing.assert_close(out.double(), reference(q, k, v), atol=1e-5, rtol=1e-5)  # tanh(0) = 0


def test_bf16_additive_mask_with_prefix_mask_stays_bf16():
    """A bf16 additive mask gets bf16 prefix columns (its own dtype's minimum), not float32 ones."""
    b, h, n, p, d = 2, 2, 4, 3, 8
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    pk, pv = rand(b, h, p, d), rand(b, h, p, d)
    allowed = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)[:, None, :].expand(b, n, n)
    additive = torch.zeros(b, 1, n, n, dtype=torch.bfloat16).masked_fill(~allowed[:, None], torch.finfo(torch.bfloat16).min)
    prefix_mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    got, _ = prefix_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), prefix_key=pk, prefix_value=pv,
                              prefix_mask=prefix_mask, attention_mask=additive)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), reference(q, k, v, pk, pv, allowed, prefix_mask), atol=5e-2, rtol=5e-2)
