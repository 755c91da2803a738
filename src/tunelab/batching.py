"""Length-grouped index batches: similar lengths together (less padding), random across the epoch."""

from __future__ import annotations

import random
from typing import Sequence

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
