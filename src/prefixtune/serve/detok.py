"""A request's text as its tokens arrive: incremental detokenization and stop strings.

Decoding a request's whole output at every token costs time quadratic in its length. Here each
new token decodes only a short window: the tokens since the last piece of text that was safe to
show (``read``) plus a few before it (``start``), whose text is known, so that tokenizers that
merge a token's text with its neighbours' (leading spaces, multi-byte characters split over byte
tokens) still give the right characters. A window that ends in U+FFFD (half a character) waits
for the next token.

Stop strings are matched on the decoded text, so one that spans a token boundary is found; text
that could be the beginning of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

from typing import Any, Sequence


class TextStream:
    """The visible text of one generated sequence.

    Args:
        tokenizer: a tokenizer with ``decode(ids, skip_special_tokens=True)``.
        stop: stop strings (empty ones never match).

    After each :meth:`push`, ``text`` is the output so far (cut before a stop string once one
    occurs: then ``stopped`` is True) and :meth:`publishable` the part of it that can be shown.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.longest = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        self.start = self.read = 0  # the decoding window is ids[start:]; ids[start:read] are already text
        self.text = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> None:
        """Add one generated token (nothing changes once a stop string occurred)."""
        if self.stopped:
            return
        self.ids.append(token)
        known = self._decode(self.ids[self.start:self.read])
        window = self._decode(self.ids[self.start:])
        if len(window) <= len(known) or window.endswith("\ufffd"):
            return  # no new character yet (a special token, or half a character)
        before = len(self.text)
        self.text += window[len(known):]
        self.start, self.read = self.read, len(self.ids)
        if self.stop:
            self._cut(max(0, before - self.longest + 1))

    def _cut(self, since: int) -> None:
        hits = [i for i in (self.text.find(s, since) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True

    def publishable(self) -> str:
        """``text`` less a tail that may still become a stop string."""
        if self.stopped or not self.stop:
            return self.text
        for k in range(min(len(self.text), self.longest - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return self.text[:-k]
        return self.text

    def final(self) -> str:
        """The whole text once generation has ended: with a trailing half character (or a tail
        that began a stop string but did not complete it) included."""
        if self.stopped:
            return self.text
        window = self._decode(self.ids[self.start:])
        known = self._decode(self.ids[self.start:self.read])
        if len(window) > len(known):
            before = len(self.text)
            self.text += window[len(known):]
            self.start = self.read = len(self.ids)
            if self.stop:
                self._cut(max(0, before - self.longest + 1))
        return self.text
