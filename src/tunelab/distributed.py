"""Data-parallel training over several processes: what the loop and ``fit`` need to know about the other ranks,
and the launcher behind ``tunelab train CONFIG --nproc N``.

Any launcher that sets torch's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...) works: ``tunelab train
--nproc``, plain ``torchrun -m tunelab train`` and ``accelerate launch --multi_gpu -m tunelab train``. accelerate
makes the process group (gloo on CPU, NCCL on GPUs) and wraps the model in DistributedDataParallel; the loop
gives each rank an equal share of every global batch (``train.batch_size`` is the global batch, so the learning
rate, the loss and the metrics mean what they mean on one process), evaluates on rank 0 and sends the result to
every rank, and only rank 0 writes checkpoints, trackers and the artifact.

A worker that dies takes the others down with it; ``--max-restarts K`` has torchrun start them again, and the
restarted run continues from the last checkpoint (``train.checkpoint_every``) by itself.

Example:
    >>> launch_command(["configs/sst2.yaml"], nproc=2)[:6]   # doctest: +ELLIPSIS
    ['...', '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--standalone']
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside a distributed launch)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes)."""
    return rank_and_size()[0] == 0


def restarted() -> bool:
    """Whether the launcher restarted this worker after a failure (then the run resumes from its checkpoint):
    torchrun says so in ``TORCHELASTIC_RESTART_COUNT``, tunelab's Ray Train worker in ``TUNELAB_RESTART_COUNT``."""
    return any(int(os.environ.get(name, "0")) > 0 for name in ("TORCHELASTIC_RESTART_COUNT", "TUNELAB_RESTART_COUNT"))


def join_restarted_group() -> None:
    """After a torchrun restart, make the process group with a store prefix of its own attempt.

    A restarted worker can otherwise read its peers' addresses from the attempt before and connect to a dead
    port (gloo: "connectFullMesh failed ... Connection refused"; pytorch/pytorch#167288). On a first attempt,
    or outside torchrun, nothing is done: accelerate makes the group as usual.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or dist.is_initialized() \
            or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=not agent and rank == 0, timeout=datetime.timedelta(minutes=30),
                          multi_tenant=not agent)
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            store=dist.PrefixStore(f"tunelab/attempt-{attempt}", store), rank=rank, world_size=size)


#: accelerate's engines tunelab's loop does not run, switched on by ``accelerate launch --use_deepspeed`` /
#: ``--use_megatron_lm`` or its config file (``--use_fsdp`` is honoured: see ``tunelab.sharding``)
SHARDED_ENGINES = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_sharded_launch() -> None:
    """Refuse a launch that asks accelerate for DeepSpeed or Megatron-LM.

    Both replace the training loop's optimizer step and model wrapper with their own engine; tunelab shards a model
    with FSDP2 instead (``train.sharding: fsdp``, or ``accelerate launch --use_fsdp``), which needs no extra package
    and runs on CPUs too.

    Raises:
        ConfigError: naming the engine and the variable that asked for it.
    """
    from .errors import ConfigError

    for variable, engine in SHARDED_ENGINES.items():
        if os.environ.get(variable, "false").strip().lower() in ("true", "1", "yes"):
            raise ConfigError(
                f"{engine} was asked for ({variable}={os.environ[variable]}, set by `accelerate launch` from its flags "
                f"or config file), and tunelab does not run {engine}'s engine. To spread a model too large for one "
                f"process over several, set train.sharding=fsdp (tunelab train CONFIG --nproc N train.sharding=fsdp, "
                f"or accelerate launch --use_fsdp): weights, gradients and optimizer state are sharded with FSDP2; "
                f"method: lora also keeps the base weights frozen (no gradients or optimizer state for them)")


def shard(indices: list[int], rank: int, size: int) -> list[int]:
    """Rank ``rank``'s share of one batch: every ``size``-th example from ``rank``."""
    return indices[rank::size] if size > 1 else indices


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (unchanged on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing on one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def launch_command(tunelab_args: list[str], nproc: int, nnodes: int = 1, node_rank: int | None = None,
                   rdzv_endpoint: str | None = None, max_restarts: int = 0) -> list[str]:
    """The torchrun command that runs ``tunelab train TUNELAB_ARGS`` on ``nproc`` processes per node.

    Args:
        tunelab_args: the config and its overrides.
        nproc: processes on this node.
        nnodes: machines taking part (each runs the same command with its own ``node_rank``).
        node_rank: this machine's number (multi-node; the c10d rendezvous can also assign it).
        rdzv_endpoint: ``HOST:PORT`` of the rendezvous (multi-node: the first machine).
        max_restarts: restart all workers this many times after a failure (they resume from the checkpoint).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", str(rdzv_endpoint)]
        if node_rank is not None:
            cmd += ["--node-rank", str(node_rank)]
    if max_restarts:
        cmd += ["--max-restarts", str(max_restarts)]
    return [*cmd, "-m", "tunelab", "train", *tunelab_args]


def launch(tunelab_args: list[str], nproc: int, nnodes: int = 1, node_rank: int | None = None,
           rdzv_endpoint: str | None = None, max_restarts: int = 0) -> int:
    """Run ``tunelab train`` under torchrun (see ``launch_command``); returns its exit code.

    Args:
        tunelab_args, nproc, nnodes, node_rank, rdzv_endpoint, max_restarts: as for ``launch_command``.
    """
    cmd = launch_command(tunelab_args, nproc, nnodes, node_rank, rdzv_endpoint, max_restarts)
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # torchrun would set 1 and say so; share the cores out instead
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    print(f"launching {nproc} process(es) per node on {nnodes} node(s): {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env)


class RankStream:
    """What a rank other than 0 writes to stderr, each line marked with its rank (rank 0 alone prints results)."""

    def __init__(self, stream: Any, rank: int):
        self.stream, self.prefix, self.at_line_start = stream, f"[rank {rank}] ", True

    def write(self, text: str) -> int:
        """Write ``text`` with the rank at the start of each line."""
        out = []
        for piece in text.splitlines(keepends=True):
            out.append((self.prefix if self.at_line_start else "") + piece)
            self.at_line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self.stream.flush()

    def isatty(self) -> bool:
        """Never a terminal: progress bars stay off on these ranks."""
        return False


__all__ = ["barrier", "broadcast", "is_main", "join_restarted_group", "launch", "launch_command", "rank_and_size",
           "restarted", "shard"]
