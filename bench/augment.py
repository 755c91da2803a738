"""Data augmentation on low-resource SST-2: the packaged MiniLM trained on 500 and 2,000 training rows (5 seeds
each: the rows are a seeded sample of SST-2 train, the seed also seeds training), without and with each
augmentation, scored on the full dev set (872 sentences).

Recipe (the same for every run): full fine-tuning for a fixed 150 optimizer steps at batch 16 (epochs would
give augmented runs more updates, not just more varied ones), learning rate 5e-5, max_length 66, keep-best off.

    python bench/augment.py [--data-dir ../shared/data] [--sizes 500,2000] [--seeds 5]

Writes bench/results/augment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
AUGMENTATIONS = {
    "none": [],
    "synonym": [{"name": "synonym", "n": 1, "p": 0.1}],
    "insert": [{"name": "insert", "n": 1, "p": 0.1}],
    "swap": [{"name": "swap", "n": 1, "p": 0.1}],
    "delete": [{"name": "delete", "n": 1, "p": 0.1}],
    "char_noise": [{"name": "char_noise", "n": 1, "p": 0.1}],
    "eda_all": [{"name": n, "n": 1, "p": 0.1} for n in ("synonym", "insert", "swap", "delete")],
    "paraphrase": [{"name": "paraphrase", "n": 1}],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-augment"))
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--augmentations", default=",".join(AUGMENTATIONS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "augment.json")
    args = parser.parse_args()
    import tunelab
    from tunelab.data import read_records

    train = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").rows
    dev = read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv")
    report: dict = {"seeds": args.seeds, "steps": args.steps, "runs": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        key = f"rows_{size}"
        report[key], report["runs"][key] = {}, {}
        for name in args.augmentations.split(","):
            accuracies, seconds = [], []
            for seed in range(args.seeds):
                rows = random.Random(seed).sample(train, size)
                started = time.perf_counter()
                run = tunelab.fit({
                    "model": "minilm", "method": "full", "strategy": "finetune",
                    "output_dir": str(args.work / f"{key}-{name}-{seed}"),
                    "data": {"text_column": "sentence", "max_length": 66, "augment": AUGMENTATIONS[name]},
                    "train": {"max_steps": args.steps, "epochs": 100, "batch_size": 16, "learning_rate": 5e-5,
                              "seed": seed, "eval_every": 10**9, "keep_best": False}}, train=rows, validation=dev)
                accuracies.append(run.metrics["accuracy"])
                seconds.append(round(time.perf_counter() - started, 1))
            mean = sum(accuracies) / len(accuracies)
            report[key][name] = round(mean, 4)
            report["runs"][key][name] = {"accuracies": [round(a, 4) for a in accuracies], "seconds": seconds}
            print(key, name, round(mean, 4), accuracies, flush=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key in [k for k in report if k.startswith("rows_")]:
        base = report[key].get("none")
        if base is not None:
            report.setdefault("gain_points", {})[key] = {n: round(100 * (v - base), 2) for n, v in report[key].items()
                                                         if n != "none"}
    report["command"] = "python bench/augment.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
