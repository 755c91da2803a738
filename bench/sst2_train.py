"""SST-2 training benchmark: tunelab vs the Hugging Face Trainer, same MiniLM, data, hyperparameters, machine.

Systems (each in its own process, so peak RSS and threads are its own):
  tunelab            tunelab.fit with its recommended settings (full fine-tuning)
  hf_trainer_best    transformers.Trainer, dynamic padding + train_sampling_strategy="group_by_length"
  hf_trainer_defaults transformers.Trainer, run_glue-style: every input padded to 128 (throughput only, on a prefix)
Also measured in the same run: the machine's fp32 matmul peak, and tunelab's useful FLOP/s (non-padding
tokens only) as a share of it.

Run:  .venv/bin/python bench/sst2_train.py [--data-dir ../shared/data/sst2] [--train-samples N]
Writes bench/results/sst2_train.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import matmul_peak_gflops, peak_rss_mb, run_in_subprocess  # noqa: E402

HYPER = {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.01,
         "max_length": 66, "seed": 42, "max_grad_norm": 1.0}


def read_split(data_dir: Path, split: str, limit: int | None = None) -> list[dict]:
    rows = []
    with open(data_dir / f"{split}.tsv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            rows.append({"sentence": row["sentence"].strip(), "label": int(row["label"])})
            if limit and len(rows) >= limit:
                break
    return rows


def useful_training_flops(lengths: list[int], config) -> float:
    """FLOPs of forward+backward on the non-padding tokens only: 6 x (non-embedding params) per token,
    plus attention scores/values (QK^T and AV: 2 x 2 x L x d x len^2 per sequence forward, x3 with backward)."""
    d, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    params_per_layer = 4 * d * d + 2 * d * inter
    dense = 6 * layers * params_per_layer * sum(lengths)
    attention = 3 * 4 * layers * d * sum(n * n for n in lengths)
    return float(dense + attention)


# ----------------------------------------------------------------------------- systems
def run_tunelab(args) -> dict:
    import tunelab

    train, dev = read_split(args.data_dir, "train", args.train_samples), read_split(args.data_dir, "dev")
    cfg = {"model": "minilm", "method": {"name": "full", "train_word_embeddings": True}, "output_dir": str(args.work / "tunelab"),
           "data": {"text_column": "sentence", "max_length": HYPER["max_length"]},
           "train": {"epochs": HYPER["epochs"], "batch_size": HYPER["batch_size"], "learning_rate": HYPER["learning_rate"],
                     "warmup_ratio": HYPER["warmup_ratio"], "weight_decay": HYPER["weight_decay"], "seed": HYPER["seed"],
                     "max_grad_norm": HYPER["max_grad_norm"], "eval_every": 10**9, "log_every": 50}}
    run = tunelab.fit(cfg, train=train, validation=dev)
    from transformers import AutoConfig

    from tunelab.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model("minilm").path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm").path)
    encoded = tok([r["sentence"] for r in train], truncation=True, max_length=HYPER["max_length"])
    lengths = [len(ids) for ids in encoded["input_ids"]]
    flops = useful_training_flops(lengths, config)
    return {"samples_per_s": run.train.samples_per_s, "dev_accuracy": run.metrics["accuracy"],
            "train_seconds": run.train.train_seconds, "useful_gflops": flops / run.train.train_seconds / 1e9,
            "peak_rss_mb": peak_rss_mb(), "steps": run.train.steps}


def run_hf(args, best_practice: bool) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from tunelab.models import resolve_model

    path = resolve_model("minilm").path
    limit = args.train_samples if best_practice else args.defaults_samples
    train, dev = read_split(args.data_dir, "train", limit), read_split(args.data_dir, "dev")
    tok = AutoTokenizer.from_pretrained(path)
    if best_practice:
        encode = lambda b: tok(b["sentence"], truncation=True, max_length=HYPER["max_length"])  # noqa: E731
        collator = DataCollatorWithPadding(tok)
    else:
        encode = lambda b: tok(b["sentence"], truncation=True, max_length=128, padding="max_length")  # noqa: E731
        collator = default_data_collator
    train_ds = Dataset.from_list(train).map(encode, batched=True, remove_columns=["sentence"])
    dev_ds = Dataset.from_list(dev).map(encode, batched=True, remove_columns=["sentence"])
    torch.manual_seed(HYPER["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    targs = TrainingArguments(
        output_dir=str(args.work / ("hf_best" if best_practice else "hf_defaults")),
        per_device_train_batch_size=HYPER["batch_size"], per_device_eval_batch_size=128,
        learning_rate=HYPER["learning_rate"], num_train_epochs=HYPER["epochs"], warmup_steps=HYPER["warmup_ratio"],
        weight_decay=HYPER["weight_decay"], max_grad_norm=HYPER["max_grad_norm"], lr_scheduler_type="linear",
        seed=HYPER["seed"], eval_strategy="no", save_strategy="no", logging_steps=50, report_to="none",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if best_practice else "random",
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    out = {"samples_per_s": len(train_ds) * HYPER["epochs"] / seconds, "train_seconds": seconds,
           "peak_rss_mb": peak_rss_mb(), "train_samples": len(train_ds)}
    if best_practice:
        preds = trainer.predict(dev_ds)
        # transformers 5 also length-groups the *evaluation* order under group_by_length: compare with the
        # label_ids returned alongside the predictions, not with the dataset's own order.
        out["dev_accuracy"] = float((np.argmax(preds.predictions, -1) == preds.label_ids).mean())
    return out


SYSTEMS = {"tunelab": run_tunelab, "hf_trainer_best": lambda a: run_hf(a, True),
           "hf_trainer_defaults": lambda a: run_hf(a, False)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--train-samples", type=int, default=None, help="default: all 67,349")
    parser.add_argument("--defaults-samples", type=int, default=4000, help="prefix for the pad-to-128 Trainer")
    parser.add_argument("--systems", default="tunelab,hf_trainer_best,hf_trainer_defaults")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sst2_train.json")
    parser.add_argument("--run-system", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_system:
        result = SYSTEMS[args.run_system](args)
        args.result.write_text(json.dumps(result))
        return

    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    report = {"systems": {}, "hyperparameters": HYPER, "command": "python " + " ".join(sys.argv),
              "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}}
    report["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    print(f"fp32 matmul peak: {report['matmul_peak_gflops']} GFLOP/s", flush=True)
    for name in args.systems.split(","):
        extra = ["--data-dir", str(args.data_dir), "--defaults-samples", str(args.defaults_samples)]
        if args.train_samples:
            extra += ["--train-samples", str(args.train_samples)]
        report["systems"][name] = run_in_subprocess(__file__, name, args.work, extra)
    systems = report["systems"]
    report["train_samples"] = args.train_samples or len(read_split(args.data_dir, "train"))
    if "tunelab" in systems:
        report["tunelab_useful_gflops"] = round(systems["tunelab"]["useful_gflops"], 1)
        report["tunelab_share_of_peak"] = round(systems["tunelab"]["useful_gflops"] / report["matmul_peak_gflops"], 3)
        for other in ("hf_trainer_best", "hf_trainer_defaults"):
            if other in systems:
                report[f"speedup_vs_{other}"] = round(systems["tunelab"]["samples_per_s"] / systems[other]["samples_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
