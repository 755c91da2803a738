"""``tunelab export``: ONNX (fp32 and int8) artifacts that Predictor.load opens, with the same task code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import tunelab
from tunelab.cli import main
from tunelab.export import ExportError, compare

from conftest import sentiment_rows, tiny_config

pytestmark = pytest.mark.slow


def _scores(predictions: list[dict]) -> np.ndarray:
    return np.array([[p["scores"][k] for k in sorted(p["scores"])] for p in predictions])


@pytest.fixture(scope="module")
def classifier(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "run"
    return tunelab.fit(tiny_config(tiny_bert, out, epochs=2), train=sentiment_rows(64)).artifact_dir


def test_fp32_export_predicts_like_pytorch(classifier: Path, tmp_path: Path) -> None:
    path = tunelab.export(classifier, tmp_path / "onnx", check=sentiment_rows(24, seed=4), max_drop=0.0)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model_format"] == "onnx" and manifest["export"]["quantization"] == "none"
    assert manifest["export"]["check"]["drop_points"] == 0.0 and manifest["task"] == json.loads(
        (classifier / "manifest.json").read_text())["task"]
    texts = ["the film was great", "a tedious , dreadful meal that went on and on", "ok"]
    torch_model, onnx_model = tunelab.Predictor.load(classifier), tunelab.Predictor.load(path)
    assert type(onnx_model.model).__name__ == "OnnxModel"
    np.testing.assert_allclose(_scores(onnx_model.predict(texts)), _scores(torch_model.predict(texts)), atol=1e-4)
    assert onnx_model.predict("great")["label"] == torch_model.predict("great")["label"]
    assert onnx_model.evaluate(sentiment_rows(24, seed=4)) == torch_model.evaluate(sentiment_rows(24, seed=4))


def test_int8_export_stays_close(classifier: Path, tmp_path: Path) -> None:
    path = tunelab.export(classifier, tmp_path / "int8", quantize="int8")
    texts = [r["text"] for r in sentiment_rows(32, seed=7)]
    quantized = tunelab.Predictor.load(path)
    assert json.loads((path / "manifest.json").read_text())["export"]["quantization"] == "int8"
    assert (path / "model" / "model.onnx").stat().st_size < (classifier / "model" / "model.safetensors").stat().st_size
    diff = np.abs(_scores(quantized.predict(texts)) - _scores(tunelab.Predictor.load(classifier).predict(texts)))
    assert diff.max() < 0.05


def test_fp16_weights_halve_the_file_and_keep_the_predictions(classifier: Path, tmp_path: Path) -> None:
    full = tunelab.export(classifier, tmp_path / "fp32")
    half = tunelab.export(classifier, tmp_path / "fp16", quantize="fp16-weights")
    assert json.loads((half / "manifest.json").read_text())["export"]["quantization"] == "fp16-weights"
    size = (half / "model" / "model.onnx").stat().st_size / (full / "model" / "model.onnx").stat().st_size
    assert 0.45 < size < 0.65  # the embeddings and matrices halve; biases and norms stay float32
    texts = [r["text"] for r in sentiment_rows(32, seed=7)]
    diff = np.abs(_scores(tunelab.Predictor.load(half).predict(texts)) - _scores(tunelab.Predictor.load(full).predict(texts)))
    assert 0 < diff.max() < 1e-3  # the weights did change (rounded), the scores barely


NAMES, CITIES = ["Ann", "Bob", "Carl", "Dora"], ["Paris", "Lima", "Oslo", "Rome"]
TASK_DATA = {
    "ner": ([{"tokens": [n, "lives", "in", c, "."], "tags": ["B-PER", "O", "O", "B-LOC", "O"]}
             for n in NAMES for c in CITIES], {"case_markers": False},
            ["Ann lives in Rome .", ["Dora", "lives", "in", "Lima", "."]]),
    "qa": ([{"question": f"what color was the {a} ?", "context": f"the {a} was {c} .",
             "answers": {"text": [c], "answer_start": [len(f"the {a} was ")]}}
            for a in ("cat", "dog", "cow", "fox") for c in ("red", "blue", "green")], {},
           [{"question": "what color was the cat ?", "context": "the cat was blue . the dog was red ."}]),
    "relation": ([{"text": f"the <e1>{a}</e1> {v} the <e2>{b}</e2>", "label": label}
                  for a, b in (("storm", "flood"), ("box", "jar"), ("fire", "virus"))
                  for v, label in (("caused", "Cause-Effect(e1,e2)"), ("contains", "Content-Container(e1,e2)"))] * 2,
                 {}, ["the <e1>jar</e1> contains the <e2>box</e2>", "the <e1>fire</e1> caused the <e2>storm</e2>"]),
}


@pytest.mark.parametrize("task", ["ner", "qa", "relation"])
def test_other_encoder_tasks_export_with_parity(task: str, tiny_bert: Path, tmp_path: Path) -> None:
    rows, options, inputs = TASK_DATA[task]
    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=1)
    cfg["task"] = {"name": task, **options}
    run = tunelab.fit(cfg, train=rows)
    path = tunelab.export(run.artifact_dir, tmp_path / "onnx")
    a, b = tunelab.Predictor.load(run.artifact_dir).predict(inputs), tunelab.Predictor.load(path).predict(inputs)
    key = {"ner": "tags", "qa": "answer", "relation": "label"}[task]
    assert [p[key] for p in a] == [p[key] for p in b]
    score = {"ner": None, "qa": "score", "relation": "score"}[task]
    if score:
        np.testing.assert_allclose([p[score] for p in a], [p[score] for p in b], atol=1e-4)


def test_lora_is_merged_and_prompt_tuning_refused(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "lora", epochs=1)
    cfg["method"] = {"name": "lora", "r": 4}
    run = tunelab.fit(cfg, train=sentiment_rows(32))
    path = tunelab.export(run.artifact_dir, tmp_path / "lora-onnx")
    texts = ["the show was superb", "the hotel was awful"]
    np.testing.assert_allclose(_scores(tunelab.Predictor.load(path).predict(texts)),
                               _scores(run.live.predict(texts)), atol=1e-4)
    cfg = tiny_config(tiny_bert, tmp_path / "pt", epochs=1)
    cfg["method"] = {"name": "prompt_tuning", "num_virtual_tokens": 2}
    run = tunelab.fit(cfg, train=sentiment_rows(32))
    with pytest.raises(tunelab.ConfigError, match="virtual tokens at run time"):
        tunelab.export(run.artifact_dir, tmp_path / "pt-onnx")
    assert not (tmp_path / "pt-onnx").exists()


def test_a_failed_check_writes_nothing_and_a_damaged_export_is_named(classifier: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    source = tunelab.Predictor.load(classifier)

    class Worse:
        task = source.task

        def evaluate(self, records):
            return {"accuracy": source.evaluate(records)["accuracy"] - 0.25}

    with pytest.raises(ExportError, match=r"a drop of 25.00 points, more than max_drop=1.0"):
        compare(source, Worse(), sentiment_rows(8), max_drop=1.0)
    path = tunelab.export(classifier, tmp_path / "onnx")
    blob = bytearray((path / "model" / "model.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (path / "model" / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(tunelab.ArtifactError, match="model.onnx has changed"):
        tunelab.Predictor.load(path)
    blob[len(blob) // 2] ^= 0xFF
    (path / "model" / "model.onnx").write_bytes(bytes(blob))  # restored
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["export"]["inputs"] = ["input_ids", "pixel_values"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tunelab.ArtifactError, match="does not match its manifest"):
        tunelab.Predictor.load(path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(tunelab.ConfigError, match=r"pip install 'tunelab\[onnx\]'"):
        tunelab.export(classifier, tmp_path / "again")


def test_cli_export_and_predict(classifier: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(16, seed=2)))
    assert main(["export", str(classifier), "--output", str(tmp_path / "x"), "--quantize", "int8", "--check",
                 str(data), "--max-drop", "100"]) == 0
    assert "drop" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "x"), "the film was great"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("pos", "neg")
    assert main(["export", str(classifier), "--quantize", "int4"]) == 2
    assert "the onnx format quantizes to int8, fp16-weights" in capsys.readouterr().err


def test_pruning_removes_heads_and_neurons_and_exports(classifier: Path, tmp_path: Path, capsys) -> None:
    import torch

    from tunelab.compress import prune_ffn, prune_heads

    source = tunelab.Predictor.load(classifier)
    model = source.model
    texts = ["the film was great", "the meal was dull and tedious"]
    batch = source.task.collate(source.processor)(
        source.task.encode(source.as_records(texts), source.processor, with_labels=False))
    # the tiny model: 2 layers of 2 heads (size 16) and 64 feed-forward neurons
    assert prune_heads(model, 0.5) == 2 and prune_ffn(model, 0.25) == 32
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.out_features == 16 and layer.intermediate.dense.out_features == 48
    with torch.inference_mode():
        pruned_logits = model(**batch).logits  # the sliced model still runs
    path = tunelab.compress(classifier, tmp_path / "pruned", heads=0.5, ffn=0.25, check=sentiment_rows(16), max_drop=100)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["compression"]["removed"] == {"heads": 2, "ffn_neurons": 32}
    assert manifest["compression"]["parameters_after"] < manifest["compression"]["parameters_before"]
    loaded = tunelab.Predictor.load(path)
    np.testing.assert_allclose(_scores(loaded.predict(texts)), torch.softmax(pruned_logits, -1).numpy(), atol=1e-4)
    fresh = tunelab.Predictor.load(classifier).model  # the source artifact is untouched
    assert fresh.bert.encoder.layer[0].intermediate.dense.out_features == 64
    with pytest.raises(tunelab.ConfigError, match="give a share between 0 and 1"):
        tunelab.compress(classifier, tmp_path / "x", heads=1.0)
    assert main(["compress", str(classifier), "--prune", "heads=0.5", "--output", str(tmp_path / "cli")]) == 0
    assert main(["compress", str(classifier), "--prune", "layers=0.5"]) == 2
    assert "give heads=SHARE" in capsys.readouterr().err


def test_recovery_training_after_pruning(classifier: Path, tmp_path: Path) -> None:
    texts = [r["text"] for r in sentiment_rows(12, seed=8)]
    plain = tunelab.compress(classifier, tmp_path / "plain", heads=0.5)
    recovered = tunelab.compress(classifier, tmp_path / "recovered", heads=0.5, recover_data=sentiment_rows(80, seed=5),
                                 recover_steps=6)
    recovery = json.loads((recovered / "manifest.json").read_text())["compression"]["recovery_training"]
    assert recovery["steps"] == 6 and recovery["records"] == 72 and "accuracy" in recovery
    assert json.loads((plain / "manifest.json").read_text())["compression"]["recovery_training"] is None
    a = _scores(tunelab.Predictor.load(plain).predict(texts))
    b = _scores(tunelab.Predictor.load(recovered).predict(texts))
    assert np.abs(a - b).max() > 1e-6  # the pruned weights trained on (the same weights export identically)
