"""Helpers shared by the benchmarks: peak memory, the machine's matmul peak, and running each system in
its own process (so peak RSS and thread use are its own)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_peak_gflops(n: int = 2048, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_in_subprocess(script: str, system: str, work: Path, extra: list[str]) -> dict:
    """Run ``script --run-system SYSTEM`` in a fresh interpreter and return the JSON it writes."""
    result_path = work / f"{system}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, script, "--run-system", system, "--result", str(result_path), "--work", str(work), *extra]
    print(f"running {system} ...", flush=True)
    subprocess.run(cmd, check=True)
    result = json.loads(result_path.read_text())
    print(f"  {system}: {result}", flush=True)
    return result


def align_first_subtoken(tokenizer, batch: dict, label_to_id: dict, max_length: int):
    """The run_ner recipe's encoding: words -> sub-tokens (truncated), the word's tag on its first
    sub-token, -100 (ignored by the loss) elsewhere."""
    enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    all_labels = []
    for i, tags in enumerate(batch["tags"]):
        prev, row = None, []
        for w in enc.word_ids(i):
            row.append(-100 if w is None or w == prev else label_to_id.get(tags[w], 0))
            prev = w
        all_labels.append(row)
    enc["labels"] = all_labels
    return enc


def tags_from_prediction(prediction, labels: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Trainer.predict output of a token classifier -> (gold tags, predicted tags) on labelled positions."""
    import numpy as np

    ids = np.argmax(prediction.predictions, -1)
    gold_tags, pred_tags = [], []
    for p_row, g_row in zip(ids, prediction.label_ids):
        keep = g_row != -100
        gold_tags.append([labels[g] for g in g_row[keep]])
        pred_tags.append([labels[p] for p in p_row[keep]])
    return gold_tags, pred_tags


def split_slices(work: Path, rows: dict[str, int], prefix: str) -> dict[str, Path]:
    """The first ``rows[name]`` records of each split ``work/<name>.jsonl`` (written by bench/multimodal.py), saved as
    ``work/<prefix>_<name>.jsonl``; returns those paths by split name."""
    slices = {}
    for name, count in rows.items():
        lines = (work / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
        slices[name] = work / f"{prefix}_{name}.jsonl"
        slices[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return slices
