"""The Python API: ``fit`` a config on records, get a ``Run`` back; ``Predictor`` loads what it saved.

``fit`` is the same for every strategy: read the records, let the strategy (``finetune``, ``zero_shot``,
``few_shot``, ``setfit`` or your own) produce a ``Fitted``, then write one artifact with one manifest.

Example:
    >>> import tunelab
    >>> run = tunelab.fit(                                          # doctest: +SKIP
    ...     model="minilm", method="lora",
    ...     train=[{"text": "loved it", "label": "pos"}, {"text": "hated it", "label": "neg"}] * 20,
    ...     output_dir="runs/tiny", train__epochs=1)
    >>> run.metrics["accuracy"]                                       # doctest: +SKIP
    >>> tunelab.Predictor.load(run.artifact_dir).predict("what a film")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifact import read_manifest, write_artifact, write_json, write_yaml
from .config import Config, build_config, load_config
from .data import Records, read_records
from .distributed import barrier, is_main
from .errors import ConfigError, DiskFullError
from .hooks import TrainHook
from .metrics import scalar_metrics
from .models import ResolvedModel, load_pretrained, resolve_model
from .plots import training_curves
from .predictor import Predictor
from .registry import STRATEGIES
from .rundir import claim_run_dir
from .speech import Transcriber, transcriber_for
from .strategies import FitJob, Fitted, choose_strategy
from .train import TrainResult
from .version import __version__


@dataclass
class Run:
    """What ``fit`` returns: where the artifact is and what it measured.

    Args:
        artifact_dir: the saved artifact.
        metrics: validation metrics of the kept (best) weights.
        test_metrics: test metrics, when test data was given.
        train: the training loop's result (None for strategies that do not run it).
        parameters: {"total", "trainable"} parameter counts.
        plots: the PNG files written with the artifact.
        live: the in-memory Predictor (the trained model before saving).
    """

    artifact_dir: Path
    metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    train: TrainResult | None
    parameters: dict[str, int] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    live: Predictor | None = field(default=None, repr=False)

    def predictor(self) -> Predictor:
        """A Predictor loaded from the saved artifact (what a server or another process would use)."""
        return Predictor.load(self.artifact_dir)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _records_for(split: str, given: Any, cfg: Config, transcribe: Transcriber | None = None) -> Records | None:
    source = given if given is not None else getattr(cfg.data, split)
    if source is None:
        return None
    records = read_records(source, name=split if given is not None and not isinstance(given, (str, Path)) else None,
                           format=cfg.data.format, encoding=cfg.data.encoding)
    return transcribe(records) if transcribe is not None else records


def fit(config: Config | dict[str, Any] | str | Path | None = None, *, train: Any = None, validation: Any = None,
        test: Any = None, hooks: list[TrainHook] | None = None, **overrides: Any) -> Run:
    """Train (or prompt), evaluate and save an artifact.

    One run at a time per ``output_dir`` (a second is refused); what a killed run left there is cleaned up
    or recovered first; an unfinished run's checkpoint is resumed (``train.resume``) or refused, never
    silently discarded. Under a distributed launch (``tunelab train --nproc``, torchrun, accelerate) every rank
    calls ``fit``; rank 0 holds the folder and writes the artifact, the others return once it is written.

    Args:
        config: a Config, a dict, or a YAML path; keyword overrides use ``__`` for nesting
            (``train__epochs=2``, ``method__r=4``) or a dict for a whole section (``method={"name": "full"}``).
        train, validation, test: records (path, DataFrame, datasets.Dataset, list of dicts);
            they take precedence over ``data.train`` etc. in the config.
        hooks: training hooks (``tunelab.hooks.TrainHook``) run by every loop that trains.

    Returns:
        a ``Run``: the artifact's path, its metrics, and the live Predictor.

    Example:
        >>> run = fit(model="minilm", train="reviews.csv", output_dir="runs/r", train__epochs=1)   # doctest: +SKIP
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    cfg = build_config(config, **overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.output_dir)
    resolved = resolve_model(cfg.model, allow_network=cfg.allow_network)
    check_max_length(cfg, resolved.path)
    main = is_main()
    transcribe = transcriber_for(cfg.data)  # speech: data.audio_column -> data.text_column, before any task sees it
    with claim_run_dir(run_dir) if main else contextlib.nullcontext():
        train_records = _records_for("train", train, cfg, transcribe)
        strategy, reason = choose_strategy(cfg, train_records, resolved.path)
        if cfg.strategy == "auto":
            print(f"strategy auto -> {strategy}: {reason}", file=sys.stderr)
        if cfg.data.augment and strategy != "finetune":
            raise ConfigError(f"data.augment: augmentation feeds the finetune strategy's loop, not {strategy!r}; "
                              "set strategy: finetune")
        if cfg.train.adversarial is not None and strategy != "finetune":
            raise ConfigError(f"train.adversarial: adversarial training runs in the finetune strategy's loop, not "
                              f"{strategy!r}; set strategy: finetune")
        job = FitJob(cfg, strategy, resolved, train_records, _records_for("validation", validation, cfg, transcribe),
                     _records_for("test", test, cfg, transcribe), run_dir, list(hooks or []),
                     transcribe.describe() if transcribe is not None else None)
        fitted = STRATEGIES.get(strategy).fit(job)
        if not main:
            barrier()  # until rank 0 has written the artifact
            return Run(run_dir / "artifact", fitted.validation, fitted.test, fitted.train, fitted.parameters)
        run = save(job, fitted)
    barrier()
    return run


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


