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

from conftest import NEGATIVE, NOUNS, POSITIVE, sentiment_rows, tiny_config, toy_qa, toy_relations, toy_sentences

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


@pytest.fixture(scope="module")
def tagger(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tunelab.Predictor:
    config = {**tiny_config(tiny_bert, tmp_path_factory.mktemp("ner") / "run", epochs=6, learning_rate=3e-3), "task": "ner"}
    return tunelab.Predictor.load(tunelab.fit(config, train=toy_sentences(120), validation=toy_sentences(20, seed=9)).artifact_dir)


@pytest.mark.parametrize("method", ["ig", "gradxinput", "attention", "occlusion"])
def test_each_predicted_entity_is_explained_on_its_own(tagger: tunelab.Predictor, method: str) -> None:
    record = {"tokens": ["in", "Lima", "we", "met", "Erin", "Smith"]}
    entities = tagger.predict([record])[0]["entities"]
    assert [(e["type"], e["text"]) for e in entities] == [("LOC", "Lima"), ("PER", "Erin Smith")]
    first = tagger.explain([record], method=method)[0]
    assert first["target"] == "LOC@3:7" and first["targets"] == ["LOC@3:7", "PER@15:25"] and first["text"] == "in Lima we met Erin Smith"
    assert [w["word"] for w in first["words"]] == record["tokens"]
    person = tagger.explain([record], method=method, target="Erin Smith")[0]  # by text; "PER" or "PER@15:25" alike
    assert person["target"] == "PER@15:25" and person["score"] > 0.5
    if method == "ig":  # completeness: the words' attributions add up to p(entity) - p(baseline), up to the delta
        assert person["convergence_delta"] < 0.05
    if method == "occlusion":  # removing the entity's own words costs the most
        values = {w["word"]: w["attribution"] for w in person["words"]}
        assert max(values, key=values.get) in ("Erin", "Smith")
    with pytest.raises(tunelab.ConfigError, match="not a predicted entity.*LOC@3:7 'Lima'"):
        tagger.explain([record], method=method, target="ORG")


def test_ner_names_what_it_cannot_explain(tagger: tunelab.Predictor) -> None:
    with pytest.raises(tunelab.ConfigError, match="lime explains through predictions.*use occlusion, ig"):
        tagger.explain([{"tokens": ["in", "Lima"]}], method="lime")
    with pytest.raises(tunelab.ConfigError, match="faithfulness .* measured for classification"):
        faithfulness(tagger.explain_model(), [{"tokens": ["in", "Lima"]}], ["ig"])
    with pytest.raises(tunelab.DataError, match="no entity was predicted"):
        tagger.explain([{"tokens": ["we", "met", "."]}], method="ig")


@pytest.mark.slow
def test_answer_start_and_end_are_explained_over_question_and_context(tiny_bert: Path, tmp_path: Path) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "qa", epochs=4, learning_rate=3e-3), "task": "qa"}
    predictor = tunelab.Predictor.load(tunelab.fit(config, train=toy_qa(120), validation=toy_qa(20, seed=9)).artifact_dir)
    record = {"question": "what color was the dog ?", "context": "the dog was blue ."}
    for target in ("start", "end"):
        explanation = predictor.explain([record], method="ig", target=target)[0]
        assert explanation["text"] == "what color was the dog ?\n\nthe dog was blue ."
        assert [w["word"] for w in explanation["words"]] == "what color was the dog ? the dog was blue .".split()
        assert explanation["targets"] == ["start", "end"] and explanation["convergence_delta"] < 0.05
        assert 0 < explanation["score"] <= 1
    occluded = predictor.explain([record], method="occlusion")[0]
    assert occluded["target"] == "start" and all(w["attribution"] is not None for w in occluded["words"])
    exported = tunelab.export(predictor.path, tmp_path / "onnx")
    with pytest.raises(tunelab.ConfigError, match="needs gradients .*PyTorch model of this qa artifact"):
        tunelab.Predictor.load(exported).explain([record], method="occlusion")


def test_target_all_explains_every_entity_a_line_each(tagger: tunelab.Predictor, capsys) -> None:
    import json as _json

    data = Path(tagger.path).parent / "one.jsonl"
    data.write_text(_json.dumps({"tokens": ["in", "Lima", "we", "met", "Erin", "Smith"]}) + "\n")
    assert main(["explain", str(tagger.path), "--file", str(data), "--target", "all", "--method", "gradxinput"]) == 0
    lines = [_json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["target"] for e in lines] == ["LOC@3:7", "PER@15:25"]
