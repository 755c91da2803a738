"""Read records from files, frames and lists, with errors that name the file, line and column.

Records are plain dicts. Each ``Records`` keeps where every row came from, so a problem found later
(an empty text, an unknown label) is reported as ``train.csv line 7, column 'text': ...``.

Example:
    >>> from tunelab.data import read_records
    >>> recs = read_records([{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}])
    >>> len(recs), recs.where(1)
    (2, 'records row 1')
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError

COLUMN_SUFFIXES = (".conll", ".txt", ".bio", ".iob", ".bioes", ".bmes")  # token-per-line files (NER)
SUPPORTED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", *COLUMN_SUFFIXES)


@dataclass
class Records:
    """Rows (dicts) plus where each came from."""

    rows: list[dict[str, Any]]
    source: str
    lines: list[int] | None = None  # 1-based file line of each row, when read from a file
    columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.source} line {self.lines[index]}"
        return f"{self.source} row {index}"

    def subset(self, indices: Iterable[int], source: str | None = None) -> Records:
        idx = list(indices)
        return Records(
            rows=[self.rows[i] for i in idx],
            source=source or self.source,
            lines=[self.lines[i] for i in idx] if self.lines is not None else None,
            columns=self.columns,
        )


def read_records(source: Any, *, name: str | None = None) -> Records:
    """Read records from a path (.csv/.tsv/.jsonl/.json), a pandas DataFrame, a datasets.Dataset,
    a list of dicts, or an existing Records."""
    if isinstance(source, Records):
        return source
    if isinstance(source, (str, Path)):
        return _read_file(Path(source))
    type_name = type(source).__name__
    if type_name == "DataFrame" and hasattr(source, "to_dict"):
        rows = source.to_dict(orient="records")
        return Records(rows, name or "DataFrame", None, [str(c) for c in source.columns])
    if type_name == "Dataset" and hasattr(source, "column_names"):
        rows = [dict(r) for r in source]
        return Records(rows, name or "Dataset", None, list(source.column_names))
    if isinstance(source, (list, tuple)):
        for i, row in enumerate(source):
            if not isinstance(row, dict):
                raise DataError(f"{name or 'records'} row {i}: expected a dict of columns, got {type(row).__name__}")
        columns = sorted({k for row in source for k in row})
        return Records(list(source), name or "records", None, columns)
    raise DataError(
        f"cannot read records from a {type_name}: give a file path ({', '.join(SUPPORTED_SUFFIXES)}), "
        "a pandas DataFrame, a datasets.Dataset or a list of dicts"
    )


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not valid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}); "
            "re-save the file as UTF-8"
        ) from None


def _read_file(path: Path) -> Records:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a data file ({', '.join(SUPPORTED_SUFFIXES)})")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path} is empty")
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    if suffix == ".txt" and SEMEVAL_LINE.match(text.lstrip("\ufeff")):
        return _read_semeval(path, text)
    if suffix in COLUMN_SUFFIXES:
        return _read_token_columns(path, text)
    return _read_json(path, text)


def _read_delimited(path: Path, text: str, delimiter: str) -> Records:
    # TSV files in NLP (GLUE and friends) use bare quotes inside text, so quoting is off for TSV.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataError(f"{path} line 1: cannot parse the header: {err}") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        dup = [h for h, n in Counter(header).items() if n > 1]
        raise DataError(f"{path} line 1: duplicate column names {dup}")
    rows, lines = [], []
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) != len(header):
                raise DataError(
                    f"{path} line {line}: expected {len(header)} fields ({', '.join(header)}), found {len(fields)}"
                    + (" — a tab or comma inside the text?" if len(fields) > len(header) else "")
                )
            rows.append(dict(zip(header, fields)))
            lines.append(line)
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: {err}") from None
    return Records(rows, str(path), lines, header)


SEMEVAL_LINE = re.compile(r'\s*\d+\t"')


def _read_semeval(path: Path, text: str) -> Records:
    """SemEval-2010 Task 8 files: blocks of `id<TAB>"sentence"`, label, `Comment: ...`, blank line.
    A test file without labels (only sentence lines) gives records without a label."""
    rows, lines = [], []
    block: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip():
            block.append((number, line))
            continue
        if not block:
            continue
        first_line, first = block[0]
        if not SEMEVAL_LINE.match(first):
            raise DataError(f"{path} line {first_line}: expected `id<TAB>\"sentence\"` to start a block, got {first[:60]!r}")
        ident, sentence = first.split("\t", 1)
        row: dict[str, Any] = {"id": ident.strip(), "text": sentence.strip()}
        for _, extra in block[1:]:
            if extra.startswith("Comment:"):
                row["comment"] = extra[len("Comment:"):].strip()
            elif "label" not in row:
                row["label"] = extra.strip()
        rows.append(row)
        lines.append(first_line)
        block = []
    return Records(rows, str(path), lines, sorted({k for r in rows for k in r}))


def _read_token_columns(path: Path, text: str) -> Records:
    """CoNLL-style files: one token per line (token first, tag last, any columns between), a blank line
    between sentences, optional ``-DOCSTART-`` lines. Each sentence becomes {"tokens": [...], "tags": [...]},
    plus {"document": n} (0, 1, ...) when the file marks documents with ``-DOCSTART-``."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    # Files that mark documents number them from 0 (sentences before the first marker belong to document 0).
    document = -1 if text.startswith("-DOCSTART-") or "\n-DOCSTART-" in text else None

    def sentence() -> dict[str, Any]:
        return {"tokens": tokens, "tags": tags} if document is None else \
            {"tokens": tokens, "tags": tags, "document": max(document, 0)}

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                rows.append(sentence())
                lines.append(start)
            tokens, tags = [], []
            if fields and document is not None:
                document += 1
            continue
        if len(fields) < 2:
            raise DataError(f"{path} line {number}: expected a token and a tag separated by whitespace, got {line!r}")
        if not tokens:
            start = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:  # files without a trailing blank line
        rows.append(sentence())
        lines.append(start)
    if not rows:
        raise DataError(f"{path}: no sentences found (expected token/tag lines separated by blank lines)")
    return Records(rows, str(path), lines, ["tokens", "tags"] + (["document"] if document is not None else []))


