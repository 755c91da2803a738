"""Continual learning over four tasks of ../shared/data with the packaged MiniLM: SST-2 (sentiment) -> AG News
(topic) -> SemEval-2010 Task 8 (relation) -> CoNLL-2003 (NER), one shared encoder, a head per task.

Each task trains on 4,000 of its training examples for one epoch (batch 32, learning rate 1e-4, max_length 128)
and is measured on: SST-2 dev (872), AG News test rows whose index is a multiple of 5 (1,520; the other 6,080
rows are its training pool, since the AG News training file is not in ../shared/data), the first 1,000
SemEval test sentences (official macro-F1), CoNLL-2003 valid's first 1,000 sentences (entity F1).
Strategies: naive, replay with 1% and 5% memory (of the 16,000 training examples), EWC, LwF, per-task
LoRA adapters (r 8, learning rate 1e-3: LoRA's default; full fine-tuning uses 1e-4). ``--strategies a,b`` re-runs
some and keeps the others' results in the file.

    python bench/continual.py [--data-dir ../shared/data] [--rows 4000] [--strategies naive,replay_1pct,...]

Writes bench/results/continual.json and bench/results/continual_forgetting_<strategy>.png.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
# Full fine-tuning at 1e-4 (bench/inference.py's recipe); LoRA at tunelab's LoRA default, 1e-3 (at 1e-4 it barely
# moves in one epoch: SST-2 0.51 after its own task).
LEARNING_RATE = {"adapters": 1e-3}
STRATEGIES = {"naive": "naive", "replay_1pct": {"strategy": "replay", "memory": 0.01},
              "replay_5pct": {"strategy": "replay", "memory": 0.05}, "ewc": "ewc", "lwf": "lwf",
              "adapters": {"strategy": "adapters", "r": 8}}


def ag_news(path: Path) -> tuple[list[dict], list[dict]]:
    """AG News test.csv as records (its backslash line breaks made spaces, ``#36;`` made ``$``), split by a
    fixed rule: every fifth row is held out."""
    classes = {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [{"text": html.unescape(f"{title}. {body}".replace(" #36;", " $").replace("\\", " ")),
                 "label": classes[int(label)]} for label, title, body in csv.reader(handle)]
    return [r for i, r in enumerate(rows) if i % 5], [r for i, r in enumerate(rows) if i % 5 == 0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-continual"))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "continual.json")
    args = parser.parse_args()
    import tunelab
    from tunelab.data import read_records

    d, n = args.data_dir, args.rows
    sst2 = read_records(d / "sst2" / "train.tsv", format="tsv").rows
    news_train, news_test = ag_news(d / "ag_news" / "test.csv")
    semeval = read_records(d / "semeval2010_task8" / "TRAIN_FILE.TXT").rows
    semeval_test = read_records(d / "semeval2010_task8" / "TEST_FILE_FULL.TXT").rows
    conll = read_records(d / "conll2003" / "train.txt").rows
    conll_valid = read_records(d / "conll2003" / "valid.txt").rows
    tasks = [
        {"name": "sst2", "task": "classification", "data": {"text_column": "sentence", "max_length": 128},
         "train": sst2[:n], "validation": read_records(d / "sst2" / "dev.tsv", format="tsv").rows},
        {"name": "ag_news", "task": "classification", "data": {"max_length": 128}, "train": news_train[:n],
         "validation": news_test},
        {"name": "semeval", "task": {"name": "relation", "negative_label": "Other"}, "data": {"max_length": 128},
         "train": semeval[:n], "validation": semeval_test[:1000]},
        {"name": "conll", "task": "ner", "data": {"max_length": 128}, "train": conll[:n], "validation": conll_valid[:1000]},
    ]
    report: dict = {"sequence": [t["name"] for t in tasks], "rows_per_task": n}
    if args.out.is_file() and set(args.strategies.split(",")) != set(STRATEGIES):  # a partial re-run adds to the file
        report = {**json.loads(args.out.read_text()), **report}
    for key in args.strategies.split(","):
        started = time.perf_counter()
        # word embeddings trained, as when the committed figures were measured (the default of full then)
        result = tunelab.fit_sequence(tasks, output_dir=args.work / key, model="minilm", continual=STRATEGIES[key],
                                      method={"name": "full", "train_word_embeddings": True},
                                      train={"epochs": 1, "batch_size": 32, "seed": 42, "eval_every": 10**9,
                                             "learning_rate": LEARNING_RATE.get(key, 1e-4)})
        folder = Path(result["folder"])
        report[key] = {k: result[k] for k in ("avg_accuracy", "avg_forgetting", "backward_transfer", "matrix",
                                              "memory_examples", "metrics")}
        report[key]["seconds"] = round(time.perf_counter() - started, 1)
        report[key]["learning_rate"] = LEARNING_RATE.get(key, 1e-4)
        report[key]["disk_mb"] = round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 1)
        shutil.copy(folder / "forgetting.png", args.out.with_name(f"continual_forgetting_{key}.png"))
        print(key, json.dumps({k: v for k, v in report[key].items() if k != "metrics"}), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if "naive" in report:
        base = report["naive"]["avg_forgetting"]
        for key in [k for k in STRATEGIES if k in report and k != "naive"]:
            report[key]["forgetting_cut_vs_naive"] = round(1 - report[key]["avg_forgetting"] / base, 4) if base else None
    commands = report.get("commands", [])
    report["commands"] = [*commands, "python bench/continual.py " + " ".join(sys.argv[1:])]
    report["command"] = " && ".join(report["commands"])
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
