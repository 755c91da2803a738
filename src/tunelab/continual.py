"""Continual learning: one model learns a sequence of tasks — each with its own head and label set — and is
measured on every earlier task after each one (the forgetting matrix).

``tunelab.fit_sequence(tasks, continual={"strategy": ...})`` (and ``tunelab train-sequence SEQUENCE.yaml``)
trains the tasks in order on one shared encoder; each task's head is its own. Strategies (``CONTINUAL``):

- ``naive``: plain sequential fine-tuning (the baseline; it forgets).
- ``replay``: a reservoir buffer (``memory``: a number of examples, or a fraction of all training examples)
  of earlier tasks' examples; every step also learns from a sample of it, each through its own task's head.
- ``ewc``: elastic weight consolidation — a penalty ``lambda/2 * sum F (theta - theta*)^2`` on the shared
  encoder, ``F`` the (online, summed) diagonal empirical Fisher of earlier tasks, ``theta*`` their weights.
- ``lwf``: learning without forgetting, as distillation on the new data: the encoder's sentence
  representations stay close (MSE) to those of the encoder before this task (earlier heads cannot read the new
  task's inputs — NER tokens, relation markers — so the representations are what is distilled).
- ``adapters``: one LoRA adapter per task on the frozen shared base: nothing is forgotten, by construction.

The result is one folder: ``sequence.json`` (the order, the strategy, the matrix) and one ordinary tunelab
artifact per task (``SequencePredictor`` or ``Predictor.load(folder / name)``), plus ``forgetting.png``; the
loop's working files (checkpoints, tracker logs) go to ``runs/<name>`` inside it.

Metrics (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018), with ``R[i][j]`` the primary metric of task ``j``
after training task ``i``: average accuracy ``mean_j R[T][j]``; average forgetting ``mean_{j<T} (max_{i<T}
R[i][j] - R[T][j])``; backward transfer ``mean_{j<T} (R[T][j] - R[j][j])``.

Example:
    >>> run = tunelab.fit_sequence([{"name": "sst2", "task": "classification", "train": "sst2.tsv", ...},
    ...                             {"name": "news", "task": "classification", "train": "ag.csv", ...}],
    ...                            output_dir="runs/seq", continual={"strategy": "replay", "memory": 0.05})
    ...                                                                             # doctest: +SKIP
    >>> run["avg_forgetting"]                                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .adversarial import AdversarialTraining
from .api import seed_everything
from .artifact import write_artifact, write_json, write_yaml
from .augment import augment_records
from .config import Config, build_config
from .data import Records, read_records, split_validation
from .errors import ConfigError
from .hooks import StepContext, TrainHook
from .methods import Target, parameter_counts
from .models import quiet_loading, resolve_model
from .registry import METHODS, TASKS
from .sentence_embeddings import mean_pool
from .train import LoopInputs, total_optimizer_steps, train_loop


# ---- the pieces each strategy is made of --------------------------------------------------------------------
class Reservoir:
    """A reservoir sample (Vitter's algorithm R) of a stream: after ``n`` offers each item is kept with
    probability ``capacity / n``.

    Args:
        capacity: how many items it holds.
        seed: for the draws.
    """

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity, self.items, self.seen = int(capacity), [], 0
        self.rng = random.Random(seed)

    def offer(self, item: Any) -> None:
        """Consider one more item of the stream."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            k = self.rng.randrange(self.seen)
            if k < self.capacity:
                self.items[k] = item

    def sample(self, k: int) -> list[Any]:
        """``k`` items (fewer when it holds fewer), without replacement."""
        return self.rng.sample(self.items, min(k, len(self.items)))


@dataclass
class Learned:
    """A task the sequence has learned: its name, config, task, model (its head on the shared encoder, or its
    adapter), tokenizer and encoded examples."""

    name: str
    cfg: Config
    task: Any
    model: torch.nn.Module
    tokenizer: Any
    train_features: list[dict[str, Any]]
    val_features: list[dict[str, Any]]


class ReplayHook(TrainHook):
    """Each micro-batch also learns from a sample of the reservoir, every example through its own task's head."""

    def __init__(self, buffer: Reservoir, learned: dict[str, Learned], tokenizer: Any, size: int):
        self.buffer, self.learned, self.tokenizer, self.size = buffer, learned, tokenizer, size

    def extra_loss(self, ctx: StepContext) -> torch.Tensor | None:
        """The mean loss of a replayed sample (each example by its task's own loss)."""
        picked = self.buffer.sample(self.size)
        if not picked:
            return None
        total = None
        for name in sorted({n for n, _ in picked}):
            old = self.learned[name]
            features = [f for n, f in picked if n == name]
            batch = old.task.collate(self.tokenizer)(features)
            labels = batch.pop("labels")
            loss = old.task.loss_sum(old.model(**batch), labels, None) / sum(old.task.loss_units(f) for f in features)
            part = loss * len(features) / len(picked)
            total = part if total is None else total + part
        return total


class EWCHook(TrainHook):
    """``lambda/2 * sum F (theta - theta*)^2`` over the shared encoder's parameters."""

    def __init__(self, encoder: torch.nn.Module, fisher: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor],
                 strength: float):
        self.params = dict(encoder.named_parameters())
        self.fisher, self.anchors, self.strength = fisher, anchors, strength

    def penalty(self) -> torch.Tensor:
        """The current penalty (zero at the anchors). Rows added to the embeddings since (a later task's marker
        tokens) are free: they have no anchor."""
        terms = []
        for n, fisher in self.fisher.items():
            param = self.params[n][tuple(slice(0, size) for size in fisher.shape)]
            terms.append((fisher * (param - self.anchors[n]) ** 2).sum())
        return 0.5 * self.strength * torch.stack(terms).sum()

    def extra_loss(self, ctx: StepContext) -> torch.Tensor | None:
        """The EWC penalty (none before the first task is consolidated)."""
        return self.penalty() if self.fisher else None


