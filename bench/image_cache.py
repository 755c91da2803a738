"""The frozen image tower's output cache (``task.image_cache_mb``) on and off: the same text+image run (MiniLM +
the packaged EfficientNet-Lite0, frozen; concat fusion; --epochs epochs; evaluated at each quarter) on the first
--train-rows listings of bench/multimodal.py's training split and the first --val-rows of its validation split.
Records training images/s (training time only, evaluation excluded), the whole fit's seconds (evaluations
included), and that both runs end with the same validation macro-F1 and loss curve.

    python bench/multimodal.py ...            # once, to write the splits into --work
    python bench/image_cache.py [--work /tmp/tunelab-bench-multimodal] [--train-rows 800] [--val-rows 300]

Writes bench/results/image_cache.json.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-multimodal"))
    parser.add_argument("--train-rows", type=int, default=800)
    parser.add_argument("--val-rows", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_cache.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tunelab

    slices = split_slices(args.work, {"train": args.train_rows, "validation": args.val_rows}, "cache_probe")
    report: dict = {"train_rows": args.train_rows, "validation_rows": args.val_rows, "epochs": args.epochs,
                    "cores": os.cpu_count(), "runs": {}}
    for name, cache_mb in (("cache_off", 0), ("cache_on", 2048)):
        cfg = {"model": "minilm", "strategy": "finetune", "output_dir": str(args.work / f"cache_probe_{name}"),
               "task": {"name": "classification", "fusion": "concat", "frozen": ["image"], "image_cache_mb": cache_mb},
               "method": {"name": "full"},
               "data": {"text_column": "title", "image_column": "image", "label_column": "label", "max_length": 48,
                        "train": str(slices["train"]), "validation": str(slices["validation"])},
               "train": {"epochs": args.epochs, "batch_size": 32, "seed": 0, "discard_checkpoint": True}}
        started = time.perf_counter()
        run = tunelab.fit(cfg)
        seconds = time.perf_counter() - started
        report["runs"][name] = {"images_per_s_train": round(run.train.samples_per_s, 2),
                                "train_seconds": round(run.train.train_seconds, 1), "fit_seconds": round(seconds, 1),
                                "validation_macro_f1": round(run.metrics["f1_macro"], 4),
                                "losses": [round(h["loss"], 6) for h in run.train.history]}
        print(name, {k: v for k, v in report["runs"][name].items() if k != "losses"}, file=sys.stderr, flush=True)
    off, on = report["runs"]["cache_off"], report["runs"]["cache_on"]
    report["train_speedup"] = round(on["images_per_s_train"] / off["images_per_s_train"], 2)
    report["fit_speedup"] = round(off["fit_seconds"] / on["fit_seconds"], 2)
    report["max_loss_difference"] = max(abs(a - b) for a, b in zip(off["losses"], on["losses"]))
    report["command"] = "python bench/image_cache.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
