"""Run a model over features: length-sorted batches, ``inference_mode``, results in input order.

Used by evaluation during training, by ``tunelab eval`` and by the Predictor: one code path.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .progress import progress


def model_outputs(
    model: torch.nn.Module,
    features: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    extract: Callable[[Any], torch.Tensor],
    *,
    per_token: bool = False,
    device: torch.device | str = "cpu",
    desc: str = "predict",
) -> list[np.ndarray]:
    """One output array per feature, in the order given.

    ``extract`` turns the model output into a [batch, ...] tensor (e.g. the logits); with ``per_token``
    each row is cut to its feature's own length (no padding positions). Sorting by length keeps padding,
    i.e. wasted work, small.
    """
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]), reverse=True)
    was_training = model.training
    model.eval()
    results: list[np.ndarray | None] = [None] * len(features)
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
                chunk = order[start : start + batch_size]
                batch = collate([features[i] for i in chunk])
                batch.pop("labels", None)
                batch = {k: v.to(device) for k, v in batch.items()}
                values = extract(model(**batch)).float().cpu().numpy()
                for row, index in enumerate(chunk):
                    results[index] = values[row, : len(features[index]["input_ids"])] if per_token else values[row]
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
