"""--backend ray on a local 2-CPU Ray cluster started by these tests: Ray Data prediction writes what
``tunelab predict --file`` writes, line for line; Ray Train's two workers end where one process ends; a Ray Tune
search records its trials (ASHA-stopped ones as pruned) and writes a config ready to train; no Ray installed is one
message."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import tunelab
from tunelab.cli import main
from tunelab.errors import TunelabError

from conftest import sentiment_rows, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for this module (every --backend ray call in it joins this one)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "PYTHONWARNINGS": "ignore"}})
    yield
    ray.shutdown()


def write_data(tmp_path: Path) -> tuple[Path, Path]:
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(48)), encoding="utf-8")
    val.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(16, seed=4)), encoding="utf-8")
    return train, val


def test_ray_data_prediction_matches_predict_file_line_for_line(cluster, tmp_path: Path, tiny_bert: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    artifact = tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1), train=sentiment_rows(32)).artifact_dir
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    texts = [r["text"] for r in sentiment_rows(300, seed=9)]
    texts[17] = ""  # a blank line: the same error record (or row numbering) on both paths
    (inputs / "a.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (inputs / "b.jsonl").write_text("".join(json.dumps({"id": f"x{i}", "text": t}) + "\n"
                                            for i, t in enumerate(texts[:50])), encoding="utf-8")
    local = []
    for name in ("a.txt", "b.jsonl"):
        assert main(["predict", str(artifact), "--file", str(inputs / name), "--output", str(tmp_path / f"{name}.out"),
                     "--batch-size", "16"]) == 0
        local += (tmp_path / f"{name}.out").read_text(encoding="utf-8").splitlines()
    assert main(["predict", str(artifact), "--file", str(inputs), "--output", str(tmp_path / "ray.out"),
                 "--backend", "ray", "--workers", "2", "--batch-size", "16"]) == 0
    distributed = (tmp_path / "ray.out").read_text(encoding="utf-8").splitlines()
    assert len(distributed) == len(local) == 350  # 300 lines + 50 records
    for mine, theirs in zip(distributed, local):
        a, b = json.loads(mine), json.loads(theirs)
        assert a["row"] == b["row"] and a.get("id") == b.get("id") and a.get("label") == b.get("label")
        assert a.get("error") == b.get("error")  # the empty texts: the same error record in their place
        assert a.get("scores", {}) == pytest.approx(b.get("scores", {}), abs=1e-5)  # another process, same numbers
    assert sum("error" in json.loads(line) for line in distributed) == 2
    assert json.loads(distributed[-1])["id"] == "x49"
    assert main(["predict", str(artifact), "some text", "--backend", "ray"]) == 2
    assert "--backend ray predicts a --file" in capsys.readouterr().err


def test_ray_data_prediction_reads_images_relative_to_their_data_file(cluster, tmp_path: Path, tiny_bert: Path,
                                                                       tiny_vit: Path) -> None:
    """A text+image model over a JSON Lines file whose image paths are relative to it: the actors read the same
    pictures as the local path (the record's source travels with it), line for line."""
    from conftest import coloured_records

    data = coloured_records(tmp_path / "shop", n=24)
    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=2)
    cfg["task"] = {"name": "classification", "image_model": str(tiny_vit)}
    cfg["data"] = {"max_length": 16, "image_column": "image"}
    artifact = tunelab.fit(cfg, train=str(data)).artifact_dir
    assert main(["predict", str(artifact), "--file", str(data), "--output", str(tmp_path / "local.out")]) == 0
    assert main(["predict", str(artifact), "--file", str(data), "--output", str(tmp_path / "ray.out"),
                 "--backend", "ray", "--workers", "2", "--batch-size", "8"]) == 0
    local = [json.loads(line) for line in (tmp_path / "local.out").read_text(encoding="utf-8").splitlines()]
    distributed = [json.loads(line) for line in (tmp_path / "ray.out").read_text(encoding="utf-8").splitlines()]
    assert len(distributed) == len(local) == 24 and not any("error" in p for p in distributed)
    for a, b in zip(distributed, local):
        assert a["row"] == b["row"] and a["label"] == b["label"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_ray_train_two_workers_end_where_one_process_ends(cluster, tmp_path: Path, tiny_bert: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    train, val = write_data(tmp_path)
    config = tiny_config(tiny_bert, tmp_path / "ray", dropout=0.0, batch_size=8)
    config["data"].update(train=str(train), validation=str(val))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(path), "--backend", "ray", "--workers", "2"]) == 0
    one = tunelab.fit({**config, "output_dir": str(tmp_path / "one")})
    steps = json.loads((tmp_path / "ray" / "artifact" / "history.json").read_text())["steps"]
    assert len(steps) == one.train.steps
    for a, b in zip(steps, one.train.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    manifest = json.loads((tmp_path / "ray" / "artifact" / "manifest.json").read_text())
    assert manifest["metrics"]["validation"]["accuracy"] == pytest.approx(one.metrics["accuracy"])
    assert capsys.readouterr().out.count(f"artifact: {tmp_path / 'ray' / 'artifact'}") == 1


def test_a_killed_ray_train_worker_is_restarted_and_the_run_resumes_from_its_checkpoint(cluster, tmp_path: Path,
                                                                                      tiny_bert: Path) -> None:
    from tunelab.ray_backend import train_on_ray

    train, val = write_data(tmp_path)
    config = tiny_config(tiny_bert, tmp_path / "elastic", dropout=0.0, batch_size=8, epochs=40, checkpoint_every=10,
                         eval_every=1000)
    config["data"].update(train=str(train), validation=str(val))
    checkpoint = tmp_path / "elastic" / "checkpoint.pt"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train_on_ray(config, workers=2, max_failures=1)))
    thread.start()
    deadline = time.time() + 480  # Ray starts a controller and two workers that import torch: slow on a busy machine
    while not checkpoint.exists() and time.time() < deadline and thread.is_alive():
        time.sleep(0.1)
    assert checkpoint.exists(), "no checkpoint was written"
    workers = ray_train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # one of the two: Ray Train must notice, stop the group and restart it
    thread.join(timeout=600)
    assert not thread.is_alive() and "result" in outcome, "the restarted run did not finish"
    report = json.loads((tmp_path / "elastic" / "artifact" / "metrics.json").read_text())
    total = 40 * 48 // 8
    assert outcome["result"]["steps"] == report["steps"] == total
    assert len(report["resumed_at_steps"]) == 1 and 10 <= report["resumed_at_steps"][0] < total  # resumed, not restarted
    steps = json.loads((tmp_path / "elastic" / "artifact" / "history.json").read_text())["steps"]
    assert [s["step"] for s in steps] == list(range(1, total + 1))  # one continuous history
    assert not checkpoint.exists()  # the finished run removed it


