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

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

METHOD_NAMES = ("full", "lora", "adalora", "ia3", "prompt_tuning", "prefix_tuning")

# Learning rates that work for each method on small encoders; used when train.learning_rate is unset.
DEFAULT_LEARNING_RATES = {
    "full": 5e-5,
    "lora": 1e-3,
    "adalora": 1e-3,
    "ia3": 3e-3,
    "prompt_tuning": 3e-2,
    "prefix_tuning": 1e-2,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Strict):
    """Which task and its own options."""

    name: Literal["classification", "ner", "relation", "qa", "summarization", "translation", "dialogue"] = Field(
        "classification", description="the task to learn")
    labels: list[str] | None = Field(None, description="zero-shot: the label names (classification) or entity types "
                                     "(ner) when there is no training data to read them from")
    problem_type: Literal["single_label", "multi_label", "regression"] = Field(
        "single_label", description="classification: one label, several labels, or a number per text"
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="multi_label: score above which a label is on")
    tag_scheme: Literal["auto", "bio", "iob1", "bioes", "bmes"] = Field(
        "auto", description="ner: tag scheme of the data, converted to BIO on reading (auto: detect)"
    )
    doc_stride: int | None = Field(None, ge=0, description="qa: tokens shared by consecutive windows of a long "
                                   "context (default: a quarter of data.max_length)")
    max_answer_length: int = Field(30, ge=1, description="qa: longest answer in tokens")
    n_best: int = Field(20, ge=1, description="qa: start/end candidates per window")
    allow_unanswerable: bool = Field(False, description="qa: SQuAD 2.0 style questions without an answer")
    negative_label: str = Field("Other", description="relation: the no-relation label, left out of macro-F1")
    stride: int | None = Field(None, ge=0, description="ner: sub-tokens shared by consecutive windows of a long "
                               "input (default: a quarter of data.max_length)")
    case_markers: bool | Literal["auto"] = Field(
        "auto", description="ner: mark capitalised and all-caps words with two trained marker tokens, giving an "
        "uncased (lower-casing) tokenizer back the capitalisation cue; auto: on when the tokenizer lower-cases")
    document_context: bool = Field(False, description="ner: read each sentence inside windows of its document "
                                   "(consecutive records sharing data.document_column, e.g. CoNLL -DOCSTART- "
                                   "blocks; records without it are one running text, in order) so neighbouring "
                                   "sentences give context; predictions and scores stay per record")
    instruction: str | None = Field(None, description="summarization/translation: the user turn, with a {text} slot "
                                    "(translation also {source_lang} {target_lang}); a default per task")
    system_prompt: str | None = Field(None, description="generation: a system turn (default: the chat template's own)")
    source_lang: str = Field("English", description="translation: source language name used in the instruction")
    target_lang: str = Field("French", description="translation: target language name used in the instruction")
    packing: bool = Field(False, description="generation: pack several short examples into one training sequence "
                          "(attention stays within each example)")
    eval_generate: int = Field(32, ge=0, description="generation: validation records generated at each evaluation "
                               "during training for ROUGE/BLEU (0: loss only); the final evaluation generates all")


class DataConfig(_Strict):
    """Where records come from and which columns hold what."""

    train: str | None = Field(None, description="training records: .csv .tsv .jsonl .json")
    validation: str | None = Field(None, description="validation records; split from train when unset")
    test: str | None = Field(None, description="optional held-out records evaluated at the end")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "conll", "semeval", "text"] = Field(
        "auto", description="file format of data.train/validation/test; auto: by extension, checked against the "
        "content (JSON Lines in a .json file, CoNLL columns under any name)")
    encoding: str = Field("utf-8", description="text encoding of the data files, e.g. utf-8, latin-1, gbk, utf-16")
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="second text for sentence-pair tasks")
    label_column: str = "label"
    label_separator: str = Field("|", description="multi_label: separator when labels come as one string")
    tokens_column: str = Field("tokens", description="ner: pre-split tokens (a list per record)")
    tags_column: str = Field("tags", description="ner: one tag per token")
    entities_column: str = Field("entities", description="ner: character-offset entities for raw text_column")
    document_column: str = Field("document", description="ner: which document a record belongs to (CoNLL files "
                                 "with -DOCSTART- lines get it on reading); used by task.document_context")
    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"
    target_column: str = Field("target", description="summarization/translation: the reference output text")
    reference_columns: list[str] | None = Field(None, description="generation: several reference columns for "
                                                "evaluation (multi-reference ROUGE/BLEU), e.g. [summary1, summary2]")
    messages_column: str = Field("messages", description="dialogue: a list of {role, content} turns")
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    max_length: int = Field(128, ge=8, le=8192, description="tokens per input after truncation")


