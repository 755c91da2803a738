"""Adversarial training against attacks, SST-2, the packaged MiniLM, one run on one machine.

Four models with the same recipe as bench/inference.py (first 10,000 SST-2 training rows, 1 epoch, batch 32,
learning rate 1e-4, max_length 66, seed 42): standard, FGM, PGD and FreeLB (train.adversarial, epsilon 0.1 as
chosen by bench/robust_epsilon.py on held-out *training* rows, not on dev; PGD/FreeLB 2 steps). Each is measured
on the full dev set (clean accuracy) and attacked on the same seeded 500 dev sentences by tunelab attack's char
(DeepWordBug-style) and word (WordNet synonyms + MiniLM similarity) recipes.

For comparison (not an adversarial method, so never "best_adversarial"): the same recipe with discrete
augmentation of the training rows (data.augment: char_noise + synonym, one copy each), the attacks' own kind
of edit.

    python bench/robust.py [--data-dir ../shared/data] [--n 500] [--work /tmp/tunelab-bench-robust]

Writes bench/results/robust.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"standard": None,
            "fgm": {"method": "fgm", "epsilon": 0.1},
            "pgd": {"method": "pgd", "epsilon": 0.1, "steps": 2},
            "freelb": {"method": "freelb", "epsilon": 0.1, "steps": 2},
            "augment_char_synonym": None}
ADVERSARIAL = ("fgm", "pgd", "freelb")
AUGMENT = {"augment_char_synonym": [{"name": "char_noise", "n": 1, "p": 0.1}, {"name": "synonym", "n": 1, "p": 0.1}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-robust"))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--methods", default=",".join(SETTINGS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "robust.json")
    args = parser.parse_args()
    import tunelab
    from tunelab.data import read_records

    train = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").subset(range(10000))
    dev = read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv")
    report: dict = {}
    for name in args.methods.split(","):
        started = time.perf_counter()
        run = tunelab.fit({"model": "minilm", "method": {"name": "full", "train_word_embeddings": True}, "strategy": "finetune",
                           "output_dir": str(args.work / name),
                           "data": {"text_column": "sentence", "max_length": 66, "augment": AUGMENT.get(name, [])},
                           "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 42,
                                     "eval_every": 10**9, "adversarial": SETTINGS[name]}}, train=train, validation=dev)
        metrics = json.loads((run.artifact_dir / "metrics.json").read_text())
        entry = {"clean_accuracy": round(run.metrics["accuracy"], 4), "train_seconds": metrics["train_seconds"],
                 "fit_seconds": round(time.perf_counter() - started, 1), "adversarial": metrics.get("adversarial")}
        for recipe in ("char", "word"):
            result = tunelab.attack(run.artifact_dir, dev, recipe=recipe, n=args.n, seed=0)
            entry[f"attack_success_{recipe}"] = round(result["attack_success_rate"], 4)
            entry[f"accuracy_under_attack_{recipe}"] = round(result["accuracy_under_attack"], 4)
            entry[f"{recipe}_details"] = {k: result[k] for k in ("clean_accuracy", "avg_words_perturbed",
                                                                  "avg_share_perturbed", "avg_queries", "seconds")}
            entry[f"{recipe}_examples"] = result["examples"][:3]
        entry["attack_success"] = entry["attack_success_word"]
        report[name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if not k.endswith(("examples", "details"))}), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive an interruption

    standard = report.get("standard")
    adversarial = [k for k in report if k in ADVERSARIAL]
    if standard and adversarial:
        for k in [k for k in report if k != "standard"]:
            report[k]["train_time_ratio"] = round(report[k]["train_seconds"] / standard["train_seconds"], 2)
            report[k]["attack_success_relative_cut"] = round(
                1 - report[k]["attack_success"] / max(standard["attack_success"], 1e-9), 4)
            report[k]["clean_accuracy_change_points"] = round(100 * (report[k]["clean_accuracy"]
                                                                     - standard["clean_accuracy"]), 2)
        report["best_adversarial"] = min(adversarial, key=lambda k: report[k]["attack_success"])
    report.update(sentences_attacked=args.n, machine={"cores": os.cpu_count()},
                  settings={k: v or AUGMENT.get(k) for k, v in SETTINGS.items() if k in report},
                  command="python bench/robust.py " + " ".join(sys.argv[1:]))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("best_adversarial",) if k in report}))


if __name__ == "__main__":
    main()
