"""Error analysis of a trained model on labelled data, for every task, in one call: metrics, maps of the data
as the model sees it, calibration (with temperature scaling that can be stored in the artifact), slices, the
task's own breakdowns (confusions, entity error kinds, QA by question word, ROUGE by length) and the hardest
examples with their explanations — as a dict, a JSON file, PNGs and one offline HTML report.

The task supplies the per-record rows and breakdowns (``Task.analysis_rows``/``analysis_metrics``/
``analysis_sections``); this package does the rest the same way for all of them.

Example:
    >>> result = tunelab.analyze("runs/sst2", "dev.tsv", out="sst2-analysis")     # doctest: +SKIP
    >>> result["metrics"]["accuracy"], result["files"]["report"]                   # doctest: +SKIP
    (0.89, 'sst2-analysis/report.html')
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import update_task_state
from ..calibration import cross_fitted, expected_calibration_error, fit_temperature, reliability
from ..errors import ConfigError, DataError
from ..explain import explain_record
from ..predictor import Predictor
from . import maps as M
from .report import report_html, write_plots
from .slices import DEFAULT_SLICES, SLICERS, register_slicer, slice_table

MIN_CALIBRATION = 20  # fewer labelled predictions than this give no calibration estimate worth printing


def analyze(model: str | Path | Predictor, data: Any, *, out: str | Path | None = None, html: str | Path | None = None,
            slices: list[str] | None = None, maps: list[str] | None = None, hardest: int = 10, explain: str | None = "auto",
            calibrate: bool = False, limit: int | None = None, seed: int = 0, batch_size: int = 64,
            quiet: bool = False, name: str | None = None) -> dict[str, Any]:
    """Analyse a model's errors on labelled data.

    Args:
        model: an artifact (or run) directory, or a loaded Predictor.
        data: labelled records in the training columns (a file, DataFrame, list of dicts).
        out: a folder for ``analysis.json``, the PNGs and ``report.html`` (None: nothing written).
        html: where the HTML report goes (default ``out/report.html``).
        slices: slice specs (default ``length``, ``negation``, ``numbers``, ``label``) plus any
            ``column:NAME`` or ``regex:NAME=PATTERN``; see ``tunelab.analysis.slices``.
        maps: projections among ``pca``, ``tsne``, ``umap`` (default: those installed).
        hardest: how many highest-loss examples to show, each explained.
        explain: attribution method for them (``auto``: ig with a PyTorch model, else occlusion; None: none).
        calibrate: store the temperature fitted on this data in the artifact, so its scores mean what they say
            (single-label classification and relation artifacts).
        limit: analyse a seeded random sample of this many records.
        seed: for the sample, t-SNE and UMAP.
        batch_size: inputs run through the model together.
        quiet: no progress lines on stderr.
        name: what the report calls the model (default: the artifact's run name).

    Returns:
        ``{"title", "meta", "metrics", "calibration", "maps", "slices", "sections", "hardest", "examples",
        "notes", "files"}`` — plain data, also written to ``out/analysis.json``.

    Raises:
        ConfigError: an unknown slice kind or projection, or ``calibrate`` for a task without a temperature.
        DataError: no records, or a record without its gold label (named by row).
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"tunelab analyze: {message}", file=sys.stderr, flush=True)

    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    task = predictor.task
    specs = list(DEFAULT_SLICES if slices is None else slices)
    for spec in specs:  # a bad spec is named before any work
        kind, _, arg = spec.partition(":")
        SLICERS.get(kind)([], [], arg)
    projections = M.available() if maps is None else list(maps)
    for projection in projections:
        if projection not in M.PROJECTORS:
            raise ConfigError(f"maps: unknown projection {projection!r}; known: {', '.join(M.PROJECTORS)}")
        if projection not in M.available():
            raise ConfigError("maps: umap needs the umap-learn package (pip install umap-learn)")
    if calibrate and not task.scales_temperature():
        raise ConfigError(f"calibrate: a {task.name} artifact's scores have no temperature to store "
                          "(single-label classification and relation artifacts have)")
    if calibrate and predictor.path is None:
        raise ConfigError("calibrate: this model is not saved as an artifact yet; analyse the artifact directory")

    records = predictor.as_records(data)
    if not len(records):
        raise DataError(f"{records.source}: no records to analyse")
    if limit is not None and len(records) > limit:
        records = records.subset(sorted(random.Random(seed).sample(range(len(records)), int(limit))))
    say(f"predicting {len(records)} records")
    predictions = predictor.predict(records, batch_size=batch_size)
    rows = task.analysis_rows(records, predictions)
    notes: list[str] = []
    analysis: dict[str, Any] = {
        "title": f"tunelab analysis: {name or artifact_name(predictor)}",
        "meta": {"artifact": str(predictor.path or name or "(in memory)"), "task": task.name, "data": records.source,
                 "examples": len(rows), "created": time.strftime("%Y-%m-%d %H:%M:%S")},
        "metrics": task.analysis_metrics(rows), "notes": notes,
    }
    analysis["calibration"] = _calibration(predictor, rows, calibrate, notes, say)

    explain_model = predictor.explain_model()
    analysis["maps"] = {}
    if projections and explain_model.torch_model is None:
        notes.append("maps need the model's hidden states: analyse the PyTorch artifact this one was exported from")
    elif projections:
        say(f"representations and {', '.join(projections)} maps")
        vectors = task.representations(explain_model.torch_model, predictor.processor, records, rows, batch_size)
        analysis["maps"] = {k: np.round(v, 4).tolist() for k, v in M.project(vectors, projections, seed).items()}
        if not analysis["maps"]:
            notes.append("no maps: they need at least 5 records with different representations")

    analysis["slices"] = slice_table(task, rows, records.rows, specs)
    analysis["sections"] = task.analysis_sections(rows)
    analysis["hardest"] = _hardest(explain_model, records.rows, rows, hardest, explain, notes, say)
    analysis["examples"] = [{k: r[k] for k in ("text", "gold", "pred", "correct", "loss")} for r in rows]
    analysis["seconds"] = round(time.perf_counter() - started, 1)
    analysis["files"] = {}
    if out is not None or html is not None:
        analysis["files"] = write(analysis, rows, Path(out) if out is not None else Path(html).parent, html)
        say(f"report: {analysis['files']['report']}")
    return analysis


