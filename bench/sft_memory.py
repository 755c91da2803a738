"""Training memory of LoRA-SFT on SmolLM2 (the DialogSum setting) with and without
``train.gradient_checkpointing``: peak RSS and seconds per optimizer step, each in a fresh process.

Run:  .venv/bin/python bench/sft_memory.py [--steps 4]
Writes bench/results/sft_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import peak_rss_mb, run_in_subprocess  # noqa: E402


def run_one(args, checkpointing: bool) -> dict:
    import tunelab
    from tunelab.data import read_records

    data = Path(args.data)
    train = read_records(data / "dialogsum.train.jsonl").subset(range(8 * args.steps))
    dev = read_records(data / "dialogsum.dev.jsonl").subset(range(4))
    cfg = {"task": {"name": "summarization", "eval_generate": 0,
                    "instruction": "Summarize the following dialogue in one or two sentences.\n\n{text}"},
           "model": "smollm2", "strategy": "finetune", "output_dir": str(Path(args.work) / f"gc_{checkpointing}"),
           "data": {"text_column": "dialogue", "target_column": "summary", "max_length": 512},
           "generate": {"max_new_tokens": 1},
           "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
           "train": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-4, "seed": 0,
                     "gradient_checkpointing": checkpointing}}
    run = tunelab.fit(cfg, train=train, validation=dev)
    return {"peak_rss_mb": round(peak_rss_mb(), 1), "steps": run.train.steps,
            "seconds_per_step": round(run.train.train_seconds / run.train.steps, 2),
            "samples_per_s": round(run.train.samples_per_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dialogsum"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--work", default="/tmp/tunelab-bench-sft-memory")
    parser.add_argument("--run-system", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_system:
        args.result.write_text(json.dumps(run_one(args, args.run_system == "checkpointing")))
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    extra = ["--data", args.data, "--steps", str(args.steps)]
    report = {"setting": "SmolLM2-135M LoRA r=16 all-linear, batch 8, DialogSum dialogues up to 512 tokens",
              "command": "python bench/sft_memory.py " + " ".join(sys.argv[1:]),
              "plain": run_in_subprocess(__file__, "plain", Path(args.work), extra),
              "checkpointing": run_in_subprocess(__file__, "checkpointing", Path(args.work), extra)}
    report["memory_ratio"] = round(report["checkpointing"]["peak_rss_mb"] / report["plain"]["peak_rss_mb"], 2)
    report["time_ratio"] = round(report["checkpointing"]["seconds_per_step"] / report["plain"]["seconds_per_step"], 2)
    out = ROOT / "bench" / "results" / "sft_memory.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
