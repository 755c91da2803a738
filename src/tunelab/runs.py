"""The runs under a folder, as a table, and two runs side by side: ``tunelab runs [DIR]``, ``tunelab runs A B``.

A run is any folder holding a tunelab artifact (``artifact/manifest.json``): ``tunelab train`` outputs, search
trials that were kept, sequence tasks, exports. Everything shown is read from the manifests and ``metrics.json``
files, so it works on runs copied from other machines and needs no tracker.

Example:
    >>> rows = list_runs("runs")                  # doctest: +SKIP
    >>> print(runs_table(rows))                   # doctest: +SKIP
    >>> print(compare_table(compare("runs/a", "runs/b")))   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .artifact import MANIFEST, find_artifact, read_created
from .config import flat_fields
from .errors import ArtifactError, InputError
from .metrics import scalar_metrics

PRIMARY = ("accuracy", "macro_f1", "f1", "f1_micro", "exact_match", "rougeL", "rmse", "loss")


def describe(path: str | Path) -> dict[str, Any]:
    """One run's facts: where, when, task, model, method, strategy, validation/test metrics, steps and time.

    Args:
        path: the run folder or its artifact.
    """
    artifact = find_artifact(path)
    try:
        manifest = json.loads((artifact / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{artifact / MANIFEST} cannot be read: {err}") from None
    metrics_file = artifact / "metrics.json"
    report: dict[str, Any] = {}
    if metrics_file.is_file():
        try:
            report = json.loads(metrics_file.read_text(encoding="utf-8"))
        except ValueError:
            report = {}
    metrics = manifest.get("metrics") or {}
    validation = scalar_metrics(metrics.get("validation") or {})
    primary = report.get("primary_metric") or next((m for m in PRIMARY if m in validation), None)
    config = manifest.get("config") or {}
    return {"run": str(artifact.parent if artifact.name == "artifact" else artifact), "artifact": str(artifact),
            "created": read_created(artifact), "task": (manifest.get("task") or {}).get("name"),
            "model": (manifest.get("base_model") or {}).get("name"), "method": (config.get("method") or {}).get("name"),
            "strategy": manifest.get("strategy"), "format": manifest.get("model_format"), "primary_metric": primary,
            "value": validation.get(primary) if primary else None, "validation": validation,
            "test": scalar_metrics(metrics.get("test") or {}), "steps": report.get("steps"),
            "train_seconds": report.get("train_seconds"), "config": config}


def list_runs(folder: str | Path = "runs", depth: int = 4) -> list[dict[str, Any]]:
    """Every run under ``folder`` (at most ``depth`` levels down), newest first.

    Args:
        folder: where to look.
        depth: how deep to look.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of runs")
    found = []
    for level in range(depth + 1):
        for manifest in root.glob("/".join(["*"] * level + [MANIFEST])):
            if any(part.startswith(".") for part in manifest.relative_to(root).parts):
                continue  # a save in progress or its backup
            try:
                found.append(describe(manifest.parent))
            except ArtifactError:
                continue
    unique = {row["artifact"]: row for row in found}
    return sorted(unique.values(), key=lambda row: row["created"] or "", reverse=True)


def compare(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Two runs side by side: the config fields that differ, and every metric of either.

    Args:
        a, b: run folders or artifacts.
    """
    left, right = describe(a), describe(b)
    ca, cb = flat_fields(left["config"]), flat_fields(right["config"])
    differ = {k: (ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)}
    metrics = {}
    for split in ("validation", "test"):
        for name in sorted(set(left[split]) | set(right[split])):
            metrics[f"{split}.{name}"] = (left[split].get(name), right[split].get(name))
    for key in ("steps", "train_seconds"):
        metrics[key] = (left[key], right[key])
    return {"a": left["run"], "b": right["run"], "config": differ, "metrics": metrics}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a header line first.

    Args:
        header: the column names.
        rows: the cells, as text.
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def runs_table(rows: list[dict[str, Any]], base: str | Path | None = None) -> str:
    """``list_runs``'s rows as a text table (run paths relative to ``base``).

    Args:
        rows: what ``list_runs`` returned.
        base: shorten run paths relative to this folder.
    """
    def name(run: str) -> str:
        try:
            return str(Path(run).relative_to(Path(base))) if base else run
        except ValueError:
            return run

    return text_table(["run", "task", "model", "method", "strategy", "metric", "value", "steps", "train_s", "created"],
                  [[name(r["run"]), _fmt(r["task"]), _fmt(r["model"]), _fmt(r["method"]), _fmt(r["strategy"]),
                    _fmt(r["primary_metric"]), _fmt(r["value"]), _fmt(r["steps"]), _fmt(r["train_seconds"]),
                    (r["created"] or "-")[:19]] for r in rows])


def compare_table(comparison: dict[str, Any]) -> str:
    """``compare``'s result as a text table: metrics first, then the config fields that differ.

    Args:
        comparison: what ``compare`` returned.
    """
    rows = [[k, _fmt(a), _fmt(b)] for k, (a, b) in comparison["metrics"].items()]
    rows += [[f"config {k}", _fmt(a), _fmt(b)] for k, (a, b) in comparison["config"].items()]
    return f"A: {comparison['a']}\nB: {comparison['b']}\n" + text_table(["", "A", "B"], rows)


__all__ = ["compare", "compare_table", "describe", "list_runs", "runs_table", "text_table"]
