"""Integration: the packaged MiniLM with LoRA for a few steps, artifact round trip, identical predictions."""

from pathlib import Path

import numpy as np
import pytest

import tunelab

from conftest import sentiment_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_minilm_lora_round_trip(tmp_path: Path) -> None:
    rows = sentiment_rows(96, seed=2)
    run = tunelab.fit({"model": "minilm", "method": "lora", "output_dir": str(tmp_path / "run"),
                       "data": {"max_length": 32},
                       "train": {"max_steps": 30, "batch_size": 16, "learning_rate": 3e-3, "eval_every": 15}},
                      train=rows)
    assert run.train.steps == 30 and len(run.train.evals) == 2
    texts = ["the hotel was superb", "the game was tedious", "the album was charming"]
    first = tunelab.Predictor.load(run.artifact_dir).predict(texts)
    second = tunelab.Predictor.load(tmp_path / "run").predict(texts)
    assert first == second
    assert run.metrics["accuracy"] >= 0.7, run.metrics
    # scores are probabilities over the inferred label map
    np.testing.assert_allclose([sum(p["scores"].values()) for p in first], 1.0, rtol=1e-5)


def test_demo_command_runs(tmp_path: Path, capsys) -> None:
    from tunelab.cli import main

    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "predictions from the reloaded artifact" in out and "confusion_matrix.png" in out


def test_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    """The README's API example is real code: run it as written (from a copy of the repo root's view)."""
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(import tunelab\n.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(root)
    code = code.replace('"runs/readme"', repr(str(tmp_path / "readme")))
    exec(compile(code, "README.md", "exec"), {})


def test_smollm2_zero_shot_sentiment_and_summary(tmp_path: Path) -> None:
    """The packaged SmolLM2, no training: a calibrated zero-shot classifier and a zero-shot summarizer are
    artifacts that reload to the same predictions (quality is measured in bench/fewshot_sst2.py and
    bench/dialogsum.py: the 135M model is a weak zero-shot classifier, ~61% on SST-2)."""
    texts = ["An absolute delight: I loved every minute of this wonderful film.",
             "The worst meal I have ever had: cold, bland and overpriced."]
    run = tunelab.fit(model="smollm2", strategy="zero_shot", output_dir=str(tmp_path / "zs"),
                      task={"name": "classification", "labels": ["negative", "positive"]})
    prior = np.exp(run.live.task.state["calibration"])
    assert prior.sum() == pytest.approx(1.0) and len(prior) == 2
    live, loaded = run.live.predict(texts), tunelab.Predictor.load(run.artifact_dir).predict(texts)
    assert live == loaded
    assert all(sum(p["scores"].values()) == pytest.approx(1.0) for p in live)

    summ = tunelab.fit(model="smollm2", strategy="zero_shot", output_dir=str(tmp_path / "sum"),
                       task="summarization", generate={"max_new_tokens": 24})
    predictor = tunelab.Predictor.load(summ.artifact_dir)
    dialogue = "#Person1#: Can we move the meeting to Friday?\n#Person2#: Sure, Friday at ten works for me."
    text = predictor.predict([dialogue])[0]["text"]
    assert len(text.split()) >= 3 and "".join(predictor.stream(dialogue)).strip() == text
