"""Data augmentation on low-resource SST-2: the packaged MiniLM trained on 500 and 2,000 training rows (5 seeds
each: the rows are a seeded sample of SST-2 train, the seed also seeds training), without and with each
augmentation, scored on the full dev set (872 sentences).

Paraphrase runs last, and only at sizes up to --paraphrase-max-rows (500 by default): at 2,000 rows the five
samples hold up to 10,000 sentences for SmolLM2 to paraphrase on the CPU first (each run's "seconds" include the
generation of the sentences not cached yet); the report lists what was not run under "not_run".

Recipe (the same for every run): full fine-tuning for a fixed 150 optimizer steps at batch 16 (epochs would
give augmented runs more updates, not just more varied ones), learning rate 5e-5, max_length 66, keep-best off.

    python bench/augment.py [--data-dir ../shared/data] [--sizes 500,2000] [--seeds 5]
    python bench/augment.py --append --sizes 500 --augmentations paraphrase   # add rows to an existing report

Writes bench/results/augment.json.
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
    parser.add_argument("--paraphrase-max-rows", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "augment.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out and run only the listed jobs (same --seeds and --steps)")
    args = parser.parse_args()
    import tunelab
    from tunelab.data import read_records

    train = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").rows
    dev = read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv")
    report: dict = {"seeds": args.seeds, "steps": args.steps, "runs": {}}
    commands = []
    if args.append and args.out.exists():
        report = json.loads(args.out.read_text())
        if (report.get("seeds"), report.get("steps")) != (args.seeds, args.steps):
            sys.exit(f"{args.out} was made with seeds={report.get('seeds')} steps={report.get('steps')}; "
                     f"--append needs the same (got seeds={args.seeds} steps={args.steps})")
        commands = [report["command"]] if isinstance(report.get("command"), str) else list(report.get("command", []))
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.augmentations.split(",")
    # paraphrase last: it generates with SmolLM2 first, the slowest part; everything else is in by then
    jobs = [(size, name) for size in sizes for name in names if name != "paraphrase"]
    jobs += [(size, "paraphrase") for size in sizes if "paraphrase" in names]
    skipped = [(s, n) for s, n in jobs if n == "paraphrase" and s > args.paraphrase_max_rows]
    if skipped:
        report["not_run"] = sorted(set(report.get("not_run", [])) | {f"rows_{s}:{n}" for s, n in skipped})
    jobs = [job for job in jobs if job not in skipped]
    earlier_pending = [p for p in report.get("pending", []) if p not in {f"rows_{s}:{n}" for s, n in jobs}]
    for index, (size, name) in enumerate(jobs):
        key = f"rows_{size}"
        report.setdefault(key, {})
        report["runs"].setdefault(key, {})
        accuracies, seconds = [], []
        for seed in range(args.seeds):
            rows = random.Random(seed).sample(train, size)
            started = time.perf_counter()
            run = tunelab.fit({
                "model": "minilm", "method": {"name": "full", "train_word_embeddings": True}, "strategy": "finetune",
                "output_dir": str(args.work / f"{key}-{name}-{seed}"),
                "data": {"text_column": "sentence", "max_length": 66, "augment": AUGMENTATIONS[name]},
                "train": {"max_steps": args.steps, "epochs": 100, "batch_size": 16, "learning_rate": 5e-5,
                          "seed": seed, "eval_every": 10**9, "keep_best": False}}, train=rows, validation=dev)
            accuracies.append(run.metrics["accuracy"])
            seconds.append(round(time.perf_counter() - started, 1))
            shutil.rmtree(args.work / f"{key}-{name}-{seed}")  # 90 MB each, 80 runs
        report[key][name] = round(sum(accuracies) / len(accuracies), 4)
        report["runs"][key][name] = {"accuracies": [round(a, 4) for a in accuracies], "seconds": seconds}
        print(key, name, report[key][name], accuracies, flush=True)
        # the report is whole after every augmentation: what is still to run is listed, not missing silently
        report["pending"] = earlier_pending + [f"rows_{s}:{n}" for s, n in jobs[index + 1:]]
        for k in [k for k in report if k.startswith("rows_")]:
            base = report[k].get("none")
            if base is not None:
                report.setdefault("gain_points", {})[k] = {n: round(100 * (v - base), 2) for n, v in report[k].items()
                                                           if n != "none"}
        this = ("python bench/augment.py " + " ".join(sys.argv[1:])).strip()
        report["command"] = commands + [this] if commands else this
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
