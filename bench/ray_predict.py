"""Ray Data prediction vs `tunelab predict --file` on one process: 100,000 lines, the same MiniLM artifact.

The artifact is a MiniLM classifier trained briefly on SST-2 (the speed and the line-for-line match are the point,
not its accuracy). The input is SST-2's training sentences, repeated to --lines lines, one per line. Both commands
run as a user would run them (fresh processes; the Ray run includes starting a local Ray and its actors):
  local  tunelab predict ART --file lines.txt --output local.jsonl                  (one process, all cores)
  ray    tunelab predict ART --file lines.txt --output ray.jsonl --backend ray --workers 2   (2 actors x 1 CPU)
Then every line is compared: row, label, and scores within 1e-5.

    python bench/ray_predict.py [--data-dir ../shared/data] [--lines 100000]

Writes bench/results/ray_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-ray-predict"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray_predict.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tunelab
    from tunelab.data import read_records

    args.work.mkdir(parents=True, exist_ok=True)
    train = read_records(args.data_dir / "sst2" / "train.tsv", format="tsv").rows
    artifact = args.work / "model" / "artifact"
    if not artifact.is_dir():
        tunelab.fit({"model": "minilm", "method": "full", "strategy": "finetune", "output_dir": str(args.work / "model"),
                     "data": {"text_column": "sentence", "max_length": 66},
                     "train": {"max_steps": 60, "batch_size": 32, "learning_rate": 1e-4, "eval_every": 10**9}},
                    train=train[:4000], validation=train[4000:4500])
    sentences = [r["sentence"].strip() for r in train if r["sentence"].strip()]
    lines = [sentences[i % len(sentences)] for i in range(args.lines)]
    source = args.work / "lines.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    report: dict = {"lines": args.lines, "cores": os.cpu_count(), "runs": {}}
    commands = {"local": [], "ray": ["--backend", "ray", "--workers", "2", "--cpus-per-worker", "1"]}
    for name, extra in commands.items():
        output = args.work / f"{name}.jsonl"
        output.unlink(missing_ok=True)
        (args.work / f".{name}.jsonl.partial").unlink(missing_ok=True)  # a stopped earlier run's (refused otherwise)
        cmd = [sys.executable, "-m", "tunelab", "predict", str(artifact), "--file", str(source), "--output", str(output),
               "--batch-size", "64", *extra]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        seconds = time.perf_counter() - started
        report["runs"][name] = {"seconds": round(seconds, 1), "sentences_per_s": round(args.lines / seconds, 1),
                                "command": "tunelab " + " ".join(cmd[3:]).replace(str(args.work), "WORK")}
        print(name, report["runs"][name], flush=True)
    local = (args.work / "local.jsonl").read_text(encoding="utf-8").splitlines()
    remote = (args.work / "ray.jsonl").read_text(encoding="utf-8").splitlines()
    same = 0
    for a, b in zip(local, remote):
        x, y = json.loads(a), json.loads(b)
        same += (x["row"] == y["row"] and x.get("label") == y.get("label")
                 and all(abs(x["scores"][k] - y["scores"][k]) <= 1e-5 for k in x.get("scores", {})))
    report["lines_written"] = {"local": len(local), "ray": len(remote)}
    report["lines_matching"] = same
    report["ray_vs_local_speed"] = round(report["runs"]["ray"]["sentences_per_s"] / report["runs"]["local"]["sentences_per_s"], 3)
    report["command"] = "python bench/ray_predict.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
