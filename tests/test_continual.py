"""Continual learning (fit_sequence): the reservoir is uniform, the EWC penalty vanishes at its anchors, per-task
adapters forget exactly nothing, replay forgets less than naive fine-tuning, and bad sequences are refused
before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.continual import EWCHook, Reservoir, SequencePredictor, fit_sequence, summarize

from conftest import sentiment_rows, toy_relations, toy_sentences

TRAIN = {"epochs": 8, "batch_size": 8, "learning_rate": 3e-3, "seed": 3}


def tasks() -> list[dict]:
    return [{"name": "sentiment", "task": "classification", "train": sentiment_rows(64),
             "validation": sentiment_rows(16, seed=5)},
            {"name": "people", "task": "ner", "train": toy_sentences(64), "validation": toy_sentences(16, seed=9)},
            {"name": "relation", "task": "relation", "train": toy_relations(48), "validation": toy_relations(16, seed=9)}]


def test_the_reservoir_keeps_every_item_with_equal_probability() -> None:
    counts = [0] * 100
    trials = 3000
    for seed in range(trials):
        buffer = Reservoir(10, seed)
        for item in range(100):
            buffer.offer(item)
        assert len(buffer.items) == 10 and len(set(buffer.items)) == 10 and buffer.seen == 100
        for item in buffer.items:
            counts[item] += 1
    shares = [c / trials for c in counts]
    assert min(shares) > 0.07 and max(shares) < 0.13  # each 0.1 in expectation; first and last items alike
    assert abs(sum(shares[:50]) - sum(shares[50:])) < 0.3


def test_the_ewc_penalty_is_zero_at_the_anchors_and_grows_away_from_them() -> None:
    encoder = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 2))
    anchors = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in encoder.named_parameters()}
    hook = EWCHook(encoder, fisher, anchors, strength=2.0)
    assert float(hook.penalty().detach()) == 0.0
    with torch.no_grad():
        encoder[1].bias.add_(torch.tensor([0.5, -0.5]))
    assert float(hook.penalty().detach()) == pytest.approx(0.5 * 2.0 * (0.25 + 0.25))
    grown = torch.nn.Embedding(7, 3)  # a later task added two marker tokens: their rows have no anchor
    with torch.no_grad():
        grown.weight[:5] = encoder[0].weight
        grown.weight[5:] = 9.0
    encoder[0] = grown
    hook = EWCHook(encoder, fisher, anchors, strength=2.0)
    assert float(hook.penalty().detach()) == pytest.approx(0.5)


def test_the_summary_follows_its_definitions() -> None:
    report = summarize([[0.9, None, None], [0.8, 0.7, None], [0.6, 0.75, 0.95]])
    assert report["avg_accuracy"] == pytest.approx((0.6 + 0.75 + 0.95) / 3, abs=1e-4)
    assert report["avg_forgetting"] == pytest.approx(((0.9 - 0.6) + (0.7 - 0.75)) / 2)
    assert report["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.75 - 0.7)) / 2)


def test_per_task_adapters_forget_exactly_nothing(tiny_bert: Path, tmp_path: Path) -> None:
    report = fit_sequence(tasks(), output_dir=tmp_path / "seq", model=str(tiny_bert),
                          continual={"strategy": "adapters", "r": 4}, train=TRAIN)
    matrix = report["matrix"]
    for j in range(3):
        assert {matrix[i][j] for i in range(j, 3)} == {matrix[j][j]}  # exactly the same after every later task
    assert report["avg_forgetting"] == 0.0 and report["backward_transfer"] == 0.0
    sequence = SequencePredictor.load(tmp_path / "seq")
    assert sequence.tasks == ["sentiment", "people", "relation"]
    assert json.loads((tmp_path / "seq" / "people" / "manifest.json").read_text())["model_format"] == "peft"
    assert (tmp_path / "seq" / "forgetting.png").stat().st_size > 5000


def test_replay_forgets_less_than_naive_and_every_task_still_predicts(tiny_bert: Path, tmp_path: Path) -> None:
    naive = fit_sequence(tasks(), output_dir=tmp_path / "naive", model=str(tiny_bert), continual="naive", train=TRAIN)
    replay = fit_sequence(tasks(), output_dir=tmp_path / "replay", model=str(tiny_bert),
                          continual={"strategy": "replay", "memory": 0.2}, train=TRAIN)
    assert naive["avg_forgetting"] > 0.05 and replay["avg_forgetting"] < naive["avg_forgetting"] / 2  # 0.079 and 0.0
    assert replay["memory_examples"] == round(0.2 * sum(len(t["train"]) for t in tasks()))  # 0.2 of all training examples
    sequence = SequencePredictor.load(tmp_path / "replay")
    assert sequence.predict("sentiment", "the film was wonderful")["label"] in ("pos", "neg")
    assert [e["type"] for e in sequence.predict("people", [{"tokens": ["Alice", "lives", "in", "Oslo", "."]}])[0]["entities"]]
    for j, name in enumerate(sequence.tasks):  # each artifact measures what the matrix says it measured last
        metric = replay["metrics"][name]
        validation = tasks()[j]["validation"]
        assert sequence.predictor(name).evaluate(validation)[metric] == pytest.approx(replay["matrix"][-1][j], abs=1e-4)
    with pytest.raises(tunelab.ConfigError, match="'weather' was not learned"):
        sequence.predict("weather", "sunny")


def test_bad_sequences_are_refused_before_training(tiny_bert: Path, tmp_path: Path) -> None:
    twice = [tasks()[0], {**tasks()[1], "name": "sentiment"}]
    with pytest.raises(tunelab.ConfigError, match=r"tasks\[1\].name: 'sentiment' is used twice"):
        fit_sequence(twice, output_dir=tmp_path / "a", model=str(tiny_bert))
    with pytest.raises(tunelab.ConfigError, match=r"tasks\[0\].name"):
        fit_sequence([{**tasks()[0], "name": "my task"}], output_dir=tmp_path / "b", model=str(tiny_bert))
    with pytest.raises(tunelab.ConfigError, match="unknown strategy 'rehearsal'"):
        fit_sequence(tasks(), output_dir=tmp_path / "c", model=str(tiny_bert), continual="rehearsal")
    with pytest.raises(tunelab.ConfigError, match="unknown setting 'buffer'"):
        fit_sequence(tasks(), output_dir=tmp_path / "d", model=str(tiny_bert), continual={"strategy": "replay", "buffer": 3})
    with pytest.raises(tunelab.ConfigError, match="continual.memory: 0.0001 keeps no example"):
        fit_sequence(tasks(), output_dir=tmp_path / "e", model=str(tiny_bert), continual={"strategy": "replay",
                                                                                          "memory": 0.0001})
    with pytest.raises(tunelab.ConfigError, match=r"tasks\[0\].test: .*tunelab eval"):
        fit_sequence([{**tasks()[0], "test": sentiment_rows(4)}], output_dir=tmp_path / "g", model=str(tiny_bert))
    summary = {"name": "sum", "task": "summarization", "train": [{"text": "a b", "target": "a"}]}
    with pytest.raises(tunelab.ConfigError, match="not summarization"):
        fit_sequence([summary], output_dir=tmp_path / "f", model=str(tiny_bert))
    pictured = {**tasks()[0], "data": {"image_column": "photo"}}
    with pytest.raises(tunelab.ConfigError, match=r"tasks\[0\] \(sentiment\): .* reads images \(data.image_column\)"):
        fit_sequence([pictured, tasks()[1]], output_dir=tmp_path / "h", model=str(tiny_bert))
    spoken = {**tasks()[1], "data": {"audio_column": "audio"}}
    with pytest.raises(tunelab.ConfigError, match=r"tasks\[1\] .* reads speech"):
        fit_sequence([tasks()[0], spoken], output_dir=tmp_path / "i", model=str(tiny_bert))
    assert not any((tmp_path / d).exists() for d in "abcdefghi")  # nothing was written


def test_the_command_reads_a_sequence_file(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    import yaml

    from tunelab.cli import main

    for name, rows in (("sentiment", sentiment_rows(40)), ("people", toy_sentences(40))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"model": str(tiny_bert), "output_dir": str(tmp_path / "seq"), "continual": {"strategy": "ewc"},
            "train": {"epochs": 1, "batch_size": 8, "seed": 1},
            "tasks": [{"name": "sentiment", "task": "classification", "train": "sentiment.jsonl"},
                      {"name": "people", "task": "ner", "train": "people.jsonl"}]}
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(spec))
    assert main(["train-sequence", str(tmp_path / "seq.yaml")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "seq" / "sequence.json").read_text())
    assert report["strategy"] == "ewc" and f"average forgetting {report['avg_forgetting']:.4f}" in out
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "tasks": "sentiment"}))
    assert main(["train-sequence", str(tmp_path / "bad.yaml")]) == 2
    assert "tasks: [...]" in capsys.readouterr().err