def artifact_name(predictor: Predictor) -> str:
    """The artifact's name for titles: its run directory's when it is ``run/artifact``."""
    if predictor.path is None:
        return predictor.task.name
    return predictor.path.parent.name if predictor.path.name == "artifact" else predictor.path.name


def _calibration(predictor: Predictor, rows: list[dict[str, Any]], store: bool, notes: list[str],
                 say: Any) -> dict[str, Any] | None:
    """ECE as predicted and temperature scaled (cross-fitted on halves), the temperature fitted on all rows,
    and (``store``) that temperature written into the artifact."""
    if not rows or "probs" not in rows[0]:
        return None
    if len(rows) < MIN_CALIBRATION:
        notes.append(f"calibration needs at least {MIN_CALIBRATION} labelled records; skipped")
        return None
    probs = np.asarray([r["probs"] for r in rows], dtype=np.float64)
    gold = np.asarray([r["gold_index"] for r in rows])
    after, halves = cross_fitted(probs, gold)
    temperature = fit_temperature(probs, gold)
    current = float(predictor.task.state.get("temperature", 1.0))
    result = {"ece_before": round(expected_calibration_error(probs, gold), 4),
              "ece_after": round(expected_calibration_error(after, gold), 4),
              "temperature": round(temperature * current, 4), "stored_temperature": current,
              "half_temperatures": [round(t * current, 4) for t in halves],
              "method": "temperature fitted on each half (even/odd rows) and applied to the other; bins of 1/15",
              "reliability_before": reliability(probs, gold), "reliability_after": reliability(after, gold)}
    if store:
        update_task_state(predictor.path, {"temperature": result["temperature"]})
        predictor.task.state["temperature"] = result["temperature"]
        result["stored_temperature"] = result["temperature"]
        say(f"stored temperature {result['temperature']:.3f} in {predictor.path}")
    return result


def _hardest(model: Any, records: list[dict[str, Any]], rows: list[dict[str, Any]], count: int, method: str | None,
             notes: list[str], say: Any) -> list[dict[str, Any]]:
    """The ``count`` highest-loss rows (none with loss 0), each with an explanation of its prediction where the task
    has one."""
    order = sorted((i for i in range(len(rows)) if rows[i]["loss"] > 0), key=lambda i: -rows[i]["loss"])[: max(0, count)]
    chosen = [{"index": i, **{k: rows[i][k] for k in ("text", "gold", "pred", "correct", "loss")}} for i in order]
    if not chosen or method is None:
        return chosen
    methods = [method] if method != "auto" else ["ig", "occlusion"] if model.torch_model is not None else ["occlusion"]
    say(f"explaining the {len(chosen)} hardest examples ({methods[0]})")
    for item in chosen:
        for name in list(methods):
            try:
                item["explanation"] = explain_record(model, records[item["index"]], name)
                break
            except ConfigError as err:  # e.g. a task without gradient inputs: try the next method, else say why
                methods.remove(name)
                if not methods:
                    notes.append(f"hardest examples are not explained: {err}")
                    return chosen
            except DataError as err:
                item["explanation_error"] = str(err)
                break
    return chosen


def write(analysis: dict[str, Any], rows: list[dict[str, Any]], folder: Path, html: str | Path | None = None) -> dict[str, str]:
    """Write ``analysis.json``, the PNGs and the HTML report into ``folder`` (the report to ``html`` if given);
    returns {name: path} of what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(analysis, rows, folder)
    report = Path(html) if html is not None else folder / "report.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(report_html(analysis, pngs, rows), encoding="utf-8")
    files = {**{k: str(v) for k, v in pngs.items()}, "report": str(report), "json": str(folder / "analysis.json")}
    (folder / "analysis.json").write_text(json.dumps({**analysis, "files": files}, indent=2, default=str), encoding="utf-8")
    return files


__all__ = ["DEFAULT_SLICES", "analyze", "artifact_name", "register_slicer", "write"]
