"""Explanations: every method attributes the words of the input, integrated gradients is faithful (beats random
words on comprehensiveness) on a small trained classifier, and bad requests are named."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import tunelab
from tunelab.cli import main
from tunelab.explain import faithfulness, register_explainer

from conftest import NEGATIVE, NOUNS, POSITIVE, sentiment_rows, tiny_config, toy_relations

pytest.importorskip("captum", reason="captum is not installed: pip install 'tunelab[explain]'")
METHODS = ["ig", "gradxinput", "attention", "occlusion", "lime"]


@pytest.fixture(scope="module")
def classifier(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain") / "run"
    config = tiny_config(tiny_bert, out, epochs=6, learning_rate=3e-3)
    return tunelab.fit(config, train=sentiment_rows(96), validation=sentiment_rows(16, seed=5)).artifact_dir


@pytest.mark.parametrize("method", METHODS)
def test_each_method_attributes_every_word(classifier: Path, method: str) -> None:
    predictor = tunelab.Predictor.load(classifier)
    text = "the film was wonderful"
    explanation = predictor.explain(text, method=method)
    assert explanation["target"] == predictor.predict(text)["label"] and explanation["method"] == method
    assert [w["word"] for w in explanation["words"]] == ["the", "film", "was", "wonderful"]
    assert all(text[w["start"]:w["end"]] == w["word"] and isinstance(w["attribution"], float) for w in explanation["words"])
    if method == "ig":  # completeness: the attributions add up to p(input) - p(baseline), up to the reported delta
        assert explanation["convergence_delta"] < 0.05
    other = "neg" if explanation["target"] == "pos" else "pos"
    assert predictor.explain(text, method=method, target=other)["score"] == pytest.approx(1 - explanation["score"], abs=1e-4)


FILLERS = ["really", "quite", "so", "today", "again", "honestly", "at", "first", "very", "all"]


def varied_sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    """The toy sentiment task with filler words at random places, so the adjective's position says nothing."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = ["the", rng.choice(NOUNS), "was", rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        for _ in range(rng.randint(0, 4)):
            words.insert(rng.randint(0, len(words)), rng.choice(FILLERS))
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.mark.slow
def test_integrated_gradients_beats_random_words_on_comprehensiveness(tiny_bert: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path / "varied", epochs=8, learning_rate=3e-3)
    run = tunelab.fit(config, train=varied_sentiment_rows(160, 0), validation=varied_sentiment_rows(20, 5))
    predictor = tunelab.Predictor.load(run.artifact_dir)
    records = [{"text": r["text"]} for r in varied_sentiment_rows(20, 11)]
    report = faithfulness(predictor.explain_model(), records, ["ig", "occlusion"], k=0.2)
    assert report["examples"] == 20 and report["k"] == 0.2
    ig, chance = report["methods"]["ig"], report["random"]
    assert ig["comprehensiveness"] > 1.5 * chance["comprehensiveness"], report  # 3.2x when written
    assert ig["sufficiency"] < chance["sufficiency"], report  # keeping IG's words keeps the prediction better
    assert ig["seconds_per_example"] > 0


def test_bad_requests_are_named(classifier: Path, tmp_path: Path) -> None:
    predictor = tunelab.Predictor.load(classifier)
    with pytest.raises(tunelab.ConfigError, match="'maybe' is not a label of this model; its labels: neg, pos"):
        predictor.explain("the film was great", target="maybe")
    with pytest.raises(tunelab.ConfigError, match="unknown explainer .shap.; known: occlusion, lime, ig"):
        predictor.explain("the film was great", method="shap")
    with pytest.raises(tunelab.DataError, match="empty text"):
        predictor.explain([{"text": "  "}], method="occlusion")
    with pytest.raises(tunelab.DataError, match="column 'text' is missing.*'review'"):
        predictor.explain([{"review": "the film was great"}], method="occlusion")
    with pytest.raises(tunelab.ConfigError, match="k: a fraction"):
        faithfulness(predictor.explain_model(), [{"text": "fine"}], ["occlusion"], k=1.5)
    register_explainer("first_word", lambda model, subject, options: {
        "attributions": [1.0] + [0.0] * (len(subject.words) - 1)}, replace=True)
    assert predictor.explain("a dull meal", method="first_word")["words"][0]["attribution"] == 1.0


