"""Zero-shot and in-context few-shot: prompt a causal LM, no training. The task's prompted form
(``Task.Prompted``: verbalizer scoring for classification, generated ``TYPE: text`` lines for NER, the
generation task itself) does the prompting; the artifact stores its state (templates, verbalizers,
calibration, demonstrations) and a reference to the base model, no weights.

Example:
    >>> run = tunelab.fit(model="smollm2", strategy="zero_shot", task={"name": "classification",
    ...                   "labels": ["positive", "negative"]})                               # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import TASKS
from ..runtimes import RUNTIMES
from .base import FitJob, Fitted, Strategy, is_causal_lm


class Prompted(Strategy):
    """The ``zero_shot`` and ``few_shot`` strategies (``job.strategy`` tells which)."""

    def fit(self, job: FitJob) -> Fitted:
        from ..causal_lm import load_causal_lm

        cfg = job.cfg
        if not is_causal_lm(job.model.path):
            raise ConfigError(f"strategy {job.strategy} prompts a causal LM; {cfg.model!r} is an encoder. "
                              "Use model: smollm2 (or another causal LM), or strategy setfit/finetune")
        task = TASKS.get(cfg.task.name).prompted(cfg, job.train, job.strategy)
        model, tokenizer = load_causal_lm(job.model.path)
        started = time.perf_counter()
        task.calibrate(model, tokenizer)
        batch = cfg.prompt.batch_size
        val_metrics = task.evaluate_records(model, tokenizer, job.validation, batch) if job.validation is not None else {}
        test_metrics = task.evaluate_records(model, tokenizer, job.test, batch) if job.test is not None else None
        total = sum(p.numel() for p in model.parameters())
        return Fitted(model, tokenizer, task, val_metrics, test_metrics, "none", {"trainable": 0, "total": total},
                      lambda staging: None, report={"seconds": round(time.perf_counter() - started, 2)},
                      validation_records=job.validation)

    def load(self, artifact_dir: Path, manifest: dict[str, Any], allow_network: bool) -> tuple[Any, Any, Any]:
        from ..causal_lm import load_causal_lm, load_tokenizer

        prompted = TASKS.get(manifest["task"]["name"]).Prompted
        if prompted is None:
            raise ConfigError(f"{artifact_dir}: task {manifest['task']['name']!r} has no prompted form in this tunelab")
        if manifest.get("model_format") in RUNTIMES:  # tunelab export: the engine and the tokenizer it kept
            model = RUNTIMES[manifest["model_format"]](artifact_dir, manifest)
            tokenizer = load_tokenizer(artifact_dir / "tokenizer")
        else:  # the caller's word on the network, never the manifest's
            model, tokenizer = load_causal_lm(manifest["base_model"]["name"], allow_network=allow_network)
        return model, tokenizer, prompted({**manifest["task"]["state"], "allow_network": allow_network})
