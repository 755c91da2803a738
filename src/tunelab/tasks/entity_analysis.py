"""Error analysis of entity spans, shared by fine-tuned NER and zero-shot entity extraction: strict precision,
recall and F1 per type, and each wrong entity sorted by kind (boundary, type, both, missed, spurious).

Spans are ``(type, start, end)`` with ``end`` exclusive, over words or characters alike.

Example:
    >>> entity_errors({("PER", 0, 2)}, {("PER", 0, 1), ("LOC", 5, 6)})
    ['boundary', 'spurious']
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

Span = tuple[str, int, int]

ERROR_KINDS = {
    "boundary": "right type, overlapping but different span",
    "type": "right span, wrong type",
    "type_and_boundary": "overlapping span with another type",
    "missed": "a gold entity no prediction overlaps",
    "spurious": "a predicted entity no gold entity overlaps",
}


def entity_errors(gold: set[Span], pred: set[Span]) -> list[str]:
    """The kind of each wrong entity (see ``ERROR_KINDS``): a predicted entity that overlaps a gold one is a
    boundary, type or type-and-boundary error; gold entities nothing overlaps are missed, predicted ones spurious."""
    def overlaps(x: Span, y: Span) -> bool:
        return x[1] < y[2] and y[1] < x[2]

    kinds, explained = [], set()
    for p in sorted(pred - gold, key=lambda e: e[1]):
        hit = [g for g in gold - pred if overlaps(p, g)]
        if not hit:
            kinds.append("spurious")
            continue
        g = next((h for h in hit if h[1:] == p[1:]), next((h for h in hit if h[0] == p[0]), hit[0]))
        explained.add(g)
        kinds.append("type" if g[1:] == p[1:] else "boundary" if g[0] == p[0] else "type_and_boundary")
    kinds += ["missed"] * len(gold - pred - explained)
    return kinds


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def entity_row(text: str, gold: set[Span], pred: set[Span], show: Callable[[Span], str]) -> dict[str, Any]:
    """One analysis row: the entities shown as ``TYPE: words``, counts per type ([right, spurious, missed]), each
    error's kind, and the loss: the number of wrong entities."""
    by_type: dict[str, list[int]] = {}
    for span in gold | pred:
        by_type.setdefault(span[0], [0, 0, 0])[0 if span in gold & pred else 1 if span in pred else 2] += 1
    wrong = len(gold ^ pred)

    def listing(found: set[Span]) -> str:
        return "; ".join(f"{span[0]}: {show(span)}" for span in sorted(found, key=lambda e: e[1]))

    return {"text": text, "gold": listing(gold), "pred": listing(pred), "correct": wrong == 0, "loss": float(wrong),
            "tp": len(gold & pred), "fp": len(pred - gold), "fn": len(gold - pred), "by_type": by_type,
            "errors": entity_errors(gold, pred)}


class EntityAnalysis:
    """``analysis_metrics`` and ``analysis_sections`` for tasks whose rows come from ``entity_row``."""

    def analysis_metrics(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Strict entity precision, recall and F1 (micro) over the rows."""
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        return prf(tp, fp, fn)

    def analysis_sections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per entity type P/R/F1, and the errors by kind: boundary vs type vs both, missed, spurious."""
        totals: dict[str, list[int]] = {}
        for row in rows:
            for kind, counts in row["by_type"].items():
                totals[kind] = [x + y for x, y in zip(totals.get(kind, [0, 0, 0]), counts)]
        report = {kind: {**prf(*c), "support": c[0] + c[2]} for kind, c in sorted(totals.items())}
        errors = Counter(kind for row in rows for kind in row["errors"])
        table = [{"error": k, "count": errors.get(k, 0), "meaning": ERROR_KINDS[k]} for k in ERROR_KINDS]
        return [{"title": "Per entity type", "table": [{"type": k, **v} for k, v in report.items()],
                 "plot": {"kind": "per_label", "report": report}},
                {"title": "Errors: boundary vs type", "table": table,
                 "plot": {"kind": "bars", "values": {k: errors.get(k, 0) for k in ERROR_KINDS}, "xlabel": "entities"}}]


__all__ = ["ERROR_KINDS", "EntityAnalysis", "entity_errors", "entity_row", "prf"]
