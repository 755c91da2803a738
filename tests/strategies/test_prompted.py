"""Zero-shot and in-context few-shot prompting behind the same fit / artifact / Predictor API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tunelab
from tunelab.causal_lm import continuation_logprobs, load_tokenizer, next_token_logprobs
from tunelab.errors import ConfigError, DataError
from tunelab.metrics import span_metrics
from tunelab.tasks.prompted_ner import parse_entities

from conftest import sentiment_rows


def test_entity_parser_finds_spans_and_reports_the_rest() -> None:
    text = "Angela Merkel met Macron in Paris and then flew to Paris again."
    out = "PER: Angela Merkel\n- per: Macron\nLOC: Paris; Paris\nORG: Acme Corp\nThe answer is above.\nnone"
    entities, unparsed = parse_entities(out, text, ["PER", "LOC", "ORG"])
    assert [(e["type"], e["text"], e["start"]) for e in entities] == [
        ("PER", "Angela Merkel", 0), ("PER", "Macron", 18), ("LOC", "Paris", 28), ("LOC", "Paris", 51)]
    assert unparsed == ["ORG: Acme Corp", "The answer is above."]  # not in the text / no known type


def test_span_metrics_are_strict() -> None:
    gold = [{("PER", 0, 5), ("LOC", 10, 15)}]
    pred = [{("PER", 0, 5), ("LOC", 10, 14)}]
    m = span_metrics(gold, pred, ["PER", "LOC"])
    assert m["precision"] == m["recall"] == 0.5 and m["per_type"]["LOC"]["f1"] == 0.0


@pytest.mark.slow
def test_single_token_fast_path_equals_general_scoring(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [tok("hello there, how")["input_ids"], tok("a much longer prompt that needs padding on the left")["input_ids"]]
    words = [tok(" are", add_special_tokens=False)["input_ids"][0], tok(" is", add_special_tokens=False)["input_ids"][0]]
    fast = next_token_logprobs(model, tok, prompts, words)
    slow = continuation_logprobs(model, tok, [p for p in prompts for _ in words], [[w] for _ in prompts for w in words])
    np.testing.assert_allclose(fast.reshape(-1), slow, atol=1e-4)


@pytest.mark.slow
def test_zero_shot_classifier_is_an_artifact_like_any_other(tiny_llama: Path, tmp_path: Path) -> None:
    dev = sentiment_rows(12, seed=5)
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "zs"), validation=dev,
                      task={"name": "classification", "labels": ["neg", "pos"]},
                      prompt={"template": "Review: {text}\nIs it {labels}?", "verbalizers": {"pos": "great", "neg": "bad"}})
    assert run.train is None
    hits = [p["label"] == r["label"] for p, r in zip(run.live.predict(dev), dev)]
    assert run.metrics["accuracy"] == pytest.approx(sum(hits) / len(hits))
    manifest = run.live.manifest
    assert manifest["strategy"] == "zero_shot" and manifest["model_format"] == "none"
    assert len(manifest["task"]["state"]["calibration"]) == 2  # content-free label prior was measured
    loaded = tunelab.Predictor.load(run.artifact_dir)
    texts = ["the film was great", "the meal was awful"]
    assert loaded.predict(texts) == run.live.predict(texts)
    assert set(loaded.predict(texts)[0]["scores"]) == {"neg", "pos"}
    assert tunelab.evaluate(run.artifact_dir, dev)["accuracy"] == run.metrics["accuracy"]


def test_calibration_removes_a_constant_label_bias(tiny_llama: Path, tmp_path: Path) -> None:
    from tunelab.tasks.prompted_classification import PromptClassifier

    base = {"model": str(tiny_llama), "output_dir": str(tmp_path / "a"), "task": {"name": "classification",
            "labels": ["neg", "pos"]}, "strategy": "zero_shot"}
    calibrated = tunelab.fit({**base, "prompt": {"calibrate": True}}).live
    raw = tunelab.fit({**base, "output_dir": str(tmp_path / "b"), "prompt": {"calibrate": False}}).live
    texts = [r["text"] for r in sentiment_rows(20, seed=2)]
    raw_pos = np.array([p["scores"]["pos"] for p in raw.predict(texts)])
    cal_pos = np.array([p["scores"]["pos"] for p in calibrated.predict(texts)])
    prior = np.exp(calibrated.task.state["calibration"])
    # p_cal ∝ p_raw / prior: check the identity on every input.
    expected = (raw_pos / prior[1]) / (raw_pos / prior[1] + (1 - raw_pos) / prior[0])
    np.testing.assert_allclose(cal_pos, expected, rtol=1e-5)
    assert isinstance(calibrated.task, PromptClassifier)


@pytest.mark.slow
def test_few_shot_in_context_picks_similar_demonstrations(tiny_llama: Path, tiny_bert: Path, tmp_path: Path) -> None:
    pool = [{"text": "the soup was cold", "label": "neg"}, {"text": "the movie was superb", "label": "pos"},
            {"text": "the soup was hot and tasty", "label": "pos"}, {"text": "the movie was a bore", "label": "neg"}]
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "fs"), train=pool, strategy="few_shot",
                      prompt={"demonstrations": 2, "embedder": str(tiny_bert)})
    clf = run.live.task
    demos = clf._demos_for(["the soup was cold"])[0]
    assert len(demos) == 2 and demos[-1]["text"] == "the soup was cold"  # most similar goes last
    assert {d["label"] for d in demos} == {"neg", "pos"}  # one per label, not the two nearest negatives
    loaded = tunelab.Predictor.load(run.artifact_dir)
    assert loaded.predict(["the movie was superb"]) == run.live.predict(["the movie was superb"])


def test_few_shot_calibrates_each_input_against_its_own_demonstrations(tiny_llama: Path, tiny_bert: Path,
                                                                       tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunelab.probabilities import softmax as _softmax
    from tunelab.tasks.prompted_classification import CONTENT_FREE

    pool = sentiment_rows(8, seed=3)
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "fs"), train=pool, strategy="few_shot",
                      prompt={"demonstrations": 2, "embedder": str(tiny_bert)})
    clf = run.live.task
    assert clf.state["calibration"] is None  # no single prior: it depends on each input's demonstrations
    texts = ["the film was great", "the meal was awful and cold"]
    tok = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    demos = clf._demos_for(texts)
    limit = clf._limit(model, tok)
    inputs = [clf._prompt_ids(tok, clf._messages(t, None, d), limit, "x", []) for t, d in zip(texts, demos)]
    free = [clf._prompt_ids(tok, clf._messages(CONTENT_FREE[0], None, d), limit, "x", []) for d in demos]
    expected = _softmax(clf._label_logprobs(model, tok, inputs) - np.log(_softmax(clf._label_logprobs(model, tok, free))))
    got = np.array([[p["scores"][name] for name in clf.labels] for p in run.live.predict(texts)])
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_zero_shot_entities_report_unparsed_output(tiny_llama: Path, tmp_path: Path) -> None:
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "ner"), strategy="zero_shot",
                      task={"name": "ner", "labels": ["PER", "LOC"]}, generate={"max_new_tokens": 8},
                      validation=[{"text": "Anna lives in Rome", "entities": [{"start": 0, "end": 4, "label": "PER"},
                                                                             {"start": 14, "end": 18, "label": "LOC"}]}])
    assert {"precision", "recall", "f1", "unparsed_lines", "per_type"} <= set(run.metrics)
    out = tunelab.Predictor.load(run.artifact_dir).predict(["Anna lives in Rome"])[0]
    assert set(out) == {"entities", "unparsed", "raw"}


def test_prompt_longer_than_the_context_window_is_truncated_and_reported(tiny_llama: Path, tmp_path: Path) -> None:
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "long"), strategy="zero_shot",
                      task={"name": "classification", "labels": ["a", "b"]}, prompt={"calibrate": False})
    long_text = " ".join(["word"] * 600)  # the tiny model's window is 256 positions
    out = run.live.predict([long_text])
    assert out[0]["label"] in ("a", "b")
    assert run.live.notes and "truncated to the last" in run.live.notes[0]


def test_strategy_mismatches_are_clear(tiny_llama: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from tunelab.config import build_config

    with pytest.raises(ConfigError, match="is an encoder"):
        tunelab.fit(model=str(tiny_bert), output_dir=str(tmp_path / "x"), strategy="zero_shot",
                    task={"name": "classification", "labels": ["a", "b"]})
    with pytest.raises(ConfigError, match="is a causal LM"):
        tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "y"), strategy="setfit", train=sentiment_rows(8))
    with pytest.raises(DataError, match="needs the label names"):
        tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "z"), strategy="zero_shot")
    with pytest.raises(ConfigError, match="strategy 'setfit' is not available for task summarization"):
        build_config({"task": "summarization", "strategy": "setfit"})


def test_cli_trains_a_zero_shot_config_and_predicts(tiny_llama: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tunelab.cli import main

    config = tmp_path / "zs.yaml"
    config.write_text(f"model: {tiny_llama}\nstrategy: zero_shot\noutput_dir: {tmp_path / 'run'}\n"
                      "task: {name: classification, labels: [neg, pos]}\n"
                      "prompt: {template: 'Text: {text} Answer {labels}.'}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 0
    assert "strategy: zero_shot" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "run"), "a fine film", "a dull film"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [set(x) for x in lines] == [{"row", "label", "score", "scores"}] * 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: zero_shot\nprompt: {template: 'no slot here'}\n", encoding="utf-8")
    assert main(["train", str(bad)]) == 2
    assert "prompt.template: the template has no {text} slot" in capsys.readouterr().err
