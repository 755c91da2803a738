"""Calibration: whether a model's scores mean what they say, and temperature scaling to make them.

``expected_calibration_error`` bins predictions by confidence and averages |accuracy - confidence| weighted by
bin size; ``fit_temperature`` finds the T that minimises the negative log-likelihood of softmax(log p / T) on
labelled data (Guo et al. 2017) — it works from predicted probabilities, so from any runtime.

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(expected_calibration_error(probs, np.array([0, 1, 1]), bins=2), 3)
    0.133
"""

from __future__ import annotations

import numpy as np
import torch


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin: its mean confidence, its accuracy and how many predictions fall in it."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            out.append({"confidence": float(confidence[inside].mean()),
                        "accuracy": float((predicted[inside] == labels[inside]).mean()), "count": int(inside.sum())})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the bins' |accuracy - confidence|, weighted by their share of the predictions."""
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, labels, bins))
                 / max(1, len(labels)))


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities with temperature ``T`` applied."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (LBFGS over log T), kept within
    [0.05, 20]: on data the model gets all right the likelihood keeps rising as T -> 0, which no new data
    would bear out."""
    logits = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-12))
    target = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(min(max(float(log_t.detach().exp()), 0.05), 20.0))


def cross_fitted(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Temperature scaling measured honestly: a temperature fitted on each half of the data (even and odd rows)
    is applied to the other half, so no prediction is scored by a temperature fitted on it.

    Returns:
        The scaled probabilities (same order) and the two temperatures.
    """
    halves = [np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1]
    after, temperatures = probs.copy(), []
    for fit_on, apply_to in (halves, halves[::-1]):
        temperatures.append(fit_temperature(probs[fit_on], labels[fit_on]))
        after[apply_to] = scaled(probs[apply_to], temperatures[-1])
    return after, temperatures


__all__ = ["cross_fitted", "expected_calibration_error", "fit_temperature", "reliability", "scaled"]
