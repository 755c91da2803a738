"""The training loop: one explicit loop on ``accelerate``, readable top to bottom.

Per optimizer step: the micro-batches of one accumulation window each add
``task loss (summed) / examples in the window`` plus any extra loss terms, so the loss is
normalised over the whole window, not averaged per micro-batch. Then clip, optimizer and scheduler
step. Every ``eval_every`` steps (default: once an epoch, and at each quarter of a run shorter than 4 epochs)
the model is evaluated; the best weights are kept; early stopping watches the task's primary metric. With
``train.ema_decay`` an exponential moving average of the trainable weights (``averaging.WeightAverage``) is
what gets evaluated, kept and saved.
Checkpoints carry the weights being trained, optimizer, scheduler, RNG states and the data position, so a
killed run resumes exactly. Under a launch of several processes the loop is data parallel (DDP), or with
``train.sharding: fsdp`` sharded (``tunelab.sharding``): the same steps, with the state spread over the ranks.

New training methods plug in as hooks (``tunelab.hooks.TrainHook``), not as edits of this loop: extra loss
terms (EWC, AdaLoRA's orthogonality penalty), extra gradients (adversarial perturbation), per-step
allocation (AdaLoRA), extra training data (replay).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .averaging import WeightAverage
from .batching import epoch_batches
from .checkpoint import (
    fingerprint_changes,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    trainable_state,
    unchangeable,
)
from .config import TrainConfig, flat_fields
from .distributed import broadcast, join_restarted_group, rank_and_size, refuse_sharded_launch, restarted, shard
from .errors import ConfigError, TrainingError
from .hooks import StepContext, TrainHook, with_overrides
from .metrics import higher_is_better as metric_direction
from .metrics import scalar_metrics
from .sharding import (
    gather_model,
    gather_optimizer_state,
    gather_tensors,
    scatter_like,
    scatter_optimizer_state,
    shard_model,
    sharding_request,
    state_megabytes,
)


@dataclass
class LoopInputs:
    """Everything the loop needs, as plain values."""

    model: torch.nn.Module
    task: Any  # a tunelab.Task: loss_sum, loss_units, feature_length, evaluate_features, primary_metric
    processor: Any  # the task's input processor (a tokenizer)
    train_features: list[dict[str, Any]]
    val_features: list[dict[str, Any]]
    train: TrainConfig
    learning_rate: float
    head_names: list[str]
    run_dir: Path
    class_weights: torch.Tensor | None = None
    hooks: list[TrainHook] = field(default_factory=list)
    tracker_config: dict[str, Any] = field(default_factory=dict)
    resume_from: dict[str, Any] | None = None  # a checkpoint checked by ``resume_checkpoint``
    resume_changes: list[str] = field(default_factory=list)  # allowed setting changes since that checkpoint
    fingerprint: dict[str, str] = field(default_factory=dict)  # ``checkpoint.training_fingerprint`` of the run


@dataclass
class TrainResult:
    """What the loop returns: steps, history, evaluations, the best step and the timings."""
    steps: int
    epochs_done: float
    history: list[dict[str, float]]  # one row per optimizer step: step, epoch, loss, lr, grad_norm
    evals: list[dict[str, Any]]  # one row per evaluation: step, epoch, metrics
    best_step: int | None
    best_metric: float | None
    metric_name: str
    stopped_early: bool
    train_seconds: float
    samples_seen: int
    tokens_seen: int  # non-padding tokens
    still_improving: str | None = None  # the warning when the metric was still rising at the end
    resumed_at: list[int] = field(default_factory=list)  # steps at which this run resumed from its checkpoint
    sharding: dict[str, Any] | None = None  # train.sharding: the engine, the processes and the units sharded
    gathered_model: torch.nn.Module | None = None  # sharded training: the plain trained model (rank 0 only)

    @property
    def samples_per_s(self) -> float:
        """Training examples per second of training time (evaluation excluded)."""
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


AUTO_MAX_EPOCHS = 10


def planned_epochs(n_examples: int, cfg: TrainConfig) -> float:
    """``train.epochs``, or when unset the epochs the data size calls for: enough for ``train.min_steps`` optimizer
    steps, at least 1 and at most ``AUTO_MAX_EPOCHS`` (a large set trains one epoch, a 4,000-row one four)."""
    if cfg.epochs is not None:
        return cfg.epochs
    windows_per_epoch = math.ceil(math.ceil(n_examples / cfg.batch_size) / cfg.grad_accum_steps)
    return float(min(AUTO_MAX_EPOCHS, max(1, math.ceil(cfg.min_steps / max(1, windows_per_epoch)))))


def total_optimizer_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps the run will take (epochs x windows per epoch, or ``max_steps``)."""
    windows_per_epoch = math.ceil(math.ceil(n_examples / cfg.batch_size) / cfg.grad_accum_steps)
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(windows_per_epoch * planned_epochs(n_examples, cfg)))


