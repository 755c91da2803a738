"""Same results before and after a refactor: the SST-2 training benchmark on a 10,000-row prefix and the small
CoNLL-2003 probe, run at two commits on the same machine, one after the other (nothing else running).

Each commit is checked out into a temporary git worktree and imported from there (``PYTHONPATH``), with this
environment's packages. Accuracy must be identical with the same seed; speed is compared as a ratio.

Run:  .venv/bin/python bench/refactor_parity.py --before 9fa82d9 --after HEAD
Writes bench/results/refactor_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(commit: str, work: Path, data_root: Path) -> dict:
    tree = work / commit
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
        sst2_out = work / f"{commit}-sst2.json"
        subprocess.run([sys.executable, "bench/sst2_train.py", "--train-samples", "10000", "--systems", "tunelab",
                        "--data-dir", str(data_root / "sst2"), "--work", str(work / f"{commit}-sst2"),
                        "--out", str(sst2_out)], cwd=tree, env=env, check=True)
        subprocess.run([sys.executable, "bench/conll_small_probe.py", "--data-dir", str(data_root / "conll2003"),
                        "--work", str(work / f"{commit}-conll")], cwd=tree, env=env, check=True)
        sst2 = json.loads(sst2_out.read_text())["systems"]["tunelab"]
        conll = json.loads((tree / "bench" / "results" / "conll_small_probe.json").read_text())
        full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True,
                              check=True).stdout.strip()
        return {"sst2_dev_accuracy": sst2["dev_accuracy"], "sst2_samples_per_s": round(sst2["samples_per_s"], 2),
                "conll_probe_dev_f1": conll["no_case_markers"]["dev_f1"], "commit": full}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refactor_parity.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunelab-parity-") as tmp:
        report = {"before": measure(args.before, Path(tmp), args.data_root),
                  "after": measure(args.after, Path(tmp), args.data_root),
                  "command": "python bench/refactor_parity.py " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
