"""Predictor: load an artifact and predict with exactly the preprocessing used in training.

Example:
    >>> from tunelab import Predictor
    >>> predictor = Predictor.load("runs/demo")                     # doctest: +SKIP
    >>> predictor.predict(["a warm, funny film", "a dull mess"])    # doctest: +SKIP
    [{'label': 'positive', 'score': 0.97, 'scores': {...}}, {'label': 'negative', ...}]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .artifact import find_artifact, read_manifest
from .data import Records, read_records
from .errors import ArtifactError, DataError
from .inference import model_outputs
from .models import quiet_loading, resolve_model
from .tasks import TASKS


def load_model(artifact_dir: Path, manifest: dict[str, Any], task: Any) -> torch.nn.Module:
    """Rebuild the trained model: full weights load directly; an adapter goes on top of its base model."""
    model_dir = artifact_dir / "model"
    if manifest["model_format"] == "full":
        model, _ = task.build_model(model_dir, dropout=None)
        return model
    import peft

    base = manifest["base_model"]
    resolved = resolve_model(base["name"], allow_network=bool(base.get("allow_network")))
    model, _ = task.build_model(resolved.path, dropout=None)
    with quiet_loading():
        return peft.PeftModel.from_pretrained(model, model_dir)


def collate_for(task: Any, tokenizer: Any) -> Any:
    return task.collate(tokenizer.pad_token_id or 0)


class Predictor:
    """Predictions from a saved artifact: labels and scores, batched and length-sorted."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: Any, manifest: dict[str, Any], path: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task
        self.manifest = manifest
        self.path = path
        self._collate = collate_for(task, tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """Load from an artifact directory (or a run directory containing ``artifact/``).

        Zero-/few-shot and SetFit artifacts load as their own predictors with the same ``predict`` and
        ``evaluate`` (and ``stream`` for generation)."""
        from transformers import AutoTokenizer

        artifact_dir = find_artifact(path)
        manifest = read_manifest(artifact_dir)
        strategy = manifest.get("strategy", "finetune")
        if strategy in ("zero_shot", "few_shot"):
            from .strategies import load_prompted

            return load_prompted(artifact_dir, manifest)
        if strategy == "setfit":
            from .strategies import load_setfit

            return load_setfit(artifact_dir, manifest)
        task_name = manifest["task"]["name"]
        if task_name not in TASKS:
            raise ArtifactError(f"{artifact_dir}: task {task_name!r} is not known to this tunelab version")
        task = TASKS[task_name](manifest["task"]["state"])
        tokenizer = AutoTokenizer.from_pretrained(artifact_dir / "tokenizer")
        model = load_model(artifact_dir, manifest, task)
        return cls(model, tokenizer, task, manifest, artifact_dir)

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    def _records(self, inputs: Any) -> Records:
        """Plain texts, token lists (NER), (text, pair) tuples, dicts, a DataFrame or a file -> Records."""
        s = self.task.state
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and not isinstance(inputs[0], dict):
            rows = [self._row(item, s) for item in inputs]
            return Records(rows, "inputs", None, sorted({k for r in rows for k in r}))
        return read_records(inputs, name="inputs")

    @staticmethod
    def _row(item: Any, s: dict[str, Any]) -> dict[str, Any]:
        if isinstance(item, str):
            if s.get("kind") == "dialogue":  # a plain string is the user's first turn
                return {s["messages_column"]: [{"role": "user", "content": item}]}
            if "text_column" not in s:
                raise DataError("this model takes records, not plain texts: pass dicts such as "
                                "{'question': ..., 'context': ...}")
            return {s["text_column"]: item}
        if isinstance(item, (tuple, list)):
            if "tokens_column" in s:
                return {s["tokens_column"]: [str(t) for t in item]}
            if s.get("text_pair_column") and len(item) == 2:
                return {s["text_column"]: item[0], s["text_pair_column"]: item[1]}
            raise DataError("(text, text_pair) inputs need a model trained on sentence pairs "
                            "(data.text_pair_column); this one takes single texts")
        raise DataError(f"cannot predict for a {type(item).__name__}: give texts, dicts, a DataFrame or a file")

    def predict(self, inputs: str | Sequence[Any] | Any, batch_size: int = 64) -> list[dict[str, Any]]:
        """Predict for texts, (text, pair) tuples, dicts with the training columns, a DataFrame or a file.

        Returns one dict per input: ``label`` and ``score`` (plus ``scores`` per label); ``labels`` for
        multi-label; ``score`` for regression.
        """
        records = self._records(inputs)
        if not len(records):
            return []
        if hasattr(self.task, "evaluate_model"):  # generation: the prediction is generated text
            from .strategies import generation_predict

            return generation_predict(self.model, self.tokenizer, self.task, records)
        features = self.task.encode(records, self.tokenizer, with_labels=False)
        return self.task.decode(self._outputs(features, batch_size), features)

    def stream(self, text: Any) -> Any:
        """Generation tasks: yield the output piece by piece as it is produced."""
        from .strategies import generation_stream

        if not hasattr(self.task, "evaluate_model"):
            raise DataError("stream is for generation tasks (summarization, translation, dialogue)")
        return generation_stream(self.model, self.tokenizer, self.task, self._records(text))

    def _outputs(self, features: list[dict[str, Any]], batch_size: int) -> list[Any]:
        return model_outputs(self.model, features, self._collate, batch_size, self.task.extract, per_token=self.task.per_token)

    def evaluate(self, data: Any, batch_size: int = 128) -> dict[str, Any]:
        """The task's metrics on labelled records (same columns as training)."""
        records = read_records(data)
        features = self.task.encode(records, self.tokenizer, with_labels=True)
        if hasattr(self.task, "evaluate_model"):
            return self.task.evaluate_model(self.model, self.tokenizer, features, self._collate, batch_size, "cpu", full=True)
        return self.task.compute_metrics(self._outputs(features, batch_size), features)
