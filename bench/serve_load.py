"""Serving load test, one run, loopback only, a fixed number of requests (it stops by itself).

Four servers answer the same single-sentence requests (SST-2 dev sentences) with the same fine-tuned MiniLM: (a)
``tunelab serve`` with micro-batching (max batch 32, max wait 5 ms, run length-sorted in chunks of 8), (b)
``tunelab serve --max-batch-size 1`` (batch 1 per request), (c) the FastAPI app users write by hand:
``transformers.pipeline("text-classification")`` called per request in FastAPI's thread pool, and (d) ``tunelab
serve`` on the same model exported to ONNX with int8 weights (``tunelab export --quantize int8``). Each runs in
its own process; the clients (1, 8 and 32 concurrent, httpx, asyncio) run in this one, on the same 2 cores — so
every figure includes the clients' own CPU use. ``model_ceiling``: the model's own sentences/s in one process,
without HTTP, at batch 1 and on batches of 32 (one padded pass, or length-sorted chunks of 8) — the most micro-
batching can give on this CPU.
Generation: ``tunelab serve`` on SmolLM2 (zero-shot summarization exported with ``--format onnx-genai``),
time to the first streamed event for a short prompt and pieces/s with 1 and 8 concurrent streams.
Adapters: five LoRA classifiers on MiniLM (each trained here on its own 400-sentence slice of SST-2 train),
served together; the server's resident memory (RSS, after one request to each model) against serving one of
them, with the base shared (the default) and with ``--no-shared-bases``.

Run:  .venv/bin/python bench/serve_load.py [--artifact /tmp/tunelab-bench-inference/sst2/artifact]
      (the artifact bench/inference.py trains; --requests N per client count; --sections load,generation,adapters)
Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

PIPELINE_SERVER = '''
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

artifact = sys.argv[1]
pipe = pipeline("text-classification", model=artifact + "/model", tokenizer=artifact + "/tokenizer", device=-1)
app = FastAPI()

class Body(BaseModel):
    inputs: list[str]

@app.post("/predict")
def predict(body: Body):
    return {"predictions": pipe(body.inputs)}

@app.get("/ready")
def ready():
    return {"status": "ready"}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


ALL = {"load", "generation", "adapters"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    import httpx

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the server {command} did not become ready")


async def load(url: str, texts: list[str], clients: int, total: int, body) -> dict:
    """``total`` requests from ``clients`` concurrent clients: latency percentiles, requests/s, errors."""
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for n in counter:
            started = time.perf_counter()
            try:
                reply = await http.post(url, json=body(texts[n % len(texts)]), timeout=120)
                ok = reply.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits) as http:
        await http.post(url, json=body(texts[0]), timeout=120)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {"requests": total, "rps": round(total / seconds, 1), "p50_ms": pct(0.5), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "errors": errors}


async def streams(url: str, prompt: str, concurrent: int) -> dict:
    """Time to the first streamed event and pieces/s, ``concurrent`` streams at once."""
    import httpx

    async def one(http: httpx.AsyncClient) -> tuple[float, int, float]:
        started, first, pieces = time.perf_counter(), None, 0
        async with http.stream("POST", url, json={"input": prompt, "stream": True}, timeout=300) as events:
            async for line in events.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    first = first or time.perf_counter() - started
                    pieces += 1
        return first or 0.0, pieces, time.perf_counter() - started

    async with httpx.AsyncClient() as http:
        await one(http)  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(one(http) for _ in range(concurrent)))
        seconds = time.perf_counter() - started
    return {"ttft_ms": round(statistics.median(r[0] for r in results) * 1000, 1),
            "pieces_per_s": round(sum(r[1] for r in results) / seconds, 1), "streams": concurrent}


def server_rss_mb(command: list[str], port: int, names: list[str]) -> float:
    """The resident memory of a ``tunelab serve`` process once each of ``names`` has answered a request."""
    import httpx
    import psutil

    server = start(command, port)
    try:
        for name in names:
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}/predict", json={"inputs": ["a fine film"]},
                               timeout=120)
            reply.raise_for_status()
        time.sleep(1.0)
        return round(psutil.Process(server.pid).memory_info().rss / 2**20, 1)
    finally:
        server.terminate()
        server.wait(timeout=60)


def adapters(args: argparse.Namespace, tunelab_cli: str) -> dict:
    """Memory of five LoRA artifacts on one MiniLM base, served together, against one of them alone."""
    import tunelab
    from tunelab.data import read_records

    train = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").rows
    paths = []
    for i in range(5):
        out = args.work / f"lora{i}"
        if not (out / "artifact" / "manifest.json").is_file():
            tunelab.fit({"model": "minilm", "strategy": "finetune", "task": "classification", "output_dir": str(out),
                         "method": {"name": "lora", "r": 8}, "data": {"text_column": "sentence", "max_length": 64},
                         "train": {"epochs": 1, "batch_size": 32, "learning_rate": 5e-4, "seed": i}},
                        train=train[400 * i: 400 * (i + 1)])
        paths.append(out / "artifact")
    specs = [f"m{i}={p}" for i, p in enumerate(paths)]
    names = [f"m{i}" for i in range(5)]
    port = free_port()
    one = server_rss_mb([tunelab_cli, "serve", specs[0], "--port", str(port)], port, names[:1])
    port = free_port()
    shared = server_rss_mb([tunelab_cli, "serve", *specs, "--port", str(port)], port, names)
    port = free_port()
    separate = server_rss_mb([tunelab_cli, "serve", *specs, "--no-shared-bases", "--port", str(port)], port, names)
    return {"model": "MiniLM-L6 + LoRA r=8 classifiers", "rss_mb_one": one, "rss_mb_five_shared": shared,
            "rss_mb_five_separate": separate, "ratio_shared": round(shared / one, 3),
            "ratio_separate": round(separate / one, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/tunelab-bench-inference/sst2/artifact"))
    parser.add_argument("--onnx-artifact", type=Path,
                        default=Path("/tmp/tunelab-bench-inference/sst2-onnx-int8"),
                        help="the same model exported with int8 weights (bench/inference.py makes it); skipped if absent")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--requests", type=int, default=600, help="requests per client count")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-serve"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    parser.add_argument("--sections", default="load,generation,adapters",
                        help="what to measure (a subset writes its figures into the existing results file)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= ALL:
        sys.exit(f"--sections: choose from {sorted(ALL)}")
    if not (args.artifact / "manifest.json").is_file():
        sys.exit(f"{args.artifact} is not an artifact: run bench/inference.py first (it trains the SST-2 model), "
                 "or pass --artifact")
    tunelab_cli = str(Path(sys.executable).with_name("tunelab"))
    report: dict = json.loads(args.out.read_text()) if sections != ALL and args.out.is_file() else {}
    report.update({"command": "python bench/serve_load.py " + " ".join(sys.argv[1:]), "artifact": str(args.artifact),
                   "machine": {"cores": os.cpu_count()}, "note": "clients and server share the machine's 2 cores"})
    if "load" in sections:
        report["model_ceiling"] = model_ceiling(args)
        load_test(args, report, tunelab_cli)
    if "generation" in sections:
        generation(args, report, tunelab_cli)
    if "adapters" in sections:
        report["adapters"] = adapters(args, tunelab_cli)
        report["adapters5_memory_ratio"] = report["adapters"]["ratio_shared"]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def load_test(args: argparse.Namespace, report: dict, tunelab_cli: str) -> None:
    """Single-sentence requests from 1, 8 and 32 clients against the three servers."""
    from tunelab.data import read_records

    texts = [r["sentence"] for r in read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pipeline_server.py").write_text(PIPELINE_SERVER)
        tunelab_server = [tunelab_cli, "serve", f"m={args.artifact}"]
        onnx_server = [tunelab_cli, "serve", f"m={args.onnx_artifact}"]
        systems = {  # name -> (command given a port, predict path)
            "tunelab": (lambda port: [*tunelab_server, "--max-batch-size", "32", "--max-wait-ms", "5", "--port", str(port)],
                        "/v1/models/m/predict"),
            "batch1": (lambda port: [*tunelab_server, "--max-batch-size", "1", "--port", str(port)], "/v1/models/m/predict"),
            "pipeline_server": (lambda port: [sys.executable, str(Path(tmp) / "pipeline_server.py"), str(args.artifact),
                                              str(port)], "/predict"),
        }
        if (args.onnx_artifact / "manifest.json").is_file():  # the same model exported (tunelab export --quantize int8)
            systems["tunelab_onnx_int8"] = (lambda port: [*onnx_server, "--port", str(port)], "/v1/models/m/predict")
        for name, (command, path) in systems.items():
            port = free_port()
            server = start(command(port), port)
            try:
                for clients in (1, 8, 32):
                    result = asyncio.run(load(f"http://127.0.0.1:{port}{path}", texts, clients, args.requests,
                                              lambda text: {"inputs": [text]}))
                    report.setdefault(f"clients_{clients}", {})[name] = result
                    print(name, clients, result, flush=True)
            finally:
                server.terminate()
                server.wait(timeout=60)
    for clients in (1, 8, 32):
        row = report[f"clients_{clients}"]
        row.update(tunelab_rps=row["tunelab"]["rps"], batch1_rps=row["batch1"]["rps"],
                   pipeline_server_rps=row["pipeline_server"]["rps"], p50_ms=row["tunelab"]["p50_ms"],
                   p95_ms=row["tunelab"]["p95_ms"], p99_ms=row["tunelab"]["p99_ms"],
                   errors=sum(row[s]["errors"] for s in systems))
        row["vs_batch1"] = round(row["tunelab_rps"] / row["batch1_rps"], 2)
        row["vs_pipeline_server"] = round(row["tunelab_rps"] / row["pipeline_server_rps"], 2)
        if "tunelab_onnx_int8" in row:
            row["onnx_int8_vs_pipeline_server"] = round(row["tunelab_onnx_int8"]["rps"] / row["pipeline_server_rps"], 2)
    report["p50_ms_idle"] = report["clients_1"]["tunelab"]["p50_ms"]
    if "tunelab_onnx_int8" in report["clients_1"]:
        report["p50_ms_idle_onnx_int8"] = report["clients_1"]["tunelab_onnx_int8"]["p50_ms"]


def model_ceiling(args: argparse.Namespace) -> dict:
    """What batching can give at most: the model's own sentences/s at batch 1 and 32, in this process, no HTTP
    (256 SST-2 dev sentences, in order, as requests would come)."""
    import tunelab
    from tunelab.data import read_records

    texts = [r["sentence"] for r in read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows][:256]
    out = {}
    for name, path in (("pytorch", args.artifact), ("onnx_int8", args.onnx_artifact)):
        if not (path / "manifest.json").is_file():
            continue
        predictor = tunelab.Predictor.load(path)
        rates = {}
        for label, size, chunk in (("batch1", 1, 1), ("batch32_one_pass", 32, 32), ("batch32_sorted_chunks_of_8", 32, 8)):
            predictor.predict(texts[:size], batch_size=chunk)
            started = time.perf_counter()
            for at in range(0, len(texts), size):
                predictor.predict(texts[at: at + size], batch_size=chunk)
            rates[label] = round(len(texts) / (time.perf_counter() - started), 1)
        out[name] = {**{f"{k}_sent_per_s": v for k, v in rates.items()},
                     "best_ratio": round(max(rates.values()) / rates["batch1"], 2)}
    return out


def generation(args: argparse.Namespace, report: dict, tunelab_cli: str) -> None:
    """SmolLM2 through the onnx-genai engine, streamed: time to first token, pieces/s with 1 and 8 streams."""
    import tunelab

    source = tunelab.fit({"model": "smollm2", "strategy": "zero_shot", "task": "summarization",
                          "generate": {"max_new_tokens": 64}, "output_dir": str(args.work / "smollm2")}).artifact_dir
    engine = tunelab.export(source, args.work / "smollm2-onnx-genai", format="onnx-genai")
    port = free_port()
    server = start([tunelab_cli, "serve", f"g={engine}", "--port", str(port)], port)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/g/generate"
        prompt = "The meeting moved to Friday because the room was booked."
        single, eight = asyncio.run(streams(url, prompt, 1)), asyncio.run(streams(url, prompt, 8))
    finally:
        server.terminate()
        server.wait(timeout=60)
    report["ttft_ms"] = single["ttft_ms"]
    report["generation"] = {"model": "SmolLM2-135M-Instruct, onnx-genai int8", "streams_1": single,
                            "streams_8": eight}


if __name__ == "__main__":
    main()
