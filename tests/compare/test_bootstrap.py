"""Paired bootstrap intervals: BLEU from summed statistics equals sacrebleu's corpus BLEU, the
interval of a paired accuracy difference matches the normal-theory one, and misuse is named."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from prefixtune.compare import CompareConfig
from prefixtune.compare.bootstrap import BootstrapError, corpus_score, example_stats, paired_interval
from prefixtune.core.config import ConfigError
from prefixtune.evaluation.metrics import bleu

WORDS = "the a pub cheap riverside near family friendly food coffee shop is in city centre rated high low".split()


def _generation_records(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        refs = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 4))]
        pred = " ".join(rng.choices(WORDS, k=rng.randint(0, 12)))  # sometimes empty
        out.append({"input": f"x{i}", "prediction": pred, "references": refs})
    return out


def test_bleu_from_summed_statistics_is_sacrebleus_corpus_bleu_on_any_draw():
    rng = random.Random(0)
    records = _generation_records(rng, 60)
    stats = example_stats(records, "generation")
    assert stats.shape == (60, 10)
    full = bleu([r["prediction"] for r in records], [r["references"] for r in records])
    assert corpus_score(stats.sum(0), 60, "generation") == pytest.approx(full, abs=1e-9)
    for _ in range(5):  # a resample: inputs drawn with replacement = the corpus with those duplicates
        draw = [rng.randrange(60) for _ in range(60)]
        weights = np.bincount(draw, minlength=60).astype(float)
        expected = bleu([records[i]["prediction"] for i in draw], [records[i]["references"] for i in draw])
        assert corpus_score(weights @ stats, 60, "generation") == pytest.approx(expected, abs=1e-9)


def _classification_runs(n: int, p_a: float, p_b: float, flip: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Two correlated classifiers: B copies A's correctness except on a ``flip`` share of inputs."""
    rng = random.Random(seed)
    a, b = [], []
    for i in range(n):
        right_a = rng.random() < p_a
        right_b = (rng.random() < p_b) if rng.random() < flip else right_a
        a.append({"input": f"s{i}", "label": "pos", "prediction": "pos" if right_a else "neg"})
        b.append({"input": f"s{i}", "label": "pos", "prediction": "pos" if right_b else "neg"})
    return a, b


def test_a_paired_accuracy_difference_has_the_normal_theory_interval():
    """The oracle: for paired 0/1 outcomes the difference of means has variance
    (p10 + p01 - (p10 - p01)^2) / n; a bootstrap that drew A and B independently would be ~3x wider."""
    n = 2000
    a, b = _classification_runs(n, 0.85, 0.80, flip=0.2, seed=1)
    iv = paired_interval("a", [a], "b", [b], "classification", samples=4000)
    ra = np.array([r["prediction"] == r["label"] for r in a], dtype=float)
    rb = np.array([r["prediction"] == r["label"] for r in b], dtype=float)
    p10, p01 = float(np.mean(ra * (1 - rb))), float(np.mean((1 - ra) * rb))
    sd = 100 * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert iv.difference == pytest.approx(100 * (ra.mean() - rb.mean()))
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * sd, rel=0.12)
    assert iv.low < iv.difference < iv.high and iv.inputs == n and iv.seeds == (1, 1)


def test_seeds_are_averaged_and_swapping_the_methods_mirrors_the_interval():
    a0, b0 = _classification_runs(300, 0.8, 0.7, flip=0.5, seed=2)
    a1, b1 = _classification_runs(300, 0.8, 0.7, flip=0.5, seed=3)
    for r0, r1 in zip(a0, a1):
        r1["input"] = r0["input"]
    for r0, r1 in zip(b0, b1):
        r1["input"] = r0["input"]
    ab = paired_interval("a", [a0, a1], "b", [b0, b1], "classification", samples=500)
    ba = paired_interval("b", [b0, b1], "a", [a0, a1], "classification", samples=500)
    acc = [100 * np.mean([r["prediction"] == r["label"] for r in rs]) for rs in (a0, a1, b0, b1)]
    assert ab.difference == pytest.approx((acc[0] + acc[1]) / 2 - (acc[2] + acc[3]) / 2)
    assert (ba.low, ba.high, ba.difference) == pytest.approx((-ab.high, -ab.low, -ab.difference))
    assert ab.seeds == (2, 2)
    same = paired_interval("a", [a0], "a2", [a0], "classification", samples=200)
    assert (same.difference, same.low, same.high, same.share_a_better) == (0.0, 0.0, 0.0, 0.0)


def test_runs_scored_on_other_inputs_are_refused_by_name():
    a, b = _classification_runs(20, 0.8, 0.7, flip=0.5, seed=4)
    b[3]["input"] = "another sentence"
    with pytest.raises(BootstrapError, match="lora .*other inputs"):
        paired_interval("prefix", [a], "lora", [b], "classification")
    with pytest.raises(BootstrapError, match="no finished runs"):
        paired_interval("prefix", [a], "lora", [], "classification")


@pytest.mark.parametrize("contrasts,message", [
    ([["a", "nope"]], r"names \['nope'\]"),
    ([["a", "a"]], "two different"),
    ([["a"]], "two different"),
    ("a,b", "list of method pairs"),
])
def test_bad_contrasts_are_named(contrasts, message):
    methods = {"a": {"method": "prefix"}, "b": {"method": "lora"}}
    with pytest.raises(ConfigError, match=message):
        CompareConfig(methods=methods, contrasts=contrasts)
    with pytest.raises(ConfigError, match="bootstrap_samples"):
        CompareConfig(methods=methods, contrasts=[["a", "b"]], bootstrap_samples=10)
