"""Where a tunelab full fine-tuning step on SST-2 spends its time (torch.profiler op table).

Runs tunelab.fit for a fixed number of steps on the first SST-2 training rows under the profiler and
writes bench/results/sst2_profile.txt with the op table and the share of time in matrix multiplies.
Run: .venv/bin/python bench/profile_sst2_step.py [--data-dir ../shared/data/sst2] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sst2_train import HYPER, ROOT, matmul_peak_gflops, read_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sst2_profile.txt")
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    import tunelab

    rows = read_split(args.data_dir, "train", args.steps * HYPER["batch_size"] * 4)
    cfg = {"model": "minilm", "method": {"name": "full", "train_word_embeddings": True}, "output_dir": "/tmp/tunelab-profile",
           "data": {"text_column": "sentence", "max_length": HYPER["max_length"]},
           "train": {"max_steps": args.steps, "batch_size": HYPER["batch_size"], "learning_rate": HYPER["learning_rate"],
                     "eval_every": 10**9}}
    import tunelab.api

    profiled = {}
    real_loop = tunelab.api.train_loop

    def loop_under_profiler(inputs):  # profile the training loop only, not loading, tokenizing or saving
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            result = real_loop(inputs)
        profiled["prof"] = prof
        return result

    tunelab.api.train_loop = loop_under_profiler
    tunelab.fit(cfg, train=rows, validation=rows[:32])
    prof = profiled["prof"]
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    matmul_flops = sum(e.flops for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    dropout = sum(e.self_cpu_time_total for e in events if e.key == "aten::bernoulli_")
    peak = matmul_peak_gflops()
    lines = [
        f"command: python bench/profile_sst2_step.py --steps {args.steps}",
        f"fp32 matmul peak (2048^2, same run): {peak:.1f} GFLOP/s",
        f"share of profiled CPU time in matrix multiplies (mm/addmm/bmm): {matmul / total:.1%}",
        f"matrix multiplies ran at {matmul_flops / (matmul / 1e6) / 1e9:.1f} GFLOP/s "
        f"= {matmul_flops / (matmul / 1e6) / 1e9 / peak:.0%} of that peak",
        f"share in dropout masks (bernoulli_): {dropout / total:.1%}",
        f"=> even with every non-matmul op free, a step could be at most {total / matmul:.2f}x faster at this matmul efficiency.",
        "",
        events.table(sort_by="self_cpu_time_total", row_limit=25),
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[:6]))


if __name__ == "__main__":
    main()