def _read_jsonl(path: Path, text: str) -> Records:
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
        lines.append(number)
    columns = sorted({k for row in rows for k in row})
    return Records(rows, str(path), lines, columns)


def _read_json(path: Path, text: str) -> Records:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of records, or an object with exactly one list (found {lists or 'none'})")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} record {i}: expected an object, got {type(row).__name__}")
    columns = sorted({k for row in data for k in row})
    return Records(data, str(path), None, columns)


def require_column(records: Records, column: str, purpose: str, config_key: str) -> None:
    """Fail clearly when a column is absent from every row."""
    if not records.rows:
        raise DataError(f"{records.source} has no records")
    if records.columns and column not in records.columns and not any(column in r for r in records.rows[:1]):
        raise DataError(
            f"{records.source}: column {column!r} ({purpose}) not found; columns are: {', '.join(records.columns)}. "
            f"Set {config_key} to the right column."
        )


def split_validation(
    records: Records, fraction: float, seed: int, strata: list[Any] | None = None
) -> tuple[Records, Records]:
    """Seeded split; stratified by ``strata`` when every stratum has at least two members."""
    n = len(records)
    n_val = max(1, round(n * fraction))
    if n < 4:
        raise DataError(f"{records.source}: {n} records is too few to split off a validation set; give data.validation")
    rng = random.Random(seed)
    if strata is not None and min(Counter(map(str, strata)).values()) >= 2:
        by_class: dict[str, list[int]] = {}
        for i, s in enumerate(strata):
            by_class.setdefault(str(s), []).append(i)
        val: list[int] = []
        for key in sorted(by_class):
            members = by_class[key]
            rng.shuffle(members)
            take = max(1, round(len(members) * fraction))
            val.extend(members[:take])
    else:
        order = list(range(n))
        rng.shuffle(order)
        val = order[:n_val]
    val_set = set(val)
    train_idx = [i for i in range(n) if i not in val_set]
    return records.subset(train_idx), records.subset(sorted(val_set), source=records.source)