class MethodConfig(_Strict):
    """How the pretrained weights adapt. Unnamed peft options go in ``peft`` and pass straight through."""

    name: Literal["full", "lora", "adalora", "ia3", "prompt_tuning", "prefix_tuning"] = "lora"
    r: int = Field(8, ge=1, description="lora/adalora rank")
    alpha: int = Field(16, ge=1, description="lora/adalora scaling numerator")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="lora/adalora dropout")
    target_modules: list[str] | str | None = Field(None, description="modules to adapt; peft's default if unset")
    num_virtual_tokens: int = Field(20, ge=1, description="prompt/prefix tuning length")
    merge: bool = Field(False, description="lora: merge the adapter into the base weights when saving")
    peft: dict[str, Any] = Field(default_factory=dict, description="extra fields for the peft config")


class TrainConfig(_Strict):
    """The training loop's knobs."""

    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    learning_rate: float | None = Field(None, gt=0, description="default depends on method.name")
    head_learning_rate: float | None = Field(None, gt=0, description="task head; defaults to learning_rate")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout")
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations; default once an epoch")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without improvement")
    keep_best: bool = Field(True, description="restore the best evaluated weights at the end")
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
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")


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


GENERATION_TASKS = ("summarization", "translation", "dialogue")
STRATEGIES = ("auto", "finetune", "zero_shot", "few_shot", "setfit")


class Config(_Strict):
    """Everything one run needs. See ``configs/`` for examples."""

    task: TaskConfig = Field(default_factory=TaskConfig)
    model: str = Field("minilm", description="'minilm', 'smollm2', a local HF directory, a .gguf file, or a hub id")
    allow_network: bool = Field(False, description="let a hub id download (off: nothing touches the network)")
    output_dir: str = "runs/latest"
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: Literal["auto", "finetune", "zero_shot", "few_shot", "setfit"] = Field(
        "auto", description="finetune, zero_shot (prompt a causal LM), few_shot (in-context examples), setfit "
        "(contrastive embeddings + head); auto: from the labelled data and the model")
    few_shot_limit: int = Field(16, ge=1, description="auto: at most this many labelled examples per class "
                                "means few-shot (setfit on an encoder, in-context on a causal LM)")
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    setfit: SetFitConfig = Field(default_factory=SetFitConfig)

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("method", mode="before")
    @classmethod
    def _method_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.method.merge and self.method.name != "lora":
            raise ValueError(f"method.merge applies to lora only, not {self.method.name!r}")
        from .prompts import check_template

        if self.prompt.template is not None:
            check_template(self.prompt.template, self.task.name, "prompt.template")
        if self.task.instruction is not None:
            check_template(self.task.instruction, self.task.name, "task.instruction")
        if self.task.name in GENERATION_TASKS and self.strategy in ("few_shot", "setfit"):
            raise ValueError(f"strategy {self.strategy!r} is for classification; {self.task.name} takes "
                             "finetune or zero_shot")
        if self.strategy == "setfit" and self.task.name != "classification":
            raise ValueError("strategy 'setfit' applies to task classification only")
        return self

    @property
    def learning_rate(self) -> float:
        return self.train.learning_rate or DEFAULT_LEARNING_RATES[self.method.name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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
        data = data.to_dict()
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
        # Relative data paths in a config file are relative to the file, so configs are portable.
        for split in ("train", "validation", "test"):
            value = (data.get("data") or {}).get(split)
            if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
                data["data"][split] = str(path.parent / value)
    return build_config(data, source=source, dotted=parse_overrides(overrides or []))
