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
from typing import Any, Iterable, Iterator

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
    index: list[int] | None = None  # each row's position in the records it was taken from (``subset``)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        """A human-readable location of row ``index`` (file line or row number) for error messages."""
        if self.lines is not None:
            return f"{self.source} line {self.lines[index]}"
        return f"{self.source} row {self.index[index] if self.index is not None else index}"

    def number(self, index: int) -> int:
        """The row's number for output records: its file line, else its 1-based position in the input."""
        if self.lines is not None:
            return self.lines[index]
        return (self.index[index] if self.index is not None else index) + 1

    def subset(self, indices: Iterable[int], source: str | None = None) -> Records:
        """The rows at ``indices`` (their lines and original positions kept)."""
        idx = list(indices)
        return Records(
            rows=[self.rows[i] for i in idx],
            source=source or self.source,
            lines=[self.lines[i] for i in idx] if self.lines is not None else None,
            columns=self.columns,
            index=[self.index[i] for i in idx] if self.index is not None else idx,
        )


FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "conll", "semeval", "text")
_TAG = re.compile(r"^(O|[BIESMU][-_][^\s]+|[BIESMU])$")


def read_records(source: Any, *, name: str | None = None, format: str = "auto", encoding: str = "utf-8") -> Records:
    """Read records from a path, a pandas DataFrame, a datasets.Dataset, a list of dicts, or a Records.

    Args:
        source: what to read.
        name: how errors name in-memory records (default ``records``).
        format: for files: ``auto`` (by extension, checked against the content; content decides for unknown
            extensions when unambiguous), or one of csv, tsv, jsonl, json, conll, semeval, text (one record
            per line, column ``text``).
        encoding: for files: the text encoding (``utf-8`` also accepts a byte-order mark; e.g. ``latin-1``,
            ``gbk``, ``utf-16``).

    Example:
        >>> read_records([{"text": "fine"}]).rows
        [{'text': 'fine'}]
    """
    if isinstance(source, Records):
        return source
    if isinstance(source, (str, Path)):
        return _read_file(Path(source), format, encoding)
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


def _decode(path: Path, encoding: str = "utf-8") -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    try:
        return raw.decode(_codec(encoding))
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r} for {path} (data.encoding / --encoding); "
                        "e.g. utf-8, latin-1, gbk, utf-16") from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not valid {encoding.upper() if encoding.lower().startswith('utf') else encoding} "
            f"(byte {raw[err.start]:#04x} at offset {err.start}); "
            "set data.encoding (--encoding) to the file's encoding, e.g. latin-1 or gbk"
        ) from None


def looks_like_columns(text: str) -> bool:
    """Token-per-line (CoNLL-style) content: every line is blank, ``-DOCSTART-``, or a token and a tag."""
    lines = [line.split() for line in text.splitlines()[:2000] if line.strip()]
    lines = [f for f in lines if f[0] != "-DOCSTART-"]
    return bool(lines) and all(len(f) >= 2 and _TAG.match(f[-1]) for f in lines)


def detect_format(path: Path, text: str) -> str:
    """The format of a file: its extension, checked against the content; the content alone when the
    extension says nothing and the content is unambiguous."""
    suffix = path.suffix.lower()
    body = text.lstrip("\ufeff").lstrip()
    first = body.splitlines()[0] if body else ""
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        # JSON Lines saved as .json: several objects, one per line.
        try:
            json.loads(body)
            return "json"
        except json.JSONDecodeError as err:
            if err.msg == "Extra data" and first.startswith("{"):
                return "jsonl"
            return "json"
    if suffix == ".txt" and SEMEVAL_LINE.match(body):
        return "semeval"
    if suffix in COLUMN_SUFFIXES:
        if suffix == ".txt" and not looks_like_columns(text):
            return "text"  # one text per line
        return "conll"
    # Unknown extension: decide by content where it is unambiguous.
    if first.startswith(("{", "[")):
        try:
            json.loads(body)
            return "json"
        except json.JSONDecodeError:
            if first.startswith("{"):
                return "jsonl"
    if SEMEVAL_LINE.match(body):
        return "semeval"
    if looks_like_columns(text):
        return "conll"
    raise DataError(
        f"{path}: unsupported file type {suffix or '(none)'}, and its content does not tell the format; set data.format "
        f"(or --format) to one of {', '.join(FORMATS[1:])}, or rename it with one of {', '.join(SUPPORTED_SUFFIXES)}")


