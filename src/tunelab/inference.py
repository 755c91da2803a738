"""Run a model over many items: evaluation mode, length-sorted batches, results back in input order.

``batched`` is the one routine for it (used by evaluation during training, ``tunelab eval``, the
Predictor, sentence embeddings and causal-LM scoring); ``model_outputs`` applies it to task features.

Example:
    >>> import torch
    >>> model = torch.nn.Identity()
    >>> batched(model, ["ccc", "a", "bb"], lambda chunk: [len(s) for s in chunk], batch_size=2, length=len)
    [3, 1, 2]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

from .progress import progress

Item = TypeVar("Item")


def batched(model: torch.nn.Module, items: Sequence[Item], run: Callable[[list[Item]], Sequence[Any]], *,
            batch_size: int, length: Callable[[Item], int], longest_first: bool = True, desc: str | None = None,
            grad: bool = False) -> list[Any]:
    """``run`` over length-sorted batches of ``items`` in eval mode; one result per item, in input order.

    Args:
        model: put in eval mode for the run and restored to its mode afterwards.
        items: anything ``length`` measures (features, texts, token lists).
        run: one batch of items -> one result per item.
        batch_size: items per call of ``run``.
        length: sort key; similar lengths together keep padding (wasted work) small.
        longest_first: longest batch first (memory peaks early) or shortest first.
        desc: a progress label (None: no progress output).
        grad: keep autograd on (default: ``torch.inference_mode``).

    Returns:
        ``[result for each item]`` in the order of ``items``.
    """
    order = sorted(range(len(items)), key=lambda i: length(items[i]), reverse=longest_first)
    results: list[Any] = [None] * len(items)
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    chunks = progress(starts, total=len(starts), desc=desc, unit="batch") if desc else starts
    try:
        with torch.inference_mode(not grad):
            for start in chunks:
                chunk = order[start : start + batch_size]
                for index, value in zip(chunk, run([items[i] for i in chunk]), strict=True):
                    results[index] = value
    finally:
        model.train(was_training)
    return results


def model_outputs(
    model: torch.nn.Module,
    features: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    extract: Callable[[Any], torch.Tensor],
    *,
    length: Callable[[dict[str, Any]], int],
    per_token: bool = False,
    device: torch.device | str = "cpu",
    desc: str = "predict",
) -> list[np.ndarray]:
    """One output array per feature, in the order given.

    ``extract`` turns the model output into a [batch, ...] tensor (e.g. the logits); with ``per_token``
    each row is cut to its feature's own ``length`` (no padding positions).
    """
    def run(chunk: list[dict[str, Any]]) -> list[np.ndarray]:
        batch = collate(chunk)
        batch.pop("labels", None)
        values = extract(model(**{k: v.to(device) for k, v in batch.items()})).float().cpu().numpy()
        return [values[row, : length(f)] if per_token else values[row] for row, f in enumerate(chunk)]

    return batched(model, features, run, batch_size=batch_size, length=length, desc=desc)
