"""Where a sharded training step's time goes: MiniLM with a classification head on two processes (one thread each,
gloo), one batch of 16 x 66 tokens per process, FSDP2 as ``train.sharding: fsdp`` shards it, against plain
DistributedDataParallel on the same batch. Prints the seconds per step of each and torch.profiler's top operators.

    python -m torch.distributed.run --nproc-per-node 2 --standalone bench/profile_fsdp_step.py fsdp
    python -m torch.distributed.run --nproc-per-node 2 --standalone bench/profile_fsdp_step.py ddp

(bench/results/fsdp_profile.txt holds both outputs.)
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForSequenceClassification

from tunelab.models import resolve_model
from tunelab.sharding import ShardingRequest, shard_model


def main() -> None:
    mode = sys.argv[1]
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("minilm").path, num_labels=2)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # as tunelab's full method leaves it
    if mode == "fsdp":
        shard_model(model, torch.device("cpu"), ShardingRequest())
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    x, y = torch.randint(1000, 5000, (16, 66)), torch.randint(0, 2, (16,))

    def step() -> None:
        model(input_ids=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(5):
        step()
    seconds = (time.perf_counter() - started) / 5
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    if dist.get_rank() == 0:
        print(f"{mode}: {seconds:.3f} s/step (rank 0; 3 profiled steps below)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