def _check_file(path: Path, format: str) -> None:
    """A readable data file and a known format, or a DataError saying which is wrong."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a data file ({', '.join(SUPPORTED_SUFFIXES)})")
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; use one of {', '.join(FORMATS)}")


def _read_file(path: Path, format: str = "auto", encoding: str = "utf-8") -> Records:
    _check_file(path, format)
    text = _decode(path, encoding)
    if not text.strip():
        raise DataError(f"{path} is empty")
    fmt = detect_format(path, text) if format == "auto" else format
    readers = {"csv": lambda: _read_delimited(path, text, ","), "tsv": lambda: _read_delimited(path, text, "\t"),
               "jsonl": lambda: _read_jsonl(path, text), "json": lambda: _read_json(path, text),
               "conll": lambda: _read_token_columns(path, text), "semeval": lambda: _read_semeval(path, text),
               "text": lambda: _read_text_lines(path, text)}
    return readers[fmt]()


STREAMED = ("jsonl", "text", "csv", "tsv")  # formats ``iter_records`` reads line by line


def iter_records(path: str | Path, *, format: str = "auto", encoding: str = "utf-8", chunk: int = 1024,
                 skip: int = 0) -> Iterator[Records]:
    """The records of a file, ``chunk`` at a time, in order, after the first ``skip``.

    JSON Lines, CSV/TSV and plain-text files (one record per line) are read as they go, so a file of any size
    takes constant memory; the other formats are read whole (as ``read_records`` does), then handed out in chunks.
    Line numbers, errors and blank-line handling are those of ``read_records``.

    Args:
        path: the file.
        format: as in ``read_records`` (``auto``: by extension, checked against the first 64 KB).
        encoding: the text encoding.
        chunk: records per yielded ``Records``.
        skip: records to pass over first (a resumed job).

    Example:
        >>> for part in iter_records("big.jsonl", chunk=1000):      # doctest: +SKIP
        ...     print(len(part), part.lines[0])
    """
    path = Path(path)
    _check_file(path, format)
    fmt = format if format != "auto" else detect_format(path, _head(path, encoding))
    if fmt not in STREAMED or "16" in encoding or "32" in encoding:  # UTF-16/32 newlines are not single bytes
        records = _read_file(path, fmt, encoding)
        for start in range(skip, len(records), chunk):
            yield records.subset(range(start, min(start + chunk, len(records))))
        return
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    seen = 0
    for number, row in _streamed_rows(path, fmt, encoding):
        seen += 1
        if seen > skip:
            rows.append(row)
            lines.append(number)
        if len(rows) >= chunk:
            yield Records(rows, str(path), lines, _columns(rows))
            rows, lines = [], []
    if seen == 0:
        raise DataError(f"{path} is empty")
    if rows:
        yield Records(rows, str(path), lines, _columns(rows))


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of streamed rows, in first-seen order (a CSV header's order)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def _streamed_rows(path: Path, fmt: str, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) of a JSON Lines, plain-text, CSV or TSV file, read line by line."""
    if fmt in ("csv", "tsv"):
        codec = _codec(encoding)
        header: list[str] = []
        try:
            with open(path, encoding=codec, newline="") as stream:
                yield from _delimited_rows(path, stream, "," if fmt == "csv" else "\t", header)
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid {encoding} (byte {err.object[err.start]:#04x}); set data.encoding "
                            "(--encoding) to the file's encoding, e.g. latin-1 or gbk") from None
        return
    pending: list[int] = []  # blank text lines: records only if a non-blank line follows
    for number, line in _lines(path, encoding):
        if fmt == "jsonl":
            if line.strip():
                yield number, _json_row(path, number, line)
            continue
        if not line.strip():
            pending.append(number)
            continue
        for blank in pending:
            yield blank, {"text": ""}
        pending = []
        yield number, {"text": line}


def count_lines(path: str | Path) -> int:
    """Newlines in a file (plus a last unterminated line), counted in constant memory."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _codec(encoding: str) -> str:
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def _head(path: Path, encoding: str, size: int = 65536) -> str:
    """The first ``size`` bytes as text (for format detection)."""
    with open(path, "rb") as f:
        raw = f.read(size)
    try:
        return raw.decode(_codec(encoding), errors="ignore")
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r} for {path} (data.encoding / --encoding); "
                        "e.g. utf-8, latin-1, gbk, utf-16") from None


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) for each line, each line decoded on its own (so a bad byte is
    reported at its line)."""
    codec = _codec(encoding)
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode(codec if number == 1 else codec.replace("-sig", ""))
                except UnicodeDecodeError as err:
                    raise DataError(f"{path} line {number}: not valid {encoding} (byte {raw[err.start]:#04x}); set "
                                    "data.encoding (--encoding) to the file's encoding, e.g. latin-1 or gbk") from None
                yield number, line.rstrip("\r\n")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None


def _json_row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {number}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path} line {number}: expected a JSON object per line, got {type(row).__name__}")
    return row


