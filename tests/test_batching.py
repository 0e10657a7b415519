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
