"""generate() honours the prefix: greedy, beam, sampling; with and without the KV cache."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from tiny import DECODERS, SEQ2SEQ, pad_token, tiny_model, token_ids

GEN_FAMILIES = DECODERS + SEQ2SEQ


def make(family, **cfg):
    config = pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=1.0, **cfg)
    return pt.wrap(tiny_model(family), config).eval()


def gen(pm, ids, mask, **kw):
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("do_sample", False)
    return pm.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_token(pm.layout.model_type),
                       eos_token_id=None, **kw)


@pytest.mark.parametrize("family", GEN_FAMILIES)
def test_first_step_scores_equal_forward_logits(family):
    pm = make(family)
    ids = token_ids(family, 2, 6)
    mask = torch.ones_like(ids)
    out = gen(pm, ids, mask, max_new_tokens=1, output_scores=True, return_dict_in_generate=True)
    kw = {"input_ids": ids, "attention_mask": mask}
    if family in SEQ2SEQ:
        start = pm.base_model.generation_config.decoder_start_token_id
        kw["decoder_input_ids"] = torch.full((2, 1), start)
    logits = pm(**kw).logits[:, -1]
    torch.testing.assert_close(out.scores[0], logits, atol=1e-5, rtol=1e-4)
    with pm.injection.active(None):
        bare = pm.base_model(**kw).logits[:, -1]
    assert (out.scores[0] - bare).abs().max() > 1e-5, "generate must not drop the prefix"


@pytest.mark.parametrize("family", GEN_FAMILIES)
def test_cache_and_no_cache_generate_the_same(family):
    pm = make(family)
    ids, mask = token_ids(family, 2, 5), torch.ones(2, 5, dtype=torch.long)
    with_cache = gen(pm, ids, mask, use_cache=True)
    without = gen(pm, ids, mask, use_cache=False)
    assert torch.equal(with_cache, without)
    beams = gen(pm, ids, mask, num_beams=3, use_cache=True)
    beams_nc = gen(pm, ids, mask, num_beams=3, use_cache=False)
    assert torch.equal(beams, beams_nc)


@pytest.mark.parametrize("family", DECODERS)
def test_left_padded_batch_generates_like_each_row_alone(family):
    pm = make(family)
    rows = [token_ids(family, 1, n, seed=n)[0] for n in (6, 3, 5)]
    n = max(len(r) for r in rows)
    ids = torch.full((3, n), pad_token(family))
    mask = torch.zeros(3, n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
    for kw in ({}, {"num_beams": 2}):
        batched = gen(pm, ids, mask, **kw)[:, n:]
        for i, r in enumerate(rows):
            alone = gen(pm, r[None], torch.ones(1, len(r), dtype=torch.long), **kw)[:, len(r):]
            assert torch.equal(batched[i], alone[0]), (kw, i)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_sampling_uses_the_prefix(family):
    """Sampling draws from the prefixed model's distribution: with the same seed, ``generate`` picks the
    tokens a hand-written loop picks (full forward each step, softmax, one multinomial draw per step)."""
    pm = make(family)
    ids, mask = token_ids(family, 4, 5), torch.ones(4, 5, dtype=torch.long)
    torch.manual_seed(3)
    sampled = gen(pm, ids, mask, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=8)
    torch.manual_seed(3)
    if family in SEQ2SEQ:
        out = torch.full((4, 1), pm.base_model.generation_config.decoder_start_token_id)
        for _ in range(8):
            logits = pm(input_ids=ids, attention_mask=mask, decoder_input_ids=out).logits[:, -1]
            out = torch.cat([out, torch.multinomial(torch.softmax(logits, -1), 1)], 1)
    else:
        out = ids
        for _ in range(8):
            logits = pm(input_ids=out, attention_mask=torch.ones_like(out)).logits[:, -1]
            out = torch.cat([out, torch.multinomial(torch.softmax(logits, -1), 1)], 1)
    assert torch.equal(sampled, out)
    # Sampling with a near-zero temperature is greedy decoding with the prefix.
    cold = gen(pm, ids, mask, do_sample=True, temperature=1e-4, top_k=0, max_new_tokens=8)
    assert torch.equal(cold, gen(pm, ids, mask, max_new_tokens=8))


def test_generate_differs_from_base_model():
    pm = make("llama")
    ids, mask = token_ids("llama", 4, 5), torch.ones(4, 5, dtype=torch.long)
    with_prefix = gen(pm, ids, mask, max_new_tokens=8)
    base = pm.unwrap()
    bare = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    assert not torch.equal(with_prefix, bare)


@pytest.mark.parametrize("family", DECODERS)
def test_incremental_forward_with_cache_equals_full_forward(family):
    """Prefill, then feed tokens one by one with the returned cache: same logits as one full pass."""
    pm = make(family)
    ids = token_ids(family, 2, 7)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    full = pm(input_ids=ids, attention_mask=mask).logits
    out = pm(input_ids=ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(4, 7):
        out = pm(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("cache_name", ["cache", "past_key_values"])
def test_incremental_forward_without_a_mask_counts_positions_from_the_cache(family, cache_name):
    """No attention mask: the new tokens' positions continue after the cached ones (plus the prefix)."""
    pm = make(family)
    ids = token_ids(family, 2, 7)
    full = pm(input_ids=ids).logits
    out = pm(input_ids=ids[:, :4], use_cache=True)
    steps, cache = [out.logits], out.past_key_values
    for t in range(4, 7):
        out = pm(input_ids=ids[:, t:t + 1], use_cache=True, **{cache_name: cache})
        cache = out.past_key_values
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


def _prompt_model(family="llama"):
    pm = pt.wrap(tiny_model(family), pt.PromptConfig(num_virtual_tokens=3, init_range=1.0)).eval()
    return pm


def test_prompt_with_several_returned_sequences_equals_the_bare_model_on_prompt_embeddings():
    """Oracle: the bare model's own generate from [prompt; token embeddings], input ids put back in front."""
    pm = _prompt_model()
    ids = token_ids("llama", 2, 5)
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0, eos_token_id=None)
    got = pm.generate(input_ids=ids, attention_mask=mask, **kw)
    base = pm.base_model  # still on prefixtune's attention, with no adapter active
    embeds = torch.cat([pm.prompt().detach()[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], 1)
    new = base.generate(inputs_embeds=embeds, attention_mask=torch.ones(2, 8, dtype=torch.long), **kw)
    assert got.shape == (4, 5 + 4)
    assert torch.equal(got, torch.cat([ids.repeat_interleave(2, 0), new], 1))


def test_stopping_criteria_see_the_input_ids_also_with_a_prompt():
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Record(StoppingCriteria):
        def __init__(self):
            self.seen = []

        def __call__(self, input_ids, scores, **kwargs):
            self.seen.append(input_ids.clone())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    pm = _prompt_model()
    ids = token_ids("llama", 2, 5)
    record = Record()
    out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                      pad_token_id=0, eos_token_id=None, stopping_criteria=StoppingCriteriaList([record]))
    assert len(record.seen) == 3
    for step, seen in enumerate(record.seen, start=1):
        assert torch.equal(seen, out[:, :5 + step])  # input ids, then the tokens so far


def test_generate_takes_input_ids_positionally():
    pm = make("llama")
    ids = token_ids("llama", 2, 5)
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(pm.generate(ids, **kw), pm.generate(input_ids=ids, **kw))
