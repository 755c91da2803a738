"""One process vs two (tunelab train --nproc 2, torchrun, gloo) vs two sharded (FSDP2, train.sharding=fsdp) vs two
Ray Train workers (--backend ray --workers 2, a local Ray) on the same global batch: MiniLM on SST-2.

Same config both ways (the first --rows SST-2 training rows, 1 epoch, global batch 32, lr 1e-4, dropout 0 so the
two runs see the same computation; full dev set): training samples/s, the largest difference between the two
loss curves, the dev accuracy of each, the largest process's peak RSS, and for the sharded run the training state
(weights, gradients, AdamW moments) each process holds against the whole. On a 2-core machine two processes of one
thread each cannot be faster than one process of two threads; the point is that the numbers agree and the path to
more machines is the same command. fsdp_2_heap is fsdp_2 with glibc's own growing mapping threshold
(MALLOC_MMAP_THRESHOLD_ set, so tunelab leaves it alone).

Then a model whose training state fills the memory (BERT-base's shape, 110M parameters, random weights; a few
steps of batch 8): the largest process's peak RSS data parallel and sharded.

    python bench/distributed.py [--data-dir ../shared/data] [--rows 4000] [--large-steps 10]

Writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-distributed"))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed.json")
    parser.add_argument("--large-steps", type=int, default=10, help="steps of the BERT-base-sized model (0: skip)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lines = (args.data_dir / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    train = args.work / "train.tsv"
    train.write_text("\n".join(lines[: args.rows + 1]) + "\n", encoding="utf-8")
    report: dict = {"rows": args.rows, "global_batch": 32, "machine": {"cores": os.cpu_count()}, "runs": {}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launches = {"nproc_1": ["--nproc", "1"], "nproc_2": ["--nproc", "2"],
                "fsdp_2": ["--nproc", "2", "train.sharding=fsdp"], "fsdp_2_heap": ["--nproc", "2", "train.sharding=fsdp"],
                "ray_2": ["--backend", "ray", "--workers", "2"]}
    for name, launch in launches.items():
        report["runs"][name] = run(args, name, launch, train, "minilm", env)
    one = report["runs"]["nproc_1"]
    for name in ("nproc_2", "fsdp_2", "fsdp_2_heap", "ray_2"):
        other = report["runs"][name]
        report[name] = {"max_loss_difference": round(max(abs(a - b) for a, b in zip(one["losses"], other["losses"])), 6),
                        "accuracy_difference_points": round(100 * (other["accuracy"] - one["accuracy"]), 2),
                        "samples_per_s_ratio_vs_1": round(other["train_samples_per_s"] / one["train_samples_per_s"], 3)}
    if args.large_steps:  # a model whose training state, not the libraries, fills the memory
        large = make_large_model(args.work / "bert_base_random")
        report["large_model"] = {"model": "BERT-base shape (12 layers, 768 wide, 110M parameters), random weights",
                                 "steps": args.large_steps, "global_batch": 8, "max_length": 32}
        for name, launch in {"nproc_2": ["--nproc", "2"], "fsdp_2": ["--nproc", "2", "train.sharding=fsdp"]}.items():
            report["large_model"][name] = run(args, f"large_{name}", launch, train, str(large), env,
                                              steps=args.large_steps)
    report["command"] = "python bench/distributed.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print({k: v for k, v in report.items() if k != "runs"})


def make_large_model(path: Path) -> Path:
    """A random BERT with bert-base-uncased's shape and MiniLM's (same-vocabulary) tokenizer."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.models import resolve_model

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(path)  # BertConfig() is bert-base-uncased's architecture
    AutoTokenizer.from_pretrained(resolve_model("minilm").path).save_pretrained(path)
    return path


def run(args: argparse.Namespace, name: str, launch: list[str], train: Path, model: str, env: dict,
        steps: int | None = None) -> dict:
    """One launch of ``tunelab train``: accuracy, speed, loss curve and the largest process's peak RSS."""
    config = {"model": model, "method": "full", "strategy": "finetune", "output_dir": str(args.work / name),
              "data": {"train": str(train), "validation": str(args.data_dir / "sst2" / "dev.tsv"),
                       "text_column": "sentence", "max_length": 66},
              "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 42, "dropout": 0.0,
                        "discard_checkpoint": True}}
    if steps:  # the large model: a few steps of a small batch, evaluated once on 64 dev rows
        config["train"].update(epochs=None, max_steps=steps, batch_size=8, eval_batch_size=16)
        config["data"].update(max_length=32, validation=str(args.work / "dev64.tsv"))
        dev = (args.data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
        (args.work / "dev64.tsv").write_text("\n".join(dev[:65]) + "\n", encoding="utf-8")
    # fsdp_2_heap: glibc's own (growing) mapping threshold, which tunelab otherwise fixes for sharded runs
    launch_env = {**env, "MALLOC_MMAP_THRESHOLD_": str(32 << 20)} if name.endswith("_heap") else env
    path = args.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    if (args.work / name).exists():
        subprocess.run(["rm", "-rf", str(args.work / name)], check=True)
    started = time.perf_counter()
    # a fresh parent per launch, so its children's peak RSS (the largest process of the launch) is this run's
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "tunelab", "train", str(path), *launch],
                         check=True, env=launch_env, stdout=subprocess.PIPE, text=True).stdout
    wall = time.perf_counter() - started
    peak_rss_mb = round(int(out.strip().splitlines()[-1]) / 1024, 1)
    artifact = args.work / name / "artifact"
    metrics = json.loads((artifact / "metrics.json").read_text())
    history = json.loads((artifact / "history.json").read_text())["steps"]
    result = {"accuracy": round(metrics["validation"]["accuracy"], 4),
              "train_samples_per_s": metrics["train_samples_per_s"],
              "train_seconds": metrics["train_seconds"], "wall_seconds": round(wall, 1),
              # Ray's workers are the raylet's children, not this launch's: not measured there
              **({"largest_process_peak_rss_mb": peak_rss_mb} if "ray" not in name else {}),
              **({"sharding": metrics["sharding"]} if "sharding" in metrics else {}),
              "losses": [round(s["loss"], 6) for s in history]}
    print(name, {k: v for k, v in result.items() if k != "losses"}, flush=True)
    return result


if __name__ == "__main__":
    main()
