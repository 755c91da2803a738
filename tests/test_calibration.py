"""Calibration: ECE, reliability bins and temperature scaling on synthetic over- and under-confident scores."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.calibration import expected_calibration_error, fit_temperature, reliability, scaled


def synthetic(sharpness: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-class scores whose true log-odds are ``margin``; ``sharpness`` > 1 makes them overconfident."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(int)
    logits = np.stack([-margin, margin], axis=1) * sharpness / 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize("sharpness", [3.0, 0.4])
def test_temperature_scaling_repairs_over_and_under_confidence(sharpness: float) -> None:
    probs, labels = synthetic(sharpness)
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(sharpness, rel=0.1)  # it undoes the distortion
    test_probs, test_labels = synthetic(sharpness, seed=1)
    before = expected_calibration_error(test_probs, test_labels)
    after = expected_calibration_error(scaled(test_probs, temperature), test_labels)
    assert before > 0.05 and after < 0.03 and after < before / 3  # 0.03: the sampling floor of 4000 scores


def test_reliability_bins_count_every_prediction_and_perfect_scores_have_no_error() -> None:
    probs, labels = synthetic(1.0)
    bins = reliability(probs, labels, bins=10)
    assert sum(b["count"] for b in bins) == len(labels)
    assert all(0.5 <= b["confidence"] <= 1 for b in bins)
    assert expected_calibration_error(probs, labels) < 0.03  # scores that are the true probabilities
    assert np.allclose(scaled(probs, 1.0), probs)
