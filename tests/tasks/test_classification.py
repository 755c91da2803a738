"""Classification end to end on a tiny random BERT: every problem type and method, artifacts, predictions."""

from pathlib import Path

import numpy as np
import pytest
import torch

import tunelab
from tunelab import Predictor

from conftest import sentiment_rows, tiny_config


def _fit(tiny_bert: Path, out: Path, rows=None, method="full", task=None, data=None, **train):
    cfg = tiny_config(tiny_bert, out, **train)
    cfg["method"] = method if isinstance(method, dict) else \
        {"name": method, **({"train_word_embeddings": True} if method == "full" else {})}  # random weights: all learn
    if task:
        cfg["task"] = task
    if data:
        cfg["data"] = {**cfg["data"], **data}
    return tunelab.fit(cfg, train=rows if rows is not None else sentiment_rows(80))


@pytest.mark.slow
def test_single_label_full_learns_and_writes_artifact(tiny_bert: Path, tmp_path: Path) -> None:
    run = _fit(tiny_bert, tmp_path / "run", epochs=6, learning_rate=3e-3)
    assert run.metrics["accuracy"] >= 0.85, run.metrics
    art = run.artifact_dir
    expected = {"manifest.json", "config.yaml", "metrics.json", "history.json", "model/model.safetensors",
                "model/config.json", "tokenizer/tokenizer.json", "plots/training_curves.png", "plots/confusion_matrix.png"}
    present = {str(p.relative_to(art)) for p in art.rglob("*") if p.is_file()}
    assert expected <= present, expected - present
    manifest = __import__("json").loads((art / "manifest.json").read_text())
    assert manifest["task"]["state"]["labels"] == ["neg", "pos"]
    assert manifest["model_format"] == "full" and manifest["libraries"]["torch"]
    assert set(run.metrics) >= {"accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_micro", "per_class", "confusion_matrix"}
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_artifact_round_trip_gives_identical_predictions(tiny_bert: Path, tmp_path: Path) -> None:
    run = _fit(tiny_bert, tmp_path / "run", method="lora", epochs=1)
    texts = ["the film was great", "the meal was dull", "a long sentence " * 5]
    in_memory = run.live.predict(texts)  # the model as trained, never saved
    loaded = Predictor.load(tmp_path / "run").predict(texts)
    again = Predictor.load(run.artifact_dir).predict(texts)
    assert loaded == again
    assert [p["label"] for p in loaded] == [p["label"] for p in in_memory]
    np.testing.assert_allclose([p["scores"]["pos"] for p in loaded], [p["scores"]["pos"] for p in in_memory], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "adalora", "ia3", "prompt_tuning", "prefix_tuning"])
def test_peft_methods_train_save_and_reload(method: str, tiny_bert: Path, tmp_path: Path) -> None:
    options = {"num_virtual_tokens": 4} if method.endswith("_tuning") else {}
    run = _fit(tiny_bert, tmp_path / method, method={"name": method, **options}, epochs=1, batch_size=16)
    assert run.parameters["trainable"] < run.parameters["total"]
    manifest = __import__("json").loads((run.artifact_dir / "manifest.json").read_text())
    assert manifest["model_format"] == "peft"
    assert (run.artifact_dir / "model" / "adapter_model.safetensors").is_file()
    # The head is always trained and saved: its weights are in the adapter file.
    from safetensors import safe_open

    with safe_open(run.artifact_dir / "model" / "adapter_model.safetensors", "pt") as f:
        assert any("classifier" in k for k in f.keys())
    preds = Predictor.load(run.artifact_dir).predict(["the show was superb", "the book was tedious"])
    assert [set(p) for p in preds] == [{"label", "score", "scores"}] * 2


@pytest.mark.slow
def test_lora_merge_matches_unmerged(tiny_bert: Path, tmp_path: Path) -> None:
    kw = dict(epochs=1, learning_rate=5e-3)
    unmerged = _fit(tiny_bert, tmp_path / "u", method={"name": "lora"}, **kw)
    merged = _fit(tiny_bert, tmp_path / "m", method={"name": "lora", "merge": True}, **kw)
    texts = [r["text"] for r in sentiment_rows(12, seed=5)]
    a = Predictor.load(unmerged.artifact_dir).predict(texts)
    b = Predictor.load(merged.artifact_dir).predict(texts)
    assert __import__("json").loads((merged.artifact_dir / "manifest.json").read_text())["model_format"] == "full"
    np.testing.assert_allclose([p["score"] for p in a], [p["score"] for p in b], atol=1e-5)
    assert [p["label"] for p in a] == [p["label"] for p in b]


