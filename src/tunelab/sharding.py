"""Sharded data-parallel training (``train.sharding: fsdp``): each of N processes holds 1/N of the weights, their
gradients and the optimizer state, on PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

What the loop sees does not change: the global batch, the loss, the learning rate and the metrics mean what they
mean on one process, and the loss curve is the data-parallel one. What changes is where the state lives:

* every layer the model names as indivisible (``_no_split_modules`` of a transformers model: ``BertLayer``,
  ``LlamaDecoderLayer`` ...), and then the whole model, becomes one FSDP unit whose parameters are gathered just
  before its forward and backward and freed after (``reshard_after_forward``), so a rank holds one layer's full
  weights at a time;
* gradients are reduce-scattered, so a rank keeps the gradient and the AdamW moments of its own shard only;
* evaluation runs on every rank in step (the forward pass needs all of them), and checkpoints and the final model
  are gathered tensor by tensor into rank 0's memory, which alone writes them, in the same format as an unsharded
  run's (a sharded checkpoint resumes on any number of processes).

``accelerate launch --use_fsdp`` (or an accelerate config with ``distributed_type: FSDP``) asks for the same thing:
tunelab shards the model itself, on CPUs (where accelerate would silently train data parallel) as on GPUs, and
honours accelerate's ``fsdp_transformer_layer_cls_to_wrap``, ``fsdp_reshard_after_forward`` and
``fsdp_offload_params``.

Example:
    >>> request = sharding_request("none", {})
    >>> request is None
    True
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError


@dataclass
class ShardingRequest:
    """What to shard and how (plain data, from ``train.sharding`` or accelerate's FSDP variables).

    Args:
        layer_classes: class names of the modules that become FSDP units (None: the model's ``_no_split_modules``).
        reshard_after_forward: free a unit's gathered weights after its forward pass (less memory, one more
            all-gather in the backward pass).
        offload: keep the sharded parameters, gradients and optimizer state in CPU memory (GPUs).
        source: where the request came from, for messages.
    """

    layer_classes: list[str] | None = None
    reshard_after_forward: bool = True
    offload: bool = False
    source: str = "train.sharding=fsdp"


def _flag(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def sharding_request(setting: str, environ: Mapping[str, str] | None = None) -> ShardingRequest | None:
    """The sharding asked for by ``train.sharding`` or by ``accelerate launch`` (its ``ACCELERATE_USE_FSDP`` and
    ``FSDP_*`` variables); None for plain data parallel.

    Args:
        setting: ``train.sharding`` ("none" or "fsdp").
        environ: the environment (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    from_accelerate = _flag(env.get("ACCELERATE_USE_FSDP", "false"))
    if setting != "fsdp" and not from_accelerate:
        return None
    classes = [c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip()]
    return ShardingRequest(layer_classes=classes or None,
                           reshard_after_forward=_flag(env.get("FSDP_RESHARD_AFTER_FORWARD", "true")),
                           offload=_flag(env.get("FSDP_OFFLOAD_PARAMS", "false")),
                           source="train.sharding=fsdp" if setting == "fsdp" else
                           "accelerate launch --use_fsdp (ACCELERATE_USE_FSDP=true)")


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is one rank's shard of a distributed tensor."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _shared_outside(module: torch.nn.Module, counts: dict[int, int]) -> bool:
    inside: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        inside[id(p)] = inside.get(id(p), 0) + 1
    return any(counts[i] > n for i, n in inside.items())


def shard_units(model: torch.nn.Module, layer_classes: list[str] | None = None) -> list[str]:
    """The names of the modules that become FSDP units (the whole model is one more, around them).

    A module whose class is one of ``layer_classes`` (default: the ``_no_split_modules`` of every transformers
    model inside ``model``) is a unit, unless it shares a parameter with a module outside it (a word embedding
    tied to the output layer stays with the model's own unit) or lies inside another unit.

    Args:
        model: the model to shard.
        layer_classes: class names; None: what the model declares.

    Raises:
        ConfigError: ``layer_classes`` names a class the model does not have.
    """
    wanted = set(layer_classes or [])
    if layer_classes is None:
        for sub in model.modules():
            wanted.update(getattr(sub, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in model.modules()}
    if layer_classes is not None and not wanted & present:
        raise ConfigError(f"FSDP_TRANSFORMER_CLS_TO_WRAP names {sorted(wanted)}, and the model has none of them; "
                          f"its layer classes include {sorted(c for c in present if 'Layer' in c or 'Block' in c)[:8]}")
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    units: list[str] = []
    for name, module in model.named_modules():
        if not name or type(module).__name__ not in wanted or any(name.startswith(u + ".") for u in units):
            continue
        if not _shared_outside(module, counts):
            units.append(name)
    return units


@dataclass
class Sharded:
    """A model sharded over the process group, and what is needed to give the plain model back at the end.

    Args:
        module: the sharded model (trained in place; its parameters are DTensors).
        skeleton: a copy of the model's structure whose parameters live on the ``meta`` device (no memory).
        units: the names of the modules sharded as units.
    """

    module: torch.nn.Module
    skeleton: torch.nn.Module
    units: list[str] = field(default_factory=list)


def shard_model(model: torch.nn.Module, device: torch.device, request: ShardingRequest) -> Sharded:
    """Shard ``model`` over every process of the default process group (FSDP2), in place.

    Args:
        model: the model to train (after the method adapted it: LoRA, frozen layers ...).
        device: this rank's device.
        request: what ``sharding_request`` gave.

    Returns:
        the sharded model and its skeleton (see ``gather_model``).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard, register_fsdp_forward_method

    memo: dict[int, Any] = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                            for p in model.parameters()}
    skeleton = copy.deepcopy(model, memo)  # the structure and buffers, without a second copy of the weights
    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": request.reshard_after_forward}
    if request.offload:
        options["offload_policy"] = CPUOffloadPolicy()
    units = shard_units(model, request.layer_classes)
    if device.type == "cpu":
        return_freed_buffers()
    for name in reversed(units):  # inner units first
        fully_shard(model.get_submodule(name), **options)
    fully_shard(model, **options)
    if callable(getattr(model, "generate", None)):
        # generate runs the inner model's forward, not this one: it gathers the outer unit like a forward pass
        register_fsdp_forward_method(model, "generate")
    return Sharded(model, skeleton, units)


#: glibc's mallopt parameter for the size from which allocations are mapped pages, returned to the system when freed
M_MMAP_THRESHOLD = -3


def return_freed_buffers(threshold: int = 1 << 20) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more from its own mapped pages, given back to the
    system when freed; returns whether it did (glibc only, and not when ``MALLOC_MMAP_THRESHOLD_`` or
    ``GLIBC_TUNABLES`` already set the threshold).

    FSDP gathers each unit's weights into a fresh buffer in every forward and backward pass and frees it after.
    glibc's default raises its mapping threshold to the size of the largest buffer freed, so from then on those
    buffers come from the heap, which fragments and keeps growing until a sharded process holds more than a data
    parallel one (measured: README, "Sharded training"). A fixed threshold costs some speed (a page mapping per
    gathered buffer) and keeps the process near what it really uses.
    """
    import ctypes
    import ctypes.util

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user chose the allocator's threshold
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def gather_tensors(state: Mapping[str, Any], keep: bool) -> dict[str, Any]:
    """``state`` with every shard replaced by its whole tensor (on the CPU); a collective: every rank calls it.

    Args:
        state: names to tensors, some of them DTensor shards.
        keep: whether this rank keeps the gathered tensors (rank 0); the others get an empty dict.
    """
    out: dict[str, Any] = {}
    for name, value in state.items():
        whole = value.full_tensor() if is_sharded(value) else value
        if keep:
            out[name] = whole.detach().cpu() if isinstance(whole, torch.Tensor) else whole
    return out


def scatter_like(whole: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """``whole`` (full tensors, the same on every rank) cut into this rank's shards the way ``like``'s tensors
    are sharded; entries whose ``like`` is not sharded (or absent) are kept as they are. Every rank calls it."""
    from torch.distributed.tensor import distribute_tensor

    out: dict[str, Any] = {}
    for name, value in whole.items():
        target = like.get(name)
        if is_sharded(target) and isinstance(value, torch.Tensor) and not is_sharded(value):
            out[name] = distribute_tensor(value.to(target.device_mesh.device_type).to(target.dtype),
                                          target.device_mesh, target.placements)
        else:
            out[name] = value
    return out


def gather_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
    """``optimizer.state_dict()`` with whole tensors in place of shards, in torch's own format (what an unsharded
    run's checkpoint holds); rank 0 (``keep``) gets it, the others an empty dict. Every rank calls it."""
    saved = optimizer.state_dict()
    state = {index: gather_tensors(entry, keep) for index, entry in saved["state"].items()}
    return {"state": state, "param_groups": saved["param_groups"]} if keep else {}


def scatter_optimizer_state(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A whole-tensor optimizer state (``gather_optimizer_state``, or an unsharded run's) cut into this rank's shards
    of ``optimizer``'s parameters, ready for ``optimizer.load_state_dict``. Every rank calls it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in saved["state"].items():
        param = params[int(index)]
        like = {k: param for k, v in entry.items() if isinstance(v, torch.Tensor) and v.shape == param.shape}
        state[index] = scatter_like(entry, like)
    return {"state": state, "param_groups": saved["param_groups"]}


def state_megabytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What the training state weighs: the weights, the gradients of the trainable ones and the optimizer state,
    in MB, as this process holds it (its shards) and as a whole (what each process of a data-parallel run holds).

    Args:
        model: the (sharded) model.
        optimizer: its optimizer, after at least one step.
    """
    def sizes(tensor: torch.Tensor) -> tuple[int, int]:
        local = tensor.to_local() if is_sharded(tensor) else tensor
        return local.numel() * local.element_size(), tensor.numel() * tensor.element_size()

    here = whole = 0
    for p in model.parameters():
        mine, total = sizes(p.detach())
        copies = 2 if p.requires_grad else 1  # a gradient as large as the weight during each step
        here, whole = here + copies * mine, whole + copies * total
    for entry in optimizer.state.values():
        for value in entry.values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                mine, total = sizes(value)
                here, whole = here + mine, whole + total
    return {"state_mb_per_process": round(here / 2**20, 1), "state_mb_whole": round(whole / 2**20, 1)}


def gather_model(sharded: Sharded, keep: bool) -> torch.nn.Module | None:
    """The trained model as a plain module (full weights, no FSDP) on the rank that keeps it; None elsewhere.
    A collective: every rank calls it.

    Args:
        sharded: what ``shard_model`` gave, after training.
        keep: whether this rank builds the plain model (rank 0).
    """
    full = gather_tensors(sharded.module.state_dict(), keep)
    if not keep:
        return None
    skeleton = sharded.skeleton
    names: dict[int, list[str]] = {}
    for prefix, module in skeleton.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            if p is not None:
                names.setdefault(id(p), []).append(f"{prefix}.{name}" if prefix else name)
    made: dict[int, torch.nn.Parameter] = {}
    for prefix, module in skeleton.named_modules(remove_duplicate=False):
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                key = next((k for k in names[id(p)] if k in full), None)
                if key is None:
                    raise RuntimeError(f"the sharded model's state has no entry for {names[id(p)][0]}")
                made[id(p)] = torch.nn.Parameter(full[key].to(p.dtype), requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            key = f"{prefix}.{name}" if prefix else name
            if b is not None and key in full:
                module._buffers[name] = full[key].to(b.dtype)
    return skeleton


__all__ = ["Sharded", "ShardingRequest", "gather_model", "gather_optimizer_state", "gather_tensors", "is_sharded",
           "return_freed_buffers", "scatter_like", "scatter_optimizer_state", "shard_model", "shard_units",
           "sharding_request", "state_megabytes"]
