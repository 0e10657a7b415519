"""Cutting generated text at stop strings: one rule for evaluation and the server.

It imports nothing from the package, so ``prefixtune.serve`` and ``prefixtune.evaluation.evaluate``
both use it without importing each other.
"""

from __future__ import annotations

from typing import Sequence


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``(text before the earliest stop string, whether one occurs)``.

    The earliest occurrence of any of ``stop`` wins, whichever string it is; empty strings never
    match. Without a match the text comes back whole. ``cut_at_stop("a.b\\n", ["\\n", "."])`` is
    ``("a", True)``.
    """
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
