"""Paired bootstrap intervals for the difference between two methods of a comparison.

Paired bootstrap resampling (Koehn 2004; Efron & Tibshirani 1993): draw the scored inputs with
replacement, the *same* draw for both methods and for every seed of each; score every run on the
draw; average each method over its seeds; take the difference. The interval is the central
``level`` share of the differences over ``samples`` draws (percentile interval), and
``share_a_better`` is how often method A came out ahead.

Scores are corpus-level, as in the table: BLEU is recomputed from the summed per-input n-gram
statistics of the drawn inputs (sacrebleu's own formula, so the draw of every input once gives the
table's BLEU exactly), accuracy from the drawn inputs' correctness.

What it measures: how much the difference between these trained adapters depends on which test
inputs happened to be in the test set. The spread over training seeds is the table's ``± sd``; with
three seeds it is not resampled here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from prefixtune.extras import require

_NGRAMS = 4  # sacrebleu's default max n-gram order


class BootstrapError(ValueError):
    """The runs cannot be compared input by input (different inputs, or none)."""


@dataclass(frozen=True)
class Interval:
    """A paired bootstrap result for ``a - b`` (metric points, e.g. BLEU or accuracy in %)."""

    a: str
    b: str
    difference: float  # on the full set of inputs: mean over A's seeds minus mean over B's seeds
    low: float
    high: float
    share_a_better: float  # share of draws in which A's mean beat B's
    level: float
    samples: int
    inputs: int
    seeds: tuple[int, int]  # runs averaged for A and for B

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def read_records(path: Path) -> list[dict[str, Any]]:
    """A run's ``predictions-<split>.jsonl``: one record per scored input."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def example_stats(records: Sequence[dict[str, Any]], kind: str) -> np.ndarray:
    """Per-input sufficient statistics, ``(n, k)``: for generation the sacrebleu BLEU statistics
    ``[hyp_len, ref_len, correct_1..4, total_1..4]`` (k = 10); for classification ``[correct]`` (k = 1)."""
    if kind == "classification":
        return np.array([[float(r["prediction"] == r["label"])] for r in records])
    BLEU = require("sacrebleu.metrics", "train", "BLEU").BLEU

    scorer = BLEU(effective_order=True)  # only the counts are used; the corpus formula is applied later
    rows = []
    for r in records:
        s = scorer.sentence_score(r["prediction"], list(r["references"]))
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.array(rows, dtype=float)


def corpus_score(summed: np.ndarray, n: int, kind: str) -> float:
    """The corpus metric from statistics summed over ``n`` inputs (``summed``: ``(k,)``)."""
    if kind == "classification":
        return 100.0 * float(summed[0]) / n
    BLEU = require("sacrebleu.metrics", "train", "BLEU").BLEU

    correct = [int(round(c)) for c in summed[2:2 + _NGRAMS]]
    total = [int(round(t)) for t in summed[2 + _NGRAMS:2 + 2 * _NGRAMS]]
    return float(BLEU.compute_bleu(correct, total, int(round(summed[0])), int(round(summed[1])),
                                   smooth_method="exp").score)


def _aligned(runs: dict[str, list[list[dict[str, Any]]]]) -> list[str]:
    """The inputs every run scored, in order; raises if any run scored other inputs."""
    first_name, first = next((m, rs[0]) for m, rs in runs.items() if rs)
    inputs = [r["input"] for r in first]
    if not inputs:
        raise BootstrapError(f"{first_name}: no scored inputs to resample")
    for method, rs in runs.items():
        for i, records in enumerate(rs):
            if [r["input"] for r in records] != inputs:
                raise BootstrapError(f"{method} (run {i + 1}) scored other inputs than {first_name}: paired "
                                     "resampling needs every run scored on the same inputs in the same order")
    return inputs


def _mean_scores(stats: list[np.ndarray], weights: np.ndarray, kind: str) -> np.ndarray:
    """Per draw, the mean over runs of the corpus score: ``weights`` ``(B, n)`` counts -> ``(B,)``."""
    n = weights.shape[1]
    per_run = [[corpus_score(row, n, kind) for row in weights @ s] for s in stats]
    return np.mean(np.array(per_run), axis=0)


def paired_interval(a: str, runs_a: list[list[dict[str, Any]]], b: str, runs_b: list[list[dict[str, Any]]],
                    kind: str, samples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """The paired bootstrap interval of ``mean(A) - mean(B)``; ``runs_*``: each run's prediction records."""
    if not runs_a or not runs_b:
        raise BootstrapError(f"{a if not runs_a else b}: no finished runs to compare")
    if samples < 1 or not 0 < level < 1:
        raise BootstrapError(f"samples must be >= 1 and level in (0, 1); got {samples}, {level}")
    n = len(_aligned({a: runs_a, b: runs_b}))
    stats_a = [example_stats(r, kind) for r in runs_a]
    stats_b = [example_stats(r, kind) for r in runs_b]
    everything = np.ones((1, n))
    observed = float(_mean_scores(stats_a, everything, kind)[0] - _mean_scores(stats_b, everything, kind)[0])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    weights = np.zeros((samples, n))
    np.add.at(weights, (np.arange(samples)[:, None], draws), 1.0)  # how often each input was drawn
    diffs = _mean_scores(stats_a, weights, kind) - _mean_scores(stats_b, weights, kind)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return Interval(a, b, observed, float(low), float(high), float(np.mean(diffs > 0)), level, samples, n,
                    (len(runs_a), len(runs_b)))
