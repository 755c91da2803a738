"""Explanations on SST-2: faithfulness of each attribution method and calibration, one run.

The SST-2 MiniLM of ``bench/inference.py`` (full fine-tuning on 10,000 training sentences). Faithfulness on the
first ``--examples`` dev sentences: ERASER comprehensiveness (the drop in the predicted label's probability when
the top 20% attributed words are removed) and sufficiency (when only they are kept), for each method and for
random words (3 draws per sentence), with seconds per explanation. Calibration: ECE (15 bins) on the 872 dev
sentences before and after temperature scaling, cross-fitted on dev (the temperature for each half is fitted
on the other half, so no sentence is scored by a temperature fitted on it), plus the reliability diagram.

Run:  .venv/bin/python bench/explain.py [--artifact /tmp/tunelab-bench-inference/sst2/artifact] [--examples 200]
Writes bench/results/explain.json and bench/results/explain_reliability.png.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/tunelab-bench-inference/sst2/artifact"))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--methods", default="ig,gradxinput,attention,occlusion,lime")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "explain.json")
    args = parser.parse_args()
    if not (args.artifact / "manifest.json").is_file():
        sys.exit(f"{args.artifact} is not an artifact: run bench/inference.py first, or pass --artifact")
    import numpy as np

    import tunelab
    from tunelab.calibration import cross_fitted, expected_calibration_error, reliability
    from tunelab.data import read_records
    from tunelab.explain import faithfulness
    from tunelab.plots import reliability_png

    predictor = tunelab.Predictor.load(args.artifact)
    dev = read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows
    methods = [m for m in args.methods.split(",") if m]
    started = time.perf_counter()
    report = faithfulness(predictor.explain_model(), [{"sentence": r["sentence"]} for r in dev[: args.examples]],
                          methods, k=0.2, progress=lambda done: print(f"{done}/{args.examples}", end="\r", flush=True))
    print()
    report["faithfulness_seconds"] = round(time.perf_counter() - started, 1)

    labels = predictor.labels
    predictions = predictor.predict([{"sentence": r["sentence"]} for r in dev])
    dev_probs = np.array([[p["scores"][name] for name in labels] for p in predictions])
    dev_gold = np.array([labels.index(str(r["label"])) for r in dev])
    after, temperatures = cross_fitted(dev_probs, dev_gold)
    reliability_png(reliability(dev_probs, dev_gold), reliability(after, dev_gold),
                    args.out.with_name("explain_reliability.png"), title="SST-2 dev reliability")
    report.update(ece_before=round(expected_calibration_error(dev_probs, dev_gold), 4),
                  ece_after=round(expected_calibration_error(after, dev_gold), 4),
                  temperature=[round(t, 3) for t in temperatures],
                  calibration={"fitted_on": "each half of SST-2 dev (even/odd rows), applied to the other half",
                               "evaluated_on": "SST-2 dev", "bins": 15},
                  artifact=str(args.artifact), machine={"cores": os.cpu_count()},
                  command="python bench/explain.py " + " ".join(sys.argv[1:]))
    ig, chance = report["methods"].get("integrated_gradients") or report["methods"].get("ig"), report["random"]
    if ig:
        report["ig_vs_random_comprehensiveness"] = round(ig["comprehensiveness"] / max(chance["comprehensiveness"], 1e-9), 2)
    if "ig" in report["methods"]:
        report["methods"]["integrated_gradients"] = report["methods"].pop("ig")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
