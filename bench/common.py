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
