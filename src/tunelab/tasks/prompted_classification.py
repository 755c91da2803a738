"""Classification by prompting a causal LM, without training: zero-shot, or few-shot in context.

It scores each label's verbalizer under the LM (the log-probability of the answer text
after the prompt) rather than parsing free text, and by default divides out the label bias measured
on content-free inputs ("N/A", "", "[MASK]"), i.e. contextual calibration (Zhao et al., 2021); with
retrieved demonstrations, each input is calibrated against "N/A" shown after its own demonstrations.
Few-shot adds, per input, the most similar labelled examples (by MiniLM embedding) as earlier chat
turns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from .. import metrics as M
from ..config import Config
from ..data import Records
from ..errors import ConfigError, DataError
from ..probabilities import softmax
from ..prompts import chat_messages, fill, render_prompt
from .base import Task
from .common import LabelScores

CONTENT_FREE = ("N/A", "", "[MASK]")


def _text(row: dict[str, Any], column: str, records: Records, i: int) -> str:
    if column not in row:
        raise DataError(f"{records.where(i)}: column {column!r} is missing (data.text_column)")
    value = row[column]
    if value is None or not str(value).strip():
        raise DataError(f"{records.where(i)}, column {column!r}: empty text")
    return str(value)


class LabelPrediction(BaseModel):
    """One prompted classification: the label, its probability, and every label's."""

    label: str
    score: float
    scores: dict[str, float]


