"""Time to accuracy on SST-2: how long each system trains until its dev accuracy first reaches the accuracy the
Hugging Face Trainer's best-practice recipe ends its one epoch with (measured in the same run).

Systems (each in its own process, so peak RSS is its own; the same packaged MiniLM, data and machine):
  hf_trainer_best      transformers.Trainer: lr 1e-4, batch 32, 1 epoch, linear schedule, 6% warmup, dynamic padding,
                       length-grouped batches (the recipe of bench/sst2_train.py); its final accuracy is the target
  tunelab              configs/sst2_full.yaml as shipped (tunelab's recommended recipe), data paths and evaluation
                       interval set by this script (and so no early stopping: it counts evaluations), nothing else
  hf_trainer_defaults  transformers.Trainer with run_glue's defaults: lr 2e-5, batch 8, 3 epochs, inputs padded to 128;
                       stopped after --defaults-budget seconds of training if it has not reached the target by then

Every system evaluates on the full dev set (872 sentences) every --eval-samples training examples; evaluation time is
excluded from the clock (tunelab: its loop's own training time; Trainer: wall time since train start minus the time
spent in evaluation). Tokenization before training is excluded on both sides.

    python bench/time_to_accuracy.py [--data-dir ../shared/data/sst2] [--eval-samples 4000]

Writes bench/results/time_to_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from sst2_train import HYPER, read_split  # noqa: E402

from common import peak_rss_mb, run_in_subprocess  # noqa: E402

RUN_GLUE = {"epochs": 3, "batch_size": 8, "learning_rate": 2e-5, "warmup_ratio": 0.0, "weight_decay": 0.0,
            "max_length": 128, "seed": 42, "max_grad_norm": 1.0}


def first_reaching(curve: list[dict], target: float | None) -> float | None:
    """Training seconds at the first evaluation whose accuracy is >= target (None: never)."""
    if target is None:
        return None
    return next((point["seconds"] for point in curve if point["accuracy"] >= target - 1e-12), None)


# ----------------------------------------------------------------------------- systems
def run_tunelab(args) -> dict:
    import tunelab
    from tunelab.config import build_config, load_config

    train, dev = read_split(args.data_dir, "train"), read_split(args.data_dir, "dev")
    cfg = load_config(ROOT / "configs" / "sst2_full.yaml", [f"output_dir={args.work / 'tunelab'}",
                                                              *args.tunelab_overrides])
    eval_every = max(1, args.eval_samples // (cfg.train.batch_size * cfg.train.grad_accum_steps))
    # the benchmark's evaluation cadence replaces the recipe's (quarters of the run), so early stopping, counted in
    # evaluations, is left out: at this cadence it would measure patience, not the recipe
    cfg = build_config(cfg, dotted={"train.eval_every": eval_every, "train.early_stopping_patience": None})
    if args.stop_at_target:  # a probe of a recipe: stop at the first evaluation that reaches the target
        from tunelab.hooks import TrainHook

        class StopAtTarget(TrainHook):
            def __init__(self):
                self.curve: list[dict] = []
                self.started, self.in_eval = time.perf_counter(), 0.0

            def on_evaluate(self, step, metrics):
                self.curve.append({"step": step, "accuracy": metrics["accuracy"]})
                print(f"  step {step}: accuracy {metrics['accuracy']:.4f}", flush=True)
                if metrics["accuracy"] >= args.target:
                    raise KeyboardInterrupt("target reached")

        hook = StopAtTarget()
        try:
            tunelab.fit(cfg, train=train, validation=dev, hooks=[hook])
        except KeyboardInterrupt:
            pass
        return {"curve": hook.curve, "probe": True, "overrides": list(args.tunelab_overrides)}
    run = tunelab.fit(cfg, train=train, validation=dev)
    evals = json.loads((Path(run.artifact_dir) / "history.json").read_text())["evals"]
    curve = [{"step": e["step"], "seconds": e["train_seconds"], "accuracy": e["metrics"]["accuracy"]} for e in evals]
    method = cfg.method.model_dump(mode="json")
    recipe = {"config": "configs/sst2_full.yaml", "overrides": list(args.tunelab_overrides), "method": method,
              "train": {k: v for k, v in cfg.train.model_dump(mode="json").items()
                        if k in ("epochs", "min_steps", "batch_size", "learning_rate", "scheduler", "warmup_ratio",
                                 "weight_decay", "dropout", "ema_decay", "early_stopping_patience", "keep_best")},
              "max_length": cfg.data.max_length, "steps": run.train.steps}
    return {"curve": curve, "final_accuracy": run.metrics["accuracy"], "train_seconds": run.train.train_seconds,
            "peak_rss_mb": peak_rss_mb(), "recipe": recipe}


def run_hf(args, best_practice: bool) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from tunelab.models import resolve_model

    hyper = HYPER if best_practice else RUN_GLUE
    path = resolve_model("minilm").path
    train, dev = read_split(args.data_dir, "train"), read_split(args.data_dir, "dev")
    tok = AutoTokenizer.from_pretrained(path)
    if best_practice:
        encode = lambda b: tok(b["sentence"], truncation=True, max_length=hyper["max_length"])  # noqa: E731
        collator = DataCollatorWithPadding(tok)
    else:
        encode = lambda b: tok(b["sentence"], truncation=True, max_length=128, padding="max_length")  # noqa: E731
        collator = default_data_collator
    train_ds = Dataset.from_list(train).map(encode, batched=True, remove_columns=["sentence"])
    dev_ds = Dataset.from_list(dev).map(encode, batched=True, remove_columns=["sentence"])
    torch.manual_seed(hyper["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    eval_steps = max(1, args.eval_samples // hyper["batch_size"])
    target = args.target

    class Clock(TrainerCallback):
        """Training time at each evaluation, evaluation excluded; stops at the budget or (defaults) the target."""

        def __init__(self):
            self.start = self.step_end = 0.0
            self.in_eval = 0.0
            self.curve: list[dict] = []

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, targs, state, control, **k):
            self.step_end = time.perf_counter()
            if not best_practice and self.step_end - self.start - self.in_eval >= args.defaults_budget:
                control.should_evaluate, control.should_training_stop = True, True

        def on_evaluate(self, targs, state, control, metrics=None, **k):
            now = time.perf_counter()
            seconds = self.step_end - self.start - self.in_eval
            self.in_eval += now - self.step_end
            self.curve.append({"step": state.global_step, "seconds": round(seconds, 3),
                               "accuracy": float(metrics["eval_accuracy"])})
            print(f"  step {state.global_step}: {seconds:.0f} s, accuracy {metrics['eval_accuracy']:.4f}", flush=True)
            if not best_practice and target is not None and metrics["eval_accuracy"] >= target:
                control.should_training_stop = True

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    targs = TrainingArguments(
        output_dir=str(args.work / ("hf_best" if best_practice else "hf_defaults")),
        per_device_train_batch_size=hyper["batch_size"], per_device_eval_batch_size=128,
        learning_rate=hyper["learning_rate"], num_train_epochs=hyper["epochs"], warmup_steps=hyper["warmup_ratio"],
        weight_decay=hyper["weight_decay"], max_grad_norm=hyper["max_grad_norm"], lr_scheduler_type="linear",
        seed=hyper["seed"], eval_strategy="steps", eval_steps=eval_steps, save_strategy="no", logging_steps=50,
        report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if best_practice else "random",
    )
    clock = Clock()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=dev_ds, data_collator=collator,
                      compute_metrics=accuracy, callbacks=[clock])
    trainer.train()
    if not clock.curve or clock.curve[-1]["step"] != trainer.state.global_step:
        clock.step_end = time.perf_counter()
        trainer.evaluate()  # the end of training, when it did not fall on an evaluation step
    recipe = {**hyper, "padding": "dynamic, length-grouped batches" if best_practice else "max_length 128",
              "steps": trainer.state.global_step}
    if not best_practice:
        recipe["budget_seconds"] = args.defaults_budget
    return {"curve": clock.curve, "final_accuracy": clock.curve[-1]["accuracy"],
            "train_seconds": clock.curve[-1]["seconds"], "peak_rss_mb": peak_rss_mb(), "recipe": recipe}


SYSTEMS = {"hf_trainer_best": lambda a: run_hf(a, True), "tunelab": run_tunelab,
           "hf_trainer_defaults": lambda a: run_hf(a, False)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--eval-samples", type=int, default=4000, help="evaluate every this many training examples")
    parser.add_argument("--defaults-budget", type=float, default=1800.0,
                        help="seconds of training after which the run_glue-defaults Trainer is stopped")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--target", type=float, default=None, help="target accuracy when hf_trainer_best is not run")
    parser.add_argument("--tunelab-overrides", nargs="*", default=[], help="key=value changes to configs/sst2_full.yaml")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="probe a tunelab recipe: stop at the first evaluation reaching --target, print its curve")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-tta"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "time_to_accuracy.json")
    parser.add_argument("--summarize", action="store_true",
                        help="rebuild the report from the systems' results already in --work (nothing is run)")
    parser.add_argument("--run-system", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_system:
        args.result.write_text(json.dumps(SYSTEMS[args.run_system](args)))
        return
    if args.stop_at_target:
        if args.target is None:
            parser.error("--stop-at-target needs --target")
        args.work.mkdir(parents=True, exist_ok=True)
        probe = run_in_subprocess(__file__, "tunelab", args.work, [
            "--data-dir", str(args.data_dir), "--eval-samples", str(args.eval_samples), "--target", str(args.target),
            "--stop-at-target", "--tunelab-overrides", *args.tunelab_overrides])
        probe["command"] = "python bench/time_to_accuracy.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps(probe, indent=2) + "\n")
        return

    args.work.mkdir(parents=True, exist_ok=True)
    names = args.systems.split(",")
    results: dict[str, dict] = {}
    target = args.target
    for name in names:
        extra = ["--data-dir", str(args.data_dir), "--eval-samples", str(args.eval_samples),
                 "--defaults-budget", str(args.defaults_budget)]
        if target is not None:
            extra += ["--target", str(target)]
        if args.tunelab_overrides:
            extra += ["--tunelab-overrides", *args.tunelab_overrides]
        results[name] = json.loads((args.work / f"{name}.json").read_text()) if args.summarize else \
            run_in_subprocess(__file__, name, args.work, extra)
        if name == "hf_trainer_best":
            target = results[name]["final_accuracy"]
    report: dict = {"target_accuracy": target}
    for name, result in results.items():
        report[name] = {"seconds_to_target": first_reaching(result["curve"], target),
                        "final_accuracy": round(result["final_accuracy"], 4),
                        "peak_rss_mb": round(result["peak_rss_mb"], 1), "recipe": result["recipe"]}
    base = report.get("hf_trainer_best", {}).get("seconds_to_target")
    report["time_ratio_vs_hf_trainer_best"] = {
        name: round(report[name]["seconds_to_target"] / base, 3) if base and report[name]["seconds_to_target"] else None
        for name in results if name != "hf_trainer_best"}
    # the same question at lower bars: one system's final accuracy is a noisy target (the Trainer's own curve moves
    # by +-3 points between evaluations), so the first time each system reaches a few fixed accuracies is shown too
    report["seconds_to_accuracy"] = {name: {f"{bar:.2f}": first_reaching(result["curve"], bar)
                                            for bar in (0.87, 0.88, 0.89, 0.90)} for name, result in results.items()}
    report["seconds_per_step"] = {name: round(result["curve"][-1]["seconds"] / result["curve"][-1]["step"], 4)
                                  for name, result in results.items() if result["curve"]}
    report["curves"] = {name: result["curve"] for name, result in results.items()}
    report["eval_every_samples"] = args.eval_samples
    command = "python bench/time_to_accuracy.py " + " ".join(sys.argv[1:])
    if args.summarize and args.out.exists():  # keep the command that ran the systems
        earlier = json.loads(args.out.read_text()).get("command")
        command = [*(earlier if isinstance(earlier, list) else [earlier]), command]
    report["command"] = command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=2))


if __name__ == "__main__":
    main()