def test_words_past_max_length_are_named_not_dropped(classifier: Path) -> None:
    predictor = tunelab.Predictor.load(classifier)  # max_length 32 tokens
    text = " ".join(["the film was great"] * 12)
    explanation = predictor.explain(text, method="gradxinput")
    assert len(explanation["words"]) == 48
    unseen = [w for w in explanation["words"] if w["attribution"] is None]
    assert unseen and explanation["words"][-1]["attribution"] is None and "were not seen" in explanation["note"]


@pytest.mark.slow
def test_relation_explanations_keep_the_marked_entities(tiny_bert: Path, tmp_path: Path) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "rel", epochs=2), "task": "relation"}
    predictor = tunelab.Predictor.load(tunelab.fit(config, train=toy_relations(40)).artifact_dir)
    explanation = predictor.explain("the <e1>fire</e1> caused the <e2>flood</e2>", method="occlusion")
    assert [w["word"] for w in explanation["words"]] == ["the", "caused", "the"]  # the entities are not removed
    assert explanation["target"] in predictor.labels
    with pytest.raises(tunelab.DataError, match="markers"):
        predictor.explain([{"text": "the fire caused the flood", "e1_start": 4, "e1_end": 8, "e2_start": 20,
                            "e2_end": 25}], method="occlusion")


@pytest.mark.slow
def test_onnx_artifacts_explain_by_perturbation_and_name_what_needs_gradients(classifier: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    exported = tunelab.export(classifier, tmp_path / "onnx")
    onnx = tunelab.Predictor.load(exported)
    torch_one = tunelab.Predictor.load(classifier).explain("the film was great", method="occlusion")
    onnx_one = onnx.explain("the film was great", method="occlusion")
    assert [w["attribution"] for w in onnx_one["words"]] == pytest.approx([w["attribution"] for w in torch_one["words"]],
                                                                          abs=1e-3)
    with pytest.raises(tunelab.ConfigError, match="needs gradients.*PyTorch artifact.*occlusion or lime"):
        onnx.explain("the film was great", method="ig")


@pytest.mark.slow
def test_lora_artifacts_explain_with_gradients(tiny_bert: Path, tmp_path: Path) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "lora", epochs=1), "method": {"name": "lora", "r": 4}}
    predictor = tunelab.Predictor.load(tunelab.fit(config, train=sentiment_rows(32)).artifact_dir)
    explanation = predictor.explain("the meal was dull", method="ig", steps=16)
    assert len(explanation["words"]) == 4 and explanation["steps"] == 16 and explanation["convergence_delta"] < 0.05


def test_the_command_writes_json_lines_html_and_faithfulness(classifier: Path, tmp_path: Path, capsys) -> None:
    html = tmp_path / "why.html"
    assert main(["explain", str(classifier), "the film was great", "a dull meal", "--method", "occlusion",
                 "--html", str(html)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["text"] for e in lines] == ["the film was great", "a dull meal"]
    page = html.read_text()
    assert page.count('class="w"') == 7 and "<script" not in page and "http" not in page  # offline, no scripts
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(6, seed=3)))
    assert main(["explain", str(classifier), "--file", str(data), "--faithfulness", "--methods", "occlusion"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 6 and set(report["methods"]) == {"occlusion"} and "comprehensiveness" in report["random"]
    assert main(["explain", str(classifier), "fine", "--target", "maybe"]) == 2
    assert "not a label of this model" in capsys.readouterr().err
    assert main(["explain", str(classifier), "fine", "--html", str(tmp_path / "no" / "such" / "x.html")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()


@pytest.mark.slow
def test_zero_shot_classification_is_explained_over_the_input_not_the_template(tiny_llama: Path, tmp_path: Path) -> None:
    run = tunelab.fit(model=str(tiny_llama), output_dir=str(tmp_path / "zs"), strategy="zero_shot",
                      task={"name": "classification", "labels": ["neg", "pos"]},
                      prompt={"template": "Review: {text}\nIs it {labels}?", "verbalizers": {"pos": "great", "neg": "bad"}})
    predictor = tunelab.Predictor.load(run.artifact_dir)
    explanation = predictor.explain("the film was great", method="occlusion")
    assert [w["word"] for w in explanation["words"]] == ["the", "film", "was", "great"]  # no template words
    assert explanation["score"] == pytest.approx(predictor.predict("the film was great")["scores"][explanation["target"]])
    with pytest.raises(tunelab.ConfigError, match="gradient methods .* not available .*use occlusion or lime"):
        predictor.explain("the film was great", method="ig")
