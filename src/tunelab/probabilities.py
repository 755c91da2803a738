"""Scores to probabilities over NumPy logits: the one softmax and sigmoid every task and strategy uses.

Example:
    >>> import numpy as np
    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function (multi-label scores)."""
    return 1.0 / (1.0 + np.exp(-logits))
