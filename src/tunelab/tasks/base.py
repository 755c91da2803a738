"""The Task protocol: everything tunelab knows about one task lives in one ``Task`` subclass.

A task turns records into model inputs and model outputs into predictions and metrics, the same code at
training, evaluation and prediction time. It carries plain-data ``state`` (saved in the artifact's
manifest and given back to ``__init__`` when the artifact loads). The loop, the strategies, the Predictor,
the CLI and the server talk to tasks only through the members below; the base class gives each optional
member a working default, so a new task overrides only what differs.

=====================  ==========================================================================
member                 what it is
=====================  ==========================================================================
``Options``            pydantic model of the ``task:`` config section (subclass ``TaskOptions``)
``Columns``            pydantic model of the ``data:`` section (subclass ``DataConfig``)
``Prediction``         pydantic model of one prediction (the output schema)
``strategies``         strategies the task supports (``finetune``, ``zero_shot``, ...)
``prompt_slots``       slots a prompt template may use (``default_template``: the prompt when none is set)
``from_training_data``  build the task (its label space) from the config and the training records
``input_columns``      the record fields one input needs (the input schema is built from them)
``load_processor``     the input processor (a tokenizer; an image processor for other modalities)
``encode``             records -> features (``with_labels`` for training and evaluation)
``collate``            features -> a padded batch of tensors
``build_model``        the pretrained model with the task's head, and the head's module names
``loss_sum``           summed loss of a batch (``loss_units`` is its normaliser)
``decode``             model outputs -> one prediction per record
``compute_metrics``    model outputs + labelled features -> metrics (``primary_metric`` picks the best)
``predict_records`` /  prediction and evaluation on records; the defaults run the model over the
``evaluate_records``   encoded features (generation and prompted tasks override them)
``explain_*``          what explanations attribute: the text, the targets (labels, entities, answer
                       ends), the target's score on predictions or on the model (``ExplainInputs``)
``analysis_*``         ``tunelab analyze``: per-record rows, metrics of a slice, the task's own sections;
                       ``scales_temperature`` says whether a fitted temperature can be stored
=====================  ==========================================================================

Example:
    >>> from tunelab.tasks.base import Task
    >>> sorted(Task.strategies)
    ['finetune']
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, create_model

from ..augment import Unit
from ..config import Config, DataConfig, TaskOptions
from ..data import Records, read_records
from ..errors import ConfigError, DataError
from ..inference import model_outputs
from ..registry import TASKS
from .words import split_words

Collate = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


@dataclass
class ExplainInputs:
    """What the model-side explanation methods need from a task for one record and target.

    Args:
        batch: the model's inputs for the record (a batch of one; ``input_ids``, ``attention_mask``, ...).
        spans: per token, its character span in the explained text (None: special or not attributed).
        score: model outputs -> the target's probability, one value per batch row (a differentiable tensor).
        focus: the token positions the target sits on (attention rollout reads from them).
    """

    batch: dict[str, torch.Tensor]
    spans: list[tuple[int, int] | None]
    score: Callable[[Any], torch.Tensor]
    focus: list[int] = field(default_factory=lambda: [0])


class Task:
    """Base class of every task. Subclass it, override what your task needs, then ``register_task``.

    Args:
        state: the plain-data description of the trained task (label names, column names, lengths);
            JSON-serialisable, stored in the artifact.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    Columns: ClassVar[type[DataConfig]] = DataConfig
    Prediction: ClassVar[type[BaseModel]]
    strategies: ClassVar[tuple[str, ...]] = ("finetune",)
    prompt_slots: ClassVar[frozenset[str]] = frozenset({"text"})
    peft_task_type: ClassVar[str | None] = None  # peft's TaskType, or None for a custom head
    per_token: ClassVar[bool] = False  # outputs are per token (cut to each feature's length)
    Prompted: ClassVar[type[Task] | None] = None  # the task's prompted (zero-/few-shot) form, if any
    default_template: ClassVar[str | None] = None  # the prompt (or instruction) when the config sets none
    streams: ClassVar[bool] = False  # predictions come out piece by piece (``stream``): generation
    export_formats: ClassVar[tuple[str, ...]] = ("onnx",)  # what ``tunelab export`` can write for it
    export_note: ClassVar[str] = ""  # why not, when it has no export format
    export_metric: ClassVar[tuple[str, bool] | None] = None  # what an export's check compares (default: primary)
    default_head_learning_rate: ClassVar[float | None] = None  # when train.head_learning_rate is unset (None: the
    # model's learning rate)

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.notes: list[str] = []  # what the last prediction call reports (e.g. prompts cut to fit)

    # ---- building ------------------------------------------------------------------------------------
    @classmethod
    def from_training_data(cls, cfg: Config, train: Records) -> Task:
        """The task for this config, its label space read from the training records.

        Args:
            cfg: the validated run config (``cfg.task`` is this task's ``Options``).
            train: the training records.
        """
        raise NotImplementedError(f"{cls.__name__}.from_training_data")

    @classmethod
    def variant(cls, data: DataConfig) -> type[Task]:
        """The task class that serves this ``data:`` section (a task may have forms, e.g. text+image); default
        this class."""
        return cls

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Task:
        """The task as an artifact saved it (its ``state``); a task with several forms picks the right one."""
        return cls(state)

    @classmethod
    def prompted(cls, cfg: Config, train: Records | None, strategy: str) -> Task:
        """The task as a causal LM prompts it (zero-/few-shot): an instance of ``Prompted``, whose
        ``predict_records`` and ``evaluate_records`` prompt the model. ``Prompted(state)`` rebuilds it from
        an artifact. Tasks without a prompted form raise ConfigError."""
        if cls.Prompted is None:
            raise ConfigError(f"strategy {strategy} is not available for task {cfg.task.name}; use finetune")
        return cls.Prompted.from_prompt_config(cfg, train, strategy)

    @classmethod
    def from_prompt_config(cls, cfg: Config, train: Records | None, strategy: str) -> Task:
        """Prompted forms: build from the config (and labelled examples for few-shot)."""
        raise NotImplementedError(f"{cls.__name__}.from_prompt_config")

    @property
    def labels(self) -> list[str]:
        """Label names (classes, entity types); empty for tasks without a label set."""
        return list(self.state.get("labels", []))

    def stratify_keys(self, records: Records) -> list[str] | None:
        """One key per record to stratify the validation split by (None: a plain random split)."""
        return None

    def class_weights(self, spec: str | dict[str, float] | None) -> torch.Tensor | None:
        """Loss weights per label for ``train.class_weights``; tasks without labels reject a spec."""
        if spec is not None:
            raise ConfigError(f"train.class_weights applies to classification-style tasks, not {self.name}")
        return None

    # ---- inputs --------------------------------------------------------------------------------------
    def input_columns(self) -> list[str]:
        """The record fields one input needs (``predict`` also takes plain texts for ``text_column``)."""
        return [self.state.get("text_column", "text")]

    def media_columns(self) -> dict[str, str]:
        """Input columns holding a file's content rather than text, and its kind (``image``, ``audio``): the server
        takes them only as data URIs, never as paths on its own disk, and its page shows a file picker."""
        return {}

    def input_schema(self) -> type[BaseModel]:
        """A pydantic model of one input record (what a request for this task looks like)."""
        fields: dict[str, Any] = {column: (str, ...) for column in self.input_columns()}
        return create_model(f"{type(self).__name__}Input", __config__=ConfigDict(extra="allow"), **fields)

    def output_schema(self) -> type[BaseModel]:
        """A pydantic model of one prediction (what ``predict`` returns per input)."""
        return self.Prediction

    def export_example(self) -> list[dict[str, Any]]:
        """Two input records to trace the model with for export (any valid input of this task)."""
        return [{column: "an example sentence to trace the model with" for column in self.input_columns()},
                {column: "and a second, shorter one" for column in self.input_columns()}]

    def input_row(self, item: Any) -> dict[str, Any]:
        """One plain input (a string by default) as a record."""
        if isinstance(item, str):
            return {self.input_columns()[0]: item}
        raise DataError(f"cannot predict for a {type(item).__name__}: give texts, dicts, a DataFrame or a file")

    def as_records(self, inputs: Any) -> Records:
        """Inputs as Records: plain items through ``input_row``; dicts, a DataFrame or a file as they are."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and not isinstance(inputs[0], dict):
            rows = [self.input_row(item) for item in inputs]
            return Records(rows, "inputs", None, sorted({k for r in rows for k in r}))
        return read_records(inputs, name="inputs")

    # ---- processing ----------------------------------------------------------------------------------
    def load_processor(self, path: Any) -> Any:
        """The input processor saved with the model (default: its tokenizer, with a pad token)."""
        from transformers import AutoTokenizer

        from ..models import load_pretrained

        tokenizer = load_pretrained(AutoTokenizer, path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def prepare_processor(self, processor: Any) -> None:
        """Adjust a fresh processor before training (e.g. add marker tokens); saved with the artifact."""

    def encode(self, records: Records, processor: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        """Records -> features (the same code at training and prediction time).

        Args:
            records: the input rows.
            processor: what ``load_processor`` returned.
            with_labels: read the gold labels too (training, evaluation).
        """
        raise NotImplementedError(f"{type(self).__name__}.encode")

    def unknown_token_rate(self, processor: Any, features: list[dict[str, Any]]) -> float | None:
        """The share of the features' tokens the tokenizer maps to its unknown token (None: no such token);
        fine-tuning warns above 5%: a model cannot learn from text it cannot read."""
        unk = getattr(processor, "unk_token_id", None)
        if unk is None:
            return None
        special = set(getattr(processor, "all_special_ids", []) or []) - {unk}
        total = unknown = 0
        for f in features:
            ids = [i for i in f.get("input_ids", []) if i not in special]
            total += len(ids)
            unknown += sum(1 for i in ids if i == unk)
        return round(unknown / total, 4) if total else None

    def prepare_training_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Training features as the loop should see them (e.g. packed); default unchanged."""
        return features

    def feature_length(self, feature: dict[str, Any]) -> int:
        """A feature's length, for length-grouped batches and per-token outputs."""
        return len(feature["input_ids"])

    def collate(self, processor: Any) -> Collate:
        """A function padding a list of features into a batch of tensors (``labels`` included)."""
        raise NotImplementedError(f"{type(self).__name__}.collate")

    # ---- model and loss ------------------------------------------------------------------------------
    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        """The pretrained model at ``model_path`` with this task's head, and the head's module names
        (they always train and are always saved)."""
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def adapter_targets(self, model: torch.nn.Module) -> list[str] | None:
        """The modules LoRA-style methods adapt when ``method.target_modules`` is unset (None: peft's default for
        the model type)."""
        return None

    def frozen_modules(self) -> list[str]:
        """Modules of ``build_model``'s model (by name) that keep their pretrained weights under every method."""
        return []

    def training_scope(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """What holds while the loop trains and evaluates ``model`` and ends with it (e.g. a cache of a frozen
        tower's outputs); default nothing."""
        return contextlib.nullcontext()

    def base_identity(self) -> tuple:
        """What, beyond the base model's path and the label count, makes ``build_model``'s model differ between two
        artifacts of this task (adapters share one base in memory only when it is equal); default nothing."""
        return ()

    def trainable_token_ids(self) -> list[int]:
        """Token ids added by ``prepare_processor`` whose embeddings must train (markers)."""
        return []

    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The batch's loss summed (not averaged): the loop normalises by ``loss_units`` of its window."""
        raise NotImplementedError(f"{type(self).__name__}.loss_sum")

    def loss_units(self, feature: dict[str, Any]) -> int:
        """How many terms this feature adds to ``loss_sum``."""
        return 1

    def extract(self, outputs: Any) -> torch.Tensor:
        """What inference keeps of a model output (default: the logits)."""
        return outputs.logits

    # ---- results -------------------------------------------------------------------------------------
    @property
    def primary_metric(self) -> tuple[str, bool]:
        """(metric name, higher is better): what early stopping and ``keep_best`` watch."""
        raise NotImplementedError(f"{type(self).__name__}.primary_metric")

    def decode(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Model outputs -> one prediction (a dict matching ``Prediction``) per record."""
        raise NotImplementedError(f"{type(self).__name__}.decode")

    def compute_metrics(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> dict[str, Any]:
        """Model outputs on labelled features -> metrics."""
        raise NotImplementedError(f"{type(self).__name__}.compute_metrics")

    def model_outputs(self, model: torch.nn.Module, processor: Any, features: list[dict[str, Any]], batch_size: int,
                      device: Any = "cpu", desc: str = "predict") -> list[np.ndarray]:
        """``extract`` of the model's output for each feature, in order."""
        return model_outputs(model, features, self.collate(processor), batch_size, self.extract,
                             length=self.feature_length, per_token=self.per_token, device=device, desc=desc)

    def evaluate_features(self, model: torch.nn.Module, processor: Any, features: list[dict[str, Any]],
                          batch_size: int, device: Any = "cpu", *, full: bool = True) -> dict[str, Any]:
        """Metrics on labelled features; ``full=False`` (during training) lets a task score less."""
        return self.compute_metrics(self.model_outputs(model, processor, features, batch_size, device, "evaluate"),
                                    features)

    def predict_records(self, model: torch.nn.Module, processor: Any, records: Records,
                        batch_size: int) -> list[dict[str, Any]]:
        """One prediction per record, in order. Bad records raise DataError naming their row."""
        features = self.encode(records, processor, with_labels=False)
        return self.decode(self.model_outputs(model, processor, features, batch_size), features)

    def evaluate_records(self, model: torch.nn.Module, processor: Any, records: Records,
                         batch_size: int) -> dict[str, Any]:
        """The task's metrics on labelled records."""
        features = self.encode(records, processor, with_labels=True)
        return self.evaluate_features(model, processor, features, batch_size)

    def stream(self, model: torch.nn.Module, processor: Any, records: Records) -> Iterator[str]:
        """Generation tasks: the output piece by piece. Other tasks raise DataError."""
        raise DataError("stream is for generation tasks (summarization, translation, dialogue)")

    def calibrate(self, model: torch.nn.Module, processor: Any) -> None:
        """Prompted tasks: measure what they need from the model before use (default: nothing)."""

    def plots(self, metrics: dict[str, Any], folder: Path) -> list[Path]:
        """Write the task's result plots for validation ``metrics`` into ``folder``; returns the files."""
        return []

    # ---- explanations (tunelab.explain) ------------------------------------------------------------
    explains_by_prediction: ClassVar[bool] = False  # explain_score reads predictions: occlusion, lime and
    # faithfulness run through predict (so on any runtime); otherwise every method runs on the PyTorch model

    def explains_words(self) -> bool:
        """Whether explanations attribute words (a model that reads no text has only its image's regions)."""
        return True

    def explain_column(self, record: dict[str, Any]) -> str:
        """The column whose words an explanation attributes (default: the first input column)."""
        return self.input_columns()[0]

    def explain_text(self, record: dict[str, Any]) -> str:
        """The text whose words are attributed (default: the explain column's); ``explain_inputs`` spans and
        explanation offsets are in its characters."""
        column = self.explain_column(record)
        if column not in record:
            raise DataError(f"column {column!r} is missing: the model reads its text from there "
                            f"(the input has {', '.join(map(repr, record)) or 'no columns'})")
        text = record[column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"column {column!r}: an empty text has nothing to explain")
        return text

    def explain_targets(self, prediction: dict[str, Any]) -> list[str]:
        """What can be explained in one prediction (labels, entities, answer start/end); the default first."""
        raise ConfigError(f"explanations are not available for the {self.name} task")

    def explain_resolve_target(self, prediction: dict[str, Any], target: str | None) -> str:
        """The target to explain: the default one when None, else ``target`` checked against ``explain_targets``."""
        targets = self.explain_targets(prediction)
        if not targets:
            raise DataError("the model predicted nothing here to explain")
        if target is None:
            return targets[0]
        if str(target) not in targets:
            raise ConfigError(f"target {target!r} is not one of this prediction's: {', '.join(targets)}")
        return str(target)

    def explain_score(self, prediction: dict[str, Any], target: str) -> float:
        """``explains_by_prediction`` tasks: the target's probability in one prediction."""
        raise ConfigError(f"the {self.name} task scores explanations on the model, not on predictions")

    def explain_protected(self, text: str) -> list[tuple[int, int]]:
        """Character spans an explanation never removes (e.g. entity markers)."""
        return []

    def explain_inputs(self, processor: Any, record: dict[str, Any], target: str, prediction: dict[str, Any]) -> ExplainInputs:
        """Model-side methods: the batch of one ``encode`` makes for ``record``, each token's character span in
        ``explain_text`` (None for special tokens), how to read the target's probability from the outputs, and the
        tokens the target sits on."""
        raise ConfigError(f"gradient methods (ig, gradxinput, attention) are not available for the {self.name} task; "
                          "use occlusion or lime")

    # ---- data augmentation (data.augment) -------------------------------------------------------------
    augment_kind: ClassVar[str | None] = None  # text | marked_text | tokens; None: labels cannot be kept

    def augment_units(self, row: dict[str, Any]) -> list[Unit]:
        """The record's words to augment (``text`` kinds: the explained column's words; spans ``explain_protected``
        names are one fixed unit each)."""
        text = self.explain_text(row)
        protected = self.explain_protected(text)
        units: list[Unit] = []
        done: set[tuple[int, int]] = set()
        for word, (a, b) in zip(*split_words(text)):
            span = next(((ps, pe) for ps, pe in protected if a < pe and ps < b), None)
            if span is None:
                units.append(Unit(word))
            elif span not in done:
                units.append(Unit(text[span[0]:span[1]], fixed=True))
                done.add(span)
        return units

    def augment_record(self, row: dict[str, Any], units: list[Unit]) -> dict[str, Any]:
        """The record with its augmented words (joined by single spaces)."""
        return {**row, self.explain_column(row): " ".join(u.text for u in units)}

    # ---- error analysis (tunelab.analyze) -----------------------------------------------------------
    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One plain row per labelled record for ``tunelab.analyze``: ``text`` (what slices look at; maps embed it,
        with ``text_pair`` when the model reads two texts), ``gold`` and ``pred`` (short strings), ``correct``
        (None when the task has no right or wrong), ``loss`` (higher: worse) and what ``analysis_metrics`` needs;
        optionally ``probs`` + ``gold_index`` (calibration) and ``group_gold``/``group_pred`` (map colours)."""
        raise ConfigError(f"tunelab analyze is not available for the {self.name} task")

    def representations(self, model: torch.nn.Module, processor: Any, records: Records, rows: list[dict[str, Any]],
                        batch_size: int = 32) -> np.ndarray:
        """Each record as the model sees it, one vector per record, for the analysis maps; default: the mean of the
        model's last hidden states over the tokens of the row's ``text`` (and ``text_pair``).

        Args:
            model: the trained PyTorch model.
            processor: its input processor (a tokenizer).
            records: the records analysed.
            rows: their ``analysis_rows``, in the same order.
            batch_size: records run through the model together.
        """
        from ..sentence_embeddings import text_representations

        return text_representations(model, processor, [(r["text"], r.get("text_pair")) for r in rows],
                                    int(self.state.get("max_length") or 256), batch_size)

    def analysis_metrics(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """The task's metrics over some analysis rows (a slice); default: accuracy of ``correct``."""
        return {"accuracy": float(np.mean([r["correct"] for r in rows])) if rows else 0.0}

    def analysis_sections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The task's own report sections: ``{"title", "table": [row dicts], "plot"?: {"kind", ...}, "note"?}``."""
        return []

    def scales_temperature(self) -> bool:
        """Whether predictions apply a stored ``temperature`` (softmax(logits / T)) — what ``tunelab analyze
        --calibrate`` fits; tasks with one softmax over labels say yes."""
        return False


REQUIRED = ("from_training_data", "encode", "collate", "build_model", "loss_sum", "primary_metric")
# (member, unless this one is overridden): the defaults of the second use the first
REQUIRED_UNLESS = (("decode", "predict_records"), ("compute_metrics", "evaluate_features"))


def _overrides(task: type[Task], member: str) -> bool:
    """Whether a class between ``task`` and ``Task`` defines ``member``."""
    return any(member in vars(k) for k in task.__mro__[: task.__mro__.index(Task)])


def register_task(name: str, task: type[Task], *, replace: bool = False) -> type[Task]:
    """Make ``task`` available as ``task: {name: <name>}`` in configs, and to ``Predictor.load``.

    Args:
        name: the config name (an identifier), e.g. ``"length_bucket"``.
        task: a ``Task`` subclass overriding at least ``from_training_data``, ``encode``, ``collate``,
            ``build_model``, ``loss_sum``, ``decode``, ``compute_metrics`` and ``primary_metric``, and
            declaring ``Prediction`` (and ``Options`` / ``Columns`` for its own config fields).
        replace: allow replacing a registered task of the same name.

    Example:
        >>> from tunelab import register_task                                   # doctest: +SKIP
        >>> register_task("length_bucket", LengthBucketTask)                    # doctest: +SKIP
    """
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise ConfigError(f"register_task({name!r}, ...): expected a subclass of tunelab.Task, got {task!r}")
    if task.strategies and "finetune" in task.strategies:
        missing = [m for m in REQUIRED if not _overrides(task, m)]
        missing += [m for m, unless in REQUIRED_UNLESS if not (_overrides(task, m) or _overrides(task, unless))]
        if missing:
            raise ConfigError(f"register_task({name!r}): {task.__name__} does not define {', '.join(missing)}")
    if not _overrides(task, "Prediction"):
        raise ConfigError(f"register_task({name!r}): {task.__name__} has no Prediction schema (a pydantic model)")
    if not (issubclass(task.Options, TaskOptions) and issubclass(task.Columns, DataConfig)):
        raise ConfigError(f"register_task({name!r}): Options must subclass TaskOptions and Columns DataConfig")
    if not task.name:
        task.name = name
    return TASKS.add(name, task, replace=replace)
