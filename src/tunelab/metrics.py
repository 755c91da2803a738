"""Metrics as plain functions: (predictions, references) -> dict of floats.

Computed with scikit-learn directly (``evaluate.load`` fetches code from the hub and fails offline).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)


def single_label_metrics(pred: Sequence[int], ref: Sequence[int], label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro/micro precision, recall and F1, a per-class report and the confusion matrix."""
    labels = list(range(len(label_names)))
    out: dict[str, Any] = {"accuracy": float(accuracy_score(ref, pred))}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(ref, pred, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    out["per_class"] = _per_class(classification_report(
        ref, pred, labels=labels, target_names=label_names, output_dict=True, zero_division=0), label_names)
    out["confusion_matrix"] = confusion_matrix(ref, pred, labels=labels).tolist()
    return out


def multi_label_metrics(pred: np.ndarray, ref: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Subset accuracy, macro/micro precision, recall and F1 and a per-class report of 0/1 matrices."""
    out: dict[str, Any] = {"subset_accuracy": float(accuracy_score(ref, pred))}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(ref, pred, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    out["per_class"] = _per_class(classification_report(
        ref, pred, target_names=label_names, output_dict=True, zero_division=0), label_names)
    return out


def regression_metrics(pred: Sequence[float], ref: Sequence[float]) -> dict[str, Any]:
    """RMSE, MAE, R², Pearson and Spearman correlation."""
    from scipy.stats import pearsonr, spearmanr

    p, r = np.asarray(pred, dtype=float), np.asarray(ref, dtype=float)
    mse = float(mean_squared_error(r, p))
    constant = np.std(p) == 0 or np.std(r) == 0
    return {
        "mse": mse,
        "rmse": mse**0.5,
        "mae": float(mean_absolute_error(r, p)),
        "r2": float(r2_score(r, p)) if len(r) > 1 else 0.0,
        "pearson": 0.0 if constant else float(pearsonr(p, r)[0]),
        "spearman": 0.0 if constant else float(spearmanr(p, r)[0]),
    }


def _per_class(report: dict[str, Any], label_names: list[str]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "precision": float(report[name]["precision"]),
            "recall": float(report[name]["recall"]),
            "f1": float(report[name]["f1-score"]),
            "support": int(report[name]["support"]),
        }
        for name in label_names
        if name in report
    }


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Just the numbers (for logs, trackers, curves)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# metrics where lower is better (an error, a loss, a calibration gap); every other metric is higher-is-better
LOWER_IS_BETTER = ("loss", "rmse", "mse", "mae", "error", "wer", "cer", "perplexity", "ece")


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the metric ``name`` is better (``f1_macro``: yes; ``loss``, ``eval_loss``,
    ``rmse``, ``error_rate``: no): lower is better when a ``_``-separated word of the name is in ``LOWER_IS_BETTER``.

    Args:
        name: a metric's name as it appears in ``metrics.json``.

    Example:
        >>> higher_is_better("f1_macro"), higher_is_better("eval_loss")
        (True, False)
    """
    return not any(word in LOWER_IS_BETTER for word in name.lower().split("_"))


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """Entity-level P/R/F1 with seqeval's strict IOB2 semantics (an entity counts only with the exact
    span and type), micro-averaged, plus a per-type report and token accuracy."""
    from seqeval.metrics import classification_report as entity_report
    from seqeval.scheme import IOB2

    report = entity_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    macro = report.get("macro avg", {"f1-score": 0.0})
    tokens = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])} for k, v in report.items() if not k.endswith(" avg")}
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
            "f1_macro": float(macro["f1-score"]), "token_accuracy": correct / tokens if tokens else 0.0,
            "per_type": per_type}


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_chinese(texts: list[str]) -> bool:
    """True when most of the references' letters are CJK characters (then score on characters)."""
    sample = "".join(texts[:200])
    letters = [c for c in sample if c.isalpha()]
    return bool(letters) and sum(bool(_CJK.match(c)) for c in letters) / len(letters) > 0.5


class _CharTokenizer:
    """rouge-score tokenizer for Chinese: one token per character (its default drops non-Latin text)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_each(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each prediction (best over its references), as percentages; Chinese text
    is scored on characters."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    chinese = is_chinese([r[0] for r in references])
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=not chinese,
                                      tokenizer=_CharTokenizer() if chinese else None)
    out = []
    for pred, refs in zip(predictions, references):
        scores = scorer.score_multi(refs, pred)
        out.append({k: 100.0 * scores[k].fmeasure for k in ROUGE_KEYS})
    return out


def generation_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
    """ROUGE-1/2/L F-measure (rouge-score; best over the references), corpus BLEU and chrF (sacrebleu),
    as percentages. Chinese text is scored on characters."""
    import sacrebleu

    each = rouge_each(predictions, references)
    chinese = is_chinese([r[0] for r in references])
    n = max(1, len(predictions))
    out: dict[str, Any] = {k: sum(e[k] for e in each) / n for k in ROUGE_KEYS}
    # sacrebleu wants one stream per reference position; pad missing references with the first one.
    width = max(len(r) for r in references) if references else 1
    streams = [[r[j] if j < len(r) else r[0] for r in references] for j in range(width)]
    out["bleu"] = float(sacrebleu.corpus_bleu(predictions, streams, tokenize="zh" if chinese else "13a").score)
    out["chrf"] = float(sacrebleu.corpus_chrf(predictions, streams).score)
    out["samples"] = len(predictions)
    out["scored_on"] = "characters" if chinese else "words"
    return out


def span_metrics(gold: list[set[tuple[str, int, int]]], pred: list[set[tuple[str, int, int]]],
                 types: list[str]) -> dict[str, Any]:
    """Strict entity P/R/F1 (exact type and span), micro-averaged, with a per-type report."""
    def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": n_gold}

    tp = sum(len(g & p) for g, p in zip(gold, pred))
    out: dict[str, Any] = prf(tp, sum(map(len, pred)), sum(map(len, gold)))
    out["per_type"] = {}
    for kind in types:
        g = [{x for x in s if x[0] == kind} for s in gold]
        p = [{x for x in s if x[0] == kind} for s in pred]
        out["per_type"][kind] = prf(sum(len(a & b) for a, b in zip(g, p)), sum(map(len, p)), sum(map(len, g)))
    return out


def length_buckets(lengths: Sequence[int], buckets: int = 4) -> list[str]:
    """Each length's bucket name (``"12-20"``), buckets cut at the data's quantiles so each holds about as many.

    Example:
        >>> length_buckets([1, 2, 3, 4, 5, 6, 7, 8], buckets=2)
        ['1-4', '1-4', '1-4', '1-4', '5-8', '5-8', '5-8', '5-8']
    """
    if not lengths:
        return []
    values = np.asarray(lengths)
    cuts = sorted(set(np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1], method="lower").tolist()))
    index = np.searchsorted(cuts, values, side="left")
    names = {}
    for k in set(index.tolist()):
        inside = values[index == k]
        names[k] = f"{inside.min()}-{inside.max()}" if inside.min() < inside.max() else str(inside.min())
    return [names[k] for k in index.tolist()]
