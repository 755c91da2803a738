"""Where Predictor.predict spends its time on SST-2 dev: encoding, the model's forward passes, decoding.

Run:  .venv/bin/python bench/predict_breakdown.py --artifact ARTIFACT [--data-dir ../shared/data]
(the README's figures used the SST-2 artifact bench/inference.py trains). Writes bench/results/predict_breakdown.json.
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
    import tunelab
    from tunelab.data import read_records

    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    texts = [r["sentence"] for r in read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows]
    p = tunelab.Predictor.load(args.artifact)
    records = p.as_records(texts)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        features = p.task.encode(records, p.processor, with_labels=False)
        t1 = time.perf_counter()
        outputs = p.task.model_outputs(p.model, p.processor, features, 64)
        t2 = time.perf_counter()
        p.task.decode(outputs, features)
        t3 = time.perf_counter()
        runs.append({"encode_s": t1 - t0, "model_s": t2 - t1, "decode_s": t3 - t2})
    best = min(runs, key=lambda r: sum(r.values()))
    total = sum(best.values())
    report = {"command": "python bench/predict_breakdown.py " + " ".join(sys.argv[1:]), "sentences": len(texts),
              **{k: round(v, 4) for k, v in best.items()}, "model_share": round(best["model_s"] / total, 4)}
    (ROOT / "bench" / "results" / "predict_breakdown.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
