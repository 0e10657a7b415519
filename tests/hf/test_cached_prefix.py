"""``generate()`` holds a folded prefix in the KV cache (written once) instead of merging it into
attention at every step; the oracle is the merge path itself, forced by making no cache eligible."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.core import attention
from prefixtune.hf import cache as kv_cache
from prefixtune.runtime.bank import AdapterBank
from tiny import tiny_model, token_ids

DECODERS = ["gpt2", "llama", "qwen2", "mistral", "gemma2"]


@pytest.fixture
def spy(monkeypatch):
    """Records each attention call's ``prefix_in_keys`` and whether a prefix was passed to prepend."""
    calls = []
    real = attention.prefix_attention

    def recording(*args, **kwargs):
        calls.append((kwargs.get("prefix_in_keys", 0), kwargs.get("prefix_key") is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr("prefixtune.hf.boundary.prefix_attention", recording)
    return calls


def merged(monkeypatch):
    """Within the block, generate() merges the prefix at every step (no cache holds it)."""
    monkeypatch.setattr(kv_cache, "fresh_dynamic", lambda cache: False)


def padded(family, lengths, seed=0):
    rows = [token_ids(family, 1, n, seed=seed + n)[0] for n in lengths]
    n = max(lengths)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
    return ids, mask


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("mode", ["greedy", "beams", "sampling"])
def test_generate_with_the_prefix_in_the_cache_equals_the_merged_prefix(family, mode, spy, monkeypatch):
    """Left-padded rows, shifted and natural positions; scores agree to float rounding and greedy and
    beam outputs token for token. Mistral and gemma2 (window 4) run past their sliding window."""
    for position_mode in ("shifted", "natural"):
        pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=3, init_std=1.0, hidden_size=16,
                                                         position_mode=position_mode)).eval()
        pm.fold()
        ids, mask = padded(family, [5, 3, 4])
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, pad_token_id=0, eos_token_id=None,
                  output_scores=True, return_dict_in_generate=True)
        kw.update({"greedy": dict(do_sample=False), "beams": dict(num_beams=3, do_sample=False),
                   "sampling": dict(do_sample=True, top_k=0, temperature=1.0)}[mode])
        torch.manual_seed(0)
        cached = pm.generate(**kw)
        assert any(n == 3 for n, _ in spy) and not any(n == 0 and prepended for n, prepended in spy[1:]), \
            "decoding steps attend to the cached prefix"
        with monkeypatch.context() as m:
            merged(m)
            spy.clear()
            torch.manual_seed(0)
            plain = pm.generate(**kw)
            assert all(n == 0 for n, _ in spy)
        if mode != "sampling":
            assert torch.equal(cached.sequences, plain.sequences), (family, position_mode)
        steps = len(plain.scores) if mode != "sampling" else 1  # sampled tokens may part ways later
        for a, b in zip(cached.scores[:steps], plain.scores[:steps]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        spy.clear()


def test_per_row_adapters_and_prompts_in_the_bank(spy, monkeypatch):
    """Per-row prefixes of different lengths (masked slots in the cache), a prompt row and a bare row."""
    bank = AdapterBank(tiny_model("llama"))
    for name, cfg in {"p2": pt.PrefixConfig(prefix_length=2, init_std=1.0, reparameterization="direct"),
                      "p5": pt.PrefixConfig(prefix_length=5, init_std=1.0, hidden_size=16),
                      "soft": pt.PromptConfig(num_virtual_tokens=3)}.items():
        bank.add(name, pt.wrap(tiny_model("llama"), cfg))
    ids, mask = padded("llama", [4, 2, 5, 3])
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=7, do_sample=False, pad_token_id=0, eos_token_id=None)
    names = ["p2", "soft", None, "p5"]
    cached = bank.generate(names, **kw)
    assert any(n == 5 for n, _ in spy)
    with monkeypatch.context() as m:
        merged(m)
        assert torch.equal(cached, bank.generate(names, **kw))


def test_the_merge_path_stays_where_the_cache_cannot_hold_the_prefix(spy):
    """Gated prefixes, trainable (not folded) prefixes with gradients, and no cache."""
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, init_std=1.0, hidden_size=16))
    ids = token_ids("llama", 1, 4)
    pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                pad_token_id=0, use_cache=False)
    assert spy and all(n == 0 for n, _ in spy)
    spy.clear()
    with torch.enable_grad():
        out = pm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    assert all(n == 0 for n, _ in spy) and out.logits.requires_grad


def test_per_row_prefixes_follow_their_rows_under_beam_search(spy, monkeypatch):
    """Per-row prefixes are repeated per beam when the cache is first written, and reordered with it."""
    bank = AdapterBank(tiny_model("gemma2"))
    for name, n in (("p2", 2), ("p4", 4)):
        bank.add(name, pt.wrap(tiny_model("gemma2"), pt.PrefixConfig(prefix_length=n, init_std=1.0,
                                                                     reparameterization="direct")))
    ids, mask = padded("gemma2", [4, 6, 3])
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=7, num_beams=3, do_sample=False, pad_token_id=0,
              eos_token_id=None)
    names = ["p4", "p2", None]
    cached = bank.generate(names, **kw)
    assert any(n == 4 for n, _ in spy)
    with monkeypatch.context() as m:
        merged(m)
        assert torch.equal(cached, bank.generate(names, **kw))


def test_a_prefix_layer_counts_real_tokens_casts_the_prefix_and_never_crops_it():
    prefix = torch.randn(1, 2, 3, 4)  # (1, H_kv, P, d) float32
    layer = kv_cache.PrefixLayer(prefix, -prefix)
    assert layer.get_seq_length() == 0
    keys, values = layer.update(torch.ones(2, 2, 5, 4, dtype=torch.bfloat16), torch.ones(2, 2, 5, 4, dtype=torch.bfloat16))
    assert keys.shape == (2, 2, 8, 4) and keys.dtype == torch.bfloat16 and layer.get_seq_length() == 5
    torch.testing.assert_close(keys[:, :, :3], prefix.to(torch.bfloat16).expand(2, -1, -1, -1))
    torch.testing.assert_close(values[:, :, :3], -prefix.to(torch.bfloat16).expand(2, -1, -1, -1))
    layer.crop(-2)
    assert layer.get_seq_length() == 3 and layer.keys.shape[2] == 6
    layer.crop(-10)  # past the real tokens: the prefix stays
    assert layer.get_seq_length() == 0 and layer.keys.shape[2] == 3
    torch.testing.assert_close(layer.keys, prefix.to(torch.bfloat16).expand(2, -1, -1, -1))
    rows = kv_cache.PrefixLayer(torch.arange(2.0).view(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))
    keys, _ = rows.update(torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1))  # 2 rows x 2 beams
    assert keys[:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0] and keys[:, 0, 1, 0].tolist() == [0.0] * 4
