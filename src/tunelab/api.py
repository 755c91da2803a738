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
from .errors import DataError
from .methods import apply_method, enable_gradient_checkpointing, parameter_counts
from .metrics import scalar_metrics
from .models import quiet_loading, resolve_model
from .plots import confusion_matrix_png, per_label_f1_png, training_curves
from .predict import Predictor, collate_for
from .tasks import TASKS
from .strategies import choose_strategy, fit_prompted, fit_setfit
from .train import LoopInputs, TrainResult, evaluate_features, total_optimizer_steps, train_loop


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
    return read_records(source, name=split if given is not None and not isinstance(given, (str, Path)) else None)


def fit(config: Config | dict[str, Any] | str | Path | None = None, *, train: Any = None, validation: Any = None,
        test: Any = None, **overrides: Any) -> Run:
    """Train, evaluate and save an artifact.

    Args:
        config: a Config, a dict, or a YAML path; keyword overrides use ``__`` for nesting
            (``train__epochs=2``, ``method__r=4``) or a dict for a whole section (``method={"name": "full"}``).
        train, validation, test: records (path, DataFrame, datasets.Dataset, list of dicts);
            they take precedence over ``data.train`` etc. in the config.
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
    train_records = _records_for("train", train, cfg)
    strategy = choose_strategy(cfg, train_records, resolved.path)
    if strategy != cfg.strategy:
        print(f"strategy auto -> {strategy}", file=sys.stderr)
    if strategy in ("zero_shot", "few_shot"):
        return fit_prompted(cfg, resolved, strategy, train_records, _records_for("validation", validation, cfg),
                            _records_for("test", test, cfg))
    if train_records is None:
        raise DataError("no training data: set data.train in the config or pass train=... "
                        "(or strategy: zero_shot to prompt a causal LM without training)")
    if strategy == "setfit":
        return fit_setfit(cfg, resolved, train_records, _records_for("validation", validation, cfg),
                          _records_for("test", test, cfg))
    task_cls = TASKS[cfg.task.name]
    task = task_cls.from_training_data(cfg, train_records)
    val_records = _records_for("validation", validation, cfg)
    if val_records is None:
        train_records, val_records = split_validation(train_records, cfg.data.validation_fraction, cfg.train.seed,
                                                      task.stratify_keys(train_records))
    test_records = _records_for("test", test, cfg)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if hasattr(task, "prepare_tokenizer"):
        task.prepare_tokenizer(tokenizer)  # e.g. entity-marker tokens; saved with the artifact's tokenizer
    train_features = task.encode(train_records, tokenizer, with_labels=True)
    if hasattr(task, "prepare_training_features"):
        train_features = task.prepare_training_features(train_features)  # e.g. packing short examples
    val_features = task.encode(val_records, tokenizer, with_labels=True)
    test_features = task.encode(test_records, tokenizer, with_labels=True) if test_records is not None else None

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
                   "train_seconds": round(result.train_seconds, 2), "parameters": counts}
    manifest = {
        "tunelab_version": __version__,
        "strategy": "finetune",
        "task": {"name": task.name, "state": task.state},
        "method": cfg.method.model_dump(mode="json"),
        "model_format": model_format,
        "base_model": {"name": cfg.model, "source": resolved.source, "path": str(resolved.path),
                       "allow_network": cfg.allow_network},
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

    artifact_dir = write_artifact(run_dir / "artifact", manifest, write_parts)
    # The run finished: its resumable checkpoint is no longer needed.
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    plots = sorted((artifact_dir / "plots").glob("*.png"))
    live = Predictor(model, tokenizer, task, read_manifest(artifact_dir), artifact_dir)
    return Run(artifact_dir, val_metrics, test_metrics, result, counts, plots, live)


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
