"""Run a model over features: length-sorted batches, ``inference_mode``, results in input order.

Used by evaluation during training, by ``tunelab eval`` and by the Predictor: one code path.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


def model_logits(
    model: torch.nn.Module,
    features: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits for every feature, in the order given. Sorting by length keeps padding (wasted work) small."""
    if not features:
        return np.zeros((0,), dtype=np.float32)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]), reverse=True)
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = collate([features[i] for i in order[start : start + batch_size]])
                batch.pop("labels", None)
                batch = {k: v.to(device) for k, v in batch.items()}
                chunks.append(model(**batch).logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    stacked = np.concatenate(chunks, axis=0)
    result = np.empty_like(stacked)
    result[np.asarray(order)] = stacked
    return result
