"""Benchmarks that are one tunelab config each: the config in configs/ is the recipe (bench/encoder_peers.py
runs the HF Trainer recipe of each on the same split and hyperparameters).

  resume_ner     configs/resume_ner_lora.yaml          -> bench/results/resume_ner.json   (dev and test entity F1)
  chnsenticorp   configs/chnsenticorp.yaml             -> bench/results/chnsenticorp.json (dev accuracy)
  semeval2010    configs/semeval2010_relation.yaml     -> bench/results/semeval2010.json  (test official macro-F1)
  xquad_en       configs/xquad_en_qa.yaml              -> bench/results/xquad_en.json     (test EM / F1)

XQuAD-en has no training split: it is split by article, fixed — articles whose index i (in file order)
has i % 3 == 2 are the test set (16 articles), the other 32 train — a small-data setting (~800 questions).

Run:  .venv/bin/python bench/config_runs.py resume_ner chnsenticorp [key=value overrides]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import peak_rss_mb  # noqa: E402

JOBS = {"resume_ner": "resume_ner_lora.yaml", "chnsenticorp": "chnsenticorp.yaml",
        "semeval2010": "semeval2010_relation.yaml", "xquad_en": "xquad_en_qa.yaml"}
DATA = ROOT.parent / "shared" / "data"
# Each job's headline numbers -> the metric they come from (None: the dev-set number of the same name).
HEADLINE = {"semeval2010": {"test_macro_f1": "macro_f1"}, "xquad_en": {"exact_match": "exact_match", "f1": "f1"},
            "resume_ner": {"dev_f1": None, "test_f1": "f1"}, "chnsenticorp": {"dev_accuracy": None}}


def xquad_split(work: Path) -> list[str]:
    """Write the fixed by-article split of XQuAD-en; return the data overrides that use it."""
    source = json.loads((DATA / "xquad_en" / "xquad.en.json").read_text(encoding="utf-8"))
    work.mkdir(parents=True, exist_ok=True)
    parts = {"train": [a for i, a in enumerate(source["data"]) if i % 3 != 2],
             "test": [a for i, a in enumerate(source["data"]) if i % 3 == 2]}
    for name, articles in parts.items():
        (work / f"xquad_en_{name}.json").write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return [f"data.train={work / 'xquad_en_train.json'}", f"data.test={work / 'xquad_en_test.json'}"]


def run_job(job: str, overrides: list[str]) -> dict:
    import tunelab
    from tunelab.metrics import scalar_metrics

    setup = xquad_split(Path("/tmp/tunelab-bench-xquad")) if job == "xquad_en" else []
    cfg = tunelab.load_config(ROOT / "configs" / JOBS[job], [f"output_dir=/tmp/tunelab-bench-{job}", *setup, *overrides])
    run = tunelab.fit(cfg)
    result = {"config": f"configs/{JOBS[job]}", "overrides": overrides, "method": cfg.method.name,
              "epochs": cfg.train.epochs, "dev": scalar_metrics(run.metrics),
              "test": scalar_metrics(run.test_metrics) if run.test_metrics else None,
              "samples_per_s": round(run.train.samples_per_s, 2), "train_seconds": round(run.train.train_seconds, 1),
              "peak_rss_mb": round(peak_rss_mb(), 1),
              "command": "python bench/config_runs.py " + " ".join([job, *overrides])}
    for split in ("dev", "test"):
        metrics = run.metrics if split == "dev" else run.test_metrics
        if metrics and "per_type" in metrics:
            result[f"{split}_per_type_f1"] = {k: round(v["f1"], 4) for k, v in metrics["per_type"].items()}
    tunelab_numbers = {}
    for key, metric in HEADLINE[job].items():
        if metric is None:  # a dev number
            tunelab_numbers[key] = result["dev"][key.removeprefix("dev_")]
        else:
            tunelab_numbers[key] = result["test"][metric]
    result = {"tunelab": {**tunelab_numbers, **result}}
    if job == "xquad_en":
        result["split"] = "by article: test = articles with index % 3 == 2 (16 of 48); small-data setting"
    return result


def update_results(job: str, entries: dict) -> dict:
    """Merge ``entries`` (a "tunelab" or "hf_trainer" run) into bench/results/<job>.json, keeping the other
    system's run, and recompute the tunelab-vs-recipe comparison from whatever both sides hold now."""
    out = ROOT / "bench" / "results" / f"{job}.json"
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update(entries)
    tl, hf = report.get("tunelab", {}), report.get("hf_trainer", {})
    if "samples_per_s" in tl and "samples_per_s" in hf:
        report["throughput_ratio"] = round(tl["samples_per_s"] / hf["samples_per_s"], 2)
    for key in HEADLINE[job]:
        if key in tl and key in hf:
            report[f"{key}_difference_points"] = round(100 * (tl[key] - hf[key]), 2)
    out.write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    jobs = [a for a in sys.argv[1:] if "=" not in a]
    overrides = [a for a in sys.argv[1:] if "=" in a]
    unknown = set(jobs) - set(JOBS)
    if not jobs or unknown:
        sys.exit(f"usage: config_runs.py {{{','.join(JOBS)}}} ... [key=value]; unknown: {sorted(unknown)}")
    for job in jobs:
        result = run_job(job, overrides)
        update_results(job, result)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
