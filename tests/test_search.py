"""Hyperparameter search (tunelab search, on Optuna): the space is checked before any trial, trials are pruned at
their evaluations, an interrupted search resumes, and the results are a config ready to train, a table and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import tunelab
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.search import PruneOnEvaluate, split_search
from tunelab.search_space import parse_space

from conftest import sentiment_rows, tiny_config

optuna = pytest.importorskip("optuna")


def write_config(path: Path, config: dict, space: dict) -> Path:
    path.write_text(yaml.safe_dump({**config, "search": space}), encoding="utf-8")
    return path


@pytest.mark.parametrize("space, message", [
    ({"train.learnin_rate": {"loguniform": [1e-5, 1e-3]}}, "search.train.learnin_rate: not a field of this config"),
    ({"train.learning_rate": {"loguniform": [1e-3, 1e-5]}}, "low 0.001 is greater than high 1e-05"),
    ({"train.learning_rate": {"loguniform": [0, 1e-3]}}, "a log range needs low > 0"),
    ({"train.batch_size": {"choice": [0, 8]}}, "search.train.batch_size: the config refuses 0"),
    ({"train.scheduler": ["linear", "sometimes"]}, "search.train.scheduler: the config refuses 'sometimes'"),
    ({"train.epochs": {"int": [1, 2.5]}}, "expected a whole number"),
    ({"train.epochs": {"normal": [1, 2]}}, "give exactly one of"),
    ({"train.learning_rate": {"loguniform": [1e-5, 1e-3], "step": 1e-5}}, "step applies to uniform and int"),
    ({"output_dir": ["a", "b"]}, "output_dir cannot be searched"),
    ({"method.r": [4, 8]}, "search.method.r: not a field of this config"),  # the base method is full
    ({}, "expected a mapping of config fields"),
])
def test_a_bad_space_is_refused_before_any_trial_naming_the_field(tmp_path: Path, tiny_bert: Path, space: dict,
                                                                   message: str) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / "out"), "data": {"train": str(tmp_path / "missing.jsonl")}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tunelab.search(config, space=space, trials=2)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_the_space_accepts_what_the_config_accepts(tiny_bert: Path, tmp_path: Path) -> None:
    base, params = split_search({**tiny_config(tiny_bert, tmp_path), "method": "lora", "search": {
        "method.r": [4, 8], "train.learning_rate": {"loguniform": [1e-5, 1e-2]},
        "train.warmup_ratio": {"uniform": [0.0, 0.2], "step": 0.05}, "train.epochs": {"int": [1, 3]}}})
    assert "search" not in base
    assert [(p.path, p.kind) for p in params] == [("method.r", "choice"), ("train.learning_rate", "loguniform"),
                                                  ("train.warmup_ratio", "uniform"), ("train.epochs", "int")]
    assert parse_space({"train.seed": {"int": [1, 9], "step": 2}})[0].step == 2


def test_a_config_file_with_a_search_section_still_trains_without_it(tmp_path: Path, tiny_bert: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_bert, tmp_path / "o"), {"train.epochs": {"int": [1, 2]}})
    assert load_config(path).train.epochs == 2
    assert "search: section is read by tunelab search" in capsys.readouterr().err


class FakeTrial:
    def __init__(self, prune_at: int):
        self.prune_at, self.reported, self.user_attrs = prune_at, [], {}

    def report(self, value: float, step: int) -> None:
        self.reported.append((step, value))

    def set_user_attr(self, key: str, value: object) -> None:
        self.user_attrs[key] = value

    def should_prune(self) -> bool:
        return len(self.reported) >= self.prune_at


def test_a_pruned_trial_stops_training_at_that_evaluation(tmp_path: Path, tiny_bert: Path) -> None:
    trial = FakeTrial(prune_at=2)
    with pytest.raises(optuna.TrialPruned, match="evaluation 2 \\(step 4\\)"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", eval_every=2, epochs=3), train=sentiment_rows(32),
                    validation=sentiment_rows(8, seed=1), hooks=[PruneOnEvaluate(trial, "accuracy")])
    assert [step for step, _ in trial.reported] == [1, 2] and trial.user_attrs["last_step"] == 4
    assert not (tmp_path / "run" / "artifact").exists()


@pytest.mark.slow
def test_search_prunes_resumes_and_writes_a_config_ready_to_train(tmp_path: Path, tiny_bert: Path) -> None:
    train, validation = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(64)), encoding="utf-8")
    validation.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(16, seed=1)), encoding="utf-8")
    config = tiny_config(tiny_bert, tmp_path / "search", eval_every=8, epochs=6)
    config["data"].update(train=str(train), validation=str(validation))
    space = {"train.learning_rate": {"choice": [3e-3, 1e-7]}}
    # Two trials that learn, then one that cannot (a learning rate of 1e-7): the median pruner stops it early.
    storage = f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    (tmp_path / "search").mkdir()
    study = optuna.create_study(storage=storage, study_name="tunelab-search", direction="maximize")
    for lr in (3e-3, 3e-3, 1e-7):
        study.enqueue_trial({"train.learning_rate": lr})
    result = tunelab.search(config, space=space, trials=3, pruner="median", quiet=True)
    assert result.counts == {"complete": 2, "pruned": 1}
    with open(result.trials_csv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]
    assert int(rows[2]["evaluations"]) < 6  # 64 rows / batch 8 x 6 epochs = 48 steps: 6 evaluations if not pruned
    assert result.best_value == max(float(r["accuracy"]) for r in rows if r["state"] == "complete")
    # keep="best": only the best trial's folder is left
    assert sorted(p.name for p in (tmp_path / "search" / "trials").iterdir()) == [f"{result.best_trial:03d}"]
    assert result.best_artifact is not None and (result.best_artifact / "manifest.json").is_file()
    assert {p.name for p in result.plots} == {"optimization_history.png", "param_importances.png",
                                              "parallel_coordinate.png"} or len(result.plots) >= 1
    summary = json.loads(result.summary.read_text())
    assert summary["best"]["value"] == result.best_value and summary["metric"] == "accuracy"

    best = load_config(result.best_config)
    assert best.train.learning_rate == 3e-3 and best.output_dir == str(tmp_path / "search" / "best")
    assert Path(best.data.train).is_absolute()

    # Interrupted and run again with more trials: only the missing ones run, the earlier ones count.
    again = tunelab.search(config, space=space, trials=4, pruner="none", quiet=True)
    assert sum(again.counts.values()) == 4
    done = tunelab.search(config, space=space, trials=4, quiet=True)
    assert sum(done.counts.values()) == 4  # nothing left to run
    with pytest.raises(ConfigError, match="was made for metric 'accuracy' over"):
        tunelab.search(config, space={"train.epochs": {"int": [1, 2]}}, trials=5, quiet=True)
    assert dashboard_studies(done.storage) == ["tunelab-search"]


def dashboard_studies(storage: str) -> list[str]:
    """The studies optuna-dashboard lists for ``storage`` (through its WSGI app, no server)."""
    dashboard = pytest.importorskip("optuna_dashboard")
    status: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "QUERY_STRING": "", "wsgi.input": None}
    body = b"".join(dashboard.wsgi(storage)(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200")
    return [s["study_name"] for s in json.loads(body)["study_summaries"]]


@pytest.mark.slow
def test_the_search_command_prints_the_trials_and_the_best_config(tmp_path: Path, tiny_bert: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(40)), encoding="utf-8")
    config = tiny_config(tiny_bert, tmp_path / "s", epochs=1)
    config["data"]["train"] = "train.jsonl"  # relative to the config file
    path = write_config(tmp_path / "search.yaml", config, {"train.learning_rate": {"loguniform": [1e-4, 3e-3]}})
    assert main(["search", str(path), "--trials", "2", "--keep", "all", "--sampler", "random",
                 "train.batch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "number  state" in out and "best accuracy:" in out and "tunelab train " in out
    assert "optuna-dashboard sqlite:///" in out
    assert len(list((tmp_path / "s" / "trials").iterdir())) == 2
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert best["train"]["batch_size"] == 16 and "search" not in best
    run = tunelab.fit(best, train__epochs=1)  # best.yaml trains as it is
    assert run.metrics["accuracy"] >= 0

    # tunelab runs: the trials and the best run as a table, and two trials side by side
    assert main(["runs", str(tmp_path / "s")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["run", "task", "model"]
    assert {line.split()[0] for line in table.splitlines()[1:]} == {"best", "trials/000", "trials/001"}
    assert main(["runs", str(tmp_path / "s" / "trials" / "000"), str(tmp_path / "s" / "trials" / "001")]) == 0
    side_by_side = capsys.readouterr().out
    assert "validation.accuracy" in side_by_side and "config train.learning_rate" in side_by_side
    assert "config output_dir" in side_by_side and "config train.batch_size" not in side_by_side
    assert main(["runs", str(tmp_path / "nothing-here")]) == 2
    assert "is not a folder of runs" in capsys.readouterr().err


def test_tunelab_runs_skips_a_damaged_manifest_in_a_listing_and_names_it_in_a_comparison(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    damaged = tmp_path / "runs" / "broken" / "artifact"
    damaged.mkdir(parents=True)
    (damaged / "manifest.json").write_text('{"task": {"name": "classi', encoding="utf-8")  # cut short
    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert "no runs under" in capsys.readouterr().out
    assert main(["runs", str(damaged.parent), str(damaged.parent)]) == 2
    assert "manifest.json cannot be read" in capsys.readouterr().err
    assert main(["runs", "a", "b", "c"]) == 2
    assert "one folder (list its runs) or two runs" in capsys.readouterr().err
