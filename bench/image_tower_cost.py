"""What training the image tower costs: the same text+image run (MiniLM fully trained + the packaged
EfficientNet-Lite0; concat fusion; one epoch; batch 32) on the first --train-rows listings of bench/multimodal.py's
training split, with the image tower frozen (output cache off, so every image runs the tower once, as in a first
epoch), adapted by LoRA (method lora: the image tower's 1x1 ``project_conv`` convolutions and the text tower's
query/value projections), and fully fine-tuned (both towers). Records training images/s
(training time only) and the trainable parameters; validation macro-F1 on --val-rows listings is reported but, after
one epoch on a slice, says little about the full benchmark.

    python bench/multimodal.py ...            # once, to write the splits into --work
    python bench/image_tower_cost.py [--work /tmp/tunelab-bench-multimodal] [--train-rows 640] [--val-rows 200]

Writes bench/results/image_tower_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import split_slices  # noqa: E402

SETTINGS = {  # name: (task.frozen, method)
    "image_frozen": (["image"], {"name": "full"}),
    "image_lora": ([], {"name": "lora"}),
    "image_full": ([], {"name": "full"}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-multimodal"))
    parser.add_argument("--train-rows", type=int, default=640)
    parser.add_argument("--val-rows", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_tower_cost.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tunelab

    slices = split_slices(args.work, {"train": args.train_rows, "validation": args.val_rows}, "tower_cost")
    report: dict = {"train_rows": args.train_rows, "validation_rows": args.val_rows, "epochs": 1,
                    "cores": os.cpu_count(), "runs": {}}
    for name, (frozen, method) in SETTINGS.items():
        cfg = {"model": "minilm", "strategy": "finetune", "output_dir": str(args.work / f"tower_cost_{name}"),
               "task": {"name": "classification", "fusion": "concat", "frozen": frozen, "image_cache_mb": 0},
               "method": method,
               "data": {"text_column": "title", "image_column": "image", "label_column": "label", "max_length": 48,
                        "train": str(slices["train"]), "validation": str(slices["validation"])},
               "train": {"epochs": 1, "batch_size": 32, "seed": 0, "eval_every": 10_000, "discard_checkpoint": True}}
        started = time.perf_counter()
        run = tunelab.fit(cfg)
        report["runs"][name] = {
            "images_per_s_train": round(run.train.samples_per_s, 2), "train_seconds": round(run.train.train_seconds, 1),
            "fit_seconds": round(time.perf_counter() - started, 1),
            "trainable_parameters": json.loads((run.artifact_dir / "metrics.json").read_text())["parameters"],
            "validation_macro_f1": round(run.metrics["f1_macro"], 4)}
        print(name, report["runs"][name], file=sys.stderr, flush=True)
    frozen_speed = report["runs"]["image_frozen"]["images_per_s_train"]
    report["slowdown_vs_frozen"] = {name: round(frozen_speed / r["images_per_s_train"], 2)
                                    for name, r in report["runs"].items()}
    report["command"] = "python bench/image_tower_cost.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