@pytest.mark.slow
def test_model_part_loads_with_plain_transformers_and_peft(tiny_bert: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    full = _fit(tiny_bert, tmp_path / "full", epochs=1)
    plain = AutoModelForSequenceClassification.from_pretrained(full.artifact_dir / "model")
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    lora = _fit(tiny_bert, tmp_path / "lora", method="lora", epochs=1)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = PeftModel.from_pretrained(base, lora.artifact_dir / "model").eval()
    ours = Predictor.load(lora.artifact_dir)
    batch = ours.processor(["the game was brilliant"], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    expected = ours.predict(["the game was brilliant"])[0]["scores"]["pos"]
    assert abs(torch.softmax(logits, -1)[0, 1].item() - expected) < 1e-5


def test_multi_label(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"text": f"the {a} {b}", "labels": [a, b] if a != b else [a]} for a in ("red", "blue", "green") for b in ("red", "blue", "green")] * 6
    run = _fit(tiny_bert, tmp_path / "ml", rows=rows, task={"name": "classification", "problem_type": "multi_label"},
               data={"label_column": "labels"}, epochs=8, learning_rate=3e-3)
    assert {"f1_micro", "f1_macro", "subset_accuracy", "per_class"} <= set(run.metrics)
    assert run.metrics["f1_micro"] > 0.6
    pred = Predictor.load(run.artifact_dir).predict(["the red blue"])[0]
    assert set(pred) == {"labels", "scores"} and set(pred["scores"]) == {"blue", "green", "red"}


@pytest.mark.slow
def test_regression(tiny_bert: Path, tmp_path: Path) -> None:
    words = {"awful": 1.0, "poor": 2.0, "fine": 3.0, "good": 4.0, "superb": 5.0}
    rows = [{"text": f"the hotel was {w}", "label": v} for w, v in words.items()] * 12
    run = _fit(tiny_bert, tmp_path / "reg", rows=rows, task={"name": "classification", "problem_type": "regression"},
               epochs=10, learning_rate=3e-3)
    assert {"rmse", "mae", "pearson", "spearman", "r2"} <= set(run.metrics)
    assert run.metrics["pearson"] > 0.5, run.metrics
    pred = Predictor.load(run.artifact_dir).predict(["the hotel was superb", "the hotel was awful"])
    assert pred[0]["score"] > pred[1]["score"]


def test_sentence_pairs_and_class_weights(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"a": f"word{i % 7}", "b": f"word{i % 7}" if i % 3 else f"word{(i + 1) % 7}", "y": "same" if i % 3 else "diff"} for i in range(60)]
    run = _fit(tiny_bert, tmp_path / "pairs", rows=rows, data={"text_column": "a", "text_pair_column": "b", "label_column": "y"},
               epochs=2, class_weights="balanced")
    p = Predictor.load(run.artifact_dir)
    feats = p.task.encode(p.as_records([("word1", "word2")]), p.processor, with_labels=False)
    assert 1 in feats[0]["token_type_ids"]  # the second text is segment 1
    assert p.predict([("word1", "word1")])[0]["label"] in ("same", "diff")
    with pytest.raises(tunelab.DataError, match="unknown labels"):
        _fit(tiny_bert, tmp_path / "bad", rows=rows, data={"text_column": "a", "text_pair_column": "b", "label_column": "y"},
             class_weights={"nope": 2.0})


def test_sgd_cosine_and_early_stopping(tiny_bert: Path, tmp_path: Path) -> None:
    run = _fit(tiny_bert, tmp_path / "sgd", epochs=20, optimizer="sgd", scheduler="cosine", learning_rate=1e-6,
               eval_every=2, early_stopping_patience=2, keep_best=True)
    assert run.train.stopped_early and run.train.steps < 20 * 9
    assert run.train.best_step is not None
