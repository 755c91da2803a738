"""tunelab attack and the offline WordNet: figures recomputed from the attacked texts, the budget kept, only
synonyms substituted, and what cannot be attacked named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunelab
from tunelab.cli import main
from tunelab.synonyms import WordNet

from conftest import NEGATIVE, POSITIVE, sentiment_rows, tiny_config, toy_sentences

SYNSETS = {"adj": [["great", "outstanding", "bang-up"], ["wonderful", "marvelous", "fantastic"],
                   ["awful", "dreadful", "terrible"], ["dull", "boring", "tedious"], ["great", "big"]],
           "noun": [["film", "movie", "picture"], ["big_apple", "new_york"]],
           "verb": [["film", "shoot"], ["live", "dwell", "inhabit"]], "adv": []}


def fake_wordnet(folder: Path) -> Path:
    """WordNet's file format with a handful of synsets: data lines at the byte offsets the index names."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, synsets in SYNSETS.items():
        data, offsets, index = b"  1 a licence header line\n", [], {}
        for words in synsets:
            offset = len(data)
            offsets.append(offset)
            body = " ".join(f"{w} 0" for w in words)
            data += f"{offset:08d} 00 {part[0]} {len(words):02x} {body} 000 | gloss\n".encode()
            for w in words:
                index.setdefault(w, []).append(offset)
        (folder / f"data.{part}").write_bytes(data)
        lines = [f"{w} {part[0]} {len(o)} 0 {len(o)} 0 " + " ".join(f"{x:08d}" for x in o) for w, o in sorted(index.items())]
        (folder / f"index.{part}").write_text("  1 a licence header line\n" + "\n".join(lines) + "\n")
    return folder


def test_wordnet_gives_single_word_synonyms_most_frequent_sense_first(tmp_path: Path) -> None:
    wordnet = WordNet(fake_wordnet(tmp_path / "wn"))
    assert wordnet.synonyms("Great") == ["outstanding", "bang-up", "big"]
    assert wordnet.synonyms("film") == ["movie", "picture", "shoot"] and wordnet.synonyms("film", parts=("verb",)) == ["shoot"]
    assert wordnet.synonyms("new_york") == [] and wordnet.synonyms("zebra") == []
    assert wordnet.synonyms("lives") == ["dwell", "inhabit"] and wordnet.synonyms("films") == ["movie", "picture", "shoot"]
    with pytest.raises(tunelab.ConfigError, match="not a WordNet database: index.noun, data.noun"):
        WordNet(tmp_path)


def test_a_missing_wordnet_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_WORDNET", str(tmp_path / "none"))
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(tunelab.ConfigError, match="make wordnet"):
        WordNet.load()


@pytest.fixture(scope="module")
def classifier(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("attack") / "run"
    return tunelab.fit(tiny_config(tiny_bert, out, epochs=6, learning_rate=3e-3), train=sentiment_rows(96)).artifact_dir


def changed_words(original: str, attacked: str) -> list[tuple[str, str]]:
    a, b = original.split(), attacked.split()
    assert len(a) == len(b)  # an attack replaces words; it never adds or drops one
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_the_char_attack_flips_what_it_reports_within_its_budget(classifier: Path) -> None:
    rows = sentiment_rows(30, seed=7)
    report = tunelab.attack(classifier, rows, recipe="char", n=30, budget=0.5, examples=30)
    predictor = tunelab.Predictor.load(classifier)
    assert report["clean_accuracy"] == pytest.approx(
        sum(p["label"] == r["label"] for p, r in zip(predictor.predict([{"text": r["text"]} for r in rows]), rows)) / 30)
    flipped = report["attack_success_rate"] * report["clean_accuracy"] * 30
    assert report["accuracy_under_attack"] * 30 == pytest.approx(report["clean_accuracy"] * 30 - flipped)
    assert report["examples"] and len(report["examples"]) == round(flipped)
    for example in report["examples"]:
        changes = changed_words(example["original"], example["attacked"])
        assert 1 <= len(changes) == example["words_changed"] <= 2  # half of 4 words
        assert predictor.predict(example["attacked"])["label"] == example["label_after"] != example["gold"]
    assert report["avg_queries"] > 4  # every attack ranks the 4 words first


def test_the_word_attack_substitutes_only_synonyms(classifier: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_WORDNET", str(fake_wordnet(tmp_path / "wn")))
    rows = [{"text": f"the film was {w}", "label": "pos"} for w in POSITIVE[:4]] + \
           [{"text": f"the film was {w}", "label": "neg"} for w in NEGATIVE[:4]]
    report = tunelab.attack(classifier, rows, recipe="word", n=8, budget=0.5, similarity=0.0, examples=8)
    assert report["recipe"] == "word" and report["examples"]
    for example in report["examples"]:
        for before, after in changed_words(example["original"], example["attacked"]):
            assert after in WordNet.load().synonyms(before) and before not in ("the", "was")  # stopwords stay


def test_what_cannot_be_attacked_is_named(classifier: Path, tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(tunelab.ConfigError, match="unknown attack recipe 'typo'"):
        tunelab.attack(classifier, sentiment_rows(4), recipe="typo")
    with pytest.raises(tunelab.ConfigError, match=r"budget: .* \(0, 1\]"):
        tunelab.attack(classifier, sentiment_rows(4), recipe="char", budget=0)
    ner = tunelab.fit({**tiny_config(tiny_bert, tmp_path / "ner", epochs=1), "task": "ner"}, train=toy_sentences(16))
    with pytest.raises(tunelab.ConfigError, match="a ner model is not supported"):
        tunelab.attack(ner.artifact_dir, toy_sentences(4), recipe="char")


def test_the_command_prints_the_figures_and_keeps_the_report(classifier: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(12, seed=2)))
    out = tmp_path / "attack.json"
    assert main(["attack", str(classifier), str(data), "--recipe", "char", "--n", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"{report['attack_success_rate']:.4f}" in printed and report["examples_attacked"] == 12


def test_a_damaged_wordnet_is_named_not_crashed_on(tmp_path: Path) -> None:
    folder = fake_wordnet(tmp_path / "wn")
    (folder / "index.adj").write_text("great a x\n")
    with pytest.raises(tunelab.ConfigError, match=r"index.adj, line 1: not a WordNet index line"):
        WordNet(folder).synonyms("great")
    folder = fake_wordnet(tmp_path / "wn2")
    (folder / "data.noun").write_bytes(b"garbage\n")
    with pytest.raises(tunelab.ConfigError, match="data.noun: no synset at byte"):
        WordNet(folder).synonyms("film", parts=("noun",))