class PromptClassifier(LabelScores, Task):
    """Label scoring with a causal LM: zero-shot, or few-shot with retrieved demonstrations."""

    name = "classification"
    Prediction = LabelPrediction
    strategies = ()
    export_formats = ()
    export_note = ("it scores the label words with the model's forward pass, which the generation engine does not "
                   "expose; fine-tune a classifier (strategy finetune or setfit) to export one")
    default_template = "Classify the text into one of: {labels}.\n\nText: {text}\n\nAnswer with the label only."

    def __init__(self, state: dict[str, Any]):
        super().__init__(state)
        self.verbalizers: dict[str, str] = state["verbalizers"]
        self._embedder: Any = None
        self._pool_vectors: np.ndarray | None = None

    @classmethod
    def from_prompt_config(cls, cfg: Config, train: Records | None, strategy: str) -> PromptClassifier:
        if cfg.task.problem_type != "single_label":
            raise ConfigError(f"strategy {strategy}: prompting supports single-label classification, "
                              f"not {cfg.task.problem_type}")
        few_shot = strategy == "few_shot"
        d, p = cfg.data, cfg.prompt
        pool: list[dict[str, Any]] = []
        labels = list(cfg.task.labels or [])
        if train is not None:
            for i, row in enumerate(train.rows):
                label = row.get(d.label_column)
                if label is None or not str(label).strip():
                    raise DataError(f"{train.where(i)}, column {d.label_column!r}: missing label")
                item = {"text": _text(row, d.text_column, train, i), "label": str(label).strip()}
                if d.text_pair_column:
                    item["text_pair"] = _text(row, d.text_pair_column, train, i)
                pool.append(item)
            labels = labels or sorted({item["label"] for item in pool})
        if p.verbalizers:
            labels = labels or list(p.verbalizers)
            missing = [name for name in labels if name not in p.verbalizers]
            if missing:
                raise DataError(f"prompt.verbalizers has no entry for labels {missing}; labels are {labels}")
        if len(labels) < 2:
            raise DataError("zero-shot classification needs the label names: set task.labels (or prompt.verbalizers), "
                            "or give labelled data")
        unknown = sorted({item["label"] for item in pool} - set(labels))
        if unknown:
            raise DataError(f"{train.source if train else 'train'}: labels {unknown} are not in task.labels {labels}")
        if few_shot and not pool:
            raise DataError("strategy few_shot needs labelled examples (data.train) to show as demonstrations")
        verbalizers = {name: (p.verbalizers or {}).get(name, name) for name in labels}
        return cls({
            "labels": labels, "verbalizers": verbalizers,
            "template": p.template or cls.default_template,
            "system_prompt": cfg.task.system_prompt, "calibrate": p.calibrate, "calibration": None,
            "text_column": d.text_column, "text_pair_column": d.text_pair_column, "label_column": d.label_column,
            "demonstrations": p.demonstrations if few_shot else 0, "pool": pool if few_shot else [],
            "embedder": p.embedder, "batch_size": p.batch_size, "allow_network": cfg.allow_network,
            "seed": cfg.train.seed,
        })

    # ---- prompts ------------------------------------------------------------------------------------
    def _user(self, text: str, pair: str | None = None) -> str:
        return fill(self.state["template"], text=text, text_pair=pair,
                    labels=", ".join(self.verbalizers[name] for name in self.labels))

    def _messages(self, text: str, pair: str | None, demos: list[dict[str, Any]]) -> list[dict[str, str]]:
        system = self.state.get("system_prompt")
        messages = [{"role": "system", "content": system}] if system else []
        for demo in demos:
            messages += chat_messages(self._user(demo["text"], demo.get("text_pair")),
                                      answer=self.verbalizers[demo["label"]])
        messages += chat_messages(self._user(text, pair))
        return messages

    def input_columns(self) -> list[str]:
        pair = self.state.get("text_pair_column")
        return [self.state["text_column"]] + ([pair] if pair else [])

    def _prompt_ids(self, tokenizer: Any, messages: list[dict[str, str]], limit: int, where: str,
                    report: list[str]) -> list[int]:
        from ..causal_lm import fit_prompt

        ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        return fit_prompt(ids, limit, where, report)

    def _demos_for(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        k = self.state["demonstrations"]
        pool = self.state["pool"]
        if not k or not pool:
            return [[] for _ in texts]
        from ..sentence_embeddings import Embedder

        if self._embedder is None:
            self._embedder = Embedder.load(self.state["embedder"], allow_network=self.state.get("allow_network", False))
            self._pool_vectors = self._embedder.encode([d["text"] for d in pool])
        queries = self._embedder.encode(texts)
        sims = queries @ self._pool_vectors.T
        # Balanced retrieval: the most similar examples of *each* label, so the demonstrations never all
        # carry one label (a small LM then copies it); ordered by similarity, the most similar last, next
        # to the input.
        per_label = max(1, -(-k // len(self.labels)))
        by_label = {name: [j for j, d in enumerate(pool) if d["label"] == name] for name in self.labels}
        chosen = []
        for row in sims:
            picks = [j for members in by_label.values()
                     for j in sorted(members, key=lambda j: row[j], reverse=True)[:per_label]]
            picks = sorted(picks, key=lambda j: row[j])[-k:]
            chosen.append([pool[j] for j in picks])
        return chosen

    # ---- scoring -------------------------------------------------------------------------------------
    def _label_logprobs(self, model: Any, tokenizer: Any, prompts: list[list[int]]) -> np.ndarray:
        from ..causal_lm import continuation_logprobs, next_token_logprobs

        pieces = [tokenizer(self.verbalizers[name], add_special_tokens=False)["input_ids"] for name in self.labels]
        if any(not p for p in pieces):
            raise DataError("a verbalizer is empty after tokenization; give each label a word in prompt.verbalizers")
        bs = self.state.get("batch_size", 16)
        if all(len(p) == 1 for p in pieces) and len({p[0] for p in pieces}) == len(pieces):
            return next_token_logprobs(model, tokenizer, prompts, [p[0] for p in pieces], batch_size=bs)
        flat_prompts = [pr for pr in prompts for _ in pieces]
        flat_cont = [pc for _ in prompts for pc in pieces]
        return continuation_logprobs(model, tokenizer, flat_prompts, flat_cont, batch_size=bs).reshape(len(prompts), -1)

    def _limit(self, model: Any, tokenizer: Any) -> int:
        from ..causal_lm import context_window

        longest_answer = max(len(tokenizer(v, add_special_tokens=False)["input_ids"]) for v in self.verbalizers.values())
        return context_window(model, tokenizer) - longest_answer

    def calibrate(self, model: Any, tokenizer: Any) -> None:
        """Measure the label prior on content-free inputs (zero-shot: one prior for every input)."""
        if not self.state["calibrate"] or self._per_input_calibration():
            return
        report: list[str] = []
        prompts = [self._prompt_ids(tokenizer, self._messages(cf, cf if self.state.get("text_pair_column") else None, []),
                                    self._limit(model, tokenizer), "calibration", report)
                   for cf in CONTENT_FREE]
        probs = softmax(self._label_logprobs(model, tokenizer, prompts)).mean(axis=0)
        self.state["calibration"] = np.log(probs).tolist()

    def _per_input_calibration(self) -> bool:
        # With demonstrations retrieved per input, the label bias comes mostly from *those* demonstrations
        # (their labels, their order: a small LM leans towards the label it saw last), so one prior
        # measured on a fixed demonstration set is the wrong correction: it pushed SmolLM2 below chance
        # on SST-2. Each input is calibrated against a content-free input with its own demonstrations.
        return bool(self.state["calibrate"] and self.state["demonstrations"] and self.state["pool"])

    def predict_records(self, model: Any, tokenizer: Any, records: Records, batch_size: int = 16) -> list[dict[str, Any]]:
        """Each record's label by verbalizer log-probability; prompts cut to the context window are listed
        in ``notes``."""
        if not len(records):
            return []
        s = self.state
        texts = [_text(r, s["text_column"], records, i) for i, r in enumerate(records.rows)]
        pairs = ([_text(r, s["text_pair_column"], records, i) for i, r in enumerate(records.rows)]
                 if s.get("text_pair_column") else [None] * len(texts))
        demos = self._demos_for(texts)
        report: list[str] = []
        limit = self._limit(model, tokenizer)
        prompts = [self._prompt_ids(tokenizer, self._messages(t, p, d), limit, records.where(i), report)
                   for i, (t, p, d) in enumerate(zip(texts, pairs, demos))]
        logp = self._label_logprobs(model, tokenizer, prompts)
        scores = logp - logp.max(axis=1, keepdims=True)
        if self._per_input_calibration():
            # Inputs often retrieve the same demonstrations: score each distinct content-free prompt once.
            content_free = [tuple(self._prompt_ids(tokenizer, self._messages(CONTENT_FREE[0], None if p is None
                                                                             else CONTENT_FREE[0], d), limit, "calibration", []))
                            for p, d in zip(pairs, demos)]
            distinct = list(dict.fromkeys(content_free))
            priors = np.log(softmax(self._label_logprobs(model, tokenizer, [list(ids) for ids in distinct])))
            row = {ids: i for i, ids in enumerate(distinct)}
            scores = scores - priors[[row[ids] for ids in content_free]]
        elif s.get("calibration") is not None:
            scores = scores - np.asarray(s["calibration"])[None, :]
        probs = softmax(scores)
        self.notes = report
        return [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": dict(zip(self.labels, map(float, p)))} for p in probs]

    def evaluate_records(self, model: Any, tokenizer: Any, records: Records, batch_size: int = 16) -> dict[str, Any]:
        col = self.state["label_column"]
        gold = []
        for i, row in enumerate(records.rows):
            name = str(row.get(col, "")).strip()
            if name not in self.labels:
                raise DataError(f"{records.where(i)}, column {col!r}: unknown label {name!r}; labels are {self.labels}")
            gold.append(self.labels.index(name))
        preds = self.predict_records(model, tokenizer, records)
        metrics = M.single_label_metrics([self.labels.index(p["label"]) for p in preds], gold, self.labels)
        if self.notes:
            metrics["truncated_prompts"] = len(self.notes)
        return metrics
