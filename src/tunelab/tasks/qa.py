"""Extractive question answering (SQuAD style).

Input: SQuAD-format JSON (``data`` → ``paragraphs`` → ``qas``) or flat records with ``question``,
``context`` and ``answers`` (``{"text": [...], "answer_start": [...]}`` or a list of
``{"text", "answer_start"}``). Long contexts are cut into windows of ``data.max_length`` tokens that overlap
by ``task.doc_stride``; offset mappings tie tokens back to characters. Decoding takes the ``task.n_best``
best start and end positions in every window, keeps spans inside the context no longer than
``task.max_answer_length`` tokens, and returns the best over all windows; with
``task.allow_unanswerable`` (SQuAD 2.0) the empty answer wins when its score is higher.

Metrics: exact match and F1 with SQuAD answer normalisation (lower case, no punctuation, no articles,
single spaces), the best over the gold answers.
"""

from __future__ import annotations

import collections
import re
import string
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..config import Config, DataConfig, TaskOptions
from ..data import Records
from ..errors import ConfigError, DataError
from ..probabilities import softmax
from .base import Task
from .common import pad_batch


def flatten_squad(records: Records) -> Records:
    """SQuAD articles (title + paragraphs) -> one record per question; flat records pass through."""
    if not records.rows or "paragraphs" not in records.rows[0]:
        return records
    rows, origin = [], []
    for i, article in enumerate(records.rows):
        for p, para in enumerate(article.get("paragraphs", [])):
            for q in para.get("qas", []):
                rows.append({"id": q.get("id"), "title": article.get("title", ""), "question": q.get("question"),
                             "context": para.get("context"), "answers": q.get("answers", []),
                             "is_impossible": q.get("is_impossible", False),
                             "_where": f"{records.source} article {i} paragraph {p} question {q.get('id')!r}"})
                origin.append(i)
    return Records(rows, records.source, None, ["id", "title", "question", "context", "answers"])


QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")


