"""One process vs two (tunelab train --nproc 2, torchrun, gloo) vs two Ray Train workers (--backend ray --workers 2,
a local Ray) on the same global batch: MiniLM on SST-2.

Same config both ways (the first --rows SST-2 training rows, 1 epoch, global batch 32, lr 1e-4, dropout 0 so the
two runs see the same computation; full dev set): training samples/s, the largest difference between the two
loss curves, and the dev accuracy of each. On a 2-core machine two processes of one thread each cannot be faster
than one process of two threads; the point is that the numbers agree and the path to more machines is the same
command.

    python bench/distributed.py [--data-dir ../shared/data] [--rows 4000]

Writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-distributed"))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lines = (args.data_dir / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    train = args.work / "train.tsv"
    train.write_text("\n".join(lines[: args.rows + 1]) + "\n", encoding="utf-8")
    report: dict = {"rows": args.rows, "global_batch": 32, "machine": {"cores": os.cpu_count()}, "runs": {}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launches = {"nproc_1": ["--nproc", "1"], "nproc_2": ["--nproc", "2"], "ray_2": ["--backend", "ray", "--workers", "2"]}
    for name, launch in launches.items():
        config = {"model": "minilm", "method": "full", "strategy": "finetune", "output_dir": str(args.work / name),
                  "data": {"train": str(train), "validation": str(args.data_dir / "sst2" / "dev.tsv"),
                           "text_column": "sentence", "max_length": 66},
                  "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 42, "dropout": 0.0,
                            "discard_checkpoint": True}}
        path = args.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        if (args.work / name).exists():
            subprocess.run(["rm", "-rf", str(args.work / name)], check=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tunelab", "train", str(path), *launch], check=True, env=env)
        wall = time.perf_counter() - started
        artifact = args.work / name / "artifact"
        metrics = json.loads((artifact / "metrics.json").read_text())
        steps = json.loads((artifact / "history.json").read_text())["steps"]
        report["runs"][name] = {"accuracy": round(metrics["validation"]["accuracy"], 4),
                                "train_samples_per_s": metrics["train_samples_per_s"],
                                "train_seconds": metrics["train_seconds"], "wall_seconds": round(wall, 1),
                                "losses": [round(s["loss"], 6) for s in steps]}
        print(name, {k: v for k, v in report["runs"][name].items() if k != "losses"}, flush=True)
    one = report["runs"]["nproc_1"]
    for name in ("nproc_2", "ray_2"):
        other = report["runs"][name]
        report[name] = {"max_loss_difference": round(max(abs(a - b) for a, b in zip(one["losses"], other["losses"])), 6),
                        "accuracy_difference_points": round(100 * (other["accuracy"] - one["accuracy"]), 2),
                        "samples_per_s_ratio_vs_1": round(other["train_samples_per_s"] / one["train_samples_per_s"], 3)}
    report["command"] = "python bench/distributed.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print({k: v for k, v in report.items() if k != "runs"})


if __name__ == "__main__":
    main()
