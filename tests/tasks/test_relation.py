"""Relation extraction: marker parsing, spans, the official SemEval score, training with markers."""

import json
from pathlib import Path

import pytest

import tunelab
from tunelab.data import read_records
from tunelab.tasks.relation import mark_entities, relation_metrics, relation_type, tag_spans

from conftest import tiny_config, toy_relations


def test_markers_become_marker_tokens() -> None:
    text, e1, e2 = mark_entities("The <e1>child</e1> was put in the <e2>cradle</e2>.", "x")
    assert text == "The [E1] child [/E1] was put in the [E2] cradle [/E2] ." and (e1, e2) == ("child", "cradle")
    assert mark_entities("<e2>a</e2> b <e1>c</e1>", "x")[1:] == ("c", "a")


@pytest.mark.parametrize("text, message", [
    ("The child was put in the <e2>cradle</e2>.", "exactly one <e1> marker, found 0"),
    ("The <e1>child <e2>was</e2></e1> here.", "nested or overlapping"),
    ("The <e1>child</e1> and <e1>dog</e1> <e2>x</e2>", "exactly one <e1> marker, found 2"),
    ("The </e1>child<e1> in <e2>x</e2>", "closing marker comes before"),
    ("The <e1> </e1> in <e2>x</e2>", "entity e1 is empty"),
])
def test_bad_markers_are_reported(text: str, message: str) -> None:
    with pytest.raises(tunelab.DataError, match=message):
        mark_entities(text, "train.jsonl line 3")


def test_character_spans() -> None:
    assert tag_spans("Alice met Bob", (10, 13), (0, 5), "x") == "<e2>Alice</e2> met <e1>Bob</e1>"
    with pytest.raises(tunelab.DataError, match="overlap"):
        tag_spans("Alice met Bob", (0, 5), (2, 8), "x")
    with pytest.raises(tunelab.DataError, match="outside the text"):
        tag_spans("Alice", (0, 9), (0, 1), "x")


def test_official_semeval_score_counts_direction() -> None:
    gold = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other", "Message-Topic(e1,e2)"]
    pred = ["Cause-Effect(e1,e2)", "Cause-Effect(e1,e2)", "Message-Topic(e1,e2)", "Message-Topic(e1,e2)"]
    m = relation_metrics(gold, pred, "Other")
    # Cause-Effect: 1 correct of 2 predicted, 2 gold -> P=R=F1=0.5; Message-Topic: 1 of 2 predicted, 1 gold -> F1=2/3
    assert m["per_type"]["Cause-Effect"]["f1"] == pytest.approx(0.5)
    assert m["per_type"]["Message-Topic"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2) and "Other" not in m["per_type"]
    assert relation_type("Entity-Origin(e2,e1)") == "Entity-Origin"


def test_semeval_file_reader(tmp_path: Path) -> None:
    path = tmp_path / "TRAIN.TXT"
    path.write_text('1\t"The <e1>a</e1> b <e2>c</e2>."\nOther\nComment: x\n\n2\t"<e1>d</e1> e <e2>f</e2>"\nCause-Effect(e1,e2)\nComment:\n\n',
                    encoding="utf-8")
    records = read_records(path)
    assert [r["label"] for r in records.rows] == ["Other", "Cause-Effect(e1,e2)"] and records.where(1).endswith("line 5")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_relation_trains_with_marker_embeddings(method: str, tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / method, epochs=6, learning_rate=3e-3 if method == "full" else 1e-2)
    cfg.update(task="relation", method={"name": method})
    run = tunelab.fit(cfg, train=toy_relations(150), validation=toy_relations(40, seed=5))
    assert {"macro_f1", "accuracy", "per_type"} <= set(run.metrics)
    assert run.metrics["macro_f1"] > 0.6, run.metrics
    tok = json.loads((run.artifact_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert "[E1]" in json.dumps(tok) or (run.artifact_dir / "tokenizer" / "special_tokens_map.json").exists()
    predictor = tunelab.Predictor.load(run.artifact_dir)
    (pred,) = predictor.predict(["the <e1>fire</e1> caused the <e2>flood</e2>"])
    assert (pred["e1"], pred["e2"]) == ("fire", "flood") and pred["label"] in run.live.task.labels
    assert predictor.predict([{"text": "the fire caused the flood", "e1_start": 4, "e1_end": 8, "e2_start": 20, "e2_end": 25}])[0]["e2"] == "flood"
    live = run.live.predict(["the <e2>jar</e2> contains the <e1>virus</e1>"])[0]
    again = predictor.predict(["the <e2>jar</e2> contains the <e1>virus</e1>"])[0]
    assert live["label"] == again["label"] and abs(live["score"] - again["score"]) < 1e-5


def test_prompt_tuning_is_refused_for_relations(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "p", max_steps=1)
    cfg.update(task="relation", method={"name": "prompt_tuning"})
    with pytest.raises(tunelab.ConfigError, match="prompt_tuning needs a task with a standard head"):
        tunelab.fit(cfg, train=toy_relations(20))
