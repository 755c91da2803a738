"""Fine-tuning: the task's head on the pretrained model, adapted by a method (full or peft), trained by
tunelab's loop; the artifact holds the weights (or the adapter) and the processor.

Example:
    >>> run = tunelab.fit(model="minilm", strategy="finetune", train="reviews.csv")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from ..adapters import base_for
from ..adversarial import AdversarialTraining
from ..artifact import write_json
from ..augment import augment_records
from ..checkpoint import training_fingerprint
from ..config import Config
from ..data import Records, split_validation
from ..distributed import is_main
from ..errors import DataError, TunelabError
from ..methods import Target, enable_gradient_checkpointing, parameter_counts
from ..models import quiet_loading
from ..registry import METHODS, TASKS
from ..runtimes import RUNTIMES
from ..train import LoopInputs, resume_checkpoint, total_optimizer_steps, train_loop
from .base import FitJob, Fitted, Strategy


class FineTune(Strategy):
    """The ``finetune`` strategy."""

    def fit(self, job: FitJob) -> Fitted:
        cfg, train_records = job.cfg, job.train
        if train_records is None:
            raise DataError("no training data: set data.train in the config or pass train=... "
                            "(or strategy: zero_shot to prompt a causal LM without training)")
        fingerprint = training_fingerprint({**cfg.to_dict(), "train_rows_sha256": rows_sha256(train_records)})
        resume_from, resume_changes = resume_checkpoint(job.run_dir, cfg.train, fingerprint)  # before any long work
        task_cls = TASKS.get(cfg.task.name)
        task = task_cls.from_training_data(cfg, train_records)
        task.class_weights(cfg.train.class_weights)  # a bad weights spec fails now, not after tokenizing
        val_records = job.validation
        if val_records is None:
            train_records, val_records = split_validation(train_records, cfg.data.validation_fraction, cfg.train.seed,
                                                          task.stratify_keys(train_records))
            task = counted_on(task, cfg, train_records)

        augmented: dict[str, int] = {}
        if cfg.data.augment:  # training records only, after the validation split
            extra, augmented = augment_records(task, train_records.rows, cfg.data.augment, cfg.train.seed)
            train_records = Records(train_records.rows + extra, train_records.source, None, train_records.columns)
            print("data.augment: " + ", ".join(f"+{n} {name}" for name, n in augmented.items())
                  + f" -> {len(train_records)} training records", file=sys.stderr)

        processor = task.load_processor(job.model.path)
        task.prepare_processor(processor)  # e.g. marker tokens; saved with the artifact's processor
        train_features = task.encode(train_records, processor, with_labels=True)
        unknown = task.unknown_token_rate(processor, train_features)
        if unknown is not None and unknown > 0.05:
            print(f"warning: {unknown:.0%} of the tokens of {train_records.source} are unknown to the tokenizer of "
                  f"{cfg.model!r}: the model cannot read most of this text and will learn little from it. Use a "
                  "model whose vocabulary covers the text's language and script (for Chinese, a Chinese or "
                  "multilingual encoder as a local folder)", file=sys.stderr)
        train_features = task.prepare_training_features(train_features)  # e.g. packing short examples
        val_features = task.encode(val_records, processor, with_labels=True)
        test_features = task.encode(job.test, processor, with_labels=True) if job.test is not None else None
        print(f"data: {len(train_records)} training and {len(val_records)} validation records"
              + (f", {len(job.test)} test" if job.test is not None else "")
              + (f"; unknown-token rate {unknown:.1%}" if unknown is not None else ""), file=sys.stderr)

        model, head = task.build_model(job.model.path, dropout=cfg.train.dropout)
        total_steps = total_optimizer_steps(len(train_features), cfg.train)
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        method = METHODS.get(cfg.method.name)
        adaptation = method.adapt(model, cfg.method, Target(task.peft_task_type, head, task.trainable_token_ids(),
                                                             total_steps, task.adapter_targets(model),
                                                             task.frozen_modules()))
        counts = parameter_counts(adaptation.model)
        adversary = None
        if cfg.train.adversarial is not None:
            adversary = AdversarialTraining(adaptation.model, **cfg.train.adversarial.model_dump(), seed=cfg.train.seed)
        result = train_loop(LoopInputs(
            model=adaptation.model, task=task, processor=processor, train_features=train_features,
            val_features=val_features, train=train_settings(cfg, task), learning_rate=cfg.learning_rate, head_names=head,
            run_dir=job.run_dir, class_weights=task.class_weights(cfg.train.class_weights),
            hooks=[*adaptation.hooks, *([adversary] if adversary else []), *job.hooks], tracker_config=cfg.to_dict(),
            resume_from=resume_from,
            resume_changes=resume_changes, fingerprint=fingerprint,
        ))
        # sharded training gathers the trained weights into a plain model on rank 0; the others keep their shards
        model = result.gathered_model if result.gathered_model is not None else adaptation.model
        batch = cfg.train.eval_batch_size
        if is_main():  # other ranks of a distributed run leave evaluating and saving to rank 0
            val_metrics = task.evaluate_features(model, processor, val_features, batch)
            test_metrics = (task.evaluate_features(model, processor, test_features, batch)
                            if test_features is not None else None)
        else:
            val_metrics, test_metrics = {}, None

        to_save, model_format = model, ("peft" if adaptation.is_peft else "full")
        if adaptation.is_peft and adaptation.merge and is_main():
            to_save, model_format = model.merge_and_unload(), "full"  # LoRA folded into plain weights

        def write_parts(staging: Path) -> None:
            with quiet_loading():
                to_save.save_pretrained(staging / "model", safe_serialization=True)
            processor.save_pretrained(staging / "tokenizer")
            write_json(staging / "history.json", {"steps": result.history, "evals": result.evals})

        tensors = to_save.state_dict().values() if model_format == "full" else \
            [p for p in to_save.parameters() if p.requires_grad]
        report = {"primary_metric": result.metric_name, "best_step": result.best_step, "steps": result.steps,
                  "stopped_early": result.stopped_early, "still_improving": result.still_improving is not None,
                  "train_samples_per_s": round(result.samples_per_s, 2),
                  "train_seconds": round(result.train_seconds, 2), "parameters": counts, "unknown_token_rate": unknown}
        if result.sharding:
            report["sharding"] = result.sharding
        if result.resumed_at:
            report["resumed_at_steps"] = result.resumed_at
        if adversary is not None:
            report["adversarial"] = adversary.summary(result.train_seconds)
        if augmented:
            report["augmented"] = augmented
        return Fitted(model, processor, task, val_metrics, test_metrics, model_format, counts, write_parts,
                      size_hint=sum(p.numel() * p.element_size() for p in tensors) + 2_000_000, report=report,
                      manifest={"method": cfg.method.model_dump(mode="json")}, train=result,
                      validation_records=val_records)

    def load(self, artifact_dir: Path, manifest: dict[str, Any], allow_network: bool) -> tuple[Any, Any, Any]:
        task = TASKS.get(manifest["task"]["name"]).from_state(manifest["task"]["state"])
        processor = task.load_processor(artifact_dir / "tokenizer")
        model_dir = artifact_dir / "model"
        if manifest["model_format"] in RUNTIMES:  # tunelab export: an ONNX engine behind the same task code
            return RUNTIMES[manifest["model_format"]](artifact_dir, manifest).eval(), processor, task
        if manifest["model_format"] == "full":
            model, _ = task.build_model(model_dir, dropout=None)
        else:  # an adapter on top of its base model
            import peft

            base = base_for(task, manifest, allow_network)
            with quiet_loading():
                model = peft.PeftModel.from_pretrained(base, model_dir, trust_remote_code=False)
        return model.eval(), processor, task


def train_settings(cfg: Config, task: Any) -> Any:
    """``cfg.train``, with the task's own head learning rate when the config sets none (a task whose head is
    deep and freshly initialised, such as text+image fusion, learns it at a higher rate than the towers)."""
    if cfg.train.head_learning_rate is None and task.default_head_learning_rate is not None:
        return cfg.train.model_copy(update={"head_learning_rate": task.default_head_learning_rate})
    return cfg.train


def rows_sha256(records: Records) -> str:
    """A fingerprint of the training rows (order included), so a resumed run knows its data did not change."""
    digest = hashlib.sha256()
    for row in records.rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def counted_on(task: Any, cfg: Config, train_part: Records) -> Any:
    """The task with the counts in its state (``*_counts``: labels, entities, tags) taken from the training
    part only, after a validation split; the label space stays that of all the given data."""
    try:
        part = type(task).from_training_data(cfg, train_part)
    except TunelabError:
        return task
    state = dict(task.state)
    for key in [k for k in state if k.endswith("_counts")]:
        if isinstance(state[key], dict) and isinstance(part.state.get(key), dict):
            state[key] = {name: part.state[key].get(name, 0) for name in state[key]}
    return type(task)(state)
