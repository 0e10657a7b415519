"""Metrics against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest

from prefixtune.metrics import bleu, cider, classification_scores, generation_scores, nist, rouge_l


def test_bleu_perfect_and_multi_reference():
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)
    one = bleu(["the cat sat on a mat"], [["the cat sat on the mat"]])
    two = bleu(["the cat sat on a mat"], [["the cat sat on the mat", "the cat sat on a mat"]])
    assert two == pytest.approx(100.0) and one < 100.0
    # a missing second reference for one input is allowed
    assert bleu(["a b c d", "e f g h"], [["a b c d", "x y"], ["e f g h"]]) == pytest.approx(100.0)


def test_nist_by_hand():
    # refs: "a b" and "a c" for one input; hypothesis "a b": unigram info: a: log2(4/2)=1, b: log2(4/1)=2
    # bigram (a,b): log2(count(a)=2 / count(a,b)=1) = 1. score = (1+2)/2 + 1/1 = 2.5; lengths equal -> no penalty
    assert nist(["a b"], [["a b", "a c"]], n=2) == pytest.approx(2.5)
    short = nist(["a"], [["a b c"]], n=1)
    beta = -math.log(0.5) / math.log(1.5) ** 2
    assert short == pytest.approx(math.log2(3 / 1) * math.exp(-beta * math.log(1 / 3) ** 2))


def test_cider_prefers_consensus_and_is_zero_for_disjoint():
    refs = [["a man rides a horse", "a man is riding a horse"], ["two dogs play in snow", "dogs playing in the snow"]]
    good = cider(["a man riding a horse", "two dogs playing in snow"], refs)
    bad = cider(["zebra", "kettle"], refs)
    assert bad == 0.0 and good > 1.0


def test_rouge_l_best_reference():
    assert rouge_l(["a b c d"], [["x y", "a b c d"]]) == pytest.approx(100.0)
    # LCS("a x b", "a b") = 2: P = 2/3, R = 1 -> F = 0.8
    assert rouge_l(["a x b"], [["a b"]]) == pytest.approx(80.0)


def test_generation_scores_bundle_and_errors():
    out = generation_scores(["a b c"], [["a b c"]])
    assert set(out) >= {"bleu", "nist", "rouge_l", "cider"}
    with pytest.raises(ValueError, match="hypotheses"):
        generation_scores(["a"], [])


def test_classification_scores():
    out = classification_scores([1, 0, 1, 1], [1, 0, 0, 1])
    assert out["accuracy"] == 75.0
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp2 fp1 fn0 -> 4/5
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)
