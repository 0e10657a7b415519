"""The repetition guard: bans exactly the tokens that would repeat an n-gram of the output (checked
against a brute-force oracle), never the prompt's n-grams, and works through ``generate`` of a bare,
a prefix-tuned and a prompt-tuned model (soft prompts lengthen what generate shows)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

import prefixtune as pt
from prefixtune.evaluation.repeats import NoRepeatInOutput
from tiny import tiny_model

VOCAB = 6


def repeats(tokens, n):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@settings(max_examples=200, deadline=None)
@given(prompt=st.lists(st.integers(0, VOCAB - 1), max_size=6),
       out=st.lists(st.lists(st.integers(0, VOCAB - 1), max_size=8), min_size=1, max_size=3).map(
           lambda rows: [r + [0] * (max(map(len, rows)) - len(r)) for r in rows]),
       n=st.integers(1, 4))
def test_bans_exactly_what_would_repeat_an_ngram_of_the_output(prompt, out, n):
    """Oracle: a token is banned iff appending it to the output makes an n-gram occur twice there
    (for an output that has no repeat yet, as under the guard)."""
    guard = NoRepeatInOutput(n)
    rows = len(out)
    guard(torch.tensor([prompt] * rows, dtype=torch.long).reshape(rows, len(prompt)), torch.zeros(rows, VOCAB))
    ids = torch.tensor([prompt + o for o in out], dtype=torch.long).reshape(rows, len(prompt) + len(out[0]))
    scores = guard(ids, torch.zeros(rows, VOCAB))
    for row, o in enumerate(out):
        if repeats(o, n):
            continue
        banned = {t for t in range(VOCAB) if scores[row, t] == float("-inf")}
        assert banned == {t for t in range(VOCAB) if repeats(o + [t], n)}, (prompt, o, n)


def test_the_prompts_ngrams_stay_allowed():
    guard = NoRepeatInOutput(2)
    prompt = torch.tensor([[3, 4, 3]])
    assert torch.equal(guard(prompt, torch.zeros(1, VOCAB)), torch.zeros(1, VOCAB))
    scores = guard(torch.tensor([[3, 4, 3, 3]]), torch.zeros(1, VOCAB))  # output [3]: (3, 4) is the prompt's
    assert not torch.isinf(scores).any()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_n_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="no_repeat_ngram must be an integer >= 1"):
        NoRepeatInOutput(bad)


@pytest.mark.parametrize("adapter", [None, pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=1.0),
                                     pt.PromptConfig(num_virtual_tokens=4)])
def test_greedy_output_of_a_looping_model_has_no_repeat_with_the_guard(adapter):
    """A tiny random Llama loops when decoding greedily; with the guard its outputs hold no bigram
    twice, and up to the first repeat they are what greedy decoding gives."""
    torch.manual_seed(0)
    model = tiny_model("llama").eval()
    if adapter is not None:
        model = pt.wrap(model, adapter).eval()
    ids = torch.randint(3, 90, (3, 5), generator=torch.Generator().manual_seed(1))
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
              eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(**kw)[:, ids.shape[1]:].tolist()
        guarded = model.generate(**kw, logits_processor=LogitsProcessorList([NoRepeatInOutput(2)]))
    guarded = guarded[:, ids.shape[1]:].tolist()
    assert any(repeats(row, 2) for row in plain)  # the guard has something to do
    for p, g in zip(plain, guarded):
        assert not repeats(g, 2) and len(g) == 40
        first = next(i for i in range(len(p) + 1) if i == len(p) or repeats(p[:i + 1], 2))
        assert g[:first] == p[:first]
