"""tunelab analyze: the error-analysis report for every task — figures recomputed from the predictions, entity
error kinds, QA breakdowns, ROUGE by length, slices, calibration stored in the artifact, train.report, the CLI,
and bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import tunelab
from tunelab.analysis.slices import slice_table
from tunelab.cli import main
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.entity_analysis import entity_errors
from tunelab.tasks.qa import question_word

from conftest import sentiment_rows, tiny_config, toy_qa, toy_sentences

pytest.importorskip("captum", reason="captum is not installed: pip install 'tunelab[explain]'")


@pytest.fixture(scope="module")
def classifier(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis") / "sentiment"
    config = tiny_config(tiny_bert, out, epochs=2, learning_rate=2e-3, eval_every=8)  # once an epoch
    return tunelab.fit(config, train=sentiment_rows(64), validation=sentiment_rows(16, seed=5)).artifact_dir


def labelled(n: int = 40) -> list[dict]:
    rows = sentiment_rows(n, seed=21)
    for i, row in enumerate(rows):  # numbers, negation and a user column, so every default slice has two groups
        if i % 3 == 0:
            row["text"] = row["text"].replace("the", "not the", 1)
        if i % 4 == 0:
            row["text"] += " 10 times"
        row["source"] = "web" if i % 2 else "shop"
    return rows


def test_the_classification_report_recomputes_from_the_predictions(classifier: Path, tmp_path: Path) -> None:
    rows = labelled()
    result = tunelab.analyze(classifier, rows, out=tmp_path / "a", slices=["length", "negation", "numbers", "label",
                                                                          "column:source", "regex:adverb=times$"])
    predictions = tunelab.Predictor.load(classifier).predict([{"text": r["text"]} for r in rows])
    correct = [p["label"] == r["label"] for p, r in zip(predictions, rows)]
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(correct))
    losses = [-math.log(p["scores"][r["label"]]) for p, r in zip(predictions, rows)]
    assert [e["loss"] for e in result["examples"]] == pytest.approx(losses, rel=1e-5)
    hardest = result["hardest"]
    assert [h["loss"] for h in hardest] == pytest.approx(sorted(losses, reverse=True)[:10], rel=1e-5)
    assert all(h["explanation"]["target"] == h["pred"] for h in hardest)
    confusion = next(s for s in result["sections"] if s["title"] == "Confusion matrix")["plot"]["matrix"]
    assert sum(map(sum, confusion)) == len(rows) and sum(confusion[i][i] for i in range(2)) == sum(correct)
    for spec in ("length", "negation", "numbers", "label", "column:source", "regex:adverb=times$"):
        groups = [s for s in result["slices"] if s["slice"] == spec]
        assert sum(g["count"] for g in groups) == len(rows) and len(groups) >= 2, spec
    negated = [c for c, r in zip(correct, rows) if "not " in r["text"]]
    with_negation = next(s for s in result["slices"] if s["group"] == "with negation")
    assert with_negation["count"] == len(negated) and with_negation["accuracy"] == pytest.approx(np.mean(negated))
    assert {len(points) for points in result["maps"].values()} == {len(rows)} and {"pca", "tsne"} <= set(result["maps"])
    files = result["files"]
    for name in ("report", "json", "map_pca", "map_tsne", "reliability", "slices", "confusion_matrix"):
        assert Path(files[name]).is_file(), name
    html = Path(files["report"]).read_text(encoding="utf-8")
    assert "src=\"http" not in html and "href=\"http" not in html  # offline: nothing fetched
    assert html.count("<circle") == len(rows) * len(result["maps"])
    assert json.loads(Path(files["json"]).read_text())["metrics"] == result["metrics"]


def test_calibrate_stores_a_temperature_the_artifact_then_applies(classifier: Path, tmp_path: Path) -> None:
    import shutil

    artifact = tmp_path / "copy"
    shutil.copytree(classifier, artifact)
    texts = [{"text": r["text"]} for r in labelled()]
    before = tunelab.Predictor.load(artifact).predict(texts)
    result = tunelab.analyze(artifact, labelled(), calibrate=True, maps=[], hardest=0)
    temperature = result["calibration"]["temperature"]
    assert temperature != pytest.approx(1.0) and result["calibration"]["stored_temperature"] == temperature
    reloaded = tunelab.Predictor.load(artifact)  # the manifest was replaced; every file still verifies
    assert reloaded.task.state["temperature"] == pytest.approx(temperature)
    after = reloaded.predict(texts)
    for b, a in zip(before, after):
        logits = np.log([b["scores"]["neg"], b["scores"]["pos"]]) / temperature
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert [a["scores"]["neg"], a["scores"]["pos"]] == pytest.approx(expected.tolist(), abs=1e-5)
        assert a["label"] == b["label"]


def test_entity_errors_are_sorted_into_kinds() -> None:
    gold = {("PER", 0, 2), ("LOC", 4, 5), ("ORG", 7, 8), ("PER", 10, 11), ("LOC", 13, 14)}
    pred = {("PER", 0, 1),  # boundary
            ("PER", 4, 5),  # type
            ("LOC", 7, 9),  # type and boundary
            ("PER", 10, 11),  # right
            ("MISC", 16, 17)}  # spurious; LOC 13-14 is missed
    assert sorted(entity_errors(gold, pred)) == ["boundary", "missed", "spurious", "type", "type_and_boundary"]
    assert entity_errors(gold, gold) == []


def test_ner_report_counts_entities_per_type(tiny_bert: Path, tmp_path: Path) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "ner", epochs=2, learning_rate=3e-3), "task": "ner"}
    artifact = tunelab.fit(config, train=toy_sentences(60), validation=toy_sentences(12, seed=9)).artifact_dir
    data = toy_sentences(20, seed=12)
    result = tunelab.analyze(artifact, data, maps=["pca"], hardest=3)
    per_type = {r["type"]: r for r in result["sections"][0]["table"]}
    gold_counts = {"PER": 20, "LOC": 20}  # every toy sentence has one name and one city
    assert {k: per_type[k]["support"] for k in gold_counts} == gold_counts
    errors = {r["error"]: r["count"] for r in result["sections"][1]["table"]}
    wrong = sum(e["loss"] for e in result["examples"])  # wrong entities, gold and predicted
    assert errors["missed"] + errors["spurious"] + 2 * (errors["boundary"] + errors["type"]
                                                        + errors["type_and_boundary"]) == wrong
    assert result["metrics"]["f1"] == pytest.approx(tunelab.Predictor.load(artifact).evaluate(data)["f1"])


@pytest.mark.parametrize(("question", "word"), [("What colour is it?", "what"), ("How many cats?", "how many"),
                                                 ("In which year did it end", "which"), ("Name the river.", "other")])
def test_question_words(question: str, word: str) -> None:
    assert question_word(question) == word


def test_qa_report_by_question_word_and_context_length(tiny_bert: Path, tmp_path: Path) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "qa", epochs=1, learning_rate=3e-3), "task": "qa"}
    artifact = tunelab.fit(config, train=toy_qa(40), validation=toy_qa(8, seed=9)).artifact_dir
    data = toy_qa(12, seed=3) + toy_qa(12, seed=4, filler=3)
    result = tunelab.analyze(artifact, data, maps=[], hardest=2)
    by_word, by_length = result["sections"][0]["table"], result["sections"][1]["table"]
    assert [r["question word"] for r in by_word] == ["what"] and by_word[0]["count"] == 24
    assert len(by_length) == 2 and sorted(r["count"] for r in by_length) == [12, 12]
    metrics = tunelab.Predictor.load(artifact).evaluate(data)
    assert result["metrics"]["f1"] == pytest.approx(metrics["f1"]) and result["metrics"]["exact_match"] == pytest.approx(
        metrics["exact_match"])


def test_generation_report_scores_rouge_by_length(tiny_llama: Path, tmp_path: Path) -> None:
    rows = [{"text": f"the {w} sat on the mat " * (1 + i % 3), "target": f"a {w} sat"} for i, w in
            enumerate(["cat", "dog", "cow", "hen", "fox", "owl", "bee", "elk"])]
    artifact = tunelab.fit({"task": "summarization", "model": str(tiny_llama), "strategy": "zero_shot",
                            "output_dir": str(tmp_path / "sum"), "generate": {"max_new_tokens": 4}}, train=rows).artifact_dir
    result = tunelab.analyze(artifact, rows, maps=["pca"], hardest=2)
    from tunelab.metrics import rouge_each

    outputs = [p["text"] for p in tunelab.Predictor.load(artifact).predict([{"text": r["text"]} for r in rows])]
    expected = np.mean([s["rougeL"] for s in rouge_each(outputs, [[r["target"]] for r in rows])])
    assert result["metrics"]["rougeL"] == pytest.approx(expected)
    titles = [s["title"] for s in result["sections"]]
    assert titles == ["ROUGE by input length (words)", "ROUGE by reference length (words)", "Worst outputs (lowest ROUGE-L)"]
    assert sum(r["count"] for r in result["sections"][0]["table"]) == len(rows)
    assert len(result["maps"]["pca"]) == len(rows)


def test_slices_and_bad_input_are_named(classifier: Path) -> None:
    predictor = tunelab.Predictor.load(classifier)
    with pytest.raises(ConfigError, match="unknown slice 'mood'"):
        tunelab.analyze(predictor, labelled(), slices=["mood"])
    with pytest.raises(ConfigError, match="bad regular expression"):
        tunelab.analyze(predictor, labelled(), slices=["regex:x=("])
    with pytest.raises(DataError, match="no record has a column 'place'"):
        tunelab.analyze(predictor, labelled(), slices=["column:place"], maps=[], hardest=0)
    with pytest.raises(DataError, match=r"row 1, column 'label': missing label"):
        tunelab.analyze(predictor, [{"text": "fine", "label": "pos"}, {"text": "bad"}], maps=[])
    with pytest.raises(DataError, match="unknown label 'meh'"):
        tunelab.analyze(predictor, [{"text": "fine", "label": "meh"}], maps=[])
    with pytest.raises(ConfigError, match="unknown projection 'mds'"):
        tunelab.analyze(predictor, labelled(), maps=["mds"])
    with pytest.raises(DataError, match="no records"):
        tunelab.analyze(predictor, [], maps=[])


def test_slice_table_reports_each_group_against_the_whole() -> None:
    class Exact:
        def analysis_metrics(self, rows):
            return {"accuracy": float(np.mean([r["correct"] for r in rows])) if rows else 0.0}

    rows = [{"text": t, "correct": c} for t, c in [("no way", False), ("yes 2", True), ("yes", True), ("not 3", False)]]
    table = slice_table(Exact(), rows, [{}] * 4, ["negation", "numbers"])
    assert [(r["group"], r["count"], r["accuracy"], r["difference"]) for r in table] == [
        ("with negation", 2, 0.0, -0.5), ("without negation", 2, 1.0, 0.5),
        ("with numbers", 2, 0.5, 0.0), ("without numbers", 2, 0.5, 0.0)]


def test_cli_analyze_writes_the_report(classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in labelled()), encoding="utf-8")
    code = main(["analyze", str(classifier), str(data), "--out", str(tmp_path / "out"), "--slice", "column:source",
                 "--maps", "pca", "--hardest", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy" in out and "ECE" in out
    assert (tmp_path / "out" / "report.html").is_file() and f"report: {tmp_path / 'out' / 'report.html'}" in out
    assert main(["analyze", str(classifier), str(data), "--html", str(tmp_path / "nowhere" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_report_puts_the_validation_analysis_in_the_artifact(tiny_bert: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path / "run", epochs=1, report=True)
    run = tunelab.fit(config, train=sentiment_rows(48), validation=sentiment_rows(24, seed=5))
    report = run.artifact_dir / "report"
    analysis = json.loads((report / "analysis.json").read_text())
    assert analysis["meta"]["examples"] == 24 and analysis["metrics"]["accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert analysis["title"] == "tunelab analysis: run"  # named after the run, not the task or a projection
    manifest = json.loads((run.artifact_dir / "manifest.json").read_text())
    assert "report/report.html" in manifest["files"] and "report/report.html" in manifest["sha256"]


@pytest.mark.slow
def test_an_onnx_export_is_analysed_by_prediction_and_says_what_needs_pytorch(classifier: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    exported = tunelab.export(classifier, tmp_path / "onnx")
    result = tunelab.analyze(exported, labelled(), out=tmp_path / "a", hardest=2)
    assert result["maps"] == {} and any("maps need the model's hidden states" in n for n in result["notes"])
    assert [h["explanation"]["method"] for h in result["hardest"]] == ["occlusion", "occlusion"]
    source = tunelab.analyze(classifier, labelled(), maps=[], hardest=0)
    assert result["metrics"] == pytest.approx(source["metrics"], abs=1e-6)
    assert result["calibration"]["ece_before"] == pytest.approx(source["calibration"]["ece_before"], abs=1e-3)


def test_regression_is_analysed_by_squared_error(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"text": r["text"], "label": 4.0 if r["label"] == "pos" else 1.0} for r in sentiment_rows(48)]
    config = {**tiny_config(tiny_bert, tmp_path / "reg", epochs=1), "task": {"name": "classification",
                                                                             "problem_type": "regression"}}
    artifact = tunelab.fit(config, train=rows).artifact_dir
    result = tunelab.analyze(artifact, rows[:20], maps=["pca"], hardest=3, out=tmp_path / "a")
    predicted = [p["score"] for p in tunelab.Predictor.load(artifact).predict([{"text": r["text"]} for r in rows[:20]])]
    rmse = float(np.sqrt(np.mean([(p - r["label"]) ** 2 for p, r in zip(predicted, rows[:20])])))
    assert result["metrics"] == pytest.approx({"rmse": rmse}) and result["calibration"] is None
    assert result["hardest"][0]["loss"] == pytest.approx(max((p - r["label"]) ** 2 for p, r in zip(predicted, rows[:20])))
    assert Path(result["files"]["report"]).is_file()


@pytest.mark.slow
def test_umap_maps_when_umap_learn_is_installed(classifier: Path) -> None:
    pytest.importorskip("umap", reason="umap-learn is not installed: pip install 'tunelab[analyze]'")
    result = tunelab.analyze(classifier, labelled(), maps=["umap"], hardest=0)
    points = np.asarray(result["maps"]["umap"])
    assert points.shape == (40, 2) and np.isfinite(points).all() and points.std(axis=0).min() > 0


def test_zero_shot_entity_extraction_is_analysed_like_ner(tiny_llama: Path, tmp_path: Path) -> None:
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "zs"), strategy="zero_shot",
                      task={"name": "ner", "labels": ["PER", "LOC"]}, generate={"max_new_tokens": 8})
    data = toy_sentences(6, seed=4)
    result = tunelab.analyze(run.artifact_dir, data, maps=[], hardest=2)
    metrics = tunelab.Predictor.load(run.artifact_dir).evaluate(data)
    assert result["metrics"] == pytest.approx({k: metrics[k] for k in ("precision", "recall", "f1")})
    assert {r["type"] for r in result["sections"][0]["table"]} >= {"PER", "LOC"}
    assert sum(r["count"] for r in result["sections"][1]["table"]) >= sum(e["correct"] is False for e in result["examples"])