def question_word(question: str) -> str:
    """The question's wh-word (the first one in it; ``how many``/``how much`` kept apart), else ``other``."""
    words = re.findall(r"[a-z]+", question.lower())
    for k, word in enumerate(words):
        if word in QUESTION_WORDS:
            follow = words[k + 1] if k + 1 < len(words) else ""
            return f"how {follow}" if word == "how" and follow in ("many", "much") else word
    return "other"


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against its gold answers ([''] for unanswerable)."""
    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        if not p or not g:
            return float(p == g)
        common = sum((collections.Counter(p) & collections.Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    golds = golds or [""]
    return (max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds),
            max(f1(prediction, g) for g in golds))


class QaOptions(TaskOptions):
    """``task:`` for extractive question answering."""

    doc_stride: int | None = Field(None, ge=0, description="tokens shared by consecutive windows of a long context "
                                   "(default: a quarter of data.max_length)")
    max_answer_length: int = Field(30, ge=1, description="longest answer in tokens")
    n_best: int = Field(20, ge=1, description="start/end candidates per window")
    allow_unanswerable: bool = Field(False, description="SQuAD 2.0 style questions without an answer")


class QaColumns(DataConfig):
    """``data:`` for extractive question answering."""

    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"


class AnswerPrediction(BaseModel):
    """One answer: its text and character span in the context (empty and None when unanswerable)."""

    answer: str
    start: int | None
    end: int | None
    score: float
    id: Any = None


class QaTask(Task):
    """Extractive question answering (see the module docstring)."""

    Options = QaOptions
    Columns = QaColumns
    Prediction = AnswerPrediction
    peft_task_type = "QUESTION_ANS"
    per_token = True
    primary_metric = ("f1", True)

    def input_columns(self) -> list[str]:
        return [self.state["question_column"], self.state["context_column"]]

    def as_records(self, inputs: Any) -> Records:
        """Inputs as Records, SQuAD articles flattened to one record per question."""
        return flatten_squad(super().as_records(inputs))

    # ---- explanations: the answer's start and end, over question and context ------------------------
    def explain_column(self, record: dict[str, Any]) -> str:
        """The context column (the explained text is the question, a blank line, then the context)."""
        return self.state["context_column"]

    def explain_text(self, record: dict[str, Any]) -> str:
        """The question, a blank line and the context: both are attributed."""
        ex = self._examples(Records([record], "input", None, list(record)), False)[0]
        return f"{ex['question']}\n\n{ex['context']}"

    def explain_targets(self, prediction: dict[str, Any]) -> list[str]:
        """The predicted answer's ``start`` and ``end`` (each explained on its own)."""
        return ["start", "end"]

    def explain_inputs(self, tokenizer: Any, record: dict[str, Any], target: str, prediction: dict[str, Any]) -> Any:
        """The window ``encode`` makes that holds the predicted answer, each token's span in question + context,
        and the probability of the answer's start (or end) token; no answer: the [CLS] position's."""
        from .base import ExplainInputs

        s = self.state
        ex = self._examples(Records([record], "input", None, list(record)), False)[0]
        shift = len(ex["question"]) + 2
        enc = tokenizer(ex["question"], ex["context"], truncation="only_second", max_length=s["max_length"],
                        stride=s["doc_stride"], return_overflowing_tokens=True, return_offsets_mapping=True)
        window, token = 0, 0
        if prediction.get("start") is not None:
            a, b = prediction["start"], prediction["end"]
            for k in range(len(enc["input_ids"])):
                context = [(j, o) for j, (sid, o) in enumerate(zip(enc.sequence_ids(k), enc["offset_mapping"][k]))
                           if sid == 1]
                if context and context[0][1][0] <= a and b <= context[-1][1][1]:
                    first = next(j for j, o in context if o[1] > a)
                    last = next(j for j, o in reversed(context) if o[0] < b)
                    window, token = k, first if target == "start" else last
                    break
        spans: list[tuple[int, int] | None] = []
        for sid, (x, y) in zip(enc.sequence_ids(window), enc["offset_mapping"][window]):
            spans.append(None if sid is None or y <= x else (x, y) if sid == 0 else (x + shift, y + shift))
        feature = {"input_ids": enc["input_ids"][window]}
        if "token_type_ids" in enc:
            feature["token_type_ids"] = enc["token_type_ids"][window]
        batch = self.collate(tokenizer)([feature])

        def score(outputs: Any) -> torch.Tensor:
            logits = outputs.start_logits if target == "start" else outputs.end_logits
            return torch.softmax(logits.float(), dim=-1)[:, token]

        return ExplainInputs(batch, spans, score, [token])

    # ---- error analysis ---------------------------------------------------------------------------
    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per question: the gold answers, the predicted one, SQuAD exact match and F1 (loss: 1 - F1), its
        question word and the context length in words."""
        rows = []
        for ex, prediction in zip(self._examples(records, True), predictions):
            golds = [a for a, _ in ex["answers"]]
            em, f1 = squad_scores(prediction["answer"], golds)
            rows.append({"text": ex["question"], "text_pair": ex["context"], "gold": " | ".join(golds) or "(no answer)",
                         "pred": prediction["answer"] or "(no answer)", "correct": bool(em), "loss": 1.0 - f1,
                         "exact_match": em, "f1": f1, "question_word": question_word(ex["question"]),
                         "context_words": len(ex["context"].split())})
        return rows

    def analysis_metrics(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """SQuAD exact match and F1 over the rows."""
        return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in ("exact_match", "f1")}

    def analysis_sections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """EM/F1 by question word and by context length (quartiles of the data's word counts)."""
        from ..metrics import length_buckets

        by_word: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for row in rows:
            by_word[row["question_word"]].append(row)
        buckets = length_buckets([r["context_words"] for r in rows])
        by_length: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for row, bucket in zip(rows, buckets):
            by_length[bucket].append(row)
        sections = []
        for title, groups, key in (("By question word", by_word, "question word"),
                                   ("By context length (words)", by_length, "context length")):
            table = [{key: name, "count": len(group), **self.analysis_metrics(group)}
                     for name, group in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
            sections.append({"title": title, "table": table,
                             "plot": {"kind": "bars", "values": {t[key]: t["f1"] for t in table}, "xlabel": "F1"}})
        return sections

    def export_example(self) -> list[dict[str, Any]]:
        q, c = self.state["question_column"], self.state["context_column"]
        return [{q: "What colour is the sky?", c: "The sky is blue on a clear day, and grey when it rains."},
                {q: "Who wrote it?", c: "It was written by Ann in 1990."}]

    def input_row(self, item: Any) -> dict[str, Any]:
        raise DataError("this model takes records, not plain texts: pass dicts such as "
                        "{'question': ..., 'context': ...}")

    @classmethod
    def from_training_data(cls, cfg: Config, train: Records) -> QaTask:
        t, d = cfg.task, cfg.data
        stride = t.doc_stride if t.doc_stride is not None else d.max_length // 4
        if stride >= d.max_length // 2:
            raise ConfigError(f"task.doc_stride ({stride}) must be less than half of data.max_length ({d.max_length})")
        return cls({"question_column": d.question_column, "context_column": d.context_column,
                    "answers_column": d.answers_column, "max_length": d.max_length, "doc_stride": stride,
                    "max_answer_length": t.max_answer_length, "n_best": t.n_best,
                    "allow_unanswerable": t.allow_unanswerable})

    # ---- records -> examples -> windows ----------------------------------------------------------
    def _examples(self, records: Records, with_labels: bool) -> list[dict[str, Any]]:
        s = self.state
        flat = flatten_squad(records)
        out = []
        for i, row in enumerate(flat.rows):
            where = row.get("_where") or flat.where(i)
            question, context = row.get(s["question_column"]), row.get(s["context_column"])
            if not isinstance(question, str) or not question.strip():
                raise DataError(f"{where}, field {s['question_column']!r}: empty question")
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{where}, field {s['context_column']!r}: empty context")
            ex = {"question": question.strip(), "context": context, "id": row.get("id", i)}
            if with_labels:
                ex["answers"] = self._answers(row.get(s["answers_column"]), context, where, bool(row.get("is_impossible")))
            out.append(ex)
        return out

    def _answers(self, raw: Any, context: str, where: str, impossible: bool) -> list[tuple[str, int]]:
        field = f"{where}, field {self.state['answers_column']!r}"
        if isinstance(raw, dict):
            texts, starts = raw.get("text", []), raw.get("answer_start", [])
            if len(texts) != len(starts):
                raise DataError(f"{field}: {len(texts)} answer texts but {len(starts)} answer_start values")
            raw = [{"text": t, "answer_start": a} for t, a in zip(texts, starts)]
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise DataError(f"{field}: expected a list of {{text, answer_start}} or {{text: [...], answer_start: [...]}}")
        answers = []
        for a in raw:
            try:
                text, start = str(a["text"]), int(a["answer_start"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{field}: answer {a!r} needs 'text' and an integer 'answer_start'") from None
            if not text:
                raise DataError(f"{field}: empty answer text (for an unanswerable question give no answers)")
            if context[start : start + len(text)] != text:
                raise DataError(f"{field}: answer {text!r} does not match the context at answer_start={start} "
                                f"(context there: {context[start:start + len(text)]!r})")
            answers.append((text, start))
        if not answers and not (impossible or self.state["allow_unanswerable"]):
            raise DataError(f"{field}: no answer; for unanswerable questions set task.allow_unanswerable: true")
        return answers

    def encode(self, records: Records, tokenizer: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        s = self.state
        examples = self._examples(records, with_labels)
        pad_right = tokenizer.padding_side == "right"
        enc = tokenizer([e["question"] for e in examples], [e["context"] for e in examples],
                        truncation="only_second" if pad_right else "only_first", max_length=s["max_length"],
                        stride=s["doc_stride"], return_overflowing_tokens=True, return_offsets_mapping=True)
        features = []
        for k, r in enumerate(enc["overflow_to_sample_mapping"]):
            seq_ids = enc.sequence_ids(k)
            offsets = [o if seq_ids[j] == 1 else None for j, o in enumerate(enc["offset_mapping"][k])]
            feat: dict[str, Any] = {"input_ids": enc["input_ids"][k], "record": r, "offsets": offsets}
            if "token_type_ids" in enc:
                feat["token_type_ids"] = enc["token_type_ids"][k]
            if not features or features[-1]["record"] != r:
                feat.update(context=examples[r]["context"], id=examples[r]["id"],
                            gold=[a for a, _ in examples[r].get("answers", [])])
            if with_labels:
                feat["labels"] = self._positions(examples[r]["answers"], offsets)
            features.append(feat)
        return features

    @staticmethod
    def _positions(answers: list[tuple[str, int]], offsets: list[Any]) -> list[int]:
        """Token start/end of the first answer inside this window; (0, 0) (the [CLS] position) otherwise."""
        if not answers:
            return [0, 0]
        text, a = answers[0]
        b = a + len(text)
        ctx = [j for j, o in enumerate(offsets) if o is not None]
        if not ctx or offsets[ctx[0]][0] > a or offsets[ctx[-1]][1] < b:
            return [0, 0]
        start = next(j for j in ctx if offsets[j][1] > a)
        end = next(j for j in reversed(ctx) if offsets[j][0] < b)
        return [start, end]

    def collate(self, processor: Any) -> Any:
        return partial(pad_batch, pad_token_id=processor.pad_token_id or 0, label_dtype=torch.long)

    def extract(self, outputs: Any) -> torch.Tensor:
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)

    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: Any) -> torch.Tensor:
        start = F.cross_entropy(outputs.start_logits.float(), labels[:, 0], reduction="sum")
        end = F.cross_entropy(outputs.end_logits.float(), labels[:, 1], reduction="sum")
        return (start + end) / 2

    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        from transformers import AutoModelForQuestionAnswering

        from .common import load_with_head

        return load_with_head(AutoModelForQuestionAnswering, model_path, dropout)

    # ---- decoding --------------------------------------------------------------------------------
    def decode(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        s = self.state
        by_record: dict[int, list[tuple[dict[str, Any], np.ndarray]]] = collections.defaultdict(list)
        heads: dict[int, dict[str, Any]] = {}
        for feat, out in zip(features, outputs):
            by_record[feat["record"]].append((feat, out))
            if "context" in feat:
                heads[feat["record"]] = feat
        predictions = []
        for r in sorted(by_record):
            context = heads[r]["context"]
            candidates: list[tuple[float, int, int]] = []
            null_score = -np.inf
            for feat, out in by_record[r]:
                start_logits, end_logits = out[:, 0], out[:, 1]
                null_score = max(null_score, float(start_logits[0] + end_logits[0]))
                starts = np.argsort(start_logits)[::-1][: s["n_best"]]
                ends = np.argsort(end_logits)[::-1][: s["n_best"]]
                offsets = feat["offsets"]
                for a in starts:
                    for b in ends:
                        if a >= len(offsets) or b >= len(offsets) or offsets[a] is None or offsets[b] is None:
                            continue
                        if b < a or b - a + 1 > s["max_answer_length"]:
                            continue
                        candidates.append((float(start_logits[a] + end_logits[b]), offsets[a][0], offsets[b][1]))
            scores = np.array([c[0] for c in candidates] + ([null_score] if s["allow_unanswerable"] else []))
            probs = softmax(scores) if len(scores) else np.array([])
            best = int(np.argmax(scores)) if len(scores) else -1
            if best < 0 or best == len(candidates):  # nothing found, or the empty answer wins
                predictions.append({"answer": "", "start": None, "end": None, "score": float(probs[best]) if best >= 0 else 0.0,
                                    "id": heads[r]["id"]})
            else:
                _, a, b = candidates[best]
                predictions.append({"answer": context[a:b], "start": a, "end": b, "score": float(probs[best]),
                                    "id": heads[r]["id"]})
        return predictions

    def compute_metrics(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> dict[str, Any]:
        predictions = self.decode(outputs, features)
        golds = [f["gold"] for f in features if "context" in f]
        scores = [squad_scores(p["answer"], g) for p, g in zip(predictions, golds)]
        em = float(np.mean([e for e, _ in scores])) if scores else 0.0
        f1 = float(np.mean([f for _, f in scores])) if scores else 0.0
        out = {"exact_match": em, "f1": f1, "questions": len(scores)}
        if self.state["allow_unanswerable"]:
            has = [bool(g) for g in golds]
            for name, keep in (("has_answer", True), ("no_answer", False)):
                sel = [sc for sc, h in zip(scores, has) if h == keep]
                if sel:
                    out[f"{name}_f1"] = float(np.mean([f for _, f in sel]))
        return out
