"""Hyperparameter search on SST-2: 20 Optuna trials over LoRA rank, learning rate and epochs, with pruning (median
pruner on the loop's evaluations) and without, then the best configs against the default config on the full dev set.

Data (seeded, from ../shared/data/sst2):
  train       10,000 rows sampled from SST-2 train (seed 0)
  search_val  1,000 other SST-2 train rows of at least 10 words (train rows are mostly phrases, dev rows are full
              sentences; the longer rows are closer to dev): what every trial is evaluated and pruned on
  dev         the full GLUE dev set (872 sentences): never seen by the search, used only for the final comparison

Base config: configs/sst2_lora.yaml as shipped (LoRA r 16, lr 1e-3, 1 epoch, batch 32), with an evaluation every
--eval-every steps so trials can be pruned and without periodic checkpoints. The default config is that same
config trained on the same rows; every model keeps its best evaluation on search_val (keep_best, tunelab's default)
and is then scored once on dev. Both searches use the same sampler seed, so they start from the same trials.

    python bench/search.py [--data-dir ../shared/data/sst2] [--trials 20]

Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]

SPACE = {
    "method.r": {"choice": [4, 8, 16, 32]},
    "train.learning_rate": {"loguniform": [5e-5, 5e-3]},
    "train.epochs": {"int": [1, 3]},
}


def split(data_dir: Path, rows: int, val_rows: int) -> tuple[list[dict], list[dict], list[dict]]:
    from tunelab.data import read_records

    pool = read_records(data_dir / "train.tsv", format="tsv").rows
    order = list(range(len(pool)))
    random.Random(0).shuffle(order)
    train = [pool[i] for i in order[:rows]]
    rest = (pool[i] for i in order[rows:])
    val = [r for r in rest if len(r["sentence"].split()) >= 10][:val_rows]
    dev = read_records(data_dir / "dev.tsv", format="tsv").rows
    return train, val, dev


def number(text: str) -> object:
    """A trials.csv cell as the number it holds (the state stays text)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def optimizer_steps(search: dict, per_epoch: int, eval_every: int) -> int:
    """Optimizer steps a search trained, all trials: a finished trial its epochs, a pruned one up to its last
    evaluation (the machine-independent side of the wall time)."""
    return sum(int(t["train.epochs"]) * per_epoch if t["state"] == "complete" else int(t["evaluations"]) * eval_every
               for t in search["trials"])


