"""Extractive QA: SQuAD reading, windows with offsets, n-best decoding, EM/F1, errors, end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

import tunelab
from tunelab.config import build_config
from tunelab.data import read_records
from tunelab.tasks.qa import QaTask, normalize_answer, squad_scores

from conftest import COLORS, tiny_config, toy_qa


def test_squad_normalisation_and_scores() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_scores("the Eiffel Tower", ["Eiffel Tower", "Paris"]) == (1.0, 1.0)
    em, f1 = squad_scores("tall Eiffel Tower", ["Eiffel Tower"])
    assert em == 0.0 and f1 == pytest.approx(0.8)
    assert squad_scores("", []) == (1.0, 1.0)


def _tok(tiny_bert: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def test_squad_json_is_flattened(tmp_path: Path, tiny_bert: Path) -> None:
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    cfg = build_config({"task": "qa"})
    task = QaTask.from_training_data(cfg, read_records(path))
    (feat,) = task.encode(read_records(path), _tok(tiny_bert), with_labels=True)
    start, end = feat["labels"]
    context = feat["context"]
    assert context[feat["offsets"][start][0]:feat["offsets"][end][1]] == "France" and feat["id"] == "q1"


def test_bad_answers_and_contexts_are_reported(tmp_path: Path, tiny_bert: Path) -> None:
    task = QaTask.from_training_data(build_config({"task": "qa"}), read_records(toy_qa(2)))
    tok = _tok(tiny_bert)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "context": "the cat was red .", "answers": {"text": ["red"], "answer_start": [3]}}) + "\n",
                   encoding="utf-8")
    with pytest.raises(tunelab.DataError, match=r"bad\.jsonl line 1, field 'answers': answer 'red' does not match the context at answer_start=3"):
        task.encode(read_records(bad), tok, with_labels=True)
    with pytest.raises(tunelab.DataError, match="field 'context': empty context"):
        task.encode(read_records([{"question": "q?", "context": " ", "answers": []}]), tok, with_labels=True)
    with pytest.raises(tunelab.DataError, match="no answer; for unanswerable questions set task.allow_unanswerable"):
        task.encode(read_records([{"question": "q?", "context": "c", "answers": []}]), tok, with_labels=True)
    with pytest.raises(tunelab.DataError, match="empty question"):
        task.encode(read_records([{"question": "", "context": "c"}]), tok, with_labels=False)


def test_long_context_windows_and_answer_positions(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    rows = toy_qa(3, filler=12)  # the answer sits at the very end of a long context
    cfg = build_config({"task": {"name": "qa", "doc_stride": 16}, "data": {"max_length": 64}})
    task = QaTask.from_training_data(cfg, read_records(rows))
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    feats = task.encode(read_records(rows), tok, with_labels=True)
    assert len(feats) > 3 and all(len(f["input_ids"]) <= 64 for f in feats)
    for f in feats:
        a, b = f["labels"]
        if a:  # a window holding the answer points at exactly the answer's characters
            context = next(g for g in feats if g["record"] == f["record"] and "context" in g)["context"]
            assert context[f["offsets"][a][0]:f["offsets"][b][1]] in COLORS
    assert {f["record"] for f in feats if f["labels"] != [0, 0]} == {0, 1, 2}
    # decoding: put all the mass on the true span of each record's answering window
    outputs = []
    for f in feats:
        out = np.full((len(f["input_ids"]), 2), -5.0, dtype=np.float32)
        a, b = f["labels"]
        out[a, 0], out[b, 1] = 5.0, 5.0
        outputs.append(out)
    preds = task.decode(outputs, feats)
    assert [p["answer"] for p in preds] == [r["answers"]["text"][0] for r in rows]
    assert task.compute_metrics(outputs, feats)["exact_match"] == 1.0


@pytest.mark.slow
def test_qa_trains_and_predicts_spans(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "qa", epochs=10, learning_rate=3e-3)
    cfg.update(task="qa")
    cfg["data"]["max_length"] = 64
    run = tunelab.fit(cfg, train=toy_qa(150), validation=toy_qa(30, seed=7))
    assert {"exact_match", "f1"} <= set(run.metrics)
    assert run.metrics["f1"] > 0.5, run.metrics
    (pred,) = tunelab.Predictor.load(run.artifact_dir).predict(
        [{"question": "what color was the goat ?", "context": "the goat was purple ."}])
    assert set(pred) >= {"answer", "start", "end", "score"}
    if pred["start"] is not None:
        assert "the goat was purple ."[pred["start"]:pred["end"]] == pred["answer"]
