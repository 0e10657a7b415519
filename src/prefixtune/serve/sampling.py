"""Per-row decoding extras for the engine's ``generate`` calls: OpenAI's presence and frequency
penalties, log-probabilities of the chosen and the top tokens, and seeded sampling.

Both logits processors count decoding steps themselves: ``generate`` shows logits processors the
prompt's ids followed by the new tokens, or (prompts given as embeddings: soft prompts) the new
tokens only; the last ``steps`` columns are the new tokens in both cases. They run before
temperature and top-p (transformers puts custom processors before its warpers), so log-probs are
those of the model's distribution after the penalties.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from transformers import LogitsProcessor

#: log-probabilities are reported no lower than this (JSON has no -inf)
MIN_LOGPROB = -9999.0


class Penalties(LogitsProcessor):
    """OpenAI's penalties per row over the tokens generated so far:
    ``logits -= presence * (count > 0) + frequency * count``.

    Args:
        presence, frequency: one value per batch row.
    """

    def __init__(self, presence: Sequence[float], frequency: Sequence[float]) -> None:
        self.presence = torch.tensor(presence, dtype=torch.float32)  # (B,)
        self.frequency = torch.tensor(frequency, dtype=torch.float32)  # (B,)
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: (B, T) with the new tokens last; scores: (B, V)
        if self.steps:
            new = input_ids[:, -self.steps:]  # (B, steps)
            counts = torch.zeros_like(scores).scatter_add_(1, new, torch.ones_like(new, dtype=scores.dtype))  # (B, V)
            presence = self.presence.to(scores)[:, None]  # (B, 1)
            frequency = self.frequency.to(scores)[:, None]
            scores = scores - presence * (counts > 0).to(scores) - frequency * counts
        self.steps += 1
        return scores


class Logprobs(LogitsProcessor):
    """Records, for the rows that ask (``top[i]`` not None), each step's ``top[i]`` most likely
    tokens with their log-probabilities, and the chosen token's log-probability once it is known:
    from :meth:`finish`, which the caller runs once the step's tokens are chosen (else the next
    step does).

    ``steps[i]`` is row ``i``'s list of ``(chosen_logprob, [(token_id, logprob), ...])``; pass
    ``steps`` to have them appended to lists of your own (one per row).
    """

    def __init__(self, top: Sequence[int | None], steps: Sequence[list] | None = None) -> None:
        self.top = list(top)
        self.steps: list[list[tuple[float, list[tuple[int, float]]]]] = (
            list(steps) if steps is not None else [[] for _ in self.top])
        self._last: torch.Tensor | None = None  # (B, V) log-probs of the step whose token is not yet known
        self._pending: list[list[tuple[int, float]]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:
            self.finish(input_ids[:, -1])
        logp = torch.log_softmax(scores.float(), dim=-1).clamp_min(MIN_LOGPROB)  # (B, V)
        k = max((t for t in self.top if t is not None), default=0)
        values, ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())  # (B, k)
        self._pending = [list(zip(ids[i, :t].tolist(), values[i, :t].tolist())) if t else []
                         for i, t in enumerate(self.top)]
        self._last = logp
        return scores

    def finish(self, chosen: torch.Tensor) -> None:
        """Take the tokens chosen at the last recorded step, ``chosen`` (B,)."""
        if self._last is None:
            return
        picked = self._last.gather(1, chosen.to(self._last.device).long()[:, None])[:, 0].tolist()  # (B,)
        for i, t in enumerate(self.top):
            if t is not None:
                self.steps[i].append((picked[i], self._pending[i]))
        self._last = None


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Sampling inside the block draws from the generator state ``seed`` gives (the global state
    is restored after it); nothing changes for ``None``."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        yield


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` ``(V,)`` with the tokens outside the smallest set of probability >= ``top_p``
    set to -inf (the most likely token always stays), as transformers' top-p warper."""
    if top_p >= 1.0:
        return logits
    ordered, order = logits.sort(descending=False)
    cumulative = ordered.softmax(-1).cumsum(-1)
    drop = cumulative <= (1 - top_p)
    drop[-1] = False
    return logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def choose(logits: torch.Tensor, rows: Sequence) -> tuple[list[int], list[bool]]:
    """Each row's next token from its own settings, and which rows' logits were not finite.

    ``logits``: ``(B, V)`` float32, one row per :class:`~prefixtune.serve.batch.Row` (each with
    its ``req``, ``generator`` and ``counts``). Penalties apply first; a row that asks for
    log-probs gets them (of the penalized distribution) appended to ``req.token_logprobs``;
    greedy rows take the arg-max, sampling rows draw from ``softmax(logits / T)`` cut to top-p
    with their own generator.
    """
    for i, row in enumerate(rows):
        req = row.req
        if row.counts and (req.presence_penalty or req.frequency_penalty):
            ids = torch.tensor(list(row.counts), device=logits.device)
            counts = torch.tensor(list(row.counts.values()), dtype=logits.dtype, device=logits.device)
            logits[i, ids] -= req.presence_penalty + req.frequency_penalty * counts
    bad = (~torch.isfinite(logits).all(-1)).tolist()
    chosen = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        do_sample, temperature, top_p = row.req.sampling
        if bad[i]:
            continue
        if do_sample:
            probs = _top_p(logits[i] / temperature, top_p).softmax(-1)
            chosen[i] = int(torch.multinomial(probs, 1, generator=row.generator))
        if row.req.logprobs is not None:
            logp = torch.log_softmax(logits[i], -1).clamp_min(MIN_LOGPROB)  # (V,)
            values, ids = logp.topk(row.req.logprobs) if row.req.logprobs else (logp[:0], logp[:0].long())
            row.req.token_logprobs.append((float(logp[chosen[i]]), list(zip(ids.tolist(), values.tolist()))))
        row.counts[chosen[i]] = row.counts.get(chosen[i], 0) + 1
    return chosen, bad
