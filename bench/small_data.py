"""The SST-2 example config copied onto smaller data it was not tuned on, as a new user would: the recipe as it
was (one epoch, word embeddings trained, lr 5e-5), the data-size recipe that replaced it (epochs from the data
size, train.min_steps 500, word embeddings frozen, lr 1e-4: "all_layers"), and the recipe as it is now
(configs/sst2_full.yaml: the same plus the embeddings and bottom two layers frozen and dropout off, "no_average",
and with the moving average of the weights evaluated and saved, "now").

Sets (4,000 training rows each, seeded):
  sst2_4k     a seeded sample of SST-2 train; the full dev set (872)
  ag_news_4k  AG News topics (4 classes) from its test file split by a fixed rule (every fifth row held out, as in
              bench/continual.py): the first 4,000 of the kept rows; the 1,520 held-out rows as validation

    python bench/small_data.py [--data-dir ../shared/data]

Writes bench/results/small_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from continual import ag_news  # noqa: E402

RECIPES = {
    "before": ["train.epochs=1", "method.train_word_embeddings=true", "train.learning_rate=5e-5",
               "method.freeze_layers=0", "train.dropout=null", "train.ema_decay=null"],
    # the recipe before the time-to-accuracy change
    "all_layers": ["method.freeze_layers=0", "train.dropout=null", "train.ema_decay=null"],
    "no_average": ["train.ema_decay=null"],  # the recipe before the weight average
    "now": [],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-small"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "small_data.json")
    args = parser.parse_args()
    import tunelab
    from tunelab.data import read_records

    sst2 = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").rows
    news_train, news_val = ag_news(args.data_dir / "ag_news" / "test.csv")
    sets = {
        "sst2_4k": (random.Random(0).sample(sst2, args.rows),
                    read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows, []),
        "ag_news_4k": ([{"sentence": r["text"], "label": r["label"]} for r in news_train[:args.rows]],
                       [{"sentence": r["text"], "label": r["label"]} for r in news_val], []),
    }
    report: dict = {"rows": args.rows, "recipes": RECIPES, "results": {}}
    for name, (train, validation, extra) in sets.items():
        for recipe, overrides in RECIPES.items():
            out = args.work / f"{name}-{recipe}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = tunelab.load_config(ROOT / "configs" / "sst2_full.yaml", [f"output_dir={out}", *overrides, *extra])
            started = time.perf_counter()
            run = tunelab.fit(cfg, train=train, validation=validation)
            metrics = json.loads((Path(run.artifact_dir) / "metrics.json").read_text())
            report["results"].setdefault(name, {})[recipe] = {
                "accuracy": round(run.metrics["accuracy"], 4), "steps": run.train.steps,
                "epochs": run.train.epochs_done, "seconds": round(time.perf_counter() - started, 1),
                "still_improving": run.train.still_improving is not None,
                "evals": [round(e["metrics"]["accuracy"], 4) for e in run.train.evals],
                "metrics_json_still_improving": metrics.get("still_improving")}
            print(name, recipe, json.dumps(report["results"][name][recipe]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
        report["command"] = "python bench/small_data.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