def build_manifest(cfg: Config, model: ResolvedModel, strategy: str, fitted: Fitted) -> dict[str, Any]:
    """The manifest of an artifact: the one builder for every strategy."""
    return {
        "tunelab_version": __version__,
        "strategy": strategy,
        "task": {"name": cfg.task.name, "state": fitted.task.state},
        "model_format": fitted.model_format,
        "base_model": {"name": cfg.model, "source": model.source, "path": str(model.path)},
        "config": cfg.to_dict(),
        "metrics": {"validation": scalar_metrics(fitted.validation),
                    "test": scalar_metrics(fitted.test) if fitted.test else None},
        "parameters": fitted.parameters,
        **fitted.manifest,
    }


def save(job: FitJob, fitted: Fitted) -> Run:
    """Write ``fitted`` as ``job.run_dir/artifact`` (atomically) and return the Run."""
    cfg, run_dir = job.cfg, job.run_dir
    manifest = build_manifest(cfg, job.model, job.strategy, fitted)
    if job.speech:
        manifest["speech"] = job.speech

    def write_parts(staging: Path) -> None:
        fitted.write_parts(staging)
        write_yaml(staging / "config.yaml", cfg.to_dict())
        write_json(staging / "metrics.json", {"validation": fitted.validation, "test": fitted.test, **fitted.report})
        plots = staging / "plots"
        plots.mkdir()
        if fitted.train is not None:
            training_curves(fitted.train.history, fitted.train.evals, fitted.train.metric_name,
                            plots / "training_curves.png")
        if fitted.validation:
            fitted.task.plots(fitted.validation, plots)
        if cfg.train.report:
            write_report(fitted, manifest, staging / "report", run_dir.name)

    try:
        artifact_dir = write_artifact(run_dir / "artifact", manifest, write_parts, size_hint=fitted.size_hint)
    except DiskFullError as err:
        kept = (run_dir / "checkpoint.pt").is_file()
        raise DiskFullError(f"{err}. " + ("The last checkpoint is kept: after freeing space, run again with "
                                          "train.resume=true" if kept else
                                          "Set train.checkpoint_every to keep resumable checkpoints")) from None
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the run finished: its resumable checkpoint is done
    if (artifact_dir / "report" / "report.html").is_file():
        print(f"report: {artifact_dir / 'report' / 'report.html'}", file=sys.stderr)
    live = Predictor(fitted.model, fitted.processor, fitted.task, read_manifest(artifact_dir), artifact_dir)
    return Run(artifact_dir, fitted.validation, fitted.test, fitted.train, fitted.parameters,
               sorted((artifact_dir / "plots").glob("*.png")), live)


def evaluate(artifact: str | Path, data: Any) -> dict[str, Any]:
    """Metrics of a saved artifact on labelled records.

    Args:
        artifact: the artifact (or run) directory.
        data: labelled records (file, DataFrame, list of dicts).
    """
    return Predictor.load(artifact).evaluate(data)


def write_report(fitted: Fitted, manifest: dict[str, Any], folder: Path, name: str) -> None:
    """``train.report``: the error analysis of the run's validation records, written into ``folder``."""
    from .analysis import analyze

    if fitted.validation_records is None or not len(fitted.validation_records):
        print("note: train.report: no validation records, so no report", file=sys.stderr)
        return
    print(f"train.report: analysing the {len(fitted.validation_records)} validation records", file=sys.stderr)
    predictor = Predictor(fitted.model, fitted.processor, fitted.task, manifest)
    analyze(predictor, fitted.validation_records, out=folder, quiet=True, name=name)


def summary(run: Run) -> str:
    """A short human-readable report of a run.

    Args:
        run: what ``fit`` returned.
    """
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
