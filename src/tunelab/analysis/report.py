"""The analysis as files: PNG plots, and one self-contained HTML report (plots embedded as data, maps as inline
SVG with the text on hover; no CDN, no network, opens from disk).

Example:
    >>> html = report_html({"title": "t", "meta": {}, "metrics": {"accuracy": 1.0}, "notes": [], "maps": {},
    ...                     "calibration": None, "slices": [], "sections": [], "hardest": []}, {})
    >>> html.startswith("<!doctype html>")
    True
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..explain import HEATMAP_CSS, heatmap_html
from ..plots import bars_png, confusion_matrix_png, map_png, per_label_f1_png, reliability_png

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]
NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


# ---- PNGs ---------------------------------------------------------------------------------------------------
def _confusion(plot: dict[str, Any], path: Path, title: str) -> Path:
    return confusion_matrix_png(plot["matrix"], plot["labels"], path, title=title)


def _per_label(plot: dict[str, Any], path: Path, title: str) -> Path:
    return per_label_f1_png(plot["report"], path, title=title)


def _bars(plot: dict[str, Any], path: Path, title: str) -> Path:
    return bars_png(plot["values"], path, title, plot.get("xlabel", ""))


SECTION_PLOTS: dict[str, Callable[[dict[str, Any], Path, str], Path]] = {
    "confusion": _confusion, "per_label": _per_label, "bars": _bars}


def group(row: dict[str, Any], key: str) -> str:
    """A row's colour group on the maps: its gold (``group_gold``) or predicted (``group_pred``) label where the
    task has labels, else right/wrong (or one group when the task has no right or wrong, e.g. generation)."""
    if key in row:
        return str(row[key])
    return {True: "right", False: "wrong"}.get(row["correct"], "all")


def slug(title: str) -> str:
    """A file name from a section title."""
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")[:60] or "plot"


def write_plots(analysis: dict[str, Any], rows: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    """Every plot of the analysis as a PNG in ``folder``; returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    gold, pred = [group(r, "group_gold") for r in rows], [group(r, "group_pred") for r in rows]
    wrong = [r["correct"] is False for r in rows]
    for name, points in analysis["maps"].items():
        files[f"map_{name}"] = map_png(np.asarray(points), gold, pred, wrong, folder / f"map_{name}.png", NAMES[name])
    calibration = analysis.get("calibration")
    if calibration:
        files["reliability"] = reliability_png(calibration["reliability_before"], calibration["reliability_after"],
                                               folder / "reliability.png", title="reliability")
    if analysis["slices"]:
        first = next(k for k in analysis["slices"][0] if k not in ("slice", "group", "count"))
        values = {f"{s['group']} (n={s['count']})": s[first] for s in analysis["slices"]}
        files["slices"] = bars_png(values, folder / "slices.png", f"{first} by slice", first)
    for section in analysis["sections"]:
        plot = section.get("plot")
        if plot:
            name = slug(section["title"])
            files[name] = SECTION_PLOTS[plot["kind"]](plot, folder / f"{name}.png", section["title"])
    return files


# ---- HTML ---------------------------------------------------------------------------------------------------
def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else escape(str(value))


