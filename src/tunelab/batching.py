"""Batches: length-grouped index batches (less padding) and dynamic padding at collate time."""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

# HF's group_by_length sorts within "megabatches" of 50 batches; we do the same, so batches stay
# random across the epoch while padding within a batch stays small.
MEGABATCH_FACTOR = 50


def epoch_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """The index batches of one epoch; a pure function of (seed, epoch), so a resumed run sees the same order."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        size = batch_size * MEGABATCH_FACTOR
        grouped: list[int] = []
        for start in range(0, len(order), size):
            mega = order[start : start + size]
            mega.sort(key=lambda i: lengths[i], reverse=True)
            grouped.extend(mega)
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)  # don't always start each megabatch with its longest batch
    return batches


def pad_batch(
    features: list[dict[str, Any]],
    pad_token_id: int,
    label_dtype: torch.dtype | None,
    label_pad: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad token lists to the longest in this batch (dynamic padding) and build the attention mask.

    ``label_pad`` set: labels are per-token lists, padded with it (-100: ignored by the loss).
    """
    longest = max(len(f["input_ids"]) for f in features)
    n = len(features)
    input_ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, longest), dtype=torch.long)
    has_types = "token_type_ids" in features[0]
    token_types = torch.zeros((n, longest), dtype=torch.long) if has_types else None
    for row, feat in enumerate(features):
        ids = feat["input_ids"]
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        if token_types is not None:
            token_types[row, : len(ids)] = torch.as_tensor(feat["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if token_types is not None:
        batch["token_type_ids"] = token_types
    if label_dtype is not None and "labels" in features[0]:
        if label_pad is None:
            batch["labels"] = torch.as_tensor([f["labels"] for f in features], dtype=label_dtype)
        else:
            labels = torch.full((n, longest), label_pad, dtype=label_dtype)
            for row, feat in enumerate(features):
                labels[row, : len(feat["labels"])] = torch.as_tensor(feat["labels"], dtype=label_dtype)
            batch["labels"] = labels
    return batch
