"""Few-shot and zero-shot SST-2: tunelab's strategies side by side with the SetFit library.

- zero-shot: SmolLM2-135M-Instruct scoring the verbalizers "negative"/"positive" with contextual
  calibration (tunelab ``strategy: zero_shot``), on the full dev set and on the evaluation sample.
- k = 8 and 64 labelled examples per class, 5 seeds; for each (k, seed) the same examples go to every
  system (sampled from the SST-2 train file with ``random.Random(seed)``):
    * tunelab ``setfit``   — contrastive MiniLM tuning + logistic-regression head (tunelab defaults);
    * tunelab ``few_shot`` — SmolLM2 in-context, 2 demonstrations per input (the most similar example of
      each label, by MiniLM embedding), calibrated;
    * SetFit 1.x library   — ``SetFitModel`` on the same MiniLM directory, its default TrainingArguments
      (batch 16, 1 epoch, default pair sampling).
- Every system is scored on the same fixed evaluation sample of the dev set (``--eval-size``, default
  200, stratified, seed 0): in-context prompting costs a forward pass per input and demonstration set,
  and the full 872 x 10 runs would take well over an hour on this machine.

Run:  .venv/bin/python bench/fewshot_sst2.py [--data ../shared/data/sst2] [--eval-size 200]
Needs the bench extra (``pip install -e '.[bench]'``: the setfit library).
Writes bench/results/fewshot_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]

import tunelab  # noqa: E402
from tunelab.data import read_records  # noqa: E402
from tunelab.models import resolve_model  # noqa: E402

LABELS = {"0": "negative", "1": "positive"}


def sample_k(rows: list[dict], k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for label in ("0", "1"):
        members = [r for r in rows if r["label"] == label]
        out += rng.sample(members, k)
    rng.shuffle(out)
    return out


def eval_sample(rows: list[dict], size: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for label in ("0", "1"):
        members = [r for r in rows if r["label"] == label]
        out += rng.sample(members, min(len(members), round(size * len(members) / len(rows))))
    return out


def accuracy(pred: list[str], rows: list[dict]) -> float:
    return sum(p == r["label"] for p, r in zip(pred, rows)) / len(rows)


def tunelab_setfit(train: list[dict], dev: list[dict], seed: int, work: Path) -> float:
    run = tunelab.fit(model="minilm", strategy="setfit", train=train, validation=dev, output_dir=str(work / "sf"),
                      data={"text_column": "sentence"}, train__seed=seed)
    return run.metrics["accuracy"]


def tunelab_icl(train: list[dict], dev: list[dict], seed: int, work: Path) -> float:
    run = tunelab.fit(model="smollm2", strategy="few_shot", train=train, validation=dev, output_dir=str(work / "icl"),
                      data={"text_column": "sentence"}, prompt={"verbalizers": LABELS, "demonstrations": 2},
                      train__seed=seed)
    return run.metrics["accuracy"]


def setfit_library(train: list[dict], dev: list[dict], seed: int, work: Path) -> float:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(str(resolve_model("minilm").path))
    args = TrainingArguments(batch_size=16, num_epochs=1, seed=seed, output_dir=str(work / "setfit_lib"),
                             report_to="none", save_strategy="no", logging_strategy="no")
    data = Dataset.from_list([{"text": r["sentence"], "label": int(r["label"])} for r in train])
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    pred = model.predict([r["sentence"] for r in dev])
    return accuracy([str(int(p)) for p in pred], dev)


SYSTEMS = {"tunelab_in_context": tunelab_icl, "tunelab_setfit": tunelab_setfit, "setfit": setfit_library}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--shots", default="8,64")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--work", default="/tmp/tunelab-bench-fewshot")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fewshot_sst2.json"))
    args = parser.parse_args()
    work = Path(args.work)
    train_rows = read_records(Path(args.data) / "train.tsv").rows
    dev_rows = read_records(Path(args.data) / "dev.tsv").rows
    dev = eval_sample(dev_rows, args.eval_size)
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.update({"command": "python bench/fewshot_sst2.py " + " ".join(sys.argv[1:]), "eval_size": len(dev),
                   "dev_size": len(dev_rows), "model_llm": "SmolLM2-135M-Instruct", "model_encoder": "all-MiniLM-L6-v2"})

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=2))

    if "zero_shot" not in result:
        started = time.perf_counter()
        run = tunelab.fit(model="smollm2", strategy="zero_shot", validation=dev_rows, output_dir=str(work / "zs"),
                          data={"text_column": "sentence"}, task={"name": "classification", "labels": ["0", "1"]},
                          prompt={"verbalizers": LABELS})
        sample_acc = run.live.evaluate(dev)["accuracy"]
        result["zero_shot"] = run.metrics["accuracy"]
        result["zero_shot_detail"] = {"full_dev_accuracy": run.metrics["accuracy"], "eval_sample_accuracy": sample_acc,
                                      "seconds": round(time.perf_counter() - started, 1)}
        print(f"zero-shot: full dev {run.metrics['accuracy']:.4f}, sample {sample_acc:.4f}", flush=True)
        save()

    shots = result.setdefault("shots", {})
    runs = result.setdefault("runs", {})
    for k in [int(s) for s in args.shots.split(",")]:
        for system in args.systems.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                key = f"{k}/{system}/{seed}"
                if key in runs:
                    continue
                started = time.perf_counter()
                acc = SYSTEMS[system](sample_k(train_rows, k, seed), dev, seed, work / key.replace("/", "_"))
                runs[key] = {"accuracy": acc, "seconds": round(time.perf_counter() - started, 1)}
                print(f"{k}-shot {system} seed {seed}: {acc:.4f} ({runs[key]['seconds']} s)", flush=True)
                save()
            accs = [runs[f"{k}/{system}/{s}"]["accuracy"] for s in args.seeds.split(",") if f"{k}/{system}/{s}" in runs]
            entry = shots.setdefault(str(k), {})
            entry[system] = statistics.mean(accs)
            entry[f"{system}_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
            entry[f"{system}_seeds"] = len(accs)
            save()
    for _k, entry in shots.items():
        ours = [name for name in ("tunelab_setfit", "tunelab_in_context") if name in entry]
        if ours:
            best = max(ours, key=lambda n: entry[n])
            entry["tunelab"] = entry[best]
            entry["tunelab_best_path"] = best
    save()
    print(json.dumps(result.get("shots"), indent=2))


if __name__ == "__main__":
    main()
