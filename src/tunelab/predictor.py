"""Predictor: one interface to every artifact tunelab writes (fine-tuned, zero-/few-shot, SetFit), with
exactly the preprocessing used in training.

A Predictor is a model, its input processor and the task object that turns records into predictions with
them; which strategy made the artifact decides how the three are loaded (through the strategy registry),
never how they are used. The contract is setfit's: one input in gives one prediction out, a list gives a
list.

Example:
    >>> from tunelab import Predictor
    >>> predictor = Predictor.load("runs/demo")                     # doctest: +SKIP
    >>> predictor.predict("a warm, funny film")                     # doctest: +SKIP
    {'label': 'positive', 'score': 0.97, 'scores': {...}}
    >>> predictor.predict(["a warm, funny film", "a dull mess"])    # doctest: +SKIP
    [{'label': 'positive', ...}, {'label': 'negative', ...}]
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model

from .adapters import ActiveAdapter, BasePool
from .artifact import find_artifact, read_manifest
from .data import Records, read_records
from .errors import ArtifactError, ConfigError, DataError
from .registry import STRATEGIES
from .runtimes import RUNTIMES
from .speech import Transcriber, transcriber_from_manifest


def predict_each(predict: Callable[[Records], list[dict[str, Any]]], records: Records,
                 on_error: str = "raise") -> list[dict[str, Any]]:
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


class Predictor:
    """Predictions and metrics from a model, its processor and its task.

    Args:
        model: the model (in eval mode for prediction).
        processor: its input processor (a tokenizer).
        task: the ``tunelab.Task`` that encodes inputs and decodes outputs.
        manifest: the artifact's manifest (``{}`` for a model not saved yet).
        path: the artifact directory, when loaded from one.
        adapter: its adapter on a base model shared with other Predictors (``Predictor.load(..., pool=)``).
    """

    def __init__(self, model: torch.nn.Module, processor: Any, task: Any, manifest: dict[str, Any],
                 path: Path | None = None, adapter: ActiveAdapter | None = None):
        self.model = model.eval()
        self.processor = processor
        self.task = task
        self.manifest = manifest
        self.path = path
        self.adapter = adapter
        self._speech = manifest.get("speech")  # the recogniser for spoken inputs, loaded on the first one
        self._transcriber: Transcriber | None = None

    @classmethod
    def load(cls, path: str | Path, *, allow_network: bool = False, threads: int | None = None,
             pool: BasePool | None = None) -> Predictor:
        """Load from an artifact directory (or a run directory containing ``artifact/``).

        Every file is checked against the sha256 its manifest recorded; nothing in an artifact can run code
        or turn the network on: only ``allow_network=True`` here lets a hub-id base model download.

        Args:
            path: the artifact directory, or a run directory that holds ``artifact/``.
            allow_network: let a base model named by a hub id download (off by default).
            threads: torch CPU threads for prediction (default: torch's, all cores).
            pool: share base models between adapter (LoRA) artifacts loaded through the same pool: one copy
                of the base in memory, each Predictor's adapter switched on for its own predictions.

        Example:
            >>> Predictor.load("runs/demo", threads=1).predict("fine")     # doctest: +SKIP
        """
        if threads:
            torch.set_num_threads(int(threads))
        artifact_dir = find_artifact(path)
        manifest = read_manifest(artifact_dir)
        adapter = None
        try:
            if pool is not None and pool.accepts(manifest):
                model, processor, task, adapter = pool.load(artifact_dir, manifest, allow_network)
            else:
                strategy = STRATEGIES.get(str(manifest.get("strategy", "finetune")))
                model, processor, task = strategy.load(artifact_dir, manifest, allow_network)
        except ConfigError as err:
            raise ArtifactError(f"{artifact_dir}: {err}") from None
        except (KeyError, TypeError, AttributeError) as err:
            raise ArtifactError(f"{artifact_dir}/manifest.json is not a valid tunelab manifest: field {err} is "
                                "missing or has the wrong type") from None
        return cls(model, processor, task, manifest, artifact_dir, adapter)

    @property
    def labels(self) -> list[str]:
        """The label names (classes, entity types) the model predicts; empty for other tasks."""
        return list(self.task.labels)

    @property
    def notes(self) -> list[str]:
        """What the last ``predict`` reported besides predictions (e.g. prompts cut to the context window)."""
        return self.task.notes

    @property
    def input_schema(self) -> type[BaseModel]:
        """A pydantic model of one input record (a model trained on speech takes its audio column, as a path or
        data URI, in place of the text it transcribes to)."""
        schema = self.task.input_schema()
        if not self._speech:
            return schema
        spoken, text = self._speech["audio_column"], self._speech["text_column"]
        fields: dict[str, Any] = {name: ((Optional[str], None) if name == text else (field.annotation, field))
                                  for name, field in schema.model_fields.items()}
        fields[spoken] = (Optional[str], Field(None, description="speech: a data URI (data:audio/wav;base64,...) or "
                                                            "a local path; transcribed into " + repr(text)))
        return create_model(schema.__name__ + "Spoken", __config__=ConfigDict(extra="allow"), **fields)

    @property
    def output_schema(self) -> type[BaseModel]:
        """A pydantic model of one prediction."""
        return self.task.output_schema()

    def as_records(self, inputs: Any) -> Records:
        """Inputs as the Records ``predict`` reads: plain texts, token lists (NER), (text, pair) tuples, dicts,
        a DataFrame or a file."""
        return self.task.as_records(inputs)

    def predict(self, inputs: Any, batch_size: int = 64, on_error: str = "raise") -> Any:
        """Predict for a text, or for texts, (text, pair) tuples, dicts with the training columns, a DataFrame
        or a file.

        Args:
            inputs: what to predict for; a single string gives a single prediction.
            batch_size: inputs run through the model together.
            on_error: ``"raise"``: an input that cannot be predicted (an empty text, a missing column) raises
                a DataError naming its row; ``"record"``: it gets ``{"error": ...}`` in its place.

        Returns:
            For a string, one dict; otherwise one dict per input, in order: ``label`` and ``score`` (plus
            ``scores`` per label); ``labels`` for multi-label; ``score`` for regression; entities, answers or
            text for the other tasks (``output_schema`` describes it).

        Example:
            >>> predictor.predict("great")["label"]                          # doctest: +SKIP
            'positive'
        """
        records = self.as_records(inputs)
        results = predict_each(lambda recs: self._predict(recs, batch_size), records, on_error)
        return results[0] if isinstance(inputs, str) else results

    def transcribed(self, records: Records) -> Records:
        """Records with their audio transcribed into the text column, for a model trained on speech
        (``data.audio_column``); other models get them unchanged."""
        if not self._speech:
            return records
        if self._transcriber is None:
            self._transcriber = transcriber_from_manifest(self._speech)
        return self._transcriber(records)

    def _predict(self, records: Records, batch_size: int) -> list[dict[str, Any]]:
        if not len(records):
            return []
        records = self.transcribed(records)
        with self.using() as model:
            return self.task.predict_records(model, self.processor, records, batch_size)

    def using(self) -> Any:
        """A context in which ``self.model`` predicts as this artifact: on a shared base, its adapter is
        switched on and the base is kept to this Predictor until the context ends."""
        return self.adapter.use() if self.adapter is not None else nullcontext(self.model)

    def decoding_config(self, **changes: Any) -> Any:
        """Generation tasks: the model's ``generate`` settings with ``changes`` applied, checked (nothing is
        changed on the model).

        Raises:
            ConfigError: the model does not generate text, or a setting is invalid (named).

        Example:
            >>> predictor.decoding_config(max_new_tokens=16).max_new_tokens     # doctest: +SKIP
            16
        """
        from pydantic import ValidationError

        from .config import GenerateConfig

        if not self.task.streams:
            raise ConfigError(f"a {self.task.name} model's decoding cannot be changed per call")
        try:
            return GenerateConfig(**{**self.task.generate_config.model_dump(), **changes})
        except ValidationError as err:
            first = err.errors()[0]
            raise ConfigError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None

    @contextmanager
    def decoding(self, **changes: Any) -> Iterator[Predictor]:
        """Generation tasks: decode with these ``generate`` settings changed until the block ends (e.g. one
        request's ``max_new_tokens``). Not for concurrent use: the server runs it in the model's own thread.

        Args:
            changes: ``GenerateConfig`` fields: ``max_new_tokens``, ``strategy``, ``temperature``, ``top_p``,
                ``stop``, ``seed``, ...

        Raises:
            ConfigError: the model does not generate text, or a setting is invalid (named).

        Example:
            >>> with predictor.decoding(max_new_tokens=16):              # doctest: +SKIP
            ...     predictor.predict("a long report ...")
        """
        config = self.decoding_config(**changes)
        before, self.task.generate_config = self.task.generate_config, config
        try:
            yield self
        finally:
            self.task.generate_config = before

    def explain(self, inputs: Any, method: str = "ig", target: str | None = None, **options: Any) -> Any:
        """Which words of each input led to the prediction (see ``tunelab.explain``).

        Args:
            inputs: a text, texts, or records with the task's columns (like ``predict``).
            method: ``ig`` (integrated gradients), ``gradxinput``, ``attention`` (rollout), ``occlusion`` or
                ``lime``; for classification, relation and prompted classification the last two run through
                ``predict``, so ONNX artifacts too; NER and QA explain on the PyTorch model (not ``lime``).
            target: what to explain — classification/relation: a label (default: the predicted one); NER: a
                predicted entity as ``TYPE@start:end``, its text or its type (default: the first); QA: ``start``
                or ``end`` of the predicted answer (default: start). ``targets`` in the result lists them.
            options: method settings: ``steps`` (ig, default 32), ``samples`` and ``seed`` (lime).

        Returns:
            One dict per input (one for a string): ``method``, ``target``, ``score`` (its probability),
            ``column``, ``text`` and ``words`` with ``start``/``end`` character offsets and ``attribution``
            (positive: towards the target), and ``targets`` (what else can be explained for this input).

        Raises:
            ConfigError: an unknown method or label, or a gradient method on a runtime without gradients.
            DataError: an empty text.

        Example:
            >>> predictor.explain("a gripping, funny film", method="occlusion")["words"][1]    # doctest: +SKIP
            {'word': 'gripping', 'start': 2, 'end': 10, 'attribution': 0.31}
        """
        from .explain import explain_record

        records = self.transcribed(self.as_records(inputs))
        with self.using():
            model = self.explain_model()
            results = [explain_record(model, row, method, target, **options) for row in records.rows]
        return results[0] if isinstance(inputs, str) else results

    def explain_model(self) -> Any:
        """What ``tunelab.explain`` runs: this predictor's ``predict``, and its PyTorch model for gradient
        methods (none for an exported runtime)."""
        from .explain import Model

        exported = self.manifest.get("model_format") in RUNTIMES
        return Model(self.task, lambda rows: self.predict(rows, on_error="record"),
                     None if exported else self.model, self.processor)

    def stream(self, text: Any) -> Iterator[str]:
        """Generation tasks: yield the output for one input piece by piece as it is produced."""
        records = self.as_records(text)
        with self.using() as model:
            yield from self.task.stream(model, self.processor, records)

    def evaluate(self, data: Any, batch_size: int = 128) -> dict[str, Any]:
        """The task's metrics on labelled records (same columns as training).

        Args:
            data: a file, DataFrame, datasets.Dataset or list of dicts.
            batch_size: inputs run through the model together.
        """
        with self.using() as model:
            return self.task.evaluate_records(model, self.processor, self.transcribed(read_records(data)), batch_size)


def as_own_columns(predictor: Predictor, records: Records) -> Records:
    """Plain lines (a .txt file, a one-column ``text`` file) as the model's own text column, keeping their numbers.

    Args:
        predictor: the predictor whose task decides the columns.
        records: records read from a file.

    Example:
        >>> as_own_columns(predictor, read_records("lines.txt"))   # doctest: +SKIP
    """
    if records.columns == ["text"] and all(set(r) == {"text"} for r in records.rows):
        shaped = predictor.as_records([r["text"] for r in records.rows])
        shaped.source, shaped.lines = records.source, records.lines
        return shaped
    return records


def prediction_line(records: Records, i: int, prediction: dict[str, Any], id_column: str = "id") -> str:
    """The JSON line ``tunelab predict`` writes for row ``i``: its number, its id if it has one, the prediction.

    Args:
        records: the records predicted.
        i: the row.
        prediction: its prediction (or error record).
        id_column: the column copied as ``id`` when the row has it.

    Example:
        >>> prediction_line(records, 0, {"label": "positive"})   # doctest: +SKIP
        '{"row": 1, "label": "positive"}'
    """
    ident = records.rows[i].get(id_column)
    head = {"row": records.number(i), **({"id": ident} if ident is not None else {})}
    return json.dumps({**head, **prediction}, ensure_ascii=False, default=str)