def _read_text_lines(path: Path, text: str) -> Records:
    """One record per line (column ``text``); a blank line is an empty record, so outputs stay in line."""
    lines = text.lstrip("\ufeff").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return Records([{"text": line} for line in lines], str(path), list(range(1, len(lines) + 1)), ["text"])


def _read_delimited(path: Path, text: str, delimiter: str) -> Records:
    header: list[str] = []
    rows, lines = [], []
    for line, row in _delimited_rows(path, io.StringIO(text, newline=""), delimiter, header):
        rows.append(row)
        lines.append(line)
    return Records(rows, str(path), lines, header)


def _delimited_rows(path: Path, stream: Iterable[str], delimiter: str,
                    header: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) for each record of a CSV/TSV text stream, read as it goes; ``header`` is filled with the
    column names once the first line is read."""
    # TSV files in NLP (GLUE and friends) use bare quotes inside text, so quoting is off for TSV.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(stream, delimiter=delimiter, quoting=quoting)
    try:
        names = next(reader)
    except csv.Error as err:
        raise DataError(f"{path} line 1: cannot parse the header: {err}") from None
    header.extend(h.strip() for h in names)
    if len(set(header)) != len(header):
        dup = [h for h, n in Counter(header).items() if n > 1]
        raise DataError(f"{path} line 1: duplicate column names {dup}")
    blank: list[int] = []  # blank lines of a one-column file: empty values, kept unless trailing
    previous_end = reader.line_num
    try:
        for fields in reader:
            line, previous_end = previous_end + 1, reader.line_num  # where this record started
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                if len(header) == 1:
                    blank.append(line)
                continue  # a blank line between records of a several-column file is not a record
            _check_quotes(path, fields, line, reader.line_num, len(header), delimiter)
            if len(fields) != len(header):
                raise DataError(
                    f"{path} line {line}: expected {len(header)} fields ({', '.join(header)}), found {len(fields)}"
                    + (" — a tab or comma inside the text?" if len(fields) > len(header) else "")
                )
            for empty in blank:
                yield empty, {header[0]: ""}
            blank = []
            yield line, dict(zip(header, fields))
    except csv.Error as err:
        raise DataError(f"{path} line {previous_end}: {err}") from None


def _check_quotes(path: Path, fields: list[str], first: int, last: int, n_columns: int, delimiter: str) -> None:
    """A record spread over several lines is fine when a quoted field holds line breaks; it is an
    unbalanced quote when the swallowed lines look like records of their own."""
    if last == first:
        return
    for field_text in fields:
        inner = field_text.split("\n")[1:]
        if any(line.count(delimiter) >= max(1, n_columns - 1) for line in inner) or \
                (n_columns > 1 and len(fields) != n_columns):
            raise DataError(
                f"{path} line {first}: a quote opened on this line is not closed before line {last}, so "
                f"{last - first + 1} lines were read as one field; close the quote or double it (\"\") inside "
                "quoted text")


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
        rows.append(_json_row(path, number, line))
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