class LwFHook(TrainHook):
    """Keep the encoder's mean-pooled representations of the new data close to the frozen earlier encoder's."""

    def __init__(self, encoder: torch.nn.Module, teacher: torch.nn.Module, strength: float):
        self.encoder, self.teacher, self.strength = encoder, teacher.eval(), strength
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def extra_loss(self, ctx: StepContext) -> torch.Tensor | None:
        """``strength`` x the mean squared distance of the two encoders' sentence representations."""
        inputs = {k: v for k, v in ctx.batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        mask = inputs["attention_mask"]
        student = mean_pool(self.encoder(**inputs).last_hidden_state, mask)
        with torch.no_grad():
            teacher = mean_pool(self.teacher(**inputs).last_hidden_state, mask)
        return self.strength * torch.nn.functional.mse_loss(student, teacher)


def fisher_diagonal(learned: Learned, encoder: torch.nn.Module, tokenizer: Any, samples: int, batch_size: int = 8,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal of the encoder's parameters on up to ``samples`` training examples of a
    learned task: the mean squared gradient of its loss, per batch."""
    features = random.Random(seed).sample(learned.train_features, min(samples, len(learned.train_features)))
    params = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    collate = learned.task.collate(tokenizer)
    batches = [features[i: i + batch_size] for i in range(0, len(features), batch_size)]
    learned.model.eval()
    for chunk in batches:
        batch = collate(chunk)
        labels = batch.pop("labels")
        learned.model.zero_grad()
        loss = learned.task.loss_sum(learned.model(**batch), labels, None) / sum(learned.task.loss_units(f) for f in chunk)
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 / len(batches)
    learned.model.zero_grad()
    return fisher


# ---- strategies -------------------------------------------------------------------------------------------
@dataclass
class SequenceState:
    """What a strategy carries from task to task."""

    settings: dict[str, Any]
    encoder: torch.nn.Module | None = None
    learned: dict[str, Learned] = field(default_factory=dict)
    buffer: Reservoir | None = None
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    anchors: dict[str, torch.Tensor] = field(default_factory=dict)


def _no_hooks(state: SequenceState, tokenizer: Any, batch_size: int) -> list[TrainHook]:
    return []


def _replay_hooks(state: SequenceState, tokenizer: Any, batch_size: int) -> list[TrainHook]:
    return [ReplayHook(state.buffer, state.learned, tokenizer, batch_size)] if state.buffer and state.buffer.items else []


def _ewc_hooks(state: SequenceState, tokenizer: Any, batch_size: int) -> list[TrainHook]:
    if not state.fisher:
        return []
    return [EWCHook(state.encoder, state.fisher, state.anchors, float(state.settings.get("ewc_lambda", 5000.0)))]


def _lwf_hooks(state: SequenceState, tokenizer: Any, batch_size: int) -> list[TrainHook]:
    if not state.learned:
        return []
    return [LwFHook(state.encoder, copy.deepcopy(state.encoder), float(state.settings.get("lwf_lambda", 1.0)))]


CONTINUAL: dict[str, Callable[[SequenceState, Any, int], list[TrainHook]]] = {
    "naive": _no_hooks, "replay": _replay_hooks, "ewc": _ewc_hooks, "lwf": _lwf_hooks, "adapters": _no_hooks}
SETTINGS = {"strategy", "memory", "ewc_lambda", "fisher_samples", "lwf_lambda", "seed", "r"}


# ---- the sequence -----------------------------------------------------------------------------------------
def _records(value: Any, what: str, fmt: str = "auto") -> Records | None:
    if value is None:
        return None
    return read_records(value, name=what, format=fmt)


def _configs(tasks: list[dict[str, Any]], model: str, output_dir: Path, method: dict[str, Any],
             train: dict[str, Any]) -> list[tuple[str, Config, dict[str, Any]]]:
    """Each task's own config (validated like ``fit``'s), checked for a sequence: unique names, encoder tasks."""
    out, seen = [], set()
    for k, spec in enumerate(tasks):
        spec = dict(spec)
        name = str(spec.pop("name", "") or "")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"tasks[{k}].name: each task needs a name of letters, digits, - or _ (got {name!r})")
        if name in seen:
            raise ConfigError(f"tasks[{k}].name: {name!r} is used twice; every task's head needs its own name")
        seen.add(name)
        if "test" in spec:
            raise ConfigError(f"tasks[{k}].test: fit_sequence measures each task on its validation records; evaluate a "
                              "saved task on test data with tunelab eval FOLDER/NAME TEST")
        data = {key: spec.pop(key) for key in ("train", "validation") if key in spec}
        cfg = build_config({"model": model, "output_dir": str(output_dir / name), "strategy": "finetune",
                            "method": method, "train": {**train, **spec.pop("train_settings", {})}, **spec})
        if TASKS.get(cfg.task.name).streams:
            raise ConfigError(f"tasks[{k}]: continual learning covers encoder tasks with a head (classification, ner, "
                              f"relation, qa), not {cfg.task.name}")
        reads = ("images (data.image_column)" if TASKS.get(cfg.task.name).variant(cfg.data) is not TASKS.get(cfg.task.name)
                 else "speech (data.audio_column)" if cfg.data.audio_column else None)
        if reads:
            raise ConfigError(f"tasks[{k}] ({name}): continual learning shares one text encoder between text tasks; "
                              f"this task reads {reads}: train it on its own with tunelab train")
        if "train" not in data:
            raise ConfigError(f"tasks[{k}] ({name}): give its training records as 'train'")
        out.append((name, cfg, data))
    return out


def _grown(earlier: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | float:
    """An earlier task's Fisher padded with zeros to the parameter's current shape (embeddings grow)."""
    if earlier is None:
        return 0.0
    out = torch.zeros(shape, dtype=earlier.dtype)
    out[tuple(slice(0, size) for size in earlier.shape)] = earlier
    return out


def _swap_encoder(model: torch.nn.Module, encoder: torch.nn.Module) -> None:
    """Make ``model`` read through the shared ``encoder`` (its own encoder is dropped)."""
    setattr(model, model.base_model_prefix, encoder)


def _metric(task: Any, model: torch.nn.Module, tokenizer: Any, features: list[dict[str, Any]], batch: int) -> float:
    name, _ = task.primary_metric
    return float(task.evaluate_features(model, tokenizer, features, batch)[name])


def fit_sequence(tasks: list[dict[str, Any]], *, output_dir: str | Path, model: str = "minilm",
                 continual: str | dict[str, Any] = "naive", train: dict[str, Any] | None = None,
                 method: dict[str, Any] | None = None) -> dict[str, Any]:
    """Learn ``tasks`` in order on one shared encoder, measuring every learned task after each.

    Args:
        tasks: one dict per task: ``name`` (unique), ``task`` (section or name), ``data`` (its columns),
            ``train`` / ``validation`` (records or files; validation split off when absent), and optionally
            ``train_settings`` (overrides of ``train`` for this task).
        output_dir: where the sequence folder is written.
        model: the base model every task starts from.
        continual: a strategy name or ``{"strategy", "memory", "ewc_lambda", "fisher_samples", "lwf_lambda",
            "r", "seed"}`` (see the module docstring).
        train: training settings shared by the tasks (``train:`` of a config).
        method: full fine-tuning by default; ``adapters`` uses LoRA (``r``, default 8) whatever this says.

    Returns:
        ``{"sequence", "strategy", "matrix", "avg_accuracy", "avg_forgetting", "backward_transfer", "seconds",
        "memory_examples", "folder"}``; also written to ``output_dir/sequence.json``.

    Raises:
        ConfigError: an unknown strategy or setting, a task without a name or with one used twice, a generation
            task, or a task config that ``fit`` would refuse.
    """
    settings = {"strategy": continual} if isinstance(continual, str) else dict(continual)
    unknown = sorted(set(settings) - SETTINGS)
    if unknown:
        raise ConfigError(f"continual: unknown setting {unknown[0]!r}; known: {', '.join(sorted(SETTINGS))}")
    strategy = str(settings.get("strategy", "naive"))
    if strategy not in CONTINUAL:
        raise ConfigError(f"continual.strategy: unknown strategy {strategy!r}; known: {', '.join(CONTINUAL)}")
    if not tasks:
        raise ConfigError("tasks: give at least one task")
    output_dir = Path(output_dir)
    lora = strategy == "adapters"
    method = {"name": "lora", "r": int(settings.get("r", 8))} if lora else (method or {"name": "full"})
    plan = _configs(tasks, model, output_dir, method, dict(train or {}))
    seed = int(settings.get("seed", plan[0][1].train.seed))
    started = time.perf_counter()

    resolved = resolve_model(model)
    state = SequenceState(settings)
    records = []
    for name, cfg, data in plan:
        train_records = _records(data["train"], f"{name} train", cfg.data.format)
        val_records = _records(data.get("validation"), f"{name} validation", cfg.data.format)
        task = TASKS.get(cfg.task.name).from_training_data(cfg, train_records)
        if val_records is None:
            train_records, val_records = split_validation(train_records, cfg.data.validation_fraction, cfg.train.seed,
                                                          task.stratify_keys(train_records))
        records.append((name, cfg, task, train_records, val_records))
    if strategy == "replay":
        total = sum(len(r[3]) for r in records)
        memory = settings.get("memory", 0.05)
        capacity = int(memory) if float(memory) >= 1 else round(float(memory) * total)
        if capacity < 1:
            raise ConfigError(f"continual.memory: {memory} keeps no example of {total}; give a count or a larger fraction")
        state.buffer = Reservoir(capacity, seed)

    matrix: list[list[float | None]] = []
    shared_tokenizer = None
    print(f"continual ({strategy}): {' -> '.join(r[0] for r in records)}", file=sys.stderr)
    for t, (name, cfg, task, train_records, val_records) in enumerate(records):
        # adapters: every task on its own fresh base (the base never changes); otherwise one tokenizer and encoder
        seed_everything(cfg.train.seed + t)  # each task's head starts from the same draw whatever ran before
        tokenizer = task.load_processor(resolved.path) if lora or shared_tokenizer is None else shared_tokenizer
        shared_tokenizer = None if lora else tokenizer
        task.prepare_processor(tokenizer)
        net, head = task.build_model(resolved.path, dropout=cfg.train.dropout)
        if not lora:
            if state.encoder is None:
                state.encoder = getattr(net, net.base_model_prefix)
            if state.encoder.get_input_embeddings().num_embeddings != len(tokenizer):
                with quiet_loading():
                    state.encoder.resize_token_embeddings(len(tokenizer), mean_resizing=True)
            _swap_encoder(net, state.encoder)
        if cfg.data.augment:  # this task's training records only
            extra, _ = augment_records(task, train_records.rows, cfg.data.augment, cfg.train.seed, f"tasks[{t}].data.augment")
            train_records = Records(train_records.rows + extra, train_records.source, None, train_records.columns)
        train_features = task.prepare_training_features(task.encode(train_records, tokenizer, with_labels=True))
        val_features = task.encode(val_records, tokenizer, with_labels=True)
        adaptation = METHODS.get(cfg.method.name).adapt(net, cfg.method, Target(
            task.peft_task_type, head, task.trainable_token_ids(), total_optimizer_steps(len(train_features), cfg.train)))
        hooks = CONTINUAL[strategy](state, tokenizer, cfg.train.batch_size)
        if cfg.train.adversarial is not None:
            hooks.append(AdversarialTraining(adaptation.model, **cfg.train.adversarial.model_dump(), seed=cfg.train.seed))
        train_loop(LoopInputs(
            model=adaptation.model, task=task, processor=tokenizer, train_features=train_features,
            val_features=val_features, train=cfg.train, learning_rate=cfg.learning_rate, head_names=head,
            run_dir=output_dir / "runs" / name, class_weights=task.class_weights(cfg.train.class_weights),
            hooks=[*adaptation.hooks, *hooks]))
        learned = Learned(name, cfg, task, adaptation.model, tokenizer, train_features, val_features)
        state.learned[name] = learned
        if strategy == "ewc":
            fresh = fisher_diagonal(learned, state.encoder, tokenizer, int(settings.get("fisher_samples", 200)), seed=seed)
            state.fisher = {n: f + _grown(state.fisher.get(n), f.shape) for n, f in fresh.items()}
            state.anchors = {n: p.detach().clone() for n, p in state.encoder.named_parameters() if n in state.fisher}
        if state.encoder is not None:  # a learned head stays as it is; only the shared encoder keeps learning
            shared = {id(p) for p in state.encoder.parameters()}
            for p in learned.model.parameters():
                if id(p) not in shared:
                    p.requires_grad_(False)
        for f in train_features if state.buffer is not None else []:
            state.buffer.offer((name, f))
        matrix.append([_metric(state.learned[r[0]].task, state.learned[r[0]].model, state.learned[r[0]].tokenizer,
                               state.learned[r[0]].val_features, cfg.train.eval_batch_size) if j <= t else None
                       for j, r in enumerate(records)])
        print(f"continual: after {name}: " + ", ".join(f"{r[0]} {v:.4f}" for r, v in zip(records, matrix[-1])
                                                       if v is not None), file=sys.stderr)

    report = summarize(matrix)
    report.update(sequence=[r[0] for r in records], strategy=strategy, settings=settings,
                  metrics={r[0]: r[2].primary_metric[0] for r in records},
                  memory_examples=len(state.buffer.items) if state.buffer else 0,
                  seconds=round(time.perf_counter() - started, 1), folder=str(output_dir))
    _save(output_dir, state, resolved, report)
    return report


def summarize(matrix: list[list[float | None]]) -> dict[str, Any]:
    """Average accuracy, average forgetting and backward transfer of a (lower-triangular) result matrix.

    Example:
        >>> summarize([[0.9, None], [0.7, 0.8]])["avg_forgetting"]
        0.2
    """
    last = matrix[-1]
    n = len(matrix)
    earlier = range(n - 1)
    forgetting = [max(matrix[i][j] for i in range(j, n - 1)) - last[j] for j in earlier]
    transfer = [last[j] - matrix[j][j] for j in earlier]
    return {"matrix": [[None if v is None else round(v, 4) for v in row] for row in matrix],
            "avg_accuracy": round(float(np.mean(last)), 4),
            "avg_forgetting": round(float(np.mean(forgetting)), 4) if forgetting else 0.0,
            "backward_transfer": round(float(np.mean(transfer)), 4) if transfer else 0.0}


def _save(folder: Path, state: SequenceState, resolved: Any, report: dict[str, Any]) -> None:
    """One ordinary artifact per task (its head on the final shared encoder, or its adapter on the base),
    ``sequence.json`` and the forgetting heat map."""
    from .api import build_manifest
    from .metrics import scalar_metrics
    from .plots import forgetting_png
    from .strategies.base import Fitted

    for name, learned in state.learned.items():
        is_peft = learned.cfg.method.name != "full"
        if "vocab_size" in learned.task.state:  # later tasks may have added tokens to the shared encoder
            learned.task.state["vocab_size"] = len(learned.tokenizer)
        if not is_peft:  # the head model's own config still names the vocabulary it was built with
            learned.model.config.vocab_size = learned.model.get_input_embeddings().num_embeddings
        validation = learned.task.evaluate_features(learned.model, learned.tokenizer, learned.val_features,
                                                    learned.cfg.train.eval_batch_size)

        def write_parts(staging: Path, learned: Learned = learned, validation: dict[str, Any] = validation) -> None:
            with quiet_loading():
                learned.model.save_pretrained(staging / "model", safe_serialization=True)
            learned.tokenizer.save_pretrained(staging / "tokenizer")
            write_yaml(staging / "config.yaml", learned.cfg.to_dict())
            write_json(staging / "metrics.json", {"validation": validation, "continual": report})

        fitted = Fitted(learned.model, learned.tokenizer, learned.task, validation, None, "peft" if is_peft else "full",
                        parameter_counts(learned.model), write_parts)
        manifest = build_manifest(learned.cfg, resolved, "finetune", fitted)
        manifest["continual"] = {"sequence": report["sequence"], "strategy": report["strategy"]}
        manifest["metrics"]["validation"] = scalar_metrics(validation)
        write_artifact(folder / name, manifest, write_parts)
    forgetting_png(report["matrix"], report["sequence"], folder / "forgetting.png",
                   title=f"{report['strategy']}: each task's metric after each task")
    (folder / "sequence.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


class SequencePredictor:
    """The tasks of a ``fit_sequence`` folder, each predicting through its own artifact.

    Args:
        folder: the sequence's ``output_dir``.

    Example:
        >>> SequencePredictor.load("runs/seq").predict("news", "Stocks fell sharply")       # doctest: +SKIP
    """

    def __init__(self, folder: Path, report: dict[str, Any]):
        self.folder, self.report = Path(folder), report
        self._loaded: dict[str, Any] = {}

    @classmethod
    def load(cls, folder: str | Path) -> SequencePredictor:
        """Open a sequence folder (its ``sequence.json`` names the tasks)."""
        path = Path(folder) / "sequence.json"
        if not path.is_file():
            raise ConfigError(f"{folder} is not a fit_sequence folder: no sequence.json in it")
        return cls(Path(folder), json.loads(path.read_text(encoding="utf-8")))

    @property
    def tasks(self) -> list[str]:
        """The learned tasks, in the order they were learned."""
        return list(self.report["sequence"])

    def predictor(self, name: str) -> Any:
        """The Predictor of one learned task."""
        from .predictor import Predictor

        if name not in self.tasks:
            raise ConfigError(f"task {name!r} was not learned in this sequence; learned: {', '.join(self.tasks)}")
        if name not in self._loaded:
            self._loaded[name] = Predictor.load(self.folder / name)
        return self._loaded[name]

    def predict(self, name: str, inputs: Any) -> Any:
        """``Predictor.predict`` of task ``name``."""
        return self.predictor(name).predict(inputs)


__all__ = ["CONTINUAL", "Reservoir", "SequencePredictor", "fit_sequence", "summarize"]