def ray_train_workers() -> list[int]:
    """Process ids of this machine's Ray Train worker actors (their process title names the actor class)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::RayTrainWorker"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return sorted(found)


def test_ray_tune_search_records_trials_and_writes_a_config_ready_to_train(cluster, tmp_path: Path,
                                                                           tiny_bert: Path) -> None:
    from tunelab.ray_backend import search_on_ray

    train, val = write_data(tmp_path)
    config = tiny_config(tiny_bert, tmp_path / "search", eval_every=6, epochs=3)
    config["data"].update(train=str(train), validation=str(val))
    space = {"train.learning_rate": {"loguniform": [1e-7, 3e-3]}}
    result = search_on_ray(config, space=space, trials=4, cpus_per_trial=1, concurrent=2, reduction_factor=2)
    assert sum(result.counts.values()) == 4 and result.counts.get("complete", 0) >= 1
    assert set(result.counts) <= {"complete", "pruned"}
    with open(result.trials_csv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(r["train.learning_rate"] for r in rows)
    for row in rows:  # ASHA-stopped trials are pruned: fewer evaluations than the 3 epochs x 6 steps give
        assert (int(row["evaluations"]) < 3) if row["state"] == "pruned" else int(row["evaluations"]) >= 3
    assert result.best_value == max(float(r["accuracy"]) for r in rows if r["state"] == "complete")
    assert sorted(p.name for p in (tmp_path / "search" / "trials").iterdir()) == [f"{result.best_trial:03d}"]
    best = tunelab.load_config(result.best_config)
    assert best.train.learning_rate == pytest.approx(result.best_params["train.learning_rate"])
    assert json.loads(result.summary.read_text())["best"]["value"] == result.best_value
    with pytest.raises(tunelab.ConfigError, match="already has trials"):
        search_on_ray(config, space=space, trials=1)


def test_without_ray_one_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from tunelab.ray_backend import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(TunelabError, match=r"pip install tunelab\[ray\]"):
        require_ray()
    config = tmp_path / "c.yaml"
    config.write_text("model: minilm\n", encoding="utf-8")
    assert main(["train", str(config), "--backend", "ray"]) == 2
    assert "pip install tunelab[ray]" in capsys.readouterr().err


def test_a_job_local_ray_without_authentication_is_said_out_loud(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import types

    from tunelab.ray_backend import ray_session

    started: list[dict] = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: started.append(kw),
                                 shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for mode, warned in (("disabled", True), ("token", False)):
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
        with ray_session(num_cpus=1):
            pass
        assert ("without authentication" in capsys.readouterr().err) is warned
    assert [kw["num_cpus"] for kw in started] == [1, 1] and all(not kw["include_dashboard"] for kw in started)