def confirm(args: argparse.Namespace, train: list[dict], val: list[dict], dev: list[dict]) -> None:
    """Is the search's winner better than the default beyond seed noise? Both retrained with other seeds."""
    import statistics

    import tunelab

    report = json.loads(args.out.read_text())
    fixed = report["fixed"]
    candidates = {"default": {}, **{f"best_{k}": v["best_params"] for k, v in report["searches"].items()}}
    results: dict = {}
    for name, params in candidates.items():
        scores = []
        for seed in range(1, args.confirm_seeds + 1):
            out = args.work / f"confirm-{name}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = tunelab.load_config(ROOT / "configs" / "sst2_lora.yaml", [f"output_dir={out}", *fixed,
                                      f"train.seed={seed}", *(f"{k}={v}" for k, v in params.items())])
            run = tunelab.fit(cfg, train=train, validation=val)
            scores.append(round(tunelab.evaluate(run.artifact_dir, dev)["accuracy"], 4))
            shutil.rmtree(out, ignore_errors=True)
            print("confirm", name, seed, scores[-1], flush=True)
        results[name] = {"params": params, "dev_accuracy": scores, "mean": round(statistics.mean(scores), 4),
                         "stdev": round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0}
    report["confirm"] = {"seeds": list(range(1, args.confirm_seeds + 1)), "results": results,
                         "command": "python bench/search.py " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--val-rows", type=int, default=1_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--pruners", default="median,none")
    parser.add_argument("--confirm-seeds", type=int, default=0,
                        help="only retrain the default and each search's best config with seeds 1..N on the same rows "
                             "and add their dev accuracies to --out (accuracy only: may share the machine)")
    parser.add_argument("--replace", action="store_true",
                        help="keep the other searches already in --out and run only --pruners again (same default)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-search"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search.json")
    args = parser.parse_args()
    import tunelab

    train, val, dev = split(args.data_dir, args.rows, args.val_rows)
    if args.confirm_seeds:
        confirm(args, train, val, dev)
        return
    fixed = [f"train.eval_every={args.eval_every}", "train.checkpoint_every=null"]
    report: dict = {
        "data": {"train_rows": len(train), "search_val_rows": len(val), "dev_rows": len(dev),
                 "rule": "train: seeded sample of SST-2 train; search_val: other train rows of >= 10 words; "
                         "dev: full GLUE dev, used only for the final comparison"},
        "base_config": "configs/sst2_lora.yaml", "fixed": fixed, "space": SPACE, "trials": args.trials,
        "searches": {}, "command": "python bench/search.py " + " ".join(sys.argv[1:])}

    def write() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    def score(artifact: Path) -> float:
        return round(tunelab.evaluate(artifact, dev)["accuracy"], 4)

    kept = json.loads(args.out.read_text())["searches"] if args.replace and args.out.exists() else {}
    report["searches"] = {k: v for k, v in kept.items() if k not in args.pruners.split(",")}
    if kept:
        report["command"] = "python bench/search.py; then python bench/search.py " + " ".join(sys.argv[1:])
    shutil.rmtree(args.work, ignore_errors=True)
    base = tunelab.load_config(ROOT / "configs" / "sst2_lora.yaml", [f"output_dir={args.work / 'default'}", *fixed])
    started = time.perf_counter()
    run = tunelab.fit(base, train=train, validation=val)
    report["default"] = {"search_val_accuracy": round(run.metrics["accuracy"], 4), "dev_accuracy": score(run.artifact_dir),
                         "seconds": round(time.perf_counter() - started, 1), "steps": run.train.steps,
                         "params": {"method.r": base.method.r, "train.learning_rate": base.train.learning_rate,
                                    "train.epochs": base.train.epochs}}
    print("default", json.dumps(report["default"]), flush=True)
    write()

    for pruner in args.pruners.split(","):
        out = args.work / f"search-{pruner}"
        result = tunelab.search(base, space=SPACE, trials=args.trials, output_dir=out, pruner=pruner, seed=0,
                                keep="best", train=train, validation=val)
        rows = list(csv.DictReader(result.trials_csv.open(encoding="utf-8")))
        report["searches"][pruner] = {
            "best_search_val_accuracy": round(result.best_value, 4), "best_params": result.best_params,
            "best_trial": result.best_trial, "dev_accuracy": score(result.best_artifact),
            "beats_default_on_dev": None, "seconds": round(result.seconds, 1), "counts": result.counts,
            "trials_pruned": result.counts.get("pruned", 0),
            "trials": [{k: number(row[k]) for k in ("number", "state", "accuracy", *SPACE, "evaluations", "train_seconds",
                                            "duration_s")} for row in rows]}
        for plot in result.plots:
            shutil.copy(plot, args.out.parent / f"search_{pruner}_{plot.name}")
        entry = report["searches"][pruner]
        entry["optimizer_steps"] = optimizer_steps(entry, math.ceil(len(train) / base.train.batch_size), args.eval_every)
        entry["beats_default_on_dev"] = entry["dev_accuracy"] > report["default"]["dev_accuracy"]
        print(pruner, json.dumps({k: v for k, v in entry.items() if k != "trials"}), flush=True)
        write()
    for entry in report["searches"].values():  # also for a search kept from an earlier run (--replace)
        entry["optimizer_steps"] = optimizer_steps(entry, math.ceil(len(train) / base.train.batch_size), args.eval_every)
    if {"median", "none"} <= report["searches"].keys():
        with_p, without = report["searches"]["median"], report["searches"]["none"]
        report["pruning_time_ratio"] = round(with_p["seconds"] / without["seconds"], 3)
        report["pruning_steps_ratio"] = round(with_p["optimizer_steps"] / without["optimizer_steps"], 3)
    write()


if __name__ == "__main__":
    main()
