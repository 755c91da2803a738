"""Prediction speed: tunelab's Predictor (PyTorch), the transformers pipeline, and tunelab's ONNX exports (fp32 and
dynamic int8), on the same fine-tuned MiniLM weights, data and machine, in one run.

- SST-2 dev (872 sentences): sentences/s (median of 3) and accuracy for each; predictions of the pipeline must
  equal tunelab's; single-sentence latency p50/p95 (batch 1, 200 sentences).
- CoNLL-2003 test: entity F1 and sentences/s, PyTorch vs ONNX int8.
- Pruning (``tunelab compress``): 30% and 50% of the heads removed, on SST-2: ONNX size, sentences/s and the
  accuracy delta against the unpruned PyTorch model; 50% again with 300 steps of recovery training.

The fine-tuned models are trained here unless given (``--sst2-artifact``, ``--conll-artifact``): SST-2 full
fine-tuning on a 10,000-row prefix (1 epoch), CoNLL-2003 on the first 3,000 training sentences (1 epoch).

Run:  .venv/bin/python bench/inference.py [--data-dir ../shared/data]
Writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def latency_ms(predict, texts: list[str]) -> dict[str, float]:
    """p50 / p95 milliseconds of predicting one sentence at a time."""
    for text in texts[:10]:
        predict(text)  # warm-up
    times = []
    for text in texts:
        started = time.perf_counter()
        predict(text)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": round(times[len(times) // 2], 2), "p95": round(times[int(len(times) * 0.95)], 2)}


def sst2(args: argparse.Namespace, report: dict) -> None:
    import tunelab
    from tunelab.data import read_records

    dev = read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv")
    texts = [r["sentence"] for r in dev.rows]
    gold = [str(r["label"]) for r in dev.rows]
    artifact = args.sst2_artifact
    if artifact is None:
        train = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").subset(range(10000))
        artifact = tunelab.fit({"model": "minilm", "method": "full", "strategy": "finetune",
                                "output_dir": str(args.work / "sst2"),
                                "data": {"text_column": "sentence", "max_length": 66},
                                "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 42,
                                          "eval_every": 10**9}}, train=train, validation=dev).artifact_dir
    fp32 = tunelab.export(artifact, args.work / "sst2-onnx")
    int8 = tunelab.export(artifact, args.work / "sst2-onnx-int8", quantize="int8")

    out: dict = {"sentences": len(texts), "artifact": str(artifact)}
    accuracy: dict = {}
    for name, path in (("tunelab", artifact), ("onnx_fp32", fp32), ("onnx_int8", int8)):
        predictor = tunelab.Predictor.load(path)
        seconds, preds = timed(lambda p=predictor: p.predict(texts))
        out[f"{name}_sent_per_s"] = round(len(texts) / seconds, 1)
        key = "torch" if name == "tunelab" else name
        accuracy[key] = sum(p["label"] == g for p, g in zip(preds, gold)) / len(gold)
        out[f"{name}_latency_ms"] = latency_ms(predictor.predict, texts[:200])
        print(f"{name}: {out[f'{name}_sent_per_s']} sentences/s, accuracy {accuracy[key]:.4f}, "
              f"latency {out[f'{name}_latency_ms']}", flush=True)
        if name == "tunelab":
            reference = [p["label"] for p in preds]

    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(Path(artifact) / "model"), tokenizer=str(Path(artifact) / "tokenizer"),
                    device="cpu")
    for name, kwargs in (("pipeline_default", {}), ("pipeline_bs64", {"batch_size": 64})):
        seconds, preds = timed(lambda k=kwargs: pipe(texts, truncation=True, max_length=66, **k))
        out[f"{name}_sent_per_s"] = round(len(texts) / seconds, 1)
        out[f"{name}_identical_predictions"] = [p["label"] for p in preds] == reference
        print(f"{name}: {out[f'{name}_sent_per_s']} sentences/s, identical: {out[f'{name}_identical_predictions']}",
              flush=True)
    out["onnx_int8_p50_ms"] = out["onnx_int8_latency_ms"]["p50"]
    out["accuracy"] = accuracy
    out["speedup"] = {"tunelab_vs_pipeline_default": round(out["tunelab_sent_per_s"] / out["pipeline_default_sent_per_s"], 2),
                      "tunelab_vs_pipeline_bs64": round(out["tunelab_sent_per_s"] / out["pipeline_bs64_sent_per_s"], 2),
                      "onnx_int8_vs_tunelab": round(out["onnx_int8_sent_per_s"] / out["tunelab_sent_per_s"], 2),
                      "onnx_int8_vs_pipeline_default": round(out["onnx_int8_sent_per_s"] / out["pipeline_default_sent_per_s"], 2)}
    report["sst2"] = out

    pruning: dict = {"recovery_training": None, "importance": "weight magnitude"}
    for share in (0.3, 0.5):
        path = tunelab.compress(artifact, args.work / f"sst2-pruned-{share}", heads=share)
        predictor = tunelab.Predictor.load(path)
        seconds, preds = timed(lambda p=predictor: p.predict(texts))
        acc = sum(p["label"] == g for p, g in zip(preds, gold)) / len(gold)
        key = f"heads_{int(share * 100)}"
        pruning[key] = {"onnx_mb": round((path / "model" / "model.onnx").stat().st_size / 2**20, 1),
                        "sent_per_s": round(len(texts) / seconds, 1), "accuracy": acc,
                        "accuracy_delta_points": round((acc - accuracy["torch"]) * 100, 2),
                        "speedup_vs_onnx_fp32": round(len(texts) / seconds / out["onnx_fp32_sent_per_s"], 2)}
        print(f"pruned {key}: {pruning[key]}", flush=True)
    recover_rows = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").subset(range(9600))
    started = time.perf_counter()
    path = tunelab.compress(artifact, args.work / "sst2-pruned-0.5-recovered", heads=0.5, recover_data=recover_rows,
                            recover_steps=300)
    recovery_seconds = time.perf_counter() - started
    predictor = tunelab.Predictor.load(path)
    seconds, preds = timed(lambda p=predictor: p.predict(texts))
    acc = sum(p["label"] == g for p, g in zip(preds, gold)) / len(gold)
    pruning["heads_50_recovered"] = {"recover_steps": 300, "recover_rows": len(recover_rows),
                                     "compress_seconds": round(recovery_seconds, 1),
                                     "sent_per_s": round(len(texts) / seconds, 1), "accuracy": acc,
                                     "accuracy_delta_points": round((acc - accuracy["torch"]) * 100, 2)}
    print(f"pruned heads_50 + recovery: {pruning['heads_50_recovered']}", flush=True)
    pruning["onnx_fp32_mb"] = round((Path(fp32) / "model" / "model.onnx").stat().st_size / 2**20, 1)
    report["pruning"] = pruning


def conll(args: argparse.Namespace, report: dict) -> None:
    import tunelab
    from tunelab.data import read_records

    test = read_records(args.data_dir / "conll2003" / "test.txt")
    artifact = args.conll_artifact
    if artifact is None:
        train = read_records(args.data_dir / "conll2003" / "train.txt").subset(range(3000))
        artifact = tunelab.fit({"task": {"name": "ner", "case_markers": False}, "model": "minilm", "method": "full",
                                "strategy": "finetune", "output_dir": str(args.work / "conll"),
                                "data": {"max_length": 128},
                                "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 42}},
                               train=train).artifact_dir
    int8 = tunelab.export(artifact, args.work / "conll-onnx-int8", quantize="int8")
    out: dict = {"sentences": len(test), "artifact": str(artifact)}
    for name, path in (("torch", artifact), ("int8", int8)):
        predictor = tunelab.Predictor.load(path)
        seconds, metrics = timed(lambda p=predictor: p.evaluate(test), repeats=1)
        out[f"f1_{name}"] = metrics["f1"]
        out[f"{name}_sent_per_s"] = round(len(test) / seconds, 1)
        print(f"conll {name}: F1 {metrics['f1']:.4f}, {out[f'{name}_sent_per_s']} sentences/s", flush=True)
    out["f1_delta_points"] = round((out["f1_int8"] - out["f1_torch"]) * 100, 2)
    out["speedup_int8"] = round(out["int8_sent_per_s"] / out["torch_sent_per_s"], 2)
    report["conll"] = out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sst2-artifact", type=Path)
    parser.add_argument("--conll-artifact", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-inference"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inference.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "python bench/inference.py " + " ".join(sys.argv[1:]),
                    "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "torch": torch.__version__}}
    sst2(args, report)
    conll(args, report)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
