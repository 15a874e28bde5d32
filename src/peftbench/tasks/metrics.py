"""Quality metrics, computed with the field's own packages (evaluate.load needs the hub).

Scores are fractions in [0, 1] throughout (ROUGE F-measure, BLEU/100), so every metric
reads on the same scale as accuracy.
"""

from __future__ import annotations

import re

from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def classification_metrics(refs: list[int], preds: list[int], labels: list[int] | None = None) -> dict[str, float]:
    """Accuracy and macro scores. `labels`: the classes to average over, so a prediction
    outside them (-1: a generated text naming no label) counts as wrong, not as a class."""
    kw = {"labels": labels} if labels is not None else {}
    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0, **kw)),
        "macro_precision": float(precision_score(refs, preds, average="macro", zero_division=0, **kw)),
        "macro_recall": float(recall_score(refs, preds, average="macro", zero_division=0, **kw)),
    }


def sentences_per_line(text: str) -> str:
    """rougeLsum scores summary-level LCS over newline-separated sentences.

    A regex splitter stands in for nltk's punkt, whose model would need a download.
    """
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE F-measure; with several references an example takes its best one (rouge-score's score_multi)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi([sentences_per_line(r) for r in refs], sentences_per_line(pred))
        for k in ROUGE_KEYS:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: v / n for k, v in totals.items()}


def bleu(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (sacrebleu, cumulative n-gram orders), as fractions.

    Examples may have different numbers of references: sacrebleu takes reference streams,
    so short lists are padded with their own first reference (which changes no max).
    """
    from sacrebleu.metrics import BLEU

    width = max((len(r) for r in references), default=1)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    out = {}
    for n in (1, 2, 3, 4):
        out[f"bleu{n}"] = BLEU(max_ngram_order=n, effective_order=True).corpus_score(predictions, streams).score / 100
    return out
