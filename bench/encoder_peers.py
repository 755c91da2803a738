"""The Hugging Face Trainer recipe for each encoder benchmark of bench/config_runs.py, on the same data
split, MiniLM, method and hyperparameters as the tunelab config (read from that config, so they cannot
drift apart). Each recipe is what the transformers example scripts do for the task:

  chnsenticorp  run_glue style: AutoModelForSequenceClassification, dynamic padding, group_by_length
  resume_ner    run_ner style: AutoModelForTokenClassification, label on the first sub-token, truncation;
                LoRA through peft (the config's method), tags converted BMES -> BIO as tunelab does
  semeval2010   sequence classification of the marked sentence: the [E1] [/E1] [E2] [/E2] marker tokens
                added to the tokenizer, [CLS] pooling (the common baseline; transformers has no RE script)
  xquad_en      run_qa style: doc stride, offset mapping, n-best span post-processing (20 best, max answer
                length from the config); scored with SQuAD normalisation

Differences that stay, on purpose: the Trainer recipes evaluate once at the end (no keep-best on dev),
as the example scripts do; tunelab keeps its best dev checkpoint. Scores use the same scorer for both
systems (seqeval default mode for NER as run_ner computes it; the official SemEval-2010 definition).

Run:  .venv/bin/python bench/encoder_peers.py chnsenticorp resume_ner semeval2010 xquad_en
Adds an "hf_trainer" entry (and tunelab/HF ratios) to bench/results/<job>.json, next to the tunelab run
that bench/config_runs.py wrote.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from config_runs import JOBS, update_results, xquad_split  # noqa: E402

from common import align_first_subtoken, peak_rss_mb, run_in_subprocess, tags_from_prediction  # noqa: E402


def load_job_config(job: str, work: Path):
    import tunelab

    setup = xquad_split(work / "xquad") if job == "xquad_en" else []
    return tunelab.load_config(ROOT / "configs" / JOBS[job], [f"output_dir={work / job}", *setup])


def training_args(cfg, work: Path):
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(work / "hf_trainer"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, learning_rate=t.learning_rate, num_train_epochs=t.epochs,
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm, seed=t.seed, eval_strategy="no", save_strategy="no", logging_steps=100,
        report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length")


def train_and_time(trainer, n_rows: int, epochs: float) -> dict:
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"samples_per_s": n_rows * epochs / seconds, "train_seconds": seconds}


LIMIT: int | None = None  # --limit: a quick smoke run on the first rows of every split


def head(rows: list) -> list:
    return rows[:LIMIT] if LIMIT else rows


def split_like_tunelab(cfg, records, strata):
    from tunelab.data import split_validation

    return split_validation(records, cfg.data.validation_fraction, cfg.train.seed, strata)


# ---- ChnSentiCorp: sequence classification ----------------------------------------------------------
def run_chnsenticorp(cfg, work: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from tunelab.data import read_records
    from tunelab.models import resolve_model

    path = resolve_model(cfg.model).path
    d = cfg.data
    train, dev = head(read_records(d.train).rows), head(read_records(d.validation).rows)
    labels = sorted({str(r[d.label_column]) for r in train})
    tok = AutoTokenizer.from_pretrained(path)

    def dataset(rows):
        enc = tok([r[d.text_column] for r in rows], truncation=True, max_length=d.max_length)
        return Dataset.from_dict({**enc, "labels": [labels.index(str(r[d.label_column])) for r in rows]})

    train_ds, dev_ds = dataset(train), dataset(dev)
    torch.manual_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    trainer = Trainer(model=model, args=training_args(cfg, work), train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok))
    result = train_and_time(trainer, len(train_ds), cfg.train.epochs)
    pred = trainer.predict(dev_ds)  # label_ids come back in prediction order (group_by_length reorders)
    result["dev_accuracy"] = float(np.mean(np.argmax(pred.predictions, -1) == pred.label_ids))
    return result


# ---- Resume NER: token classification (run_ner), LoRA ---------------------------------------------
def run_resume_ner(cfg, work: Path) -> dict:
    import peft
    import torch
    from datasets import Dataset
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer

    from tunelab.data import read_records
    from tunelab.models import resolve_model
    from tunelab.tags import to_bio

    path = resolve_model(cfg.model).path
    scheme = cfg.task.tag_scheme

    def rows(source):
        out = []
        for r in head(read_records(source).rows):
            out.append({"tokens": r["tokens"], "tags": to_bio(r["tags"], scheme)[0]})
        return out

    train, dev, test = rows(cfg.data.train), rows(cfg.data.validation), rows(cfg.data.test)
    labels = sorted({t for r in train for t in r["tags"]}, key=lambda t: (t != "O", t[2:], t))
    label_to_id = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        return align_first_subtoken(tok, batch, label_to_id, cfg.data.max_length)

    def dataset(rs):
        return Dataset.from_list(rs).map(encode, batched=True, remove_columns=["tokens", "tags"])

    train_ds = dataset(train)
    torch.manual_seed(cfg.train.seed)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(labels),
                                                            id2label=dict(enumerate(labels)), label2id=label_to_id)
    m = cfg.method
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="TOKEN_CLS", r=m.r, lora_alpha=m.alpha,
                                                       lora_dropout=m.dropout, target_modules=m.target_modules))
    trainer = Trainer(model=model, args=training_args(cfg, work), train_dataset=train_ds,
                      data_collator=DataCollatorForTokenClassification(tok))
    result = train_and_time(trainer, len(train_ds), cfg.train.epochs)
    for split, rs in (("dev", dev), ("test", test)):
        gold_tags, pred_tags = tags_from_prediction(trainer.predict(dataset(rs)), labels)
        result[f"{split}_f1"] = f1_score(gold_tags, pred_tags)
    return result


# ---- SemEval-2010 Task 8: marked sentence classification --------------------------------------------
def run_semeval2010(cfg, work: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from tunelab.data import read_records
    from tunelab.metrics import relation_metrics
    from tunelab.models import resolve_model
    from tunelab.tasks.relation import MARKERS, mark_entities

    path = resolve_model(cfg.model).path
    d = cfg.data
    records = read_records(d.train)
    train, _ = split_like_tunelab(cfg, records, [str(r[d.label_column]).strip() for r in records.rows])
    test = read_records(d.test).rows
    labels = sorted({str(r[d.label_column]).strip() for r in train.rows})
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": MARKERS}, replace_extra_special_tokens=False)

    def dataset(rows):
        texts = [mark_entities(r[d.text_column], f"row {i}")[0] for i, r in enumerate(rows)]
        enc = tok(texts, truncation=True, max_length=d.max_length)
        return Dataset.from_dict({**enc, "labels": [labels.index(str(r[d.label_column]).strip()) for r in rows]})

    train_ds, test_ds = dataset(head(train.rows)), dataset(head(test))
    torch.manual_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    model.resize_token_embeddings(len(tok))
    trainer = Trainer(model=model, args=training_args(cfg, work), train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok))
    result = train_and_time(trainer, len(train_ds), cfg.train.epochs)
    pred = trainer.predict(test_ds)
    scores = relation_metrics([labels[i] for i in pred.label_ids],
                              [labels[i] for i in np.argmax(pred.predictions, -1)], cfg.task.negative_label)
    result["test_macro_f1"] = scores["macro_f1"]
    result["train_sentences"] = len(train_ds)
    return result


# ---- XQuAD-en: extractive QA (run_qa) ---------------------------------------------------------------
def run_xquad_en(cfg, work: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, default_data_collator

    from tunelab.data import read_records
    from tunelab.models import resolve_model
    from tunelab.tasks.qa import flatten_squad, squad_scores

    path = resolve_model(cfg.model).path
    articles = read_records(cfg.data.train)
    train_articles, _ = split_like_tunelab(cfg, articles, None)  # the same held-out articles as tunelab
    train = head(flatten_squad(train_articles).rows)
    test = head(flatten_squad(read_records(cfg.data.test)).rows)
    tok = AutoTokenizer.from_pretrained(path)
    max_len, stride = cfg.data.max_length, cfg.task.doc_stride

    def windows(rows):
        return tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
                   max_length=max_len, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                   padding="max_length")

    enc = windows(train)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        row = train[enc["overflow_to_sample_mapping"][i]]
        answer = row["answers"][0]
        a_start = answer["answer_start"]
        a_end = a_start + len(answer["text"])
        seq = enc.sequence_ids(i)
        ctx = [k for k, s in enumerate(seq) if s == 1]
        if not (offsets[ctx[0]][0] <= a_start and offsets[ctx[-1]][1] >= a_end):
            starts.append(0)
            ends.append(0)  # the answer is not in this window: point at [CLS]
            continue
        s = ctx[0]
        while s <= ctx[-1] and offsets[s][0] <= a_start:
            s += 1
        e = ctx[-1]
        while e >= ctx[0] and offsets[e][1] >= a_end:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    train_ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                  "token_type_ids": enc["token_type_ids"], "start_positions": starts,
                                  "end_positions": ends})
    torch.manual_seed(cfg.train.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    args = training_args(cfg, work)
    args.train_sampling_strategy = "random"  # run_qa pads every window to max_length: nothing to group
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator)
    result = train_and_time(trainer, len(train_ds), cfg.train.epochs)

    test_enc = windows(test)
    test_ds = Dataset.from_dict({k: test_enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    pred = trainer.predict(test_ds)
    start_logits, end_logits = pred.predictions
    best = collections.defaultdict(lambda: (-1e9, ""))
    n_best, max_answer = 20, cfg.task.max_answer_length
    for i, offsets in enumerate(test_enc["offset_mapping"]):
        q = test_enc["overflow_to_sample_mapping"][i]
        context = test[q]["context"]
        seq = test_enc.sequence_ids(i)
        s_idx = np.argsort(start_logits[i])[-1: -n_best - 1: -1]
        e_idx = np.argsort(end_logits[i])[-1: -n_best - 1: -1]
        for s in s_idx:
            for e in e_idx:
                if seq[s] != 1 or seq[e] != 1 or e < s or e - s + 1 > max_answer:
                    continue
                score = start_logits[i][s] + end_logits[i][e]
                if score > best[q][0]:
                    best[q] = (score, context[offsets[s][0]: offsets[e][1]])
    em, f1 = zip(*(squad_scores(best[q][1], [a["text"] for a in row["answers"]]) for q, row in enumerate(test)))
    result.update({"exact_match": float(np.mean(em)), "f1": float(np.mean(f1)),
                   "train_questions": len(train), "train_windows": len(train_ds),
                   "samples_are": "windows (features) per second"})
    return result


RECIPES = {"chnsenticorp": run_chnsenticorp, "resume_ner": run_resume_ner, "semeval2010": run_semeval2010,
           "xquad_en": run_xquad_en}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="*", default=list(RECIPES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-peers"))
    parser.add_argument("--limit", type=int, help="smoke run: first N rows of each split (results not written)")
    parser.add_argument("--run-system", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global LIMIT
    LIMIT = args.limit
    if args.run_system:
        cfg = load_job_config(args.run_system, args.work)
        result = RECIPES[args.run_system](cfg, args.work)
        result["peak_rss_mb"] = peak_rss_mb()
        args.result.write_text(json.dumps(result))
        return
    unknown = set(args.jobs) - set(RECIPES)
    if unknown:
        sys.exit(f"unknown jobs {sorted(unknown)}; choose from {sorted(RECIPES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    for job in args.jobs:
        hf = run_in_subprocess(__file__, job, args.work, ["--limit", str(args.limit)] if args.limit else [])
        if args.limit:
            continue
        hf = {k: round(v, 4) if isinstance(v, float) else v for k, v in hf.items()}
        hf["command"] = f"python bench/encoder_peers.py {job}"
        update_results(job, {"hf_trainer": hf})
        print(json.dumps({job: hf}, indent=2), flush=True)


if __name__ == "__main__":
    main()
