"""CoNLL-2003 NER benchmark: tunelab (full fine-tuning and LoRA) vs the Hugging Face Trainer
token-classification recipe (run_ner style: label on the first sub-token, DataCollatorForTokenClassification,
truncation at max length), same MiniLM, epochs, batch size, schedule and machine; train -> test entity F1
(seqeval, strict IOB2 for tunelab; seqeval default for the HF recipe, as run_ner computes it).

Also tunelab's own NER options, each a system of its own (not part of the like-for-like comparison):
``tunelab_case_markers`` (capitalisation markers for the uncased MiniLM), ``tunelab_document_context``
(sentences read in 256-sub-token windows of running text; this copy of CoNLL-2003 has no -DOCSTART- lines,
so the whole file in order is the running text) and ``tunelab_context_and_markers`` (both).

Run:  .venv/bin/python bench/conll2003.py [--data-dir ../shared/data/conll2003] [--epochs 3] [--systems a,b]
Writes (merges into) bench/results/conll2003.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import align_first_subtoken, peak_rss_mb, run_in_subprocess, tags_from_prediction  # noqa: E402

HYPER = {"batch_size": 32, "full_learning_rate": 1e-4, "lora_learning_rate": 1e-3, "lora_r": 16,
         "warmup_ratio": 0.06, "weight_decay": 0.01, "max_length": 128, "seed": 42}


# tunelab's own NER options, each measured on its own and together. The "tunelab" and "tunelab_lora" systems
# switch them off: they are the like-for-like comparison with the HF recipe.
RECIPE = {"case_markers": False}
VARIANTS = {
    "case_markers": {"case_markers": True},
    "document_context": {"case_markers": False, "document_context": True},
    "context_and_markers": {"case_markers": True, "document_context": True},
}
# Document windows: 256 sub-tokens, consecutive windows sharing 96 (each word is read at least ~48 from an
# edge), batches of 8 windows (about as many tokens per step as 32 sentences).
DOCUMENT = {"max_length": 256, "stride": 96, "batch_size": 8}


def run_tunelab(args, method: str, options: dict | None = None) -> dict:
    import tunelab
    from tunelab.data import read_records

    train = read_records(args.data_dir / "train.txt")
    valid = read_records(args.data_dir / "valid.txt")
    if args.train_sentences:
        train = train.subset(range(min(args.train_sentences, len(train))))
    lr = HYPER["full_learning_rate"] if method == "full" else HYPER["lora_learning_rate"]
    task = {"name": "ner", **(options or RECIPE)}
    in_documents = task.get("document_context", False)
    if in_documents:
        task["stride"] = DOCUMENT["stride"]
    cfg = {"task": task, "model": "minilm", "output_dir": str(args.work / f"tunelab_{method}_{args.run_system}"),
           # full: the word-embedding matrix trained, as when these figures were measured (the default then)
           "method": {"name": "full", "train_word_embeddings": True} if method == "full" else
                     {"name": method, "r": HYPER["lora_r"], "alpha": 2 * HYPER["lora_r"]},
           "data": {"max_length": DOCUMENT["max_length"] if in_documents else HYPER["max_length"]},
           "train": {"epochs": args.epochs, "batch_size": DOCUMENT["batch_size"] if in_documents else HYPER["batch_size"],
                     "learning_rate": lr,
                     "warmup_ratio": HYPER["warmup_ratio"], "weight_decay": HYPER["weight_decay"], "seed": HYPER["seed"]}}
    run = tunelab.fit(cfg, train=train, validation=valid)
    started = time.perf_counter()
    test = tunelab.Predictor.load(run.artifact_dir).evaluate(args.data_dir / "test.txt")
    return {"test_f1": test["f1"], "test_precision": test["precision"], "test_recall": test["recall"],
            "test_per_type_f1": {k: v["f1"] for k, v in test["per_type"].items()},
            "dev_f1": run.metrics["f1"], "samples_per_s": run.train.samples_per_s,
            "train_seconds": run.train.train_seconds, "test_eval_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(), "trainable_parameters": run.parameters["trainable"], "task_options": task,
            "epochs": args.epochs,
            "samples_per_s_counts": "training windows" if in_documents else "sentences"}


def run_hf(args) -> dict:
    import torch
    from datasets import Dataset
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from tunelab.data import read_records
    from tunelab.models import resolve_model

    path = resolve_model("minilm").path
    train = read_records(args.data_dir / "train.txt").rows
    test = read_records(args.data_dir / "test.txt").rows
    if args.train_sentences:
        train = train[: args.train_sentences]
    labels = sorted({t for r in train for t in r["tags"]}, key=lambda t: (t != "O", t[2:], t))
    label_to_id = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        return align_first_subtoken(tok, batch, label_to_id, HYPER["max_length"])

    train_ds = Dataset.from_list(train).map(encode, batched=True, remove_columns=["tokens", "tags"])
    test_ds = Dataset.from_list(test).map(encode, batched=True, remove_columns=["tokens", "tags"])
    torch.manual_seed(HYPER["seed"])
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(labels),
                                                            id2label=dict(enumerate(labels)), label2id=label_to_id)
    targs = TrainingArguments(
        output_dir=str(args.work / "hf_trainer"), per_device_train_batch_size=HYPER["batch_size"],
        per_device_eval_batch_size=128, learning_rate=HYPER["full_learning_rate"], num_train_epochs=args.epochs,
        warmup_steps=HYPER["warmup_ratio"], weight_decay=HYPER["weight_decay"], lr_scheduler_type="linear",
        seed=HYPER["seed"], eval_strategy="no", save_strategy="no", logging_steps=100, report_to="none",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=DataCollatorForTokenClassification(tok))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    pred = trainer.predict(test_ds)
    gold_tags, pred_tags = tags_from_prediction(pred, labels)
    return {"test_f1": f1_score(gold_tags, pred_tags), "test_precision": precision_score(gold_tags, pred_tags),
            "test_recall": recall_score(gold_tags, pred_tags), "samples_per_s": len(train_ds) * args.epochs / seconds,
            "train_seconds": seconds, "peak_rss_mb": peak_rss_mb()}


SYSTEMS = {"tunelab": lambda a: run_tunelab(a, "full"), "tunelab_lora": lambda a: run_tunelab(a, "lora"),
           "hf_trainer": run_hf,
           **{f"tunelab_{name}": (lambda a, o=options: run_tunelab(a, "full", o)) for name, options in VARIANTS.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--train-sentences", type=int, default=None, help="default: all 14,041")
    parser.add_argument("--systems", default="tunelab,tunelab_lora,hf_trainer")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-conll"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "conll2003.json")
    parser.add_argument("--run-system", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_system:
        args.result.write_text(json.dumps(SYSTEMS[args.run_system](args)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    # Results merge into the existing file: re-running one system keeps the others' measurements.
    report = json.loads(args.out.read_text()) if args.out.exists() else {"systems": {}}
    report.update({"hyperparameters": {**HYPER, "epochs": args.epochs}, "document_context_settings": DOCUMENT,
                   "train_sentences": args.train_sentences or 14041})
    report.setdefault("commands", []).append("python " + " ".join(sys.argv))
    extra = ["--data-dir", str(args.data_dir), "--epochs", str(args.epochs)]
    if args.train_sentences:
        extra += ["--train-sentences", str(args.train_sentences)]
    for name in args.systems.split(","):
        report["systems"][name] = run_in_subprocess(__file__, name, args.work, extra)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))  # partial results survive an interrupted run
    s = report["systems"]
    if "tunelab" in s and "hf_trainer" in s:
        report["f1_difference_points"] = round(100 * (s["tunelab"]["test_f1"] - s["hf_trainer"]["test_f1"]), 2)
        report["throughput_ratio"] = round(s["tunelab"]["samples_per_s"] / s["hf_trainer"]["samples_per_s"], 2)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
