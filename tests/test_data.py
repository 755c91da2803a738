import json
from pathlib import Path

import pandas as pd
import pytest

import tunelab
from tunelab.config import build_config
from tunelab.data import read_records, split_validation
from tunelab.tasks import ClassificationTask


def _task(records, **task):
    cfg = build_config({"task": {"name": "classification", **task}})
    return ClassificationTask.from_training_data(cfg, read_records(records))


def test_reads_every_format(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",pos\nbye,neg\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nsays "hi" \t1\nno\t0\n', encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": "a"}\n\n{"text": "y", "label": "b"}\n', encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps({"data": [{"text": "x", "label": "a"}]}), encoding="utf-8")
    assert read_records(tmp_path / "a.csv").rows[0]["text"] == "hello, world"
    tsv = read_records(tmp_path / "a.tsv")
    assert tsv.rows[0]["sentence"] == 'says "hi" ' and tsv.where(1) == f"{tmp_path / 'a.tsv'} line 3"
    assert read_records(tmp_path / "a.jsonl").where(1).endswith("line 3")
    assert len(read_records(tmp_path / "a.json")) == 1
    frame = read_records(pd.DataFrame({"text": ["a", "b"], "label": [1, 0]}))
    assert frame.columns == ["text", "label"] and frame.where(1) == "DataFrame row 1"
    import datasets

    ds = read_records(datasets.Dataset.from_dict({"text": ["a"], "label": [0]}))
    assert ds.rows == [{"text": "a", "label": 0}]
    assert len(read_records([{"text": "a", "label": 1}])) == 1


def test_ragged_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,pos\ntoo,many,fields\n", encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"bad\.csv line 3: expected 2 fields \(text, label\), found 3"):
        read_records(path)


def test_bad_encoding_names_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,pos\ncaf\xe9,neg\n".encode("latin-1"))
    with pytest.raises(tunelab.DataError, match=r"latin\.csv line 3: not valid UTF-8"):
        read_records(path)


def test_invalid_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"x\.jsonl line 2: invalid JSON"):
        read_records(path)


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(tunelab.DataError, match="does not exist"):
        read_records(tmp_path / "nope.csv")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(tunelab.DataError, match="unsupported file type .xlsx"):
        read_records(tmp_path / "a.xlsx")
    with pytest.raises(tunelab.DataError, match="row 1: expected a dict"):
        read_records([{"text": "a"}, "b"])


def test_missing_column_lists_columns_and_config_key(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("review,sentiment\nnice,pos\nbad,neg\n", encoding="utf-8")
    cfg = build_config({"data": {"text_column": "review"}})
    with pytest.raises(tunelab.DataError, match=r"column 'label' \(labels\) not found; columns are: review, sentiment\. Set data.label_column"):
        ClassificationTask.from_training_data(cfg, read_records(path))


def test_empty_text_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\nnice,pos\n   ,neg\n", encoding="utf-8")
    records = read_records(path)
    task = ClassificationTask.from_training_data(build_config({}), records)
    with pytest.raises(tunelab.DataError, match=r"t\.csv line 3, column 'text': empty text"):
        task.encode(records, _Tok(), with_labels=True)


def test_unknown_label_at_evaluation(tmp_path: Path) -> None:
    task = _task([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"text": "c", "label": "pos"}\n{"text": "d", "label": "neutral"}\n', encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"dev\.jsonl line 2, column 'label': unknown label 'neutral'; labels seen in training: neg, pos"):
        task.encode(read_records(dev), _Tok(), with_labels=True)


def test_label_map_inferred_sorted_and_numeric_labels_unified() -> None:
    task = _task([{"text": "a", "label": 1}, {"text": "b", "label": "0"}, {"text": "c", "label": 1.0}, {"text": "d", "label": 10}])
    assert task.labels == ["0", "1", "10"]


def test_multi_label_from_lists_and_separated_strings() -> None:
    task = _task([{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": "y|z"}], problem_type="multi_label")
    assert task.labels == ["x", "y", "z"]
    feats = task.encode(read_records([{"text": "a", "label": "x|z"}]), _Tok(), with_labels=True)
    assert feats[0]["labels"] == [1.0, 0.0, 1.0]


def test_regression_label_must_be_number() -> None:
    task = _task([{"text": "a", "label": 1.5}], problem_type="regression")
    with pytest.raises(tunelab.DataError, match="expected a number, got 'lots'"):
        task.encode(read_records([{"text": "a", "label": "lots"}]), _Tok(), with_labels=True)


def test_one_class_only_is_an_error() -> None:
    with pytest.raises(tunelab.DataError, match="only one label"):
        _task([{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])


def test_stratified_seeded_split() -> None:
    rows = [{"text": str(i), "label": "a" if i < 80 else "b"} for i in range(100)]
    records = read_records(rows)
    strata = [r["label"] for r in rows]
    train, val = split_validation(records, 0.1, seed=1, strata=strata)
    assert len(val) == 10 and sum(r["label"] == "b" for r in val.rows) == 2
    again = split_validation(records, 0.1, seed=1, strata=strata)[1]
    assert [r["text"] for r in again.rows] == [r["text"] for r in val.rows]
    assert not {r["text"] for r in train.rows} & {r["text"] for r in val.rows}


class _Tok:
    """Stands in for a tokenizer where only validation is under test."""

    def __call__(self, texts, pairs=None, **_):
        return {"input_ids": [[1, 2, 3] for _ in texts]}


@pytest.mark.parametrize("name, content", [
    ("a.csv", '\ufefftext,label\n"a, quoted",pos\n\n"two\nlines",neg\nplain,pos\n'),
    ("b.tsv", 'sentence\tlabel\nit "quotes" freely\t1\nmore\t0\n'),
    ("c.csv", "text\nfirst\n\nthird\n\n"),  # one column: a blank line is an empty record, trailing ones are not
])
def test_csv_and_tsv_stream_like_they_read(tmp_path: Path, monkeypatch, name: str, content: str) -> None:
    import tunelab.data

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    whole = read_records(path)
    monkeypatch.setattr(tunelab.data, "_read_file", lambda *a, **k: pytest.fail("a CSV/TSV file must be streamed"))
    parts = list(tunelab.data.iter_records(path, chunk=2))
    assert [r for p in parts for r in p.rows] == whole.rows
    assert [n for p in parts for n in p.lines] == whole.lines
    assert parts[0].columns == whole.columns
    assert [r for p in tunelab.data.iter_records(path, chunk=2, skip=1) for r in p.rows] == whole.rows[1:]


def test_a_streamed_csv_names_the_bad_line(tmp_path: Path) -> None:
    import tunelab.data

    path = tmp_path / "bad.csv"
    path.write_text("text,label\n" + "ok,pos\n" * 600 + "too,many,fields\n", encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"bad.csv line 602: expected 2 fields \(text, label\), found 3"):
        list(tunelab.data.iter_records(path, chunk=100))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(tunelab.DataError, match="not valid utf-8"):
        list(tunelab.data.iter_records(latin))
