"""NER: tag schemes, readers, alignment, long inputs, metrics, spans, errors — on a tiny random BERT."""

import json
from pathlib import Path

import numpy as np
import pytest
from seqeval.scheme import IOB2

import tunelab
from tunelab.config import build_config
from tunelab.data import read_records
from tunelab.tags import TagError, detect_scheme, spans, to_bio
from tunelab.tasks import NerTask

from conftest import tiny_config, toy_sentences


# ---- tag schemes -------------------------------------------------------------------------------
def test_scheme_conversion_to_bio() -> None:
    assert to_bio(["B-PER", "I-PER", "O"], "bio") == (["B-PER", "I-PER", "O"], 0)
    assert to_bio(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob1") == (["B-PER", "I-PER", "B-PER", "O", "B-LOC"], 0)
    assert to_bio(["B-ORG", "I-ORG", "E-ORG", "S-PER", "O"], "bioes") == (["B-ORG", "I-ORG", "I-ORG", "B-PER", "O"], 0)
    assert to_bio(["B-NAME", "M-NAME", "E-NAME", "S-LOC"], "bmes") == (["B-NAME", "I-NAME", "I-NAME", "B-LOC"], 0)


def test_invalid_sequences_are_repaired_and_counted() -> None:
    assert to_bio(["O", "I-PER", "I-PER", "I-LOC"], "bio") == (["O", "B-PER", "I-PER", "B-LOC"], 2)
    assert to_bio(["S-PER", "E-PER"], "bioes") == (["B-PER", "B-PER"], 1)


def test_unknown_prefix_and_malformed_tag() -> None:
    with pytest.raises(TagError, match="prefix 'M' is not part of the BIO scheme"):
        to_bio(["B-PER", "M-PER"], "bio")
    with pytest.raises(TagError, match="neither 'O' nor PREFIX-TYPE"):
        to_bio(["PERSON"], "bio")


def test_detect_scheme_and_spans() -> None:
    assert detect_scheme([["B-X", "M-X", "E-X"]]) == "bmes"
    assert detect_scheme([["S-X", "O"]]) == "bioes"
    assert detect_scheme([["B-X", "I-X"]]) == "bio"
    assert spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)]


# ---- readers -----------------------------------------------------------------------------------
def test_conll_reader(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER"
                    "\n\n-DOCSTART- -X- -X- O\n\nBonn NNP B-NP B-LOC\n", encoding="utf-8")
    records = read_records(path)
    # -DOCSTART- lines number the documents, which task.document_context reads together
    assert records.rows == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "document": 0},
                            {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "document": 0},
                            {"tokens": ["Bonn"], "tags": ["B-LOC"], "document": 1}]
    assert records.where(1) == f"{path} line 7"
    plain = tmp_path / "plain.txt"
    plain.write_text("EU B-ORG\nrejects O\n", encoding="utf-8")
    assert read_records(plain).rows == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}]
    bad = tmp_path / "bad.conll"
    bad.write_text("EU B-ORG\nlonely\n", encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"bad\.conll line 2: expected a token and a tag"):
        read_records(bad)


def _task(rows, **task) -> NerTask:
    cfg = build_config({"task": {"name": "ner", **task}, "data": {"max_length": 16}})
    return NerTask.from_training_data(cfg, read_records(rows))


