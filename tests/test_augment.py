"""data.augment: each augmentation keeps the labels it promises (relation markers, NER tags), is seeded, touches
training records only, caches paraphrases, and refuses what it cannot keep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_attack import fake_wordnet

import tunelab
from tunelab.augment import Paraphraser, augment_records
from tunelab.config import AugmentStep
from tunelab.registry import TASKS
from tunelab.tags import spans

from conftest import sentiment_rows, tiny_config, toy_qa, toy_relations, toy_sentences

EDA = ["synonym", "insert", "swap", "delete", "char_noise"]


@pytest.fixture(autouse=True)
def wordnet(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_WORDNET", str(fake_wordnet(tmp_path / "wordnet")))


def classification_task():
    return TASKS.get("classification")({"problem_type": "single_label", "text_column": "text", "text_pair_column": None,
                                        "label_column": "label", "label_separator": "|", "max_length": 32,
                                        "threshold": 0.5, "labels": ["neg", "pos"]})


def steps(name: str, n: int = 1, p: float = 0.3) -> list[AugmentStep]:
    return [AugmentStep(name=name, n=n, p=p)]


@pytest.mark.parametrize("name", EDA)
def test_text_augmentation_is_seeded_and_keeps_the_originals(name: str) -> None:
    rows = [{"text": "the great film was wonderful", "label": "pos"}, {"text": "an awful dull film", "label": "neg"}]
    before = json.dumps(rows)
    out, report = augment_records(classification_task(), rows, steps(name, n=2), seed=1)
    assert json.dumps(rows) == before  # the originals are not touched
    assert report == {name: len(out)} and 0 < len(out) <= 4
    assert all(r["text"] != rows[0]["text"] and r["text"] != rows[1]["text"] for r in out)
    assert {r["label"] for r in out} <= {"pos", "neg"}
    again, _ = augment_records(classification_task(), rows, steps(name, n=2), seed=1)
    assert again == out
    if name == "synonym":  # only WordNet synonyms come in
        words = {w for r in out for w in r["text"].split()} - {w for r in rows for w in r["text"].split()}
        assert words <= {"outstanding", "bang-up", "big", "marvelous", "fantastic", "dreadful", "terrible", "boring",
                         "tedious", "movie", "picture", "shoot", "dwell", "inhabit"}


def test_relation_markers_and_their_entities_are_never_touched() -> None:
    task = TASKS.get("relation")({"text_column": "text", "label_column": "label", "max_length": 32, "labels": ["A", "B"]})
    rows = toy_relations(12)
    out, _ = augment_records(task, rows, [AugmentStep(name=n, p=0.5) for n in EDA], seed=0)
    assert out
    for row in out:
        marked = [part for part in row["text"].split() if part.startswith("<e")]
        assert len(marked) == 2 and all(part.endswith(("</e1>", "</e2>")) for part in marked)
    with pytest.raises(tunelab.ConfigError, match=r"data.augment\[0\].name: 'paraphrase' cannot keep the labels of a "
                                                  "relation task"):
        augment_records(task, rows, steps("paraphrase"), seed=0)


@pytest.mark.parametrize("name", [*EDA, "entity_swap"])
def test_ner_tags_stay_aligned_and_entities_keep_their_words(tiny_bert: Path, tmp_path: Path, name: str) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "ner", epochs=1), "task": "ner"}
    task = tunelab.fit(config, train=toy_sentences(16)).live.task
    rows = toy_sentences(20, seed=3)
    out, report = augment_records(task, rows, steps(name, p=0.5), seed=0)
    assert out and report[name] == len(out)
    for row in out:
        assert len(row["tokens"]) == len(row["tags"])
        found = [(kind, row["tokens"][a:b]) for kind, a, b in spans(row["tags"])]
        assert [k for k, _ in found] in (["PER", "LOC"], ["LOC", "PER"])  # the entities and their order stay
        if name not in ("char_noise", "entity_swap"):
            assert all(words in ([n] for n in ("Alice", "Bob", "Carol", "Dmitri", "Erin", "Farid"))
                       or words[0] in ("Paris", "Oslo", "Lima", "Cairo", "Quito", "Hanoi") or words[-1] == "Smith"
                       for _, words in found)


def test_tasks_that_cannot_keep_labels_and_unknown_names_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    qa = {**tiny_config(tiny_bert, tmp_path / "qa", epochs=1), "task": "qa", "data": {"augment": [{"name": "delete"}]}}
    with pytest.raises(tunelab.ConfigError, match="data.augment: the qa task cannot keep its labels"):
        tunelab.fit(qa, train=toy_qa(8))
    bad = {**tiny_config(tiny_bert, tmp_path / "x", epochs=1), "data": {"augment": [{"name": "backtranslate"}]}}
    with pytest.raises(tunelab.ConfigError, match="data.augment.0.name: unknown augmentation 'backtranslate'"):
        tunelab.fit(bad, train=sentiment_rows(8))
    zero = {**tiny_config(tiny_bert, tmp_path / "y", epochs=1), "data": {"augment": [{"name": "swap", "p": 0}]}}
    with pytest.raises(tunelab.ConfigError, match="data.augment.0.p"):
        tunelab.fit(zero, train=sentiment_rows(8))


def test_fit_augments_training_records_only(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "run", epochs=1),
              "data": {"max_length": 32, "augment": [{"name": "swap", "n": 2, "p": 0.3}]}}
    run = tunelab.fit(config, train=sentiment_rows(40), validation=sentiment_rows(10, seed=4))
    report = json.loads((run.artifact_dir / "metrics.json").read_text())
    err = capsys.readouterr().err
    assert 0 < report["augmented"]["swap"] <= 80 and f"+{report['augmented']['swap']} swap" in err
    assert f"data: {40 + report['augmented']['swap']} training and 10 validation records" in err


def test_paraphrases_are_generated_once_and_cached(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    import tunelab.causal_lm as causal_lm

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    calls = []
    real = causal_lm.generate_ids
    monkeypatch.setattr(causal_lm, "generate_ids", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    rows = sentiment_rows(5)
    step = [AugmentStep(name="paraphrase", n=1, model=str(tiny_llama))]
    first, _ = augment_records(classification_task(), rows, step, seed=0)
    second, _ = augment_records(classification_task(), rows, step, seed=0)
    assert calls == [5] and first == second  # the second run read the cache
    assert len(list((tmp_path / "cache" / "paraphrase").glob("*.jsonl"))) == 1
    assert Paraphraser(str(tiny_llama)).cached  # a new paraphraser sees the same cache
    cache = next((tmp_path / "cache" / "paraphrase").glob("*.jsonl"))
    cache.write_text(cache.read_text() + '{"key": "cut sho')  # a run killed mid-write
    assert len(Paraphraser(str(tiny_llama)).cached) == 5  # the broken line is skipped, the rest kept