def table_html(rows: list[dict[str, Any]]) -> str:
    """A list of dicts as an HTML table (the first row's keys as columns); every value escaped."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def map_svg(name: str, points: list[list[float]], rows: list[dict[str, Any]], size: int = 380) -> str:
    """One projection as an inline SVG: a circle per record coloured by gold group (``data-pred`` holds the
    predicted group's colour for the page's switch), wrong ones ringed; hover shows the text, gold and prediction."""
    xy = np.asarray(points, dtype=float)
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    scaled = 10 + (xy - low) / span * (size - 20)
    groups = sorted({group(r, "group_gold") for r in rows} | {group(r, "group_pred") for r in rows})
    colour = {g: PALETTE[k % len(PALETTE)] for k, g in enumerate(groups)}
    dots = []
    for (x, y), r in zip(scaled, rows):
        g, p = group(r, "group_gold"), group(r, "group_pred")
        ring = ' stroke="#111" stroke-width="1.5" class="dot wrong"' if r["correct"] is False else ' class="dot"'
        tip = f"{r['text'][:300]}\ngold: {r['gold'][:120]}\npredicted: {r['pred'][:120]}"
        dots.append(f'<circle cx="{x:.1f}" cy="{size - y:.1f}" r="4" fill="{colour[g]}" data-gold="{colour[g]}" '
                    f'data-pred="{colour[p]}"{ring}><title>{escape(tip)}</title></circle>')
    legend = "".join(f'<span class="key"><i style="background:{colour[g]}"></i>{escape(g)}</span>' for g in groups)
    return (f'<figure class="map"><figcaption>{NAMES.get(name, name)}</figcaption>'
            f'<svg role="img" aria-label="{NAMES.get(name, name)} map of the data" viewBox="0 0 {size} {size}" '
            f'width="{size}" height="{size}">{"".join(dots)}</svg><div class="legend">{legend}</div></figure>')


SCRIPT = """
var colour = document.getElementById('colour'), onlyWrong = document.getElementById('only-wrong');
if (colour) colour.addEventListener('change', function (e) {
  document.querySelectorAll('circle.dot').forEach(function (c) { c.setAttribute('fill', c.dataset[e.target.value]); });
});
if (onlyWrong) onlyWrong.addEventListener('change', function (e) {
  document.querySelectorAll('circle.dot:not(.wrong)').forEach(function (c) {
    c.style.display = e.target.checked ? 'none' : '';
  });
});
"""

STYLE = ("body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem;color:#1d2430}"
         "table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}td,th{border:1px solid #d5dae1;"
         "padding:.25rem .5rem;text-align:left;vertical-align:top;max-width:32rem}th{background:#f3f5f8}"
         "img{max-width:100%;height:auto;display:block;margin:.5rem 0}.maps{display:flex;flex-wrap:wrap;gap:1rem}"
         "figure.map{margin:0}svg{border:1px solid #d5dae1;background:#fff;max-width:100%;height:auto}"
         ".legend{font-size:.8rem;max-width:380px}.key{margin-right:.6rem;white-space:nowrap}.key i{display:inline-block;"
         "width:.7rem;height:.7rem;margin-right:.2rem;border-radius:50%}.note{color:#6b4e00}"
         "section{margin:2rem 0}.hard{border-top:1px solid #d5dae1;padding:.5rem 0}" + HEATMAP_CSS)


def report_html(analysis: dict[str, Any], files: dict[str, Path], rows: list[dict[str, Any]] | None = None) -> str:
    """The whole analysis as one HTML page (PNG files embedded; maps drawn from ``rows``)."""
    parts = [f"<h1>{escape(analysis['title'])}</h1>",
             table_html([{"": k, "value": v} for k, v in analysis["meta"].items()]),
             "<section><h2>Metrics</h2>" + table_html([{"metric": k, "value": v} for k, v in analysis["metrics"].items()])
             + "</section>"]
    parts += [f"<p class=note>{escape(n)}</p>" for n in analysis["notes"]]
    if analysis["maps"] and rows is not None:
        svgs = "".join(map_svg(name, points, rows) for name, points in analysis["maps"].items())
        parts.append("<section id=maps><h2>Maps of the data</h2><p>Each dot is a record, placed by the model's "
                     "sentence representation; hover for its text. Ringed dots are wrong predictions.</p>"
                     "<label>Colour by <select id=colour><option value=gold>gold</option><option value=pred>prediction"
                     "</option></select></label> <label><input type=checkbox id=only-wrong> only wrong</label>"
                     f"<div class=maps>{svgs}</div></section>")
    calibration = analysis.get("calibration")
    if calibration:
        facts = {k: v for k, v in calibration.items() if not k.startswith("reliability")}
        parts.append("<section id=calibration><h2>Calibration</h2>" + table_html([{"": k, "value": v}
                                                                                   for k, v in facts.items()])
                     + _img(files.get("reliability"), "reliability diagram") + "</section>")
    if analysis["slices"]:
        parts.append("<section id=slices><h2>Slices</h2>" + _img(files.get("slices"), "metric by slice")
                     + table_html(analysis["slices"]) + "</section>")
    for section in analysis["sections"]:
        note = f"<p class=note>{escape(section['note'])}</p>" if section.get("note") else ""
        parts.append(f"<section><h2>{escape(section['title'])}</h2>{note}"
                     + _img(files.get(slug(section["title"])) if section.get("plot") else None, section["title"])
                     + table_html(section["table"]) + "</section>")
    if analysis["hardest"]:
        items = []
        for h in analysis["hardest"]:
            explanation = h.get("explanation")
            body = (heatmap_html(explanation) + f"<small>why {escape(explanation['target'])} "
                    f"({escape(explanation['method'])})</small>") if explanation else f"<p>{escape(h['text'])}</p>"
            items.append(f"<div class=hard><b>gold:</b> {escape(h['gold'])} · <b>predicted:</b> {escape(h['pred'])} · "
                         f"loss {h['loss']:.3f}{body}</div>")
        parts.append("<section id=hardest><h2>Hardest examples</h2><p>Highest loss first. Red words pushed the model "
                     "towards its prediction, blue ones away from it.</p>" + "".join(items) + "</section>")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{escape(analysis['title'])}</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            f"<script>{SCRIPT}</script></body></html>")


__all__ = ["SECTION_PLOTS", "map_svg", "report_html", "table_html", "write_plots"]