def _tok(tiny_bert: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def test_label_on_first_subtoken_only(tiny_bert: Path) -> None:
    task = _task([{"tokens": ["Unbelievably", "Oslo"], "tags": ["O", "B-LOC"]}])
    assert task.labels == ["O", "B-LOC", "I-LOC"]
    feats = task.encode(read_records([{"tokens": ["Unbelievably", "Oslo"], "tags": ["O", "B-LOC"]}]), _tok(tiny_bert), with_labels=True)
    (feat,) = feats
    pieces = [w for w in feat["word_ids"] if w == 0]
    assert len(pieces) > 1  # "Unbelievably" is split into several sub-tokens
    labelled = [(w, y) for w, y in zip(feat["word_ids"], feat["labels"]) if y != -100]
    assert labelled == [(0, 0), (1, 1)]  # [CLS]/[SEP]/continuation pieces are ignored by the loss


def test_long_input_is_windowed_without_dropping_tokens(tiny_bert: Path) -> None:
    tokens = [f"word{i}" for i in range(40)]
    tags = ["B-LOC" if i % 7 == 0 else "O" for i in range(40)]
    task = _task([{"tokens": tokens, "tags": tags}], stride=4)
    feats = task.encode(read_records([{"tokens": tokens, "tags": tags}]), _tok(tiny_bert), with_labels=True)
    assert len(feats) > 2 and all(len(f["input_ids"]) <= 16 for f in feats)
    covered = {w for f in feats for w, y in zip(f["word_ids"], f["labels"]) if y != -100}
    assert covered == set(range(40))
    import numpy as np

    outputs = [np.random.default_rng(0).normal(size=(len(f["input_ids"]), 3)).astype("float32") for f in feats]
    (pred,) = task.decode(outputs, feats)
    assert len(pred["tags"]) == 40


def test_case_markers_give_an_uncased_tokenizer_capitalisation(tiny_bert: Path) -> None:
    from tunelab.tasks.ner import CASE_MARKERS, case_class

    assert [case_class(w) for w in ["London", "EU", "I", "rejects", "3", "McDonald"]] == [0, 1, 0, None, None, 0]
    rows = [{"tokens": ["EU", "rejects", "Peter", "Blackburn"], "tags": ["B-ORG", "O", "B-PER", "I-PER"]}]
    tok = _tok(tiny_bert)
    task = _task(rows)  # case_markers: auto -> on, the MiniLM tokenizer lower-cases
    task.prepare_processor(tok)
    assert task.state["case_markers"] is True and tok.convert_ids_to_tokens(task.state["marker_ids"]) == CASE_MARKERS
    (feat,) = task.encode(read_records(rows), tok, with_labels=True)
    pieces = tok.convert_ids_to_tokens(feat["input_ids"])
    assert pieces[:4] == ["[CLS]", "[UP]", "eu", "rejects"] and pieces[4] == "[CAP]"
    markers = [k for k, t in enumerate(pieces) if t in CASE_MARKERS]
    # a marker belongs to no word: no label, never read as a prediction
    assert all(feat["word_ids"][k] is None and feat["labels"][k] == -100 for k in markers)
    assert [y for y in feat["labels"] if y != -100] == [task.label_to_id[t] for t in rows[0]["tags"]]
    plain = _task(rows, case_markers=False)
    plain.prepare_processor(_tok(tiny_bert))
    (feat,) = plain.encode(read_records(rows), _tok(tiny_bert), with_labels=True)
    assert not set(tok.convert_ids_to_tokens(feat["input_ids"])) & set(CASE_MARKERS)


def test_document_context_reads_neighbours_and_scores_per_record(tiny_bert: Path) -> None:
    import numpy as np

    rows = [dict(r, document=i // 3) for i, r in enumerate(toy_sentences(7))]  # documents of 3, 3 and 1 records
    task = _task(rows, document_context=True, case_markers=False)
    unnamed = [{k: v for k, v in r.items() if k != "document"} for r in rows]
    one_text = task.encode(read_records(unnamed), _tok(tiny_bert), with_labels=True)
    assert {f["record"] for f in one_text} == {0}  # records naming no document: one running text
    feats = task.encode(read_records(rows), _tok(tiny_bert), with_labels=True)
    assert {f["record"] for f in feats} == {0, 1, 2}  # documents of 3, 3 and 1 records
    first = next(f for f in feats if f["record"] == 0)
    assert len({w for w in first["word_ids"] if w is not None}) > len(rows[0]["tokens"])  # sees the next sentence
    outputs = [np.random.default_rng(0).normal(size=(len(f["input_ids"]), len(task.labels))).astype("float32") for f in feats]
    predictions = task.decode(outputs, feats)
    assert [p["words"] for p in predictions] == [r["tokens"] for r in rows]
    from seqeval.metrics import f1_score

    expected = f1_score([r["tags"] for r in rows], [p["tags"] for p in predictions], mode="strict", scheme=IOB2)
    assert task.compute_metrics(outputs, feats)["f1"] == pytest.approx(expected)


def test_raw_text_with_character_offsets(tiny_bert: Path) -> None:
    rows = [{"text": "Dr. Alice Smith moved to Oslo.", "entities": [{"start": 4, "end": 15, "label": "PER"},
                                                                  {"start": 25, "end": 29, "label": "LOC", "text": "Oslo"}]}]
    task = _task(rows, case_markers=False)
    feats = task.encode(read_records(rows), _tok(tiny_bert), with_labels=True)
    # the gold labels, decoded as if the model had predicted them, give back the words, tags and spans
    gold = [np.eye(len(task.labels), dtype="float32")[[max(y, 0) for y in f["labels"]]] for f in feats]
    (pred,) = task.decode(gold, feats)
    assert pred["words"][:4] == ["Dr", ".", "Alice", "Smith"]
    assert pred["tags"] == ["O", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in pred["entities"]] == \
        [("PER", 4, 15, "Alice Smith"), ("LOC", 25, 29, "Oslo")]


def test_bad_records_name_file_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "ner.jsonl"
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-X"]}) + "\n" +
                    json.dumps({"tokens": ["a", "b", "c"], "tags": ["O", "B-X"]}) + "\n", encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"ner\.jsonl line 2: 3 tokens but 2 tags"):
        _task(read_records(path))
    with pytest.raises(tunelab.DataError, match=r"row 0, field 'tags': tag 'PERSON' is neither"):
        _task([{"tokens": ["a"], "tags": ["PERSON"]}])
    with pytest.raises(tunelab.DataError, match="prefix 'M' is not part of the BIOES scheme"):
        _task([{"tokens": ["a", "b"], "tags": ["B-X", "M-X"]}], tag_scheme="bioes")
    text = {"text": "Alice met Bob", "entities": [{"start": 0, "end": 3, "label": "PER"}]}
    with pytest.raises(tunelab.DataError, match="cuts through a word"):
        _task([text])
    with pytest.raises(tunelab.DataError, match=r"text\[0:5\] is 'Alice', not 'Alicia'"):
        _task([{"text": "Alice met Bob", "entities": [{"start": 0, "end": 5, "label": "PER", "text": "Alicia"}]}])
    with pytest.raises(tunelab.DataError, match="overlaps another entity"):
        _task([{"text": "Alice met Bob", "entities": [{"start": 0, "end": 5, "label": "PER"}, {"start": 0, "end": 9, "label": "X"}]}])
    with pytest.raises(tunelab.DataError, match="field 'text': empty text"):
        _task([{"text": "  ", "entities": []}])
    with pytest.raises(tunelab.DataError, match="no entities"):
        _task([{"tokens": ["a"], "tags": ["O"]}])


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_ner_trains_evaluates_and_predicts_spans(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "ner", epochs=8, learning_rate=3e-3)
    cfg["task"] = "ner"
    run = tunelab.fit(cfg, train=toy_sentences(120), validation=toy_sentences(30, seed=9))
    assert {"precision", "recall", "f1", "per_type", "token_accuracy"} <= set(run.metrics)
    assert set(run.metrics["per_type"]) == {"PER", "LOC"}
    assert run.metrics["f1"] > 0.8, run.metrics
    assert (run.artifact_dir / "plots" / "per_type_f1.png").is_file()
    (pred,) = tunelab.Predictor.load(run.artifact_dir).predict(["Carol lives in Lima ."])
    for ent in pred["entities"]:
        assert "Carol lives in Lima ."[ent["start"]:ent["end"]] == ent["text"] and 0 < ent["score"] <= 1
    assert {(e["type"], e["text"]) for e in pred["entities"]} == {("PER", "Carol"), ("LOC", "Lima")}


@pytest.mark.slow
def test_ner_with_document_context_trains_and_predicts(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "doc", epochs=10, learning_rate=3e-3, batch_size=4)
    cfg.update(task={"name": "ner", "document_context": True, "stride": 8})
    cfg["data"] = {"max_length": 32}
    train = [dict(r, document=i // 4) for i, r in enumerate(toy_sentences(160))]
    run = tunelab.fit(cfg, train=train, validation=[dict(r, document=i // 4) for i, r in enumerate(toy_sentences(30, seed=9))])
    assert run.metrics["f1"] > 0.8, run.metrics
    loaded = tunelab.Predictor.load(run.artifact_dir)
    assert loaded.evaluate([dict(r, document=0) for r in toy_sentences(12, seed=5)])["f1"] > 0.8
    (pred,) = loaded.predict(["Carol lives in Lima ."])  # a lone text is its own document
    assert {(e["type"], e["text"]) for e in pred["entities"]} == {("PER", "Carol"), ("LOC", "Lima")}


@pytest.mark.slow
def test_ner_lora_and_chinese_bmes(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "train.char.bmes"
    lines = []
    for i in range(40):
        if i % 2:
            lines += ["张 B-NAME", "三 E-NAME", "在 O", "北 B-LOC", "京 E-LOC", ""]
        else:  # a three-character name: B-M-E (the M makes the scheme detectable as BMES)
            lines += ["王 B-NAME", "小 M-NAME", "明 E-NAME", "在 O", "上 B-LOC", "海 E-LOC", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = tiny_config(tiny_bert, tmp_path / "zh", epochs=4, learning_rate=5e-3)
    cfg.update(task="ner", method={"name": "lora"})
    cfg["data"]["train"] = str(path)
    run = tunelab.fit(cfg)
    assert run.artifact_dir.joinpath("model", "adapter_model.safetensors").is_file()
    manifest = json.loads((run.artifact_dir / "manifest.json").read_text())
    assert manifest["task"]["state"]["tag_scheme"] == "bmes"
    (pred,) = tunelab.Predictor.load(run.artifact_dir).predict(["张三在北京"])
    assert pred["words"] == ["张", "三", "在", "北", "京"]
    for ent in pred["entities"]:
        assert "张三在北京"[ent["start"]:ent["end"]] == ent["text"]
