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
from .models import load_pretrained, quiet_loading, resolve_model
from .tasks import TASKS


def load_model(artifact_dir: Path, manifest: dict[str, Any], task: Any, allow_network: bool = False) -> torch.nn.Module:
    """Rebuild the trained model: full weights load directly; an adapter goes on top of its base model."""
    model_dir = artifact_dir / "model"
    if manifest["model_format"] == "full":
        model, _ = task.build_model(model_dir, dropout=None)
        return model
    import peft

    base = manifest["base_model"]
    resolved = resolve_model(base["name"], allow_network=allow_network)  # the caller's word, never the manifest's
    model, _ = task.build_model(resolved.path, dropout=None)
    with quiet_loading():
        return peft.PeftModel.from_pretrained(model, model_dir, trust_remote_code=False)


def predict_each(predict: Any, records: Records, on_error: str = "raise") -> list[dict[str, Any]]:
    """``predict(records)`` with one output per input, in order, whatever the inputs hold.

    An input the task cannot read raises a DataError naming its row (``on_error="raise"``), or becomes
    ``{"error": message}`` in its place (``"record"``). Bad rows are found by halving the failing batch, so
    the good rows are still predicted together; tasks reject bad rows while encoding, before the model runs.
    """
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', not {on_error!r}")
    if on_error == "raise":
        return predict(records)
    results: dict[int, dict[str, Any]] = {}

    def run(idx: list[int]) -> None:
        if not idx:
            return
        try:
            results.update(zip(idx, predict(records.subset(idx))))
        except DataError as err:
            if len(idx) == 1:
                results[idx[0]] = {"error": str(err)}
                return
            run(idx[: len(idx) // 2])
            run(idx[len(idx) // 2:])

    run(list(range(len(records))))
    return [results[i] for i in range(len(records))]


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
    def load(cls, path: str | Path, *, allow_network: bool = False, threads: int | None = None) -> Any:
        """Load from an artifact directory (or a run directory containing ``artifact/``).

        Every file is checked against the sha256 its manifest recorded; nothing in an artifact can run code
        or turn the network on: only ``allow_network=True`` here lets a hub-id base model download.
        Zero-/few-shot and SetFit artifacts load as their own predictors with the same ``predict`` and
        ``evaluate`` (and ``stream`` for generation).

        Args:
            path: the artifact directory, or a run directory that holds ``artifact/``.
            allow_network: let a base model named by a hub id download (off by default).
            threads: torch CPU threads for prediction (default: torch's, all cores).

        Example:
            >>> Predictor.load("runs/demo", threads=1).predict(["fine"])     # doctest: +SKIP
        """
        from transformers import AutoTokenizer

        if threads:
            torch.set_num_threads(int(threads))
        artifact_dir = find_artifact(path)
        manifest = read_manifest(artifact_dir)
        try:
            strategy = manifest.get("strategy", "finetune")
            if strategy in ("zero_shot", "few_shot"):
                from .strategies import load_prompted

                return load_prompted(artifact_dir, manifest, allow_network)
            if strategy == "setfit":
                from .strategies import load_setfit

                return load_setfit(artifact_dir, manifest)
            task_name = manifest["task"]["name"]
            if task_name not in TASKS:
                raise ArtifactError(f"{artifact_dir}: task {task_name!r} is not known to this tunelab version")
            task = TASKS[task_name](manifest["task"]["state"])
            tokenizer = load_pretrained(AutoTokenizer, artifact_dir / "tokenizer")
            model = load_model(artifact_dir, manifest, task, allow_network)
        except (KeyError, TypeError, AttributeError) as err:
            raise ArtifactError(f"{artifact_dir}/manifest.json is not a valid tunelab manifest: field {err} is "
                                "missing or has the wrong type") from None
        return cls(model, tokenizer, task, manifest, artifact_dir)

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    def as_records(self, inputs: Any) -> Records:
        """Inputs as the Records ``predict`` reads: plain texts, token lists (NER), (text, pair) tuples, dicts, a DataFrame or a file -> Records."""
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

    def predict(self, inputs: str | Sequence[Any] | Any, batch_size: int = 64, on_error: str = "raise") -> list[dict[str, Any]]:
        """Predict for texts, (text, pair) tuples, dicts with the training columns, a DataFrame or a file.

        Args:
            inputs: what to predict for.
            batch_size: inputs run through the model together.
            on_error: ``"raise"``: an input that cannot be predicted (an empty text, a missing column) raises
                a DataError naming its row; ``"record"``: it gets ``{"error": ...}`` in its place.

        Returns one dict per input, in order: ``label`` and ``score`` (plus ``scores`` per label); ``labels``
        for multi-label; ``score`` for regression; entities, answers or text for the other tasks.
        """
        return predict_each(lambda recs: self._predict_records(recs, batch_size), self.as_records(inputs), on_error)

    def _predict_records(self, records: Records, batch_size: int) -> list[dict[str, Any]]:
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
        return generation_stream(self.model, self.tokenizer, self.task, self.as_records(text))

    def _outputs(self, features: list[dict[str, Any]], batch_size: int) -> list[Any]:
        return model_outputs(self.model, features, self._collate, batch_size, self.task.extract, per_token=self.task.per_token)

    def evaluate(self, data: Any, batch_size: int = 128) -> dict[str, Any]:
        """The task's metrics on labelled records (same columns as training)."""
        records = read_records(data)
        features = self.task.encode(records, self.tokenizer, with_labels=True)
        if hasattr(self.task, "evaluate_model"):
            return self.task.evaluate_model(self.model, self.tokenizer, features, self._collate, batch_size, "cpu", full=True)
        return self.task.compute_metrics(self._outputs(features, batch_size), features)
