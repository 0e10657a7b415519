"""A repetition guard for decoding: no n-gram twice in what was generated (``no_repeat_ngram``).

Why not transformers' ``no_repeat_ngram_size``: for a decoder-only model it counts the prompt's
n-grams too, so a table-to-text model could not copy a name of more than ``n - 1`` tokens from its
input (``name[The Golden Curry]``), which is most of what it has to write. This guard looks only at
the tokens generated so far: the width of ``input_ids`` at the first step (the prompt, left-padded,
with any soft-prompt positions generate shows) is where they begin, for every row alike.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class NoRepeatInOutput(LogitsProcessor):
    """Bans, in each row, every token that would complete an ``n``-gram the row has already
    generated. One instance per ``generate`` call (it remembers where the output starts)."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"no_repeat_ngram must be an integer >= 1 (0 or None: no guard), got {n!r}")
        self.n = n
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``input_ids`` ``(R, T)`` (R rows: batch x beams), ``scores`` ``(R, V)``; returns the scores
        with banned tokens at -inf."""
        if self.start is None:
            self.start = input_ids.shape[1]
        out = input_ids[:, self.start:].tolist()
        if not out or len(out[0]) < self.n:  # nothing generated could repeat yet
            return scores
        scores = scores.clone()
        for row, tokens in enumerate(out):
            banned = self._banned(tokens)
            if banned:
                scores[row, banned] = float("-inf")
        return scores

    def _banned(self, tokens: list[int]) -> list[int]:
        """The tokens that would follow the last ``n - 1`` of ``tokens`` as they once did."""
        k = self.n - 1
        if k == 0:
            return sorted(set(tokens))
        tail = tokens[len(tokens) - k:]
        return sorted({tokens[i + k] for i in range(len(tokens) - k) if tokens[i:i + k] == tail})
