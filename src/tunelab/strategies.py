"""The strategies besides fine-tuning, behind the same ``fit`` / artifact / ``Predictor`` API:

- ``zero_shot``: prompt a causal LM (classification by verbalizer scores, entities by generation,
  summaries/translations/replies by generation); the artifact stores the template, verbalizers,
  calibration and a reference to the base model, no weights.
- ``few_shot``: as zero-shot, plus retrieved demonstrations from the labelled examples (kept in the
  artifact).
- ``setfit``: contrastive tuning of an encoder's sentence embeddings + a logistic-regression head.

``choose_strategy`` implements ``strategy: auto``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact import read_manifest, write_artifact, write_json, write_yaml
from .config import GENERATION_TASKS, Config
from .data import Records, read_records
from .errors import ConfigError, DataError
from .metrics import scalar_metrics
from .models import ResolvedModel, load_pretrained, quiet_loading


def is_causal_lm(path: Any) -> bool:
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig, path)
    archs = " ".join(getattr(config, "architectures", None) or [])
    return "CausalLM" in archs or (not getattr(config, "is_encoder_decoder", False)
                                   and config.model_type in ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma"))


def choose_strategy(cfg: Config, train: Records | None, model_path: Any) -> tuple[str, str]:
    """``auto``: the strategy for this data and model, and why (one sentence, printed by ``fit``).

    No labelled data -> zero_shot (a causal LM; an encoder falls through to finetune, whose error says
    that training data is missing). Single-label classification where the typical class has at most
    ``few_shot_limit`` examples (the median class count; one rare class in a large set does not count)
    -> few-shot: setfit on an encoder, in-context on a causal LM. Everything else -> finetune.
    """
    if cfg.strategy != "auto":
        return cfg.strategy, "set in the config"
    if train is None or not len(train):
        if is_causal_lm(model_path):
            return "zero_shot", "no labelled data and a causal LM"
        return "finetune", "an encoder model (it needs labelled data)"
    if cfg.task.name == "classification" and cfg.task.problem_type == "single_label":
        counts = Counter(str(r.get(cfg.data.label_column)).strip() for r in train.rows)
        sizes = sorted(counts.values())
        median = sizes[len(sizes) // 2] if sizes else 0
        described = f"{len(train):,} labelled examples in {len(counts)} classes, median {median} per class"
        if counts and median <= cfg.few_shot_limit:
            causal = is_causal_lm(model_path)
            return ("few_shot" if causal else "setfit"), \
                f"{described} (<= few_shot_limit {cfg.few_shot_limit}): few-shot " + \
                ("in-context prompting of the causal LM" if causal else "SetFit-style contrastive tuning")
        return "finetune", f"{described} (> few_shot_limit {cfg.few_shot_limit})"
    return "finetune", f"{len(train):,} labelled examples for {cfg.task.name}"


# ---- zero-shot / few-shot -------------------------------------------------------------------------------
def build_prompted(cfg: Config, train: Records | None, strategy: str) -> Any:
    """The task object a prompted artifact stores: PromptClassifier, PromptExtractor or GenerationTask."""
    from .prompting import PromptClassifier, PromptExtractor
    from .tasks.generation import GenerationTask

    if cfg.task.name == "classification":
        if cfg.task.problem_type != "single_label":
            raise ConfigError(f"strategy {strategy}: prompting supports single-label classification, "
                              f"not {cfg.task.problem_type}")
        return PromptClassifier.from_config(cfg, train, few_shot=strategy == "few_shot")
    if cfg.task.name == "ner":
        if strategy == "few_shot":
            raise ConfigError("strategy few_shot for ner is not supported; use zero_shot or finetune")
        return PromptExtractor.from_config(cfg)
    if cfg.task.name in GENERATION_TASKS:
        return GenerationTask.from_config(cfg)
    raise ConfigError(f"strategy {strategy} is not available for task {cfg.task.name}; use finetune")


def prompted_kind(obj: Any) -> str:
    return type(obj).__name__


class PromptPredictor:
    """Predictions from a zero-/few-shot artifact: same ``predict`` / ``evaluate`` as any Predictor."""

    def __init__(self, model: Any, tokenizer: Any, prompted: Any, manifest: dict[str, Any], path: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = prompted
        self.manifest = manifest
        self.path = path
        self.notes: list[str] = []  # e.g. prompts truncated to the context window

    @property
    def labels(self) -> list[str]:
        return list(getattr(self.task, "labels", []))

    def as_records(self, inputs: Any) -> Records:
        s = self.task.state
        col = s.get("text_column", "text")
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
            if s.get("kind") == "dialogue":  # a plain string is the user's first turn
                rows = [{s["messages_column"]: [{"role": "user", "content": t}]} for t in inputs]
                return Records(rows, "inputs", None, [s["messages_column"]])
            return Records([{col: t} for t in inputs], "inputs", None, [col])
        return read_records(inputs, name="inputs")

    def predict(self, inputs: Any, batch_size: int | None = None, on_error: str = "raise") -> list[dict[str, Any]]:
        """One dict per input, in order: ``label``/``score``/``scores`` (classification), ``entities`` +
        ``unparsed`` (extraction), or ``text`` (generation). ``on_error`` as in ``Predictor.predict``."""
        from .predict import predict_each

        return predict_each(self._predict_records, self.as_records(inputs), on_error)

    def _predict_records(self, records: Records) -> list[dict[str, Any]]:
        if not len(records):
            return []
        if hasattr(self.task, "predict_records"):
            out, self.notes = self.task.predict_records(self.model, self.tokenizer, records)
            return out
        return generation_predict(self.model, self.tokenizer, self.task, records)

    def stream(self, text: Any) -> Any:
        return generation_stream(self.model, self.tokenizer, self.task, self.as_records(text))

    def evaluate(self, data: Any, batch_size: int | None = None) -> dict[str, Any]:
        records = read_records(data)
        if hasattr(self.task, "evaluate_records"):
            return self.task.evaluate_records(self.model, self.tokenizer, records)
        features = self.task.encode(records, self.tokenizer, with_labels=True)
        return self.task.evaluate_model(self.model, self.tokenizer, features, self.task.collate(self.tokenizer.pad_token_id),
                                        16, "cpu", full=True)


def generation_predict(model: Any, tokenizer: Any, task: Any, records: Records) -> list[dict[str, Any]]:
    from .lm import generate_ids

    features = task.encode(records, tokenizer, with_labels=False)
    texts = generate_ids(model, tokenizer, [f["prompt_ids"] for f in features], task.generate_config)
    return [{"text": t} for t in texts]


def generation_stream(model: Any, tokenizer: Any, task: Any, records: Records) -> Any:
    from .lm import stream_ids

    if len(records) != 1:
        raise DataError(f"stream takes one input at a time, got {len(records)}")
    feature = task.encode(records, tokenizer, with_labels=False)[0]
    return stream_ids(model, tokenizer, feature["prompt_ids"], task.generate_config)


def fit_prompted(cfg: Config, resolved: ResolvedModel, strategy: str, train: Records | None,
                 validation: Records | None, test: Records | None) -> Any:
    from .api import Run
    from .lm import load_causal_lm

    if not is_causal_lm(resolved.path):
        raise ConfigError(f"strategy {strategy} prompts a causal LM; {cfg.model!r} is an encoder. "
                          "Use model: smollm2 (or another causal LM), or strategy setfit/finetune")
    prompted = build_prompted(cfg, train, strategy)
    model, tokenizer = load_causal_lm(resolved.path)
    started = time.perf_counter()
    if hasattr(prompted, "calibrate"):
        prompted.calibrate(model, tokenizer)
    manifest_base = {
        "tunelab_version": __version__, "strategy": strategy,
        "task": {"name": cfg.task.name, "kind": prompted_kind(prompted), "state": prompted.state},
        "model_format": "none",
        "base_model": {"name": cfg.model, "source": resolved.source, "path": str(resolved.path)},
        "config": cfg.to_dict(),
    }
    live = PromptPredictor(model, tokenizer, prompted, manifest_base)
    val_metrics = live.evaluate(validation) if validation is not None else {}
    test_metrics = live.evaluate(test) if test is not None else None
    seconds = time.perf_counter() - started
    manifest = {**manifest_base, "metrics": {"validation": scalar_metrics(val_metrics),
                                             "test": scalar_metrics(test_metrics) if test_metrics else None}}

    def write_parts(staging: Path) -> None:
        write_yaml(staging / "config.yaml", cfg.to_dict())
        write_json(staging / "metrics.json", {"validation": val_metrics, "test": test_metrics,
                                              "seconds": round(seconds, 2)})

    artifact_dir = write_artifact(Path(cfg.output_dir) / "artifact", manifest, write_parts)
    live.manifest, live.path = read_manifest(artifact_dir), artifact_dir
    total = sum(p.numel() for p in model.parameters())
    return Run(artifact_dir, val_metrics, test_metrics, None, {"trainable": 0, "total": total}, [], live)


def load_prompted(artifact_dir: Path, manifest: dict[str, Any], allow_network: bool = False) -> PromptPredictor:
    from .lm import load_causal_lm
    from .prompting import PromptClassifier, PromptExtractor
    from .tasks.generation import GenerationTask

    kinds = {"PromptClassifier": PromptClassifier, "PromptExtractor": PromptExtractor, "GenerationTask": GenerationTask}
    kind = manifest["task"].get("kind")
    if kind not in kinds:
        from .errors import ArtifactError

        raise ArtifactError(f"{artifact_dir}: prompted task kind {kind!r} is not known to this tunelab version")
    base = manifest["base_model"]
    model, tokenizer = load_causal_lm(base["name"], allow_network=allow_network)  # the caller's word, not the file's
    state = {**manifest["task"]["state"], "allow_network": allow_network}
    return PromptPredictor(model, tokenizer, kinds[kind](state), manifest, artifact_dir)


# ---- SetFit-style ----------------------------------------------------------------------------------------
class SetFitPredictor:
    """Predictions from a SetFit-style artifact: tuned encoder embeddings -> logistic-regression head."""

    def __init__(self, embedder: Any, state: dict[str, Any], manifest: dict[str, Any], path: Path | None = None):
        self.embedder = embedder
        self.state = state
        self.manifest = manifest
        self.path = path

    @property
    def labels(self) -> list[str]:
        return list(self.state["labels"])

    def as_records(self, inputs: Any) -> Records:
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
            col = self.state["text_column"]
            return Records([{col: t} for t in inputs], "inputs", None, [col])
        return read_records(inputs, name="inputs")

    def _texts(self, inputs: Any) -> tuple[list[str], Records]:
        records = self.as_records(inputs)
        col = self.state["text_column"]
        texts = []
        for i, row in enumerate(records.rows):
            value = row.get(col)
            if value is None or not str(value).strip():
                raise DataError(f"{records.where(i)}, column {col!r}: missing or empty text")
            texts.append(str(value))
        return texts, records

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from .setfit import head_probs

        return head_probs(self.state["head"], self.embedder.encode(texts), len(self.labels))

    def predict(self, inputs: Any, batch_size: int | None = None, on_error: str = "raise") -> list[dict[str, Any]]:
        """One dict per input, in order: ``label``, ``score``, ``scores``. ``on_error`` as in ``Predictor.predict``."""
        from .predict import predict_each

        return predict_each(self._predict_records, self.as_records(inputs), on_error)

    def _predict_records(self, records: Records) -> list[dict[str, Any]]:
        texts, _ = self._texts(records)
        if not texts:
            return []
        probs = self.probabilities(texts)
        return [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": dict(zip(self.labels, map(float, p)))} for p in probs]

    def evaluate(self, data: Any, batch_size: int | None = None) -> dict[str, Any]:
        from .metrics import single_label_metrics

        texts, records = self._texts(data)
        col = self.state["label_column"]
        gold = []
        for i, row in enumerate(records.rows if records else []):
            name = str(row.get(col, "")).strip()
            if name not in self.labels:
                raise DataError(f"{records.where(i)}, column {col!r}: unknown label {name!r}; labels are {self.labels}")
            gold.append(self.labels.index(name))
        pred = self.probabilities(texts).argmax(axis=1).tolist()
        return single_label_metrics(pred, gold, self.labels)


def fit_setfit(cfg: Config, resolved: ResolvedModel, train: Records, validation: Records | None,
               test: Records | None) -> Any:
    from .api import Run
    from .embed import Embedder
    from .setfit import contrastive_tune, fit_head

    if cfg.task.name != "classification" or cfg.task.problem_type != "single_label":
        raise ConfigError("strategy setfit applies to single-label classification")
    if is_causal_lm(resolved.path):
        raise ConfigError(f"strategy setfit tunes sentence embeddings of an encoder; {cfg.model!r} is a causal LM "
                          "(use model: minilm, or strategy few_shot for in-context examples)")
    d = cfg.data
    texts, names = [], []
    for i, row in enumerate(train.rows):
        value, label = row.get(d.text_column), row.get(d.label_column)
        if value is None or not str(value).strip():
            raise DataError(f"{train.where(i)}, column {d.text_column!r}: missing or empty text")
        if label is None or not str(label).strip():
            raise DataError(f"{train.where(i)}, column {d.label_column!r}: missing label")
        texts.append(str(value))
        names.append(str(label).strip())
    labels = list(cfg.task.labels or sorted(set(names)))
    if len(set(names)) < 2:
        raise DataError(f"{train.source}: setfit needs examples of at least two labels, got {sorted(set(names))}")
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise DataError(f"{train.source}: labels {unknown} are not in task.labels {labels}")
    y = [labels.index(n) for n in names]
    embedder = Embedder.load(resolved.path, max_length=cfg.setfit.max_length)
    from .setfit import pair_count

    n_pairs = pair_count(y, cfg.setfit)
    print(f"setfit: {len(texts)} examples, {len(labels)} labels -> {n_pairs:,} contrastive pairs, "
          f"{-(-n_pairs // cfg.setfit.batch_size):,} steps of batch {cfg.setfit.batch_size}", file=sys.stderr)
    timing = contrastive_tune(embedder, texts, y, cfg.setfit, cfg.train.seed)
    head = fit_head(embedder.encode(texts), y, cfg.setfit.head_c, cfg.train.seed)
    state = {"labels": labels, "text_column": d.text_column, "label_column": d.label_column, "head": head,
             "max_length": cfg.setfit.max_length}
    manifest_base = {
        "tunelab_version": __version__, "strategy": "setfit",
        "task": {"name": "classification", "kind": "SetFit", "state": state},
        "model_format": "encoder",
        "base_model": {"name": cfg.model, "source": resolved.source, "path": str(resolved.path)},
        "config": cfg.to_dict(),
    }
    live = SetFitPredictor(embedder, state, manifest_base)
    val_metrics = live.evaluate(validation) if validation is not None else {}
    test_metrics = live.evaluate(test) if test is not None else None
    manifest = {**manifest_base, "metrics": {"validation": scalar_metrics(val_metrics),
                                             "test": scalar_metrics(test_metrics) if test_metrics else None},
                "training": timing}

    def write_parts(staging: Path) -> None:
        with quiet_loading():
            embedder.model.save_pretrained(staging / "model", safe_serialization=True)
        embedder.tokenizer.save_pretrained(staging / "tokenizer")
        write_yaml(staging / "config.yaml", cfg.to_dict())
        write_json(staging / "metrics.json", {"validation": val_metrics, "test": test_metrics, "training": timing})

    artifact_dir = write_artifact(Path(cfg.output_dir) / "artifact", manifest, write_parts)
    live.manifest, live.path = read_manifest(artifact_dir), artifact_dir
    total = sum(p.numel() for p in embedder.model.parameters())
    return Run(artifact_dir, val_metrics, test_metrics, None, {"trainable": total, "total": total}, [], live)


def load_setfit(artifact_dir: Path, manifest: dict[str, Any]) -> SetFitPredictor:
    from transformers import AutoModel, AutoTokenizer

    from .embed import Embedder

    with quiet_loading():
        model = load_pretrained(AutoModel, artifact_dir / "model")
    state = manifest["task"]["state"]
    embedder = Embedder(model.eval(), load_pretrained(AutoTokenizer, artifact_dir / "tokenizer"), state["max_length"])
    return SetFitPredictor(embedder, state, manifest, artifact_dir)
