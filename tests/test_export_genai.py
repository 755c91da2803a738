"""``tunelab export --format onnx-genai``: causal-LM artifacts on ONNX Runtime GenAI, behind the same generation
code as the PyTorch model (greedy, beam, stop strings, streaming, batches of different lengths)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.causal_lm import generate_ids, load_tokenizer, stream_ids
from tunelab.cli import main
from tunelab.config import GenerateConfig

from conftest import sentiment_rows, tiny_config

pytestmark = pytest.mark.slow

ROWS = [{"text": f"the {a} ate the {b}", "target": f"{a} ate"} for a in ("cat", "dog", "fox", "owl")
        for b in ("fish", "cake", "seed", "rice")]
TEXTS = ["the cat ate the rice", "a much longer text about the owl that ate all of the corn in the barn at night",
         "x", "a prompt with <|endoftext|> inside"]


@pytest.fixture(scope="module")
def zero_shot(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zs") / "run"
    return tunelab.fit({"task": "summarization", "model": str(tiny_llama), "strategy": "zero_shot",
                        "output_dir": str(out), "generate": {"max_new_tokens": 12}}, train=ROWS).artifact_dir


@pytest.fixture(scope="module")
def engine(zero_shot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tunelab.export(zero_shot, tmp_path_factory.mktemp("engine") / "fp32", format="onnx-genai", quantize="fp32")


def test_the_engine_generates_what_pytorch_generates(zero_shot: Path, engine: Path, tiny_llama: Path) -> None:
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["model_format"] == "onnx-genai" and manifest["strategy"] == "zero_shot"
    assert manifest["export"]["quantization"] == "fp32" and manifest["export"]["runtime"].startswith("onnxruntime-genai")
    source, exported = tunelab.Predictor.load(zero_shot), tunelab.Predictor.load(engine)
    assert type(exported.model).__name__ == "GenAIModel"
    tok = load_tokenizer(tiny_llama)
    pad = manifest["export"]["pad_token_id"]
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    assert any(pad in p for p in prompts)  # one prompt holds the engine's pad token: it must run on its own
    for cfg in (GenerateConfig(max_new_tokens=16, batch_size=4), GenerateConfig(max_new_tokens=16, stop=["the"]),
                GenerateConfig(max_new_tokens=8, strategy="beam", num_beams=3)):
        expected = generate_ids(source.model, tok, prompts, cfg, progress=False)
        assert generate_ids(exported.model, tok, prompts, cfg, progress=False) == expected
        assert any(len(text.split()) > 3 for text in expected)  # the random model does say something
    streamed = "".join(stream_ids(exported.model, tok, prompts[1], GenerateConfig(max_new_tokens=16)))
    assert streamed == "".join(stream_ids(source.model, tok, prompts[1], GenerateConfig(max_new_tokens=16)))
    # the task path: chat template, decoding, evaluation without a loss (the engine has no forward pass)
    assert exported.predict(TEXTS) == source.predict(TEXTS)
    metrics = exported.evaluate(ROWS[:4])
    assert "rougeL" in metrics and "loss" not in metrics
    with pytest.raises(tunelab.ConfigError, match="only generates"):
        exported.model(input_ids=torch.tensor([[1, 2]]))


def test_a_lora_artifact_is_merged_and_int4_is_smaller(tiny_llama: Path, engine: Path, tmp_path: Path) -> None:
    cfg = {"task": {"name": "summarization", "eval_generate": 0}, "model": str(tiny_llama), "strategy": "finetune",
           "output_dir": str(tmp_path / "lora"), "data": {"max_length": 64}, "generate": {"max_new_tokens": 10},
           "method": {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
           "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "seed": 1}}
    run = tunelab.fit(cfg, train=ROWS)
    path = tunelab.export(run.artifact_dir, tmp_path / "lora-engine", format="onnx-genai", quantize="fp32",
                          check=ROWS[:4], max_drop=0.0)
    check = json.loads((path / "manifest.json").read_text())["export"]["check"]
    assert check["metric"] == "rougeL" and check["drop_points"] == 0.0
    tok = load_tokenizer(tiny_llama)
    merged = tunelab.Predictor.load(run.artifact_dir).model.merge_and_unload()
    prompts = [tok(t)["input_ids"] for t in TEXTS[:3]]
    cfg16 = GenerateConfig(max_new_tokens=16)
    assert generate_ids(tunelab.Predictor.load(path).model, tok, prompts, cfg16, progress=False) == \
        generate_ids(merged, tok, prompts, cfg16, progress=False)
    assert json.loads((tunelab.export(run.artifact_dir, tmp_path / "int8", format="onnx-genai") / "manifest.json")
                      .read_text())["export"]["quantization"] == "int8"  # the default
    small = tunelab.export(run.artifact_dir, tmp_path / "int4", format="onnx-genai", quantize="int4")
    assert (small / "model" / "model.onnx.data").stat().st_size < 0.6 * (path / "model" / "model.onnx.data").stat().st_size
    assert len(tunelab.Predictor.load(small).predict(TEXTS)) == len(TEXTS)


def test_what_cannot_be_exported_says_why(tiny_bert: Path, tiny_llama: Path, zero_shot: Path, engine: Path,
                                          tmp_path: Path, monkeypatch) -> None:
    classifier = tunelab.fit(tiny_config(tiny_bert, tmp_path / "cls", epochs=1), train=sentiment_rows(16)).artifact_dir
    with pytest.raises(tunelab.ConfigError, match="task classification .* cannot be exported to onnx-genai"):
        tunelab.export(classifier, format="onnx-genai")
    with pytest.raises(tunelab.ConfigError, match="task summarization .* cannot be exported to onnx: its format is onnx-genai"):
        tunelab.export(zero_shot, format="onnx")
    with pytest.raises(tunelab.ConfigError, match="onnx-genai format quantizes to int8, int4, fp32"):
        tunelab.export(zero_shot, format="onnx-genai", quantize="int2")
    with pytest.raises(tunelab.ConfigError, match="not one of onnx, onnx-genai"):
        tunelab.export(zero_shot, format="gguf")
    scorer = tunelab.fit({"task": {"name": "classification", "labels": ["pos", "neg"]}, "model": str(tiny_llama),
                          "strategy": "zero_shot", "output_dir": str(tmp_path / "zsc")}).artifact_dir
    with pytest.raises(tunelab.ConfigError, match="scores the label words with the model's forward pass"):
        tunelab.export(scorer, format="onnx-genai")
    with pytest.raises(tunelab.ConfigError, match="already an exported engine"):
        tunelab.export(engine, tmp_path / "again", format="onnx-genai")
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)
    with pytest.raises(tunelab.ConfigError, match=r"pip install 'tunelab\[onnx\]'"):
        tunelab.export(zero_shot, tmp_path / "missing", format="onnx-genai")


def test_a_damaged_engine_is_named_at_load(engine: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(engine, tmp_path / "copy"))
    data = copy / "model" / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(tunelab.ArtifactError, match="model.onnx.data has changed"):
        tunelab.Predictor.load(copy)


def test_cli_exports_and_streams(zero_shot: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-engine"
    assert main(["export", str(zero_shot), "--format", "onnx-genai", "--quantize", "fp32", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["predict", str(out), "the cat ate the rice"]) == 0
    whole = json.loads(capsys.readouterr().out.splitlines()[0])["text"]
    assert main(["predict", str(out), "the cat ate the rice", "--stream"]) == 0
    assert capsys.readouterr().out.strip() == whole
    assert main(["export", str(zero_shot), "--format", "onnx", "--output", str(tmp_path / "no")]) == 2
    assert "cannot be exported to onnx" in capsys.readouterr().err