def still_improving(evals: list[dict[str, Any]], metric: str, higher_is_better: bool,
                    min_gain: float = 0.005) -> str | None:
    """A note when the run ended while its validation metric was still improving: the last evaluation is the best
    and beat the one before it by more than ``min_gain`` of that one's size; None otherwise."""
    if len(evals) < 2:
        return None
    values = [float(e["metrics"][metric]) for e in evals]
    last, before = values[-1], values[-2]
    best = max(values) if higher_is_better else min(values)
    gain = (last - before) if higher_is_better else (before - last)
    if last != best or gain <= min_gain * max(abs(before), 1e-12):
        return None
    return (f"validation {metric} was still improving when training ended ({before:.4f} -> {last:.4f} over the last "
            f"{evals[-1]['step'] - evals[-2]['step']} steps): more training would likely help (raise train.epochs or "
            "train.min_steps; early stopping ends it when it stops improving)")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float, head_names: list[str]) -> torch.optim.Optimizer:
    """Decay on weight matrices only (not biases or norms); the head may have its own learning rate."""
    head_lr = cfg.head_learning_rate or lr
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        is_head = any(h in parts for h in head_names)
        no_decay = p.ndim < 2 or "norm" in name.lower()
        key = (head_lr if is_head else lr, 0.0 if no_decay else cfg.weight_decay)
        groups.setdefault(key, []).append(p)
    param_groups = [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum)
    # fused: one multi-tensor kernel for the whole update (CPU too), the fastest AdamW in torch.
    return torch.optim.AdamW(param_groups, lr=lr, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    """The learning-rate schedule (linear, cosine or constant, with warmup)."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _make_accelerator(cfg: TrainConfig, run_dir: Path) -> Any:
    from accelerate import Accelerator

    log_with = None
    if cfg.track != "none":
        if cfg.track == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError("train.track=tensorboard needs tensorboard: pip install 'tunelab[track]'") from None
        if cfg.track == "mlflow":
            try:
                import mlflow  # noqa: F401
            except ImportError:
                raise ConfigError("train.track=mlflow needs mlflow: pip install 'tunelab[mlflow]'") from None
            # A local file store: never prompts, never needs an account.
            os.environ.setdefault("MLFLOW_TRACKING_URI", (run_dir / "mlruns").resolve().as_uri())
        log_with = cfg.track
    from accelerate import DistributedDataParallelKwargs

    refuse_sharded_launch()
    join_restarted_group()
    # find_unused_parameters: heads leave parts of the base model unused (a BERT pooler under a token head)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # accelerate --use_fsdp is honoured by tunelab.sharding, not by accelerate (which drops it on CPUs and would
    # otherwise wrap the model a second time on GPUs): accelerate only makes the process group here
    asked = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        return Accelerator(cpu=not torch.cuda.is_available(), log_with=log_with, project_dir=str(run_dir),
                           kwargs_handlers=[ddp])
    finally:
        if asked is not None:
            os.environ["ACCELERATE_USE_FSDP"] = asked


def resume_checkpoint(run_dir: Path, cfg: TrainConfig, fingerprint: dict[str, str]) -> tuple[dict[str, Any] | None, list[str]]:
    """Decide, before any long work, what to do with ``run_dir/checkpoint.pt``: returns the checkpoint to
    resume from (or None) and the setting changes allowed since it was made.

    A checkpoint is never thrown away silently: without ``train.resume`` it is an error unless
    ``train.discard_checkpoint`` says to delete it. Resuming with different settings names the fields and
    stops, unless every change is one that can take effect half way and ``train.resume_with_changes`` is set.
    """
    from .distributed import is_main

    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        return None, []
    if cfg.discard_checkpoint:
        if not is_main():  # rank 0 deletes it
            return None, []
        path.unlink()
        print(f"note: deleted {path} of an unfinished run (train.discard_checkpoint=true)", file=sys.stderr)
        return None, []
    ckpt = load_checkpoint(run_dir)
    step = f"step {ckpt['loop'].get('step')} of {ckpt.get('total_steps')}" if ckpt else "an earlier step"
    if restarted() and not cfg.resume:
        print(f"the workers were restarted after a failure: resuming from {path} ({step})", file=sys.stderr)
    elif not cfg.resume:
        raise TrainingError(
            f"{run_dir} holds a checkpoint of an unfinished run ({step}): set train.resume=true to continue it, "
            "or train.discard_checkpoint=true to delete it and start over")
    changes = fingerprint_changes(ckpt.get("fingerprint") or {}, fingerprint)
    if not changes:
        return ckpt, []
    fixed = unchangeable(changes)
    if fixed or not cfg.resume_with_changes:
        hint = ("these define the run and cannot change half way; restore them, or set "
                "train.discard_checkpoint=true to start over" if fixed else
                "set train.resume_with_changes=true to continue with the new values, or restore them")
        shown = fixed or changes
        raise TrainingError(f"cannot resume from {path}: the config differs from the checkpoint's in "
                            f"{len(shown)} field(s): " + "; ".join(shown[:8]) + f". {hint}")
    return ckpt, changes


def train_loop(inp: LoopInputs) -> TrainResult:
    """Train ``inp.model`` (see the module docstring); returns the history and the best step."""
    cfg = inp.train
    if not inp.train_features:
        raise TrainingError("no training examples after preprocessing: check data.train")
    for hook in inp.hooks:
        inp.train_features = hook.training_features(inp.train_features)
    collate = inp.task.collate(inp.processor)
    request = sharding_request(cfg.sharding)
    if request is not None and inp.hooks and rank_and_size()[1] > 1:
        raise ConfigError(f"{request.source} does not combine with training hooks "
                          f"({', '.join(sorted({type(h).__name__ for h in inp.hooks}))}): hooks are written against the "
                          "whole model, and sharded each process holds only its part of the weights and gradients; "
                          "train without sharding (data parallel) instead")
    accelerator = _make_accelerator(cfg, inp.run_dir)
    device = accelerator.device
    rank, size = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    model = inp.model
    sharded = None
    if request is not None and size > 1:
        sharded = shard_model(model, device, request)  # before the optimizer: it holds this rank's shards
    elif request is not None and main:
        print(f"note: {request.source}: one process, nothing to shard over; training the whole model", file=sys.stderr)
    optimizer = build_optimizer(model, cfg, inp.learning_rate, inp.head_names)
    total_steps = total_optimizer_steps(len(inp.train_features), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if cfg.epochs is None and not cfg.max_steps and accelerator.is_main_process:
        print(f"train: {planned_epochs(len(inp.train_features), cfg):g} epochs, {total_steps} optimizer steps (epochs "
              f"unset: at least train.min_steps={cfg.min_steps} steps, 1 to {AUTO_MAX_EPOCHS} epochs)", file=sys.stderr)
    if sharded is None:
        model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model) if sharded is None else model  # the module itself, without a DDP wrapper
    average = WeightAverage(core, cfg.ema_decay) if cfg.ema_decay else None
    if cfg.track != "none":
        accelerator.init_trackers("tunelab", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                     for k, v in flat_fields(inp.tracker_config).items()})
    weights = inp.class_weights.to(device) if inp.class_weights is not None else None
    metric_name, higher_is_better = inp.task.primary_metric
    if cfg.metric:
        metric_name, higher_is_better = cfg.metric, metric_direction(cfg.metric)
    lengths = [inp.task.feature_length(f) for f in inp.train_features]

    # Loop state: everything a resumed run needs besides weights/optimizer/scheduler/RNG.
    st: dict[str, Any] = {"step": 0, "epoch": 0, "window": 0, "best_metric": None, "best_step": None,
                          "bad_evals": 0, "history": [], "evals": [], "train_seconds": 0.0,
                          "samples_seen": 0, "tokens_seen": 0, "stopped_early": False}
    best_state: dict[str, torch.Tensor] | None = None
    ckpt = inp.resume_from
    if ckpt is not None:
        if ckpt.get("total_steps") != total_steps:
            raise TrainingError(
                f"cannot resume from {inp.run_dir}/checkpoint.pt: it was made for {ckpt.get('total_steps')} "
                f"steps, this config gives {total_steps}; use the same data and train settings"
            )
        fresh = [(g.get("initial_lr", g["lr"]), g["weight_decay"]) for g in optimizer.param_groups]
        try:
            if sharded is None:
                core.load_state_dict(ckpt["model"], strict=False)
                optimizer.load_state_dict(ckpt["optimizer"])
            else:  # the checkpoint holds whole tensors (sharded or not, any number of processes): take the shards
                core.load_state_dict(scatter_like(ckpt["model"], core.state_dict()), strict=False)
                optimizer.load_state_dict(scatter_optimizer_state(ckpt["optimizer"], optimizer))
            scheduler.load_state_dict(ckpt["scheduler"])
            if average is not None:
                saved = ckpt["average"]
                if sharded is not None:
                    saved = {**saved, "shadow": scatter_like(saved["shadow"], dict(zip(average.names, average.params)))}
                average.load_state_dict(saved)
        except (ValueError, RuntimeError, KeyError) as err:
            raise TrainingError(f"cannot resume from {inp.run_dir}/checkpoint.pt: it does not fit this model "
                                f"({str(err).splitlines()[0][:200]}); set train.discard_checkpoint=true to start over") from None
        if inp.resume_changes:  # train.resume_with_changes: the new learning rates / decay apply from here on
            scheduler.base_lrs = [lr for lr, _ in fresh]
            for group, (lr, decay), factor in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas):
                group["initial_lr"], group["weight_decay"] = lr, decay
                group["lr"] = lr * factor(scheduler.last_epoch)
            print("resuming with changed settings: " + "; ".join(inp.resume_changes), file=sys.stderr)
        restore_rng_states(ckpt["rng"])
        st = ckpt["loop"]
        st["resumed_at"] = [*st.get("resumed_at", []), st["step"]]  # kept in later checkpoints and the report
        best_state = ckpt.get("best_state")
        if sharded is not None and best_state is not None:
            best_state = scatter_like(best_state, core.state_dict())
        print(f"resuming from {inp.run_dir}/checkpoint.pt at step {st['step']}/{total_steps}", file=sys.stderr)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=st["step"], desc="train", unit="step", dynamic_ncols=True,
               disable=not sys.stderr.isatty() or not accelerator.is_main_process)
    unchanged_loss_steps, zero_grad_steps, last_loss = 0, 0, None
    last_report = time.perf_counter()  # without a terminal (CI, logs) progress is a line every 30 s

    def run_eval() -> None:
        nonlocal best_state
        metrics = None
        # with train.ema_decay the averaged weights are the ones evaluated, kept as the best and saved
        averaged = average.applied() if average is not None else contextlib.nullcontext()
        with averaged:
            # rank 0 evaluates the plain module (a sharded one needs every rank in step); every rank gets rank 0's
            # result, so all decide alike
            if main or sharded is not None:
                metrics = inp.task.evaluate_features(core, inp.processor, inp.val_features, cfg.eval_batch_size, device,
                                                     full=False)
            metrics = broadcast(metrics)
            if not isinstance(metrics.get(metric_name), (int, float)):
                raise ConfigError(f"train.metric: {metric_name!r} is not among this task's validation metrics "
                                  f"({', '.join(sorted(scalar_metrics(metrics)))})")
            value = float(metrics[metric_name])
            improved = st["best_metric"] is None or (value > st["best_metric"] if higher_is_better
                                                     else value < st["best_metric"])
            if improved and cfg.keep_best:
                best_state = trainable_state(core)  # sharded: each rank keeps its own shards
        row = {"step": st["step"], "epoch": round(st["epoch"] + st["window"] / max(1, windows_per_epoch), 4),
               "train_seconds": round(st["train_seconds"], 3), "metrics": metrics}
        st["evals"].append(row)
        if improved:
            st["best_metric"], st["best_step"], st["bad_evals"] = value, st["step"], 0
        else:
            st["bad_evals"] += 1
        if cfg.track != "none":
            accelerator.log({f"eval/{k}": v for k, v in scalar_metrics(metrics).items()}, step=st["step"])
        msg = (f"step {st['step']}/{total_steps}: eval {metric_name}={value:.4f} "
               f"(best {st['best_metric']:.4f} at step {st['best_step']})")
        if not main:
            pass  # rank 0 reports the evaluation every rank shares
        elif bar.disable:
            print(msg, file=sys.stderr, flush=True)
        else:
            bar.write(msg)
        if cfg.early_stopping_patience and st["bad_evals"] >= cfg.early_stopping_patience:
            st["stopped_early"] = True
        for hook in inp.hooks:
            hook.on_evaluate(st["step"], metrics)

    windows_per_epoch = math.ceil(math.ceil(len(lengths) / cfg.batch_size) / cfg.grad_accum_steps)
    # eval_every unset: once an epoch, and in a run of fewer than 4 epochs also at each quarter of it, so keep-best,
    # early stopping and the still-improving check have evaluations to go on
    quarter = math.ceil(total_steps / 4) if not cfg.eval_every and total_steps < 4 * windows_per_epoch else None
    scope = contextlib.ExitStack()
    if sharded is None:  # sharded, every rank must run the same forward passes: no per-rank caches
        scope.enter_context(inp.task.training_scope(core))  # e.g. a frozen image tower's outputs, kept while training
    with scope:
        model.train()
        done = st["step"] >= total_steps or st["stopped_early"]
        while not done:
            batches = epoch_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=st["epoch"],
                                    group_by_length=cfg.group_by_length)
            windows = [batches[i : i + cfg.grad_accum_steps] for i in range(0, len(batches), cfg.grad_accum_steps)]
            while st["window"] < len(windows):
                window = windows[st["window"]]
                window_items = sum(inp.task.loss_units(inp.train_features[i]) for b in window for i in b)
                window_examples = sum(len(b) for b in window)
                started = time.perf_counter()
                step_loss = 0.0
                for position, whole in enumerate(window):
                    # Each rank takes its share of the micro-batch; DDP averages the ranks' gradients, so each
                    # scales its loss by the number of ranks: the sum is the one-process loss of the whole window.
                    micro, scale = shard(whole, rank, size), float(size)
                    if not micro:  # fewer examples than ranks: take part in the gradient exchange with a zero loss
                        micro, scale = whole[:1], 0.0
                    micro_features = [inp.train_features[i] for i in micro]
                    batch = {k: v.to(device) for k, v in collate(micro_features).items()}
                    labels = batch.pop("labels")

                    def compute_loss(batch: dict[str, Any] = batch, labels: Any = labels, items: int = window_items,
                                     scale: float = scale, **overrides: Any) -> torch.Tensor:
                        outputs = model(**with_overrides(batch, overrides))
                        return inp.task.loss_sum(outputs, labels, weights) * scale / max(items, 1)

                    last = position == len(window) - 1  # gradients are exchanged once per window, after its last
                    if sharded is not None:
                        model.set_requires_gradient_sync(last)
                    with accelerator.no_sync(model) if size > 1 and not last and sharded is None \
                            else contextlib.nullcontext():
                        loss = compute_loss()
                        ctx = StepContext(core, batch, labels, st["step"],
                                          len(micro) * scale / window_examples, compute_loss, accelerator.backward)
                        for hook in inp.hooks:
                            extra = hook.extra_loss(ctx)
                            if extra is not None:
                                loss = loss + extra * ctx.weight
                        accelerator.backward(loss)
                        for hook in inp.hooks:
                            hook.after_backward(ctx)
                    step_loss += float(loss.detach())
                st["tokens_seen"] += sum(inp.task.feature_length(inp.train_features[i]) for b in window for i in b)
                if size > 1:  # the window's loss over all ranks, as one process would have computed it
                    step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), reduction="mean"))
                if not math.isfinite(step_loss):
                    raise TrainingError(
                        f"loss became {step_loss} at step {st['step'] + 1}: lower train.learning_rate "
                        f"(now {inp.learning_rate:g}) or check the labels for extreme values"
                    )
                if sharded is not None:  # the norm over every rank's shards (inf: measure, do not clip)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf))
                elif cfg.max_grad_norm:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                else:
                    grads = [p.grad for p in model.parameters() if p.grad is not None]
                    norms = [torch.linalg.vector_norm(g) for g in grads]
                    grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if grads else 0.0
                for hook in inp.hooks:
                    hook.before_optimizer_step(core, st["step"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if average is not None:
                    average.update()
                st["train_seconds"] += time.perf_counter() - started
                st["samples_seen"] += window_examples
                st["step"] += 1
                st["window"] += 1
                lr_now = scheduler.get_last_lr()[0]
                st["history"].append({"step": st["step"], "epoch": round(st["epoch"] + st["window"] / len(windows), 4),
                                      "loss": step_loss, "lr": lr_now, "grad_norm": grad_norm})

                # Guards against silent failure: a loss that never moves, or gradients that are all zero.
                unchanged_loss_steps = unchanged_loss_steps + 1 if last_loss is not None and step_loss == last_loss else 0
                zero_grad_steps = zero_grad_steps + 1 if grad_norm == 0.0 else 0
                last_loss = step_loss
                if unchanged_loss_steps >= cfg.stuck_patience:
                    raise TrainingError(f"loss stuck at {step_loss:.6g} for {unchanged_loss_steps} steps: nothing is learning "
                                        "(learning rate 0? dropout 0 and frozen weights?)")
                if zero_grad_steps >= cfg.stuck_patience:
                    raise TrainingError(f"gradients were zero for {zero_grad_steps} steps: the loss does not depend on the "
                                        "trainable parameters")

                if cfg.track != "none" and st["step"] % cfg.log_every == 0:
                    accelerator.log({"train/loss": step_loss, "train/lr": lr_now, "train/grad_norm": grad_norm}, step=st["step"])
                bar.update(1)
                if st["step"] % cfg.log_every == 0 or st["step"] == total_steps:
                    speed = st["samples_seen"] / max(st["train_seconds"], 1e-9)
                    bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{speed:.1f}")
                if bar.disable and accelerator.is_main_process and time.perf_counter() - last_report >= 30:
                    last_report = time.perf_counter()
                    print(f"step {st['step']}/{total_steps}: loss {step_loss:.4f}, "
                          f"{st['samples_seen'] / max(st['train_seconds'], 1e-9):.1f} samples/s", file=sys.stderr, flush=True)

                end_of_epoch = st["window"] == len(windows)
                last_step = st["step"] >= total_steps
                if (cfg.eval_every and st["step"] % cfg.eval_every == 0) or last_step or (
                        not cfg.eval_every and (end_of_epoch or (quarter and st["step"] % quarter == 0))):
                    if not st["evals"] or st["evals"][-1]["step"] != st["step"]:
                        run_eval()
                if end_of_epoch:
                    st["epoch"] += 1
                    st["window"] = 0
                if cfg.checkpoint_every and (st["step"] % cfg.checkpoint_every == 0) and not last_step and (
                        main or sharded is not None):
                    state = training_state(core, optimizer, average, best_state, sharded is not None, main)
                    if main:
                        save_checkpoint(inp.run_dir, {
                            **state, "scheduler": scheduler.state_dict(), "rng": rng_states(), "loop": st,
                            "total_steps": total_steps, "fingerprint": inp.fingerprint})
                if last_step or st["stopped_early"]:
                    done = True
                    break
                if end_of_epoch:
                    break  # next epoch: new batch order
        bar.close()
    improving = None if st["stopped_early"] else still_improving(st["evals"], metric_name, higher_is_better)
    if improving and main:
        print(f"warning: {improving}", file=sys.stderr, flush=True)
    for hook in inp.hooks:
        hook.on_train_end(core)
    if cfg.keep_best and best_state is not None:
        core.load_state_dict(best_state, strict=False)
    elif average is not None:
        average.copy_to_model()
    sharding = None
    if sharded is not None:
        sharding = {"engine": "fsdp", "processes": size, "units": len(sharded.units) + 1,
                    **state_megabytes(model, optimizer)}
    gathered = gather_model(sharded, keep=main) if sharded is not None else None
    if cfg.track != "none":
        accelerator.end_training()
    return TrainResult(
        steps=st["step"], epochs_done=st["history"][-1]["epoch"] if st["history"] else 0.0,
        history=st["history"], evals=st["evals"], best_step=st["best_step"], best_metric=st["best_metric"],
        metric_name=metric_name, stopped_early=st["stopped_early"], train_seconds=st["train_seconds"],
        samples_seen=st["samples_seen"], tokens_seen=st["tokens_seen"], still_improving=improving,
        resumed_at=st.get("resumed_at", []), gathered_model=gathered,
        sharding=sharding,
    )


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, average: WeightAverage | None,
                   best_state: dict[str, torch.Tensor] | None, sharded: bool, keep: bool) -> dict[str, Any]:
    """The weights being trained, the optimizer state, the weight average and the best weights, as a checkpoint
    holds them: whole tensors. Sharded, this gathers the shards (every rank calls it) and rank 0 (``keep``) gets them.
    """
    average_state = average.state_dict() if average is not None else None
    if not sharded:
        return {"model": trainable_state(model), "optimizer": optimizer.state_dict(), "best_state": best_state,
                **({"average": average_state} if average_state is not None else {})}
    out: dict[str, Any] = {
        "model": gather_tensors(trainable_state(model), keep), "optimizer": gather_optimizer_state(optimizer, keep),
        "best_state": gather_tensors(best_state, keep) if best_state is not None else None}
    if average_state is not None:
        out["average"] = {**average_state, "shadow": gather_tensors(average_state["shadow"], keep)}
    return out
