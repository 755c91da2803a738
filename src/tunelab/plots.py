"""PNG plots people would rather look at than read: training curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(history: list[dict[str, float]], evals: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Loss per step and the primary metric per evaluation, as a PNG."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    if history:
        steps = np.array([h["step"] for h in history])
        loss = np.array([h["loss"] for h in history])
        ax_loss.plot(steps, loss, color="#9ab", lw=0.8, label="per step")
        window = max(1, len(loss) // 20)
        if window > 1:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax_loss.plot(steps[window - 1 :], smooth, color="#246", lw=1.8, label=f"mean of {window}")
        ax_loss.legend(fontsize=8)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    if evals:
        ax_metric.plot([e["step"] for e in evals], [e["metrics"][metric] for e in evals], "o-", color="#c52")
    ax_metric.set(title=f"validation {metric}", xlabel="optimizer step", ylabel=metric)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix_png(matrix: list[list[int]], labels: list[str], path: Path, title: str = "confusion matrix") -> Path:
    """A confusion matrix (rows: gold, columns: predicted) as a PNG."""
    m = np.asarray(matrix)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    row_sums = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row_sums, out=np.zeros_like(m, dtype=float), where=row_sums > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if len(labels) <= 30:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_label_f1_png(report: dict[str, dict[str, float]], path: Path, title: str = "F1 per type") -> Path:
    """Horizontal bars of precision/recall/F1 per label or entity type, with the support in the label."""
    names = sorted(report, key=lambda k: report[k]["f1"])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.45 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(y - 0.25, [report[n]["precision"] for n in names], height=0.25, color="#9ab", label="precision")
    ax.barh(y, [report[n]["recall"] for n in names], height=0.25, color="#c98", label="recall")
    ax.barh(y + 0.25, [report[n]["f1"] for n in names], height=0.25, color="#246", label="F1")
    ax.set_yticks(y, [f"{n} (n={report[n]['support']})" for n in names])
    ax.set(xlim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
