"""Case markers with a tiny NER budget: the first 3,000 CoNLL-2003 training sentences, one epoch, scored on
the first 1,000 dev sentences, with and without ``task.case_markers`` (everything else as bench/conll2003.py).

Run:  .venv/bin/python bench/conll_small_probe.py [--data-dir ../shared/data/conll2003]
Writes bench/results/conll_small_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import tunelab
    from tunelab.data import read_records

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--train-sentences", type=int, default=3000)
    parser.add_argument("--dev-sentences", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-conll-probe"))
    args = parser.parse_args()
    train = read_records(args.data_dir / "train.txt")
    train = train.subset(range(args.train_sentences))
    dev = read_records(args.data_dir / "valid.txt")
    dev = dev.subset(range(args.dev_sentences))
    report = {"command": "python bench/conll_small_probe.py " + " ".join(sys.argv[1:]),
              "train_sentences": args.train_sentences, "dev_sentences": args.dev_sentences, "epochs": 1}
    for markers in (False, True):
        cfg = {"task": {"name": "ner", "case_markers": markers}, "model": "minilm",
               "method": {"name": "full", "train_word_embeddings": True},
               "output_dir": str(args.work / f"markers_{markers}"), "data": {"max_length": 128},
               "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 42}}
        run = tunelab.fit(cfg, train=train, validation=dev)
        report["case_markers" if markers else "no_case_markers"] = {"dev_f1": run.metrics["f1"]}
        print(f"case_markers={markers}: dev F1 {run.metrics['f1']:.4f}", flush=True)
    out = ROOT / "bench" / "results" / "conll_small_probe.json"
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
