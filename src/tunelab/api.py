"""The Python API: ``fit`` a config on records, get a ``Run`` back; ``Predictor`` loads what it saved.

Example:
    >>> import tunelab
    >>> run = tunelab.fit(                                          # doctest: +SKIP
    ...     model="minilm", method="lora",
    ...     train=[{"text": "loved it", "label": "pos"}, {"text": "hated it", "label": "neg"}] * 20,
    ...     output_dir="runs/tiny", train__epochs=1)
    >>> run.metrics["accuracy"]                                       # doctest: +SKIP
    >>> tunelab.Predictor.load(run.artifact_dir).predict(["what a film"])   # doctest: +SKIP
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .artifact import read_manifest, write_artifact, write_json, write_yaml
from .config import Config, build_config
from .data import Records, read_records, split_validation
from .errors import ConfigError, DataError, DiskFullError, TunelabError
from .methods import apply_method, enable_gradient_checkpointing, parameter_counts
from .metrics import scalar_metrics
from .models import load_pretrained, quiet_loading, resolve_model
from .rundir import claim_run_dir
from .checkpoint import training_fingerprint
from .plots import confusion_matrix_png, per_label_f1_png, training_curves
from .predict import Predictor, collate_for
from .tasks import TASKS
from .strategies import choose_strategy, fit_prompted, fit_setfit
from .train import LoopInputs, TrainResult, evaluate_features, resume_checkpoint, total_optimizer_steps, train_loop


@dataclass
class Run:
    """What ``fit`` returns: where the artifact is and what it measured."""

    artifact_dir: Path
    metrics: dict[str, Any]  # validation metrics of the kept (best) weights
    test_metrics: dict[str, Any] | None
    train: TrainResult | None  # None for strategies that do not train (zero_shot, few_shot in-context)
    parameters: dict[str, int] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    live: Any = field(default=None, repr=False)  # the in-memory predictor (the trained model before saving)

    def predictor(self) -> Any:
        """A Predictor loaded from the saved artifact (what a server or another process would use)."""
        return Predictor.load(self.artifact_dir)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _records_for(split: str, given: Any, cfg: Config) -> Records | None:
    source = given if given is not None else getattr(cfg.data, split)
    if source is None:
        return None
    return read_records(source, name=split if given is not None and not isinstance(given, (str, Path)) else None,
                        format=cfg.data.format, encoding=cfg.data.encoding)


def fit(config: Config | dict[str, Any] | str | Path | None = None, *, train: Any = None, validation: Any = None,
        test: Any = None, **overrides: Any) -> Run:
    """Train, evaluate and save an artifact.

    One run at a time per ``output_dir`` (a second is refused); what a killed run left there is cleaned up
    or recovered first; an unfinished run's checkpoint is resumed (``train.resume``) or refused, never
    silently discarded.

    Args:
        config: a Config, a dict, or a YAML path; keyword overrides use ``__`` for nesting
            (``train__epochs=2``, ``method__r=4``) or a dict for a whole section (``method={"name": "full"}``).
        train, validation, test: records (path, DataFrame, datasets.Dataset, list of dicts);
            they take precedence over ``data.train`` etc. in the config.

    Example:
        >>> run = fit(model="minilm", train="reviews.csv", output_dir="runs/r", train__epochs=1)   # doctest: +SKIP
    """
    if isinstance(config, (str, Path)):
        from .config import load_config

        config = load_config(config)
    cfg = build_config(config, **overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.output_dir)
    resolved = resolve_model(cfg.model, allow_network=cfg.allow_network)
    check_max_length(cfg, resolved.path)
    with claim_run_dir(run_dir):
        return _fit_locked(cfg, resolved, run_dir, train, validation, test)


def check_max_length(cfg: Config, model_path: Any) -> None:
    """``data.max_length`` must fit the model's position embeddings: checked before any data is read."""
    from transformers import AutoConfig

    model_config = load_pretrained(AutoConfig, model_path)
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    if getattr(model_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        limit -= 2  # these number positions from padding_idx + 1
    if cfg.data.max_length > limit:
        raise ConfigError(f"data.max_length is {cfg.data.max_length}, but {cfg.model!r} reads at most {limit} tokens "
                          f"(max_position_embeddings); set data.max_length to {limit} or less")


def _fit_locked(cfg: Config, resolved: Any, run_dir: Path, train: Any, validation: Any, test: Any) -> Run:
    train_records = _records_for("train", train, cfg)
    strategy, reason = choose_strategy(cfg, train_records, resolved.path)
    if cfg.strategy == "auto":
        print(f"strategy auto -> {strategy}: {reason}", file=sys.stderr)
    if strategy in ("zero_shot", "few_shot"):
        return fit_prompted(cfg, resolved, strategy, train_records, _records_for("validation", validation, cfg),
                            _records_for("test", test, cfg))
    if train_records is None:
        raise DataError("no training data: set data.train in the config or pass train=... "
                        "(or strategy: zero_shot to prompt a causal LM without training)")
    if strategy == "setfit":
        return fit_setfit(cfg, resolved, train_records, _records_for("validation", validation, cfg),
                          _records_for("test", test, cfg))
    fingerprint = training_fingerprint({**cfg.to_dict(), "train_rows_sha256": rows_sha256(train_records)})
    resume_from, resume_changes = resume_checkpoint(run_dir, cfg.train, fingerprint)  # before any long work
    task_cls = TASKS[cfg.task.name]
    task = task_cls.from_training_data(cfg, train_records)
    task.class_weights(cfg.train.class_weights)  # a bad weights spec fails now, not after tokenizing
    val_records = _records_for("validation", validation, cfg)
    if val_records is None:
        train_records, val_records = split_validation(train_records, cfg.data.validation_fraction, cfg.train.seed,
                                                      task.stratify_keys(train_records))
        task = counted_on(task, task_cls, cfg, train_records)
    test_records = _records_for("test", test, cfg)

    from transformers import AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer, resolved.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if hasattr(task, "prepare_tokenizer"):
        task.prepare_tokenizer(tokenizer)  # e.g. entity-marker tokens; saved with the artifact's tokenizer
    train_features = task.encode(train_records, tokenizer, with_labels=True)
    unknown = report_unknown_tokens(tokenizer, train_features, train_records.source, cfg.model)
    if hasattr(task, "prepare_training_features"):
        train_features = task.prepare_training_features(train_features)  # e.g. packing short examples
    val_features = task.encode(val_records, tokenizer, with_labels=True)
    test_features = task.encode(test_records, tokenizer, with_labels=True) if test_records is not None else None
    print(f"data: {len(train_records)} training and {len(val_records)} validation records"
          + (f", {len(test_records)} test" if test_records is not None else "")
          + (f"; unknown-token rate {unknown:.1%}" if unknown is not None else ""), file=sys.stderr)

    model, head = task.build_model(resolved.path, dropout=cfg.train.dropout)
    total_steps = total_optimizer_steps(len(train_features), cfg.train)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    extras = task.peft_extras(cfg.method.name) if hasattr(task, "peft_extras") and cfg.method.name != "full" else {}
    adaptation = apply_method(model, cfg.method, task.peft_task_type, head, total_steps, extras)
    counts = parameter_counts(adaptation.model)
    collate = collate_for(task, tokenizer)

    result = train_loop(LoopInputs(
        model=adaptation.model, task=task, train_features=train_features, val_features=val_features,
        collate=collate, train=cfg.train, learning_rate=cfg.learning_rate, head_names=head, run_dir=run_dir,
        class_weights=task.class_weights(cfg.train.class_weights), extra_losses=adaptation.extra_losses,
        after_backward=adaptation.after_backward, tracker_config=cfg.to_dict(), tokenizer=tokenizer,
        resume_from=resume_from, resume_changes=resume_changes, fingerprint=fingerprint,
    ))
    model = adaptation.model
    val_metrics = evaluate_features(model, task, val_features, collate, cfg.train.eval_batch_size, "cpu", tokenizer=tokenizer)
    test_metrics = (evaluate_features(model, task, test_features, collate, cfg.train.eval_batch_size, "cpu", tokenizer=tokenizer)
                    if test_features is not None else None)

    to_save = model
    model_format = "peft" if adaptation.is_peft else "full"
    if adaptation.is_peft and cfg.method.merge:
        to_save = model.merge_and_unload()  # plain transformers model with LoRA folded into the weights
        model_format = "full"

    metrics_doc = {"validation": val_metrics, "test": test_metrics, "primary_metric": result.metric_name,
                   "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
                   "train_samples_per_s": round(result.samples_per_s, 2),
                   "train_seconds": round(result.train_seconds, 2), "parameters": counts,
                   "unknown_token_rate": unknown}
    manifest = {
        "tunelab_version": __version__,
        "strategy": "finetune",
        "task": {"name": task.name, "state": task.state},
        "method": method_view(cfg.method.model_dump(mode="json")),
        "model_format": model_format,
        "base_model": {"name": cfg.model, "source": resolved.source, "path": str(resolved.path)},
        "config": cfg.to_dict(),
        "metrics": {"validation": scalar_metrics(val_metrics),
                    "test": scalar_metrics(test_metrics) if test_metrics else None},
        "parameters": counts,
    }

    def write_parts(staging: Path) -> None:
        with quiet_loading():
            to_save.save_pretrained(staging / "model", safe_serialization=True)
        tokenizer.save_pretrained(staging / "tokenizer")
        write_yaml(staging / "config.yaml", cfg.to_dict())
        write_json(staging / "metrics.json", metrics_doc)
        write_json(staging / "history.json", {"steps": result.history, "evals": result.evals})
        plots = staging / "plots"
        plots.mkdir()
        training_curves(result.history, result.evals, result.metric_name, plots / "training_curves.png")
        if "confusion_matrix" in val_metrics:
            confusion_matrix_png(val_metrics["confusion_matrix"], task.labels, plots / "confusion_matrix.png",
                                 title="validation confusion matrix")
        if "per_type" in val_metrics:
            per_label_f1_png(val_metrics["per_type"], plots / "per_type_f1.png", title="validation scores per entity type")

    size = sum(p.numel() * p.element_size() for p in to_save.state_dict().values()) if model_format == "full" else \
        sum(p.numel() * p.element_size() for p in to_save.parameters() if p.requires_grad)
    try:
        artifact_dir = write_artifact(run_dir / "artifact", manifest, write_parts, size_hint=size + 2_000_000)
    except DiskFullError as err:
        kept = (run_dir / "checkpoint.pt").is_file()
        raise DiskFullError(f"{err}. " + ("The last checkpoint is kept: after freeing space, run again with "
                                          "train.resume=true" if kept else
                                          "Set train.checkpoint_every to keep resumable checkpoints")) from None
    # The run finished: its resumable checkpoint is no longer needed.
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    plots = sorted((artifact_dir / "plots").glob("*.png"))
    live = Predictor(model, tokenizer, task, read_manifest(artifact_dir), artifact_dir)
    return Run(artifact_dir, val_metrics, test_metrics, result, counts, plots, live)


def method_view(method: dict[str, Any]) -> dict[str, Any]:
    """The method settings that apply to the method used (``full`` has no rank, alpha or target modules)."""
    keep = {"full": ("name",), "lora": ("name", "r", "alpha", "dropout", "target_modules", "merge", "peft"),
            "adalora": ("name", "r", "alpha", "dropout", "target_modules", "peft"),
            "ia3": ("name", "target_modules", "peft"), "prompt_tuning": ("name", "num_virtual_tokens", "peft"),
            "prefix_tuning": ("name", "num_virtual_tokens", "peft")}.get(method.get("name"), tuple(method))
    return {k: v for k, v in method.items() if k in keep}


def rows_sha256(records: Records) -> str:
    """A fingerprint of the training rows (order included), so a resumed run knows its data did not change."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for row in records.rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def counted_on(task: Any, task_cls: Any, cfg: Config, train_part: Records) -> Any:
    """The task with its label counts (``label_counts``, ``entity_counts``, ``tag_counts``) taken from the
    training part only, after a validation split; the label space stays that of all the given data."""
    try:
        part = task_cls.from_training_data(cfg, train_part)
    except TunelabError:
        return task
    state = dict(task.state)
    for key in ("label_counts", "entity_counts", "tag_counts"):
        if key in state and key in part.state:
            state[key] = {name: part.state[key].get(name, 0) for name in state[key]}
    return task_cls(state)


def report_unknown_tokens(tokenizer: Any, features: list[dict[str, Any]], source: str, model: str,
                          warn_above: float = 0.05) -> float | None:
    """The share of the text's tokens that the tokenizer maps to its unknown token, with a clear warning
    above ``warn_above``: a model cannot learn from text it cannot read."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or []) - {unk}
    total = unknown = 0
    for f in features:
        ids = [i for i in f.get("input_ids", []) if i not in special]
        total += len(ids)
        unknown += sum(1 for i in ids if i == unk)
    if not total:
        return None
    rate = unknown / total
    if rate > warn_above:
        print(f"warning: {rate:.0%} of the tokens of {source} are unknown to the tokenizer of {model!r} "
              f"({tokenizer.unk_token}): the model cannot read most of this text and will learn little from it. "
              "Use a model whose vocabulary covers the text's language and script (for Chinese, a Chinese or "
              "multilingual encoder as a local folder)", file=sys.stderr)
    return round(rate, 4)


def evaluate(artifact: str | Path, data: Any) -> dict[str, Any]:
    """Metrics of a saved artifact on labelled records."""
    return Predictor.load(artifact).evaluate(data)


def summary(run: Run) -> str:
    """A short human-readable report of a run."""
    m = scalar_metrics(run.metrics)
    strategy = (run.live.manifest.get("strategy") if run.live is not None else None) or "finetune"
    primary = run.train.metric_name if run.train else ("accuracy" if "accuracy" in m else "f1" if "f1" in m else "rougeL")
    lines = [f"artifact: {run.artifact_dir}  (strategy: {strategy})",
             f"trainable parameters: {run.parameters.get('trainable', 0):,} of {run.parameters.get('total', 0):,}"]
    if run.train:
        lines.append(f"steps: {run.train.steps}  ({run.train.samples_per_s:.1f} samples/s, "
                     f"{run.train.train_seconds:.1f} s training)")
    if m:
        lines.append(f"validation {primary}: {m.get(primary, float('nan')):.4f}  "
                     + "  ".join(f"{k}={v:.4f}" for k, v in m.items()
                                 if k != primary and k.startswith(("f1", "accuracy", "rmse", "pearson", "rouge", "bleu"))))
    if run.test_metrics:
        t = scalar_metrics(run.test_metrics)
        lines.append(f"test {primary}: {t.get(primary, float('nan')):.4f}")
    lines += [f"plot: {p}" for p in run.plots]
    return "\n".join(lines)
