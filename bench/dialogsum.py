"""DialogSum test ROUGE for SmolLM2-135M-Instruct: zero-shot vs LoRA supervised fine-tuning.

Both systems use the same instruction, the model's chat template and the same decoding (greedy,
at most 64 new tokens). Scores are multi-reference ROUGE-1/2/L (rouge-score, F-measure, best over the
three test references, stemmed), corpus BLEU and chrF (sacrebleu) on the first ``--test-size`` test
dialogues (default: all 500).

LoRA-SFT budget (stated in the results): the first ``--train-samples`` training dialogues (default 600),
1 epoch, LoRA r=16 on all linear layers, lr 5e-4, batch 8, sequences up to 512 tokens; loss on the
summary tokens only; validation on 40 dev dialogues.

Run:  .venv/bin/python bench/dialogsum.py [--data ../shared/data/dialogsum] [--train-samples 600]
Writes bench/results/dialogsum.json.
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
sys.path.insert(0, str(ROOT / "bench"))
import tunelab  # noqa: E402
from tunelab.data import read_records  # noqa: E402

from common import peak_rss_mb  # noqa: E402

INSTRUCTION = "Summarize the following dialogue in one or two sentences.\n\n{text}"
COMMON = {
    "model": "smollm2",
    "task": {"name": "summarization", "instruction": INSTRUCTION, "eval_generate": 0},
    "data": {"text_column": "dialogue", "target_column": "summary", "max_length": 512},
    "generate": {"strategy": "greedy", "max_new_tokens": 64, "batch_size": 16},
}


def scores(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 2) for k in ("rouge1", "rouge2", "rougeL", "bleu", "chrf")} | {
        "samples": metrics["samples"], "examples": metrics.get("examples", [])[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dialogsum"))
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--systems", default="zero_shot,lora_sft")
    parser.add_argument("--work", default="/tmp/tunelab-bench-dialogsum")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dialogsum.json"))
    args = parser.parse_args()
    data = Path(args.data)
    train = read_records(data / "dialogsum.train.jsonl").subset(range(args.train_samples))
    dev = read_records(data / "dialogsum.dev.jsonl").subset(range(40))
    test_all = read_records(data / "dialogsum.test.jsonl")
    test = test_all.subset(range(min(args.test_size, len(test_all))))
    test_cfg = {"reference_columns": ["summary1", "summary2", "summary3"]}
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.update({"command": "python bench/dialogsum.py " + " ".join(sys.argv[1:]), "test_dialogues": len(test),
                   "references_per_dialogue": 3, "decoding": COMMON["generate"], "instruction": INSTRUCTION})

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=2))

    if "zero_shot" in args.systems.split(","):
        started = time.perf_counter()
        run = tunelab.fit({**COMMON, "strategy": "zero_shot", "output_dir": f"{args.work}/zero_shot",
                           "data": {**COMMON["data"], **test_cfg}}, test=test)
        result["zero_shot"] = scores(run.test_metrics) | {"eval_minutes": round((time.perf_counter() - started) / 60, 1)}
        print("zero-shot:", result["zero_shot"], flush=True)
        save()

    if "lora_sft" in args.systems.split(","):
        started = time.perf_counter()
        cfg = {**COMMON, "strategy": "finetune", "output_dir": f"{args.work}/lora_sft",
               "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
               "train": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-4, "warmup_ratio": 0.05, "seed": 0}}
        run = tunelab.fit(cfg, train=train, validation=dev)
        fit_minutes = (time.perf_counter() - started) / 60
        predictor = run.live
        predictor.task.state["reference_columns"] = test_cfg["reference_columns"]  # score like zero-shot: 3 refs
        started = time.perf_counter()
        test_metrics = predictor.evaluate(test)
        result["lora_sft"] = scores(test_metrics) | {
            "budget": {"train_samples": len(train), "epochs": 1, "train_minutes": round(run.train.train_seconds / 60, 1),
                       "fit_minutes_incl_validation": round(fit_minutes, 1), "samples_per_s": round(run.train.samples_per_s, 2),
                       "trainable_parameters": run.parameters["trainable"], "method": "lora r=16 all-linear"},
            "eval_minutes": round((time.perf_counter() - started) / 60, 1),
            "dev_loss": round(run.metrics["loss"], 4), "peak_rss_mb": round(peak_rss_mb(), 1)}
        print("lora-sft:", result["lora_sft"], flush=True)
        save()
    if "zero_shot" in result and "lora_sft" in result:
        result["lora_beats_zero_shot_rougeL"] = result["lora_sft"]["rougeL"] > result["zero_shot"]["rougeL"]
    save()


if __name__ == "__main__":
    main()
