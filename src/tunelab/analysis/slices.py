"""Slices: the task's metric on groups of the data — by input length, negation, numbers, gold label, a column
of the records, or a regular expression — so a weak spot shows as a number, not an anecdote.

A slice is named by a spec string: ``length``, ``negation``, ``numbers``, ``label``, ``column:NAME`` or
``regex:NAME=PATTERN``; ``register_slicer`` adds kinds.

Example:
    >>> rows = [{"text": "not good", "correct": True}, {"text": "good", "correct": False}]
    >>> SLICERS.get("negation")(rows, [{}, {}], "")
    ['with negation', 'without negation']
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

from ..errors import ConfigError, DataError
from ..metrics import length_buckets
from ..registry import Registry

Slicer = Callable[[list[dict[str, Any]], list[dict[str, Any]], str], list[str | None]]
SLICERS: Registry[Slicer] = Registry("slice")
DEFAULT_SLICES = ("length", "negation", "numbers", "label")

NEGATION = re.compile(r"\b(not|no|never|none|nobody|nothing|neither|nor|nowhere|without|cannot|hardly)\b|n't\b",
                      re.IGNORECASE)
NUMBER = re.compile(r"\d")
MAX_GROUPS = 12  # a column with more values keeps its most frequent ones and puts the rest in "other"


def register_slicer(name: str, slicer: Slicer, *, replace: bool = False) -> Slicer:
    """Add a kind of slice: ``slicer(rows, records, argument)`` returns each row's group name (None: in no group).

    Example:
        >>> _ = register_slicer("question", lambda rows, records, arg: ["?" in r["text"] for r in rows])
    """
    return SLICERS.add(name, slicer, replace=replace)


def _length(rows: list[dict[str, Any]], records: list[dict[str, Any]], arg: str) -> list[str | None]:
    return [f"{b} words" for b in length_buckets([len(r["text"].split()) for r in rows])]


def _negation(rows: list[dict[str, Any]], records: list[dict[str, Any]], arg: str) -> list[str | None]:
    return ["with negation" if NEGATION.search(r["text"]) else "without negation" for r in rows]


def _numbers(rows: list[dict[str, Any]], records: list[dict[str, Any]], arg: str) -> list[str | None]:
    return ["with numbers" if NUMBER.search(r["text"]) else "without numbers" for r in rows]


def _label(rows: list[dict[str, Any]], records: list[dict[str, Any]], arg: str) -> list[str | None]:
    return [f"gold {r['group_gold']}" if "group_gold" in r else None for r in rows]


def _column(rows: list[dict[str, Any]], records: list[dict[str, Any]], arg: str) -> list[str | None]:
    if not arg:
        raise ConfigError("slice 'column:NAME': name the column, e.g. column:source")
    if records and not any(arg in r for r in records):
        raise DataError(f"slice column:{arg}: no record has a column {arg!r} "
                        f"(columns: {', '.join(sorted({k for r in records[:50] for k in r}))})")
    values = [None if r.get(arg) is None else str(r.get(arg)) for r in records]
    common = {v for v, _ in Counter(v for v in values if v is not None).most_common(MAX_GROUPS)}
    return [None if v is None else f"{arg}={v}" if v in common else f"{arg}=other" for v in values]


def _regex(rows: list[dict[str, Any]], records: list[dict[str, Any]], arg: str) -> list[str | None]:
    name, sep, pattern = arg.partition("=")
    if not sep or not name or not pattern:
        raise ConfigError(f"slice 'regex:{arg}': write regex:NAME=PATTERN, e.g. regex:question=\\?$")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"slice 'regex:{arg}': bad regular expression: {err}") from None
    return [f"{name}" if compiled.search(r["text"]) else f"not {name}" for r in rows]


for _name, _fn in (("length", _length), ("negation", _negation), ("numbers", _numbers), ("label", _label),
                   ("column", _column), ("regex", _regex)):
    SLICERS.add(_name, _fn)


def slice_table(task: Any, rows: list[dict[str, Any]], records: list[dict[str, Any]],
                specs: list[str]) -> list[dict[str, Any]]:
    """The task's metrics on every group of every slice, with the group's size and its difference from the
    whole data on the first metric.

    Args:
        task: gives ``analysis_metrics(rows)``.
        rows: the analysis rows (``text`` and what the task's metrics read).
        records: the records the rows came from (for ``column:`` slices), in the same order.
        specs: slice specs (see the module docstring).
    """
    overall = task.analysis_metrics(rows)
    first = next(iter(overall))
    table = []
    for spec in specs:
        kind, _, arg = spec.partition(":")
        groups = SLICERS.get(kind)(rows, records, arg)
        members: dict[str, list[dict[str, Any]]] = {}
        for row, group in zip(rows, groups):
            if group is not None:
                members.setdefault(group, []).append(row)
        for group, inside in sorted(members.items(), key=lambda kv: _order(kv[0])):
            metrics = task.analysis_metrics(inside)
            table.append({"slice": spec, "group": group, "count": len(inside), **metrics,
                          "difference": metrics[first] - overall[first]})
    return table


def _order(group: str) -> tuple[int, str]:
    number = re.match(r"(\d+)", group)
    return (int(number.group(1)), group) if number else (1 << 30, group)


__all__ = ["DEFAULT_SLICES", "SLICERS", "register_slicer", "slice_table"]
