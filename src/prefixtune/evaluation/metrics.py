"""Task metrics: BLEU, NIST, ROUGE-L and CIDEr for generation (multi-reference), accuracy and F1.

BLEU is sacrebleu's corpus BLEU (13a tokenization); ROUGE-L is rouge-score's LCS F-measure,
the best over each input's references; NIST (Doddington 2002, n=5) and CIDEr-D (Vedantam et al.
2015, as in the COCO caption code the E2E challenge used) are implemented here on whitespace
tokens of lower-cased text. METEOR needs WordNet data that cannot be fetched offline, so it is
reported only when ``nltk``'s WordNet corpus is already installed.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Sequence

from prefixtune.extras import require


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _tok(text: str) -> list[str]:
    return text.lower().split()


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100); ``references[i]`` lists the references of ``hypotheses[i]``."""
    sacrebleu = require("sacrebleu", "train", "BLEU")

    width = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 5) -> float:
    """Corpus NIST score: information-weighted n-gram matches with NIST's brevity penalty."""
    ref_tokens = [[_tok(r) for r in refs] for refs in references]
    counts: Counter = Counter()
    for refs in ref_tokens:
        for r in refs:
            for k in range(1, n + 1):
                counts.update(_ngrams(r, k))
    total_words = sum(len(r) for refs in ref_tokens for r in refs)

    def info(gram: tuple[str, ...]) -> float:
        denominator = counts[gram]
        numerator = counts[gram[:-1]] if len(gram) > 1 else total_words
        return math.log2(numerator / denominator) if denominator else 0.0

    matched = [0.0] * n
    hyp_counts = [0] * n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, ref_tokens):
        h = _tok(hyp)
        hyp_len += len(h)
        ref_len += sum(len(r) for r in refs) / len(refs)  # NIST uses the average reference length
        for k in range(1, n + 1):
            hg = _ngrams(h, k)
            hyp_counts[k - 1] += sum(hg.values())
            best: Counter = Counter()
            for r in refs:
                best |= _ngrams(r, k)
            for gram, c in hg.items():
                matched[k - 1] += min(c, best[gram]) * info(gram)
    score = sum(m / c for m, c in zip(matched, hyp_counts) if c)
    ratio = hyp_len / ref_len if ref_len else 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2  # penalty 0.5 at a length ratio of 2/3
    penalty = math.exp(-beta * math.log(min(ratio, 1.0)) ** 2) if ratio > 0 else 0.0
    return score * penalty


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D: tf-idf weighted n-gram cosine similarity with clipping and a length penalty (x10)."""
    refs_tok = [[_tok(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in refs_tok:
        seen = set()
        for r in refs:
            for k in range(1, n + 1):
                seen.update(_ngrams(r, k))
        df.update(seen)
    log_docs = math.log(float(len(references)))

    def vec(tokens: list[str]) -> tuple[list[dict], list[float]]:
        vecs, norms = [], []
        for k in range(1, n + 1):
            v = {g: c * (log_docs - math.log(max(1.0, df[g]))) for g, c in _ngrams(tokens, k).items()}
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vecs, norms

    total = 0.0
    for hyp, refs in zip(hypotheses, refs_tok):
        h = _tok(hyp)
        hv, hn = vec(h)
        score = [0.0] * n
        for r in refs:
            rv, rn = vec(r)
            delta = len(h) - len(r)
            for k in range(n):
                dot = sum(min(w, rv[k][g]) * rv[k][g] for g, w in hv[k].items() if g in rv[k])
                if hn[k] and rn[k]:
                    score[k] += dot / (hn[k] * rn[k]) * math.exp(-(delta ** 2) / (2 * sigma ** 2))
        total += sum(s / len(refs) for s in score) / n * 10.0
    return total / len(hypotheses)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over inputs of the best ROUGE-L F-measure against that input's references (0-100)."""
    rouge_scorer = require("rouge_score.rouge_scorer", "train", "ROUGE-L")

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    best = [max(scorer.score(r, h)["rougeL"].fmeasure for r in refs) for h, refs in zip(hypotheses, references)]
    return 100.0 * sum(best) / len(best)


@functools.cache
def wordnet_available() -> bool:
    """Whether nltk and its WordNet data are installed (probed once: METEOR is always or never reported).

    nltk reads WordNet lazily, only when a hypothesis word has no exact or stem match, so trying
    METEOR and catching the lookup error would report it for some inputs and not for others.
    """
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
    except (ImportError, LookupError):
        return False
    return True


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float | None:
    """METEOR (0-100) if nltk and its WordNet data are installed (:func:`wordnet_available`), else None."""
    if not wordnet_available():
        return None
    from nltk.translate.meteor_score import meteor_score

    scores = [meteor_score([_tok(r) for r in refs], _tok(h)) for h, refs in zip(hypotheses, references)]
    return 100.0 * sum(scores) / len(scores)


def generation_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """All generation metrics; ``references[i]`` is the list of references of input ``i``."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    out = {"bleu": bleu(hypotheses, references), "nist": nist(hypotheses, references),
           "rouge_l": rouge_l(hypotheses, references), "cider": cider(hypotheses, references)}
    m = meteor(hypotheses, references)
    if m is not None:
        out["meteor"] = m
    return out


def classification_scores(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro F1 (both 0-100)."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    acc = sum(p == y for p, y in zip(predictions, labels)) / len(labels)
    f1s = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": 100.0 * acc, "f1": 100.0 * sum(f1s) / len(f1s)}
