"""Length-grouped batches and collation: every example once per epoch, padding where it belongs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixtune.data.batching import Encoded, collate, length_grouped_batches


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=400), batch_size=st.integers(1, 17),
       seed=st.integers(0, 5), epoch=st.integers(0, 3), group=st.integers(1, 6))
def test_an_epoch_covers_every_index_once_in_full_batches(lengths, batch_size, seed, epoch, group):
    batches = length_grouped_batches(lengths, batch_size, seed, epoch, group=group)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # nothing dropped, nothing repeated
    short = [b for b in batches if len(b) != batch_size]
    assert len(short) <= 1 and all(0 < len(b) < batch_size for b in short)  # only the very last chunk's tail
    assert batches == length_grouped_batches(lengths, batch_size, seed, epoch, group=group)  # deterministic


def test_batches_hold_similar_lengths_and_epochs_differ():
    lengths = [(i * 37) % 101 + 1 for i in range(64)]
    batches = length_grouped_batches(lengths, 8, seed=0, epoch=0, group=50)  # one chunk: fully sorted
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(hi <= nxt_lo for (_, hi), (nxt_lo, _) in zip(spans, spans[1:]))  # batches do not overlap
    assert batches != length_grouped_batches(lengths, 8, seed=0, epoch=1, group=50)
    assert batches != length_grouped_batches(lengths, 8, seed=1, epoch=0, group=50)


def test_collate_pads_right_or_left_with_masked_labels():
    one = collate([Encoded([4, 5], labels=[-100, 5])], pad_id=0)  # a batch of one
    assert one["labels"].tolist() == [[-100, 5]] and "token_type_ids" not in one
    items = [Encoded([5, 6, 7], labels=[-100, 6, 7]), Encoded([8], labels=[8])]
    right = collate(items, pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = collate(items, pad_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    classes = collate([Encoded([1, 2], token_type_ids=[0, 1], label=1), Encoded([3], token_type_ids=[0], label=0)], 0)
    assert torch.equal(classes["labels"], torch.tensor([1, 0]))
    assert classes["token_type_ids"].tolist() == [[0, 1], [0, 0]]


class CharTokenizer:
    """One id per character (``ord``); BOS 1 in front unless ``add_special_tokens=False``; EOS 2.
    Pairs are joined with SEP 3 and get token types 0/1."""

    eos_token_id = 2

    def __call__(self, text, pair=None, add_special_tokens=True, truncation=False, max_length=None):
        ids = ([1] if add_special_tokens else []) + [ord(c) for c in text]
        types = [0] * len(ids)
        if pair is not None:
            ids += [3] + [ord(c) for c in pair]
            types += [1] * (len(pair) + 1)
        if truncation and max_length is not None:
            ids, types = ids[:max_length], types[:max_length]
        return {"input_ids": ids, "token_type_ids": types}


def test_encode_generation_masks_the_prompt_and_truncates_prompt_first():
    from prefixtune.data.batching import encode
    from prefixtune.data.tasks import Example

    tok = CharTokenizer()
    fits, report = encode(tok, [Example("ab", target="xy")], max_length=10, kind="generation")
    assert fits[0].input_ids == [1, 97, 98, 120, 121, 2]
    assert fits[0].labels == [-100, -100, -100, 120, 121, 2]
    assert (report.total, report.truncated) == (1, 0)
    # prompt (5 ids) + target (3) > 6: the prompt loses ids from the left
    cut, report = encode(tok, [Example("abcd", target="xy"), Example("a", target="b")], max_length=6, kind="generation")
    assert cut[0].input_ids == [98, 99, 100, 120, 121, 2] and cut[0].labels == [-100] * 3 + [120, 121, 2]
    assert (report.total, report.truncated) == (2, 1) and str(report) == "1 of 2 examples truncated"
    # a target longer than the budget keeps one prompt id and loses target ids from the right
    long, _ = encode(tok, [Example("ab", target="uvwxyz")], max_length=4, kind="generation")
    assert long[0].input_ids == [98, 117, 118, 119] and long[0].labels == [-100, 117, 118, 119]


def test_encode_classification_pairs_token_types_and_truncation():
    from prefixtune.data.batching import encode
    from prefixtune.data.tasks import Example

    out, report = encode(CharTokenizer(), [Example(("ab", "c"), label=1), Example("abcdef", label=0)], max_length=5,
                         kind="classification")
    assert out[0].input_ids == [1, 97, 98, 3, 99] and out[0].token_type_ids == [0, 0, 0, 1, 1] and out[0].label == 1
    assert out[1].input_ids == [1, 97, 98, 99, 100] and out[1].label == 0
    assert (report.total, report.truncated) == (2, 1)


def test_an_example_of_exactly_max_length_is_not_truncated():
    from prefixtune.data.batching import encode
    from prefixtune.data.tasks import Example

    out, report = encode(CharTokenizer(), [Example("ab", target="xy")], max_length=6, kind="generation")
    assert len(out[0].input_ids) == 6 and report.truncated == 0
