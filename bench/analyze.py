"""tunelab analyze on a real model: the SST-2 MiniLM (bench/inference.py's recipe) on the 872 SST-2 dev sentences.

Measures how long the whole report takes (prediction, representations, PCA and t-SNE maps, calibration, slices,
the ten hardest examples explained by integrated gradients) and writes the report's headline figures, plus the
README's screenshot of the report (maps and calibration) taken in Debian's Chromium.

    python bench/analyze.py [--artifact /tmp/tunelab-bench-inference/sst2/artifact] [--data-dir ../shared/data]

Writes bench/results/analysis.json and docs/analysis-report.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def screenshot(report: Path, path: Path) -> None:
    """The top of the report (title, metrics, maps, calibration) as the README shows it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/lib/chromium/chromium")
        page = browser.new_page(viewport={"width": 1300, "height": 1150})
        page.goto(report.resolve().as_uri())
        page.screenshot(path=str(path))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/tunelab-bench-inference/sst2/artifact"))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-analysis"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "analysis.json")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "analysis-report.png")
    args = parser.parse_args()
    if not (args.artifact / "manifest.json").is_file():
        sys.exit(f"{args.artifact} is not an artifact: run bench/inference.py first, or pass --artifact")
    import tunelab
    from tunelab.data import read_records

    dev = read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv")
    started = time.perf_counter()
    result = tunelab.analyze(args.artifact, dev, out=args.work, name="sst2-minilm")
    seconds = time.perf_counter() - started
    screenshot(Path(result["files"]["report"]), args.screenshot)
    report = {
        "examples": len(dev), "seconds": round(seconds, 1), "ms_per_example": round(1000 * seconds / len(dev), 2),
        "metrics": result["metrics"],
        "calibration": {k: v for k, v in result["calibration"].items() if not k.startswith("reliability")},
        "slices": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in result["slices"]],
        "most_confused": next(s["table"] for s in result["sections"] if s["title"] == "Most confused pairs"),
        "maps": sorted(result["maps"]), "hardest_explained_by": result["hardest"][0]["explanation"]["method"],
        "artifact": str(args.artifact), "machine": {"cores": os.cpu_count()},
        "command": "python bench/analyze.py " + " ".join(sys.argv[1:]),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("seconds", "metrics", "calibration")}, indent=2))


if __name__ == "__main__":
    main()
