"""Tokenized examples and length-grouped batches."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from prefixtune.data.tasks import Example


@dataclass
class Encoded:
    """Token ids of one example. ``labels`` (generation): -100 on the prompt; ``label``: class id."""

    input_ids: list[int]
    labels: list[int] | None = None
    token_type_ids: list[int] | None = None
    label: int | None = None


@dataclass
class EncodeReport:
    """How many examples were truncated to fit ``max_length`` (never silently)."""

    total: int = 0
    truncated: int = 0

    def __str__(self) -> str:
        return f"{self.truncated} of {self.total} examples truncated"


def encode(tokenizer: Any, examples: Sequence[Example], max_length: int, kind: str) -> tuple[list[Encoded], EncodeReport]:
    """Tokenize examples. Generation: prompt + target + EOS, loss on the target only; a too-long
    example loses prompt tokens from the left first, then target tokens from the right."""
    report = EncodeReport(total=len(examples))
    out: list[Encoded] = []
    eos = tokenizer.eos_token_id
    for ex in examples:
        if kind == "generation":
            prompt = tokenizer(ex.text)["input_ids"]
            target = tokenizer(ex.target, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            if len(prompt) + len(target) > max_length:
                report.truncated += 1
                keep_prompt = max(1, max_length - len(target))
                prompt = prompt[-keep_prompt:]
                target = target[: max_length - len(prompt)]
            out.append(Encoded(prompt + target, labels=[-100] * len(prompt) + target))
        else:
            pair = ex.text if isinstance(ex.text, tuple) else (ex.text,)
            full = tokenizer(*pair)
            enc = tokenizer(*pair, truncation=True, max_length=max_length)
            if len(full["input_ids"]) > max_length:
                report.truncated += 1
            out.append(Encoded(enc["input_ids"], token_type_ids=enc.get("token_type_ids"), label=ex.label))
    return out, report


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                           group: int = 50) -> list[list[int]]:
    """An epoch's batches (lists of example indices), deterministic in ``(seed, epoch)``.

    Indices are shuffled, cut into chunks of ``group`` batches, each chunk sorted by length so a
    batch holds similar lengths (little padding), and the batch order is shuffled again.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    chunk = batch_size * group
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i], reverse=True)
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch. Generation items give ``input_ids``, ``attention_mask``, ``labels``;
    classification items ``labels`` of class ids (and ``token_type_ids`` if present)."""
    n = max(len(e.input_ids) for e in items)

    def pad(seq: list[int], value: int) -> list[int]:
        fill = [value] * (n - len(seq))
        return fill + seq if padding_side == "left" else seq + fill

    batch = {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in items]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in items]),
    }
    if items[0].labels is not None:
        batch["labels"] = torch.tensor([pad(e.labels, -100) for e in items])
    else:
        batch["labels"] = torch.tensor([e.label for e in items])
    if items[0].token_type_ids is not None:
        batch["token_type_ids"] = torch.tensor([pad(e.token_type_ids, 0) for e in items])
    return batch
