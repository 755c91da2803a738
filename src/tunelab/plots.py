"""PNG plots people would rather look at than read: training curves, the confusion matrix, scores per label,
reliability diagrams, bars and embedding maps."""

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


def reliability_png(before: list[dict[str, float]], after: list[dict[str, float]] | None, path: Path,
                    title: str = "reliability") -> Path:
    """Accuracy against confidence per bin (``calibration.reliability``), as trained and temperature scaled."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for bins, name in ((before, "as trained"), (after, "temperature scaled")):
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", title=title, xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars_png(values: dict[str, float], path: Path, title: str, xlabel: str) -> Path:
    """Horizontal bars, one per name, in the given order."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(7, max(2.2, 0.4 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(y, [values[n] for n in names], color="#246")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def map_png(points: np.ndarray, gold: list[str], pred: list[str], wrong: list[bool], path: Path, title: str) -> Path:
    """A 2-D map of the data twice: coloured by gold group and by predicted group; wrong predictions as x."""
    groups = sorted(set(gold) | set(pred))
    colours = {g: plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")(k % 20) for k, g in enumerate(groups)}
    wrong_mask = np.asarray(wrong, dtype=bool)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, names, heading in ((axes[0], gold, "coloured by gold"), (axes[1], pred, "coloured by prediction")):
        for g in groups:
            inside = np.asarray([n == g for n in names])
            for mask, marker in ((inside & ~wrong_mask, "o"), (inside & wrong_mask, "x")):
                if mask.any():
                    ax.scatter(points[mask, 0], points[mask, 1], s=14 if marker == "o" else 28, marker=marker,
                               color=colours[g], alpha=0.75, label=g if marker == "o" else None)
        ax.set(title=f"{title}: {heading}", xticks=[], yticks=[])
    handles, labels = axes[0].get_legend_handles_labels()
    if len(groups) <= 20 and handles:
        axes[1].legend(handles, labels, fontsize=8, loc="best", title="x: wrong")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forgetting_png(matrix: list[list[float | None]], names: list[str], path: Path, title: str = "forgetting") -> Path:
    """The continual-learning result matrix as a heat map: row i = after training task i, column j = task j."""
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    size = max(4.0, 0.9 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.8))
    ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), [f"after {n}" for n in names])
    ax.set(xlabel="evaluated on", title=title)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=9,
                        color="white" if m[i, j] < 0.6 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
