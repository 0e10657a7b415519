"""Metrics against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest

from prefixtune.evaluation.metrics import bleu, cider, classification_scores, generation_scores, nist, rouge_l


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


def test_cider_d_by_hand():
    """Two inputs (so idf = ln 2 for every n-gram). Input 1 matches its reference exactly: cosine 1 for
    n = 1, 2 and no 3-/4-grams, i.e. (1 + 1 + 0 + 0) / 4 x 10 = 5. Input 2 says "c" for "c d": unigram
    cosine 1/sqrt(2), length penalty exp(-1 / (2 * 6^2)), nothing for n >= 2."""
    got = cider(["a b", "c"], [["a b"], ["c d"]])
    second = (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4 * 10
    assert got == pytest.approx((5.0 + second) / 2)
    # clipping: repeating a matched word does not raise the score above the exact match
    assert cider(["a a b", "c d"], [["a b"], ["c d"]]) < cider(["a b", "c d"], [["a b"], ["c d"]])


def test_nist_by_hand_higher_orders_and_corpus_length():
    # refs "a b c d e f" and "a b c d e g": a 5-gram seen twice whose continuations are seen once each
    refs = [["a b c d e f", "a b c d e g"]]
    want = (5 * math.log2(6) + math.log2(12)) / 6 + 1 / 5 + 1 / 4 + 1 / 3 + 1 / 2  # n = 1..5, default n = 5
    assert nist(["a b c d e f"], refs) == pytest.approx(want)
    assert nist(["a b c d e f"], refs, n=6) == pytest.approx(want + 1.0)
    # corpus lengths add up: hypotheses of 1 + 3 words against references of 3 + 3 -> ratio 2/3 -> penalty 0.5
    assert nist(["a", "x y z"], [["a b c"], ["x y z"]]) == pytest.approx(0.5 * math.log2(6))


def test_rouge_l_is_the_mean_over_inputs():
    assert rouge_l(["a b c d", "a x b"], [["a b c d"], ["a b"]]) == pytest.approx(90.0)


def test_meteor_of_exact_matches_by_hand():
    from prefixtune.evaluation.metrics import meteor

    one = meteor(["the cat sat"], [["the cat sat"]])
    if one is None:
        pytest.skip("nltk's METEOR is not installed")
    # F-mean 1, one chunk of three matches: penalty 0.5 * (1/3)^3
    assert one == pytest.approx(100 * (1 - 0.5 / 27))
    two = meteor(["the cat sat", "a dog ran far"], [["the cat sat"], ["a dog ran far"]])
    assert two == pytest.approx(100 * ((1 - 0.5 / 27) + (1 - 0.5 / 64)) / 2)


def test_macro_f1_counts_a_class_never_predicted_as_zero():
    out = classification_scores([0, 0, 0], [0, 1, 1])
    # class 0: tp1 fp2 fn0 -> 2/4; class 1: never predicted -> 0
    assert out["f1"] == pytest.approx(100 * (0.5 + 0.0) / 2)


def test_cider_d_idf_zeroes_ngrams_every_input_shares():
    """"a" is in both inputs' references: idf 0. A hypothesis "a" (against "a b") then has a zero vector
    and scores 0; input 2 matches exactly: 5. Without document frequencies "a" would count."""
    assert cider(["a", "a c"], [["a b"], ["a c"]]) == pytest.approx(2.5)


def test_generation_scores_include_meteor_when_it_can_be_computed():
    from prefixtune.evaluation.metrics import meteor

    text = "the cat sat on the mat"
    out = generation_scores([text], [[text]])
    assert out["bleu"] == pytest.approx(100.0) and out["rouge_l"] == pytest.approx(100.0)
    assert ("meteor" in out) == (meteor([text], [[text]]) is not None)
    if "meteor" in out:
        assert out["meteor"] == pytest.approx(100 * (1 - 0.5 / 6 ** 3))
