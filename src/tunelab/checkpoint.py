"""Resumable checkpoints: weights being trained, optimizer, scheduler, RNG states and data position.

One file, written to a temporary name, flushed to disk and renamed into place, so a run killed at any
moment (even by SIGKILL) leaves either the previous complete checkpoint or the new complete one.

Nothing in a checkpoint can run code: it holds tensors, numbers, strings, lists and dicts only and is
read with ``torch.load(..., weights_only=True)`` (NumPy's RNG state is stored as plain numbers). A
checkpoint also records the settings that shape training (``training_fingerprint``), so resuming with a
different config names the fields that changed instead of silently mixing two runs.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifact import fsync_path
from .errors import TrainingError

CHECKPOINT_NAME = "checkpoint.pt"

# Settings that do not change what training computes: they may differ on resume.
NOT_TRAINING_FIELDS = {
    "output_dir", "allow_network", "data.test", "train.resume", "train.discard_checkpoint", "train.threads",
    "train.track", "train.log_every", "train.eval_batch_size", "train.checkpoint_every", "train.resume_with_changes",
    "generate", "prompt", "few_shot_limit",
}
# Settings that may change on resume with ``train.resume_with_changes: true``: the run continues with the
# new value from the checkpoint's step on. Everything else (model, data, method, batch size, schedule
# length, seed) defines the run and cannot change half way.
CHANGEABLE_FIELDS = {
    "train.learning_rate", "train.head_learning_rate", "train.max_grad_norm", "train.eval_every",
    "train.early_stopping_patience", "train.keep_best", "train.stuck_patience", "train.weight_decay",
}


def rng_states() -> dict[str, Any]:
    """The Python, NumPy and torch RNG states as plain numbers and tensors (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back the RNG states ``rng_states`` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What changes during training: trainable parameters and buffers (not the frozen base weights)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in NOT_TRAINING_FIELDS:
            out.update(_flatten(value, name + "."))
        elif name not in NOT_TRAINING_FIELDS:
            out[name] = value
    return out


def training_fingerprint(config: dict[str, Any]) -> dict[str, str]:
    """Every setting that changes what training computes, flattened to ``{"train.learning_rate": "0.001"}``."""
    return {k: repr(v) for k, v in sorted(_flatten(config).items())}


def fingerprint_changes(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """The fields that differ, as ``train.learning_rate: 0.001 -> 0.0005``."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k, '(unset)')} -> {now.get(k, '(unset)')}" for k in keys if saved.get(k) != now.get(k)]


def unchangeable(changes: list[str]) -> list[str]:
    """The changes (``fingerprint_changes`` lines) to settings that cannot change half way."""
    return [c for c in changes if c.split(":", 1)[0] not in CHANGEABLE_FIELDS]


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically (temporary file, fsync, rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_path(run_dir)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        from .errors import disk_error

        raise disk_error(err, f"saving the checkpoint {target}", run_dir) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """Read ``run_dir/checkpoint.pt`` with ``weights_only=True``: a file that would need to run code to
    load (a tampered or foreign file) is refused before anything in it runs."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means: not a checkpoint tunelab wrote
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise TrainingError(
            f"{path} is not a checkpoint tunelab wrote, or it is damaged ({first}); nothing in it was run. "
            "Delete it (or set train.discard_checkpoint=true) to start the run afresh."
        ) from None
    if not isinstance(payload, dict) or not {"model", "optimizer", "scheduler", "rng", "loop"} <= set(payload):
        raise TrainingError(f"{path} is not a tunelab checkpoint (missing fields); delete it to start afresh")
    return payload
