"""A task and a method of a user's own, registered from this file (no edit of tunelab's source), go the whole
way: config -> fit -> artifact -> Predictor.load -> predict -> `tunelab predict` in another process.

The other process finds them through ``TUNELAB_PLUGINS=test_extending`` (this module); without it, loading
the artifact is a clear error that says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

import tunelab
from tunelab.data import Records
from tunelab.errors import DataError
from tunelab.probabilities import softmax

HERE = Path(__file__).resolve().parent


# ---- a custom task: which word-count bucket a text falls in ---------------------------------------------------
class LengthBucketOptions(tunelab.TaskOptions):
    """``task:`` for length_bucket: its own field, validated like any other."""

    boundaries: list[int] = Field(default_factory=lambda: [4], description="word counts between buckets")


class BucketPrediction(BaseModel):
    bucket: str
    score: float


class LengthBucketTask(tunelab.Task):
    """Labels come from the text itself: the number of words against ``task.boundaries``."""

    Options = LengthBucketOptions
    Prediction = BucketPrediction
    peft_task_type = "SEQ_CLS"
    primary_metric = ("bucket_accuracy", True)

    @classmethod
    def from_training_data(cls, cfg: tunelab.Config, train: Records) -> LengthBucketTask:
        bounds = sorted(cfg.task.boundaries)
        return cls({"boundaries": bounds, "labels": ["short"] + [f"over_{b}" for b in bounds],
                    "text_column": cfg.data.text_column, "max_length": cfg.data.max_length})

    def bucket(self, text: str) -> int:
        return sum(len(text.split()) > b for b in self.state["boundaries"])

    def _texts(self, records: Records) -> list[str]:
        col = self.state["text_column"]
        texts = []
        for i, row in enumerate(records.rows):
            if not str(row.get(col) or "").strip():
                raise DataError(f"{records.where(i)}: no text in column {col!r}")
            texts.append(str(row[col]))
        return texts

    def encode(self, records: Records, processor: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        texts = self._texts(records)
        ids = processor(texts, truncation=True, max_length=self.state["max_length"])["input_ids"]
        return [{"input_ids": x, **({"labels": self.bucket(t)} if with_labels else {})} for x, t in zip(ids, texts)]

    def collate(self, processor: Any) -> Any:
        def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            batch = dict(processor.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt"))
            if "labels" in features[0]:
                batch["labels"] = torch.tensor([f["labels"] for f in features])
            return batch
        return collate

    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(self.labels))
        return model, ["classifier"]

    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: Any) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.float(), labels, reduction="sum")

    def decode(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        probs = softmax(np.stack(outputs))
        return [{"bucket": self.labels[int(p.argmax())], "score": float(p.max())} for p in probs]

    def compute_metrics(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> dict[str, Any]:
        pred = np.stack(outputs).argmax(-1)
        gold = np.array([f["labels"] for f in features])
        return {"bucket_accuracy": float((pred == gold).mean()), "mean_bucket_error": float(np.abs(pred - gold).mean())}


# ---- a custom method: train only the top n transformer layers and the head ----------------------------------
class TopLayersOptions(tunelab.MethodOptions):
    n: int = Field(1, ge=1, description="how many of the top layers train")


def top_layers(model: torch.nn.Module, options: TopLayersOptions, target: Any) -> tunelab.Adaptation:
    def layer(name: str) -> int | None:
        m = re.search(r"\.layer\.(\d+)\.", name)
        return int(m.group(1)) if m else None

    numbers = sorted({n for name, _ in model.named_parameters() if (n := layer(name)) is not None})
    keep = set(numbers[-options.n:])
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in target.head or layer(name) in keep)
    return tunelab.Adaptation(model, is_peft=False)


tunelab.register_task("word_count_bucket", LengthBucketTask, replace=True)
tunelab.register_method("top_n_layers", top_layers, options=TopLayersOptions, default_learning_rate=1e-3, replace=True)


def _rows(n: int) -> list[dict[str, str]]:
    words = "the quick brown fox jumps over a lazy dog again and again".split()
    return [{"text": " ".join(words[: 1 + (i * 5) % 11])} for i in range(n)]


@pytest.mark.slow
def test_custom_task_and_method_go_from_config_to_the_cli(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = {"task": {"name": "word_count_bucket", "boundaries": [3, 7]}, "method": {"name": "top_n_layers", "n": 1},
           "model": str(tiny_bert), "output_dir": str(tmp_path / "run"), "data": {"max_length": 32},
           "train": {"epochs": 3, "batch_size": 8, "seed": 1}}
    run = tunelab.fit(cfg, train=_rows(60))
    manifest = run.live.manifest
    assert manifest["task"]["name"] == "word_count_bucket" and manifest["method"] == {"name": "top_n_layers", "n": 1}
    assert set(run.metrics) == {"bucket_accuracy", "mean_bucket_error"}

    # the method froze the embeddings and layer 0, trained layer 1 and the head
    from transformers import AutoModelForSequenceClassification

    before = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(run.artifact_dir / "model").state_dict()
    assert torch.equal(before["bert.encoder.layer.0.output.dense.weight"], after["bert.encoder.layer.0.output.dense.weight"])
    assert torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(before["bert.encoder.layer.1.output.dense.weight"], after["bert.encoder.layer.1.output.dense.weight"])
    assert 0 < run.parameters["trainable"] < run.parameters["total"]

    predictor = tunelab.Predictor.load(run.artifact_dir)
    texts = ["one two", "one two three four five", "a b c d e f g h i"]
    one = predictor.predict(texts[0])
    assert set(one) == {"bucket", "score"} and one["bucket"] in ["short", "over_3", "over_7"]
    many = predictor.predict(texts)
    assert [predictor.output_schema.model_validate(p).bucket for p in many] == [p["bucket"] for p in many]
    assert many == run.live.predict(texts)
    # its metric, recomputed from its predictions on the same rows
    rows = _rows(30)
    truth = [predictor.task.labels[predictor.task.bucket(r["text"])] for r in rows]
    hits = np.mean([p["bucket"] == t for p, t in zip(predictor.predict(rows), truth)])
    assert predictor.evaluate(rows)["bucket_accuracy"] == hits

    cli = [str(Path(sys.executable).with_name("tunelab")), "predict", str(run.artifact_dir), *texts, ""]
    env = {**os.environ, "PYTHONPATH": str(HERE), "TUNELAB_PLUGINS": "test_extending"}
    done = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [{k: v for k, v in line.items() if k != "row"} for line in lines[:3]] == many
    assert lines[3]["row"] == 4 and "no text" in lines[3]["error"]

    env.pop("TUNELAB_PLUGINS")
    done = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "unknown task 'word_count_bucket'" in done.stderr and "TUNELAB_PLUGINS" in done.stderr


def test_registration_checks_the_protocol() -> None:
    class Half(tunelab.Task):
        Prediction = BucketPrediction

        def encode(self, records: Records, processor: Any, *, with_labels: bool) -> list[dict[str, Any]]:
            return []



    with pytest.raises(tunelab.ConfigError, match="does not define from_training_data, collate, build_model"):
        tunelab.register_task("half", Half)
    with pytest.raises(tunelab.ConfigError, match="already registered"):
        tunelab.register_task("classification", LengthBucketTask)
    with pytest.raises(tunelab.ConfigError, match="plain identifier"):
        tunelab.register_method("top layers", top_layers)
    assert "half" not in tunelab.registry.TASKS
