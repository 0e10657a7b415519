"""Evaluation: decoding with stop strings, generation metrics, classification accuracy."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import LogitsProcessorList

from prefixtune import progress
from prefixtune.data.batching import collate, encode
from prefixtune.data.tasks import Task
from prefixtune.evaluation.loss import batch_loss
from prefixtune.evaluation.metrics import classification_scores, generation_scores
from prefixtune.evaluation.repeats import NoRepeatInOutput
from prefixtune.evaluation.stops import cut_at_stop


#: sampling at a temperature below this is greedy decoding (logits divided by 1e-300 overflow to inf)
GREEDY_BELOW = 1e-5


@torch.no_grad()
def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16,
                   max_new_tokens: int = 60, num_beams: int = 1, stop: Sequence[str] = ("\n",),
                   do_sample: bool = False, temperature: float = 1.0, no_repeat_ngram: int = 0) -> list[str]:
    """Greedy/beam/sampled continuations of ``prompts``, cut at the first stop string (sampling
    at a temperature below :data:`GREEDY_BELOW` decodes greedily); ``no_repeat_ngram`` > 0: no
    n-gram of that many tokens twice in one output (:class:`~prefixtune.evaluation.repeats.NoRepeatInOutput`)."""
    model.eval()
    do_sample = do_sample and temperature >= GREEDY_BELOW
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = [tokenizer.eos_token_id]
    for s in stop:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            stop_ids.append(ids[0])
    outputs: list[str] = []
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together
        texts: dict[int, str] = {}
        starts = range(0, len(order), batch_size)
        for start in progress.bar(starts, hide=len(starts) < 4, what="evaluation", desc="generating", unit="batch",
                                  leave=False):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items() if k != "token_type_ids"}
            kw = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                      pad_token_id=pad, eos_token_id=stop_ids)
            if do_sample:
                kw["temperature"] = temperature
            if no_repeat_ngram:
                kw["logits_processor"] = LogitsProcessorList([NoRepeatInOutput(no_repeat_ngram)])
            out = model.generate(**enc, **kw)
            for row, i in zip(out, idx):
                text = tokenizer.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True)
                texts[i] = cut_at_stop(text, stop)[0].strip()
        outputs = [texts[i] for i in range(len(prompts))]
    finally:
        tokenizer.padding_side = side
    return outputs


@torch.no_grad()
def classify_texts(model: Any, tokenizer: Any, texts: Sequence[str | tuple[str, str]], labels: Sequence[str],
                   max_length: int, batch_size: int = 16) -> list[str]:
    """The predicted label (one of ``labels``, in id order) of each text or ``(text, text)`` pair,
    tokenized as training tokenizes them (truncated to ``max_length``; pairs as the tokenizer marks
    them); batches are padded, and a padded row scores as it does alone."""
    model.eval()
    device = next(model.parameters()).device
    predictions: list[str] = []
    for start in range(0, len(texts), batch_size):
        pairs = [t if isinstance(t, tuple) else (t,) for t in texts[start:start + batch_size]]
        if len({len(p) for p in pairs}) > 1:
            raise ValueError("give every input as one text or every input as a pair, not both in one call")
        columns = list(zip(*pairs))  # (texts,) or (first texts, second texts)
        enc = tokenizer(*[list(c) for c in columns], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        logits = model(**{k: v.to(device) for k, v in enc.items()}).logits  # (B, C)
        predictions += [labels[i] for i in logits.argmax(-1).tolist()]
    return predictions


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, task: Task, max_length: int, limit: int | None = None,
             batch_size: int = 16, max_new_tokens: int = 60, num_beams: int = 1,
             stop: Sequence[str] = ("\n",), with_loss: bool = True,
             no_repeat_ngram: int = 0) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Scores and per-input predictions of ``model`` on ``task``: the loss (mean over target tokens
    of every input-reference pair; skipped for generation tasks when ``with_loss`` is False),
    plus BLEU & co. (generation) or accuracy and F1 (classification)."""
    model.eval()
    kind = task.spec.kind
    examples = task.examples
    if kind == "generation" and limit is not None:
        keep = set(task.inputs[:limit])
        examples = [e for e in examples if e.text in keep]
    elif limit is not None:
        examples = examples[:limit]
    if kind == "generation" and not with_loss:
        examples = []
    encoded, _ = encode(tokenizer, examples, max_length, kind)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    predictions: list[int] = []
    device = next(model.parameters()).device
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], pad).items()}
        loss_sum, n, logits = batch_loss(model, batch, kind)
        total, count = total + float(loss_sum), count + n
        if kind == "classification":
            predictions += logits.argmax(-1).tolist()
    scores = {"loss": total / count} if count else {}
    records: list[dict[str, Any]] = []
    if kind == "generation":
        inputs = task.inputs[:limit] if limit is not None else task.inputs
        hyps = generate_texts(model, tokenizer, inputs, batch_size, max_new_tokens, num_beams, stop,
                              no_repeat_ngram=no_repeat_ngram)
        refs = [task.references[i] for i in inputs]
        scores.update(generation_scores(hyps, refs))
        records = [{"input": i, "prediction": h, "references": r} for i, h, r in zip(inputs, hyps, refs)]
    else:
        labels = [e.label for e in examples]
        scores.update(classification_scores(predictions, labels))
        names = task.spec.labels
        records = [{"input": e.text, "prediction": names[p], "label": names[e.label]} for e, p in zip(examples, predictions)]
    return scores, records
