"""Zero-shot and in-context few-shot use of a causal LM, without training.

Classification scores each label's verbalizer under the LM (the log-probability of the answer text
after the prompt) rather than parsing free text, and by default divides out the label bias measured
on content-free inputs ("N/A", "", "[MASK]"), i.e. contextual calibration (Zhao et al., 2021); with
retrieved demonstrations, each input is calibrated against "N/A" shown after its own demonstrations.
Few-shot adds, per input, the most similar labelled examples (by MiniLM embedding) as earlier chat
turns. Entity extraction generates ``TYPE: text`` lines and a parser turns them into character spans,
reporting every line it could not use.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .config import Config, GenerateConfig
from .data import Records
from .errors import DataError
from . import metrics as M
from .prompts import DEFAULT_TEMPLATES, chat_messages, fill, render_prompt

CONTENT_FREE = ("N/A", "", "[MASK]")


def _text(row: dict[str, Any], column: str, records: Records, i: int) -> str:
    if column not in row:
        raise DataError(f"{records.where(i)}: column {column!r} is missing (data.text_column)")
    value = row[column]
    if value is None or not str(value).strip():
        raise DataError(f"{records.where(i)}, column {column!r}: empty text")
    return str(value)


class PromptClassifier:
    """Label scoring with a causal LM: zero-shot, or few-shot with retrieved demonstrations."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.labels: list[str] = state["labels"]
        self.verbalizers: dict[str, str] = state["verbalizers"]
        self._embedder: Any = None
        self._pool_vectors: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: Config, train: Records | None, few_shot: bool) -> PromptClassifier:
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
            "template": p.template or DEFAULT_TEMPLATES["classification"],
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

    def _prompt_ids(self, tokenizer: Any, messages: list[dict[str, str]], limit: int, where: str,
                    report: list[str]) -> list[int]:
        from .lm import fit_prompt

        ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        return fit_prompt(ids, limit, where, report)

    def _demos_for(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        k = self.state["demonstrations"]
        pool = self.state["pool"]
        if not k or not pool:
            return [[] for _ in texts]
        from .embed import Embedder

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
        from .lm import continuation_logprobs, next_token_logprobs

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
        from .lm import context_window

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
        probs = _softmax(self._label_logprobs(model, tokenizer, prompts)).mean(axis=0)
        self.state["calibration"] = np.log(probs).tolist()

    def _per_input_calibration(self) -> bool:
        # With demonstrations retrieved per input, the label bias comes mostly from *those* demonstrations
        # (their labels, their order: a small LM leans towards the label it saw last), so one prior
        # measured on a fixed demonstration set is the wrong correction: it pushed SmolLM2 below chance
        # on SST-2. Each input is calibrated against a content-free input with its own demonstrations.
        return bool(self.state["calibrate"] and self.state["demonstrations"] and self.state["pool"])

    def predict_records(self, model: Any, tokenizer: Any, records: Records) -> tuple[list[dict[str, Any]], list[str]]:
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
            priors = np.log(_softmax(self._label_logprobs(model, tokenizer, [list(ids) for ids in distinct])))
            row = {ids: i for i, ids in enumerate(distinct)}
            scores = scores - priors[[row[ids] for ids in content_free]]
        elif s.get("calibration") is not None:
            scores = scores - np.asarray(s["calibration"])[None, :]
        probs = _softmax(scores)
        out = [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
                "scores": dict(zip(self.labels, map(float, p)))} for p in probs]
        return out, report

    def evaluate_records(self, model: Any, tokenizer: Any, records: Records) -> dict[str, Any]:
        col = self.state["label_column"]
        gold = []
        for i, row in enumerate(records.rows):
            name = str(row.get(col, "")).strip()
            if name not in self.labels:
                raise DataError(f"{records.where(i)}, column {col!r}: unknown label {name!r}; labels are {self.labels}")
            gold.append(self.labels.index(name))
        preds, report = self.predict_records(model, tokenizer, records)
        metrics = M.single_label_metrics([self.labels.index(p["label"]) for p in preds], gold, self.labels)
        if report:
            metrics["truncated_prompts"] = len(report)
        return metrics


# ---- entity extraction by generation -------------------------------------------------------------------
LINE_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*([A-Za-z_][\w\- ]*?)\s*[:=\-–]\s*(.+?)\s*$")


def parse_entities(output: str, text: str, types: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """``TYPE: entity`` lines -> spans found in ``text`` (left to right, each occurrence used once).

    Returns (entities, unparsed lines). A line is unparsed when it has no known type or its entity
    text does not occur in the input.
    """
    by_lower = {t.lower(): t for t in types}
    entities: list[dict[str, Any]] = []
    unparsed: list[str] = []
    used: set[tuple[int, int]] = set()
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.lower().rstrip(".") in ("none", "no entities", "n/a"):
            continue
        m = LINE_RE.match(line)
        kind = by_lower.get(m.group(1).strip().lower()) if m else None
        if m is None or kind is None:
            unparsed.append(line)
            continue
        for value in (v.strip().strip("\"'`") for v in re.split(r";|,(?=\s)", m.group(2))):
            if not value or value.lower() == "none":
                continue
            span = _find(text, value, used)
            if span is None:
                unparsed.append(line if value == m.group(2).strip() else f"{kind}: {value}")
                continue
            used.add(span)
            entities.append({"type": kind, "start": span[0], "end": span[1], "text": text[span[0]:span[1]], "score": None})
    entities.sort(key=lambda e: (e["start"], e["end"]))
    return entities, unparsed


def _find(text: str, value: str, used: set[tuple[int, int]]) -> tuple[int, int] | None:
    for haystack, needle in ((text, value), (text.lower(), value.lower())):
        start = 0
        while True:
            at = haystack.find(needle, start)
            if at == -1:
                break
            span = (at, at + len(needle))
            if span not in used:
                return span
            start = at + 1
    return None


class PromptExtractor:
    """Zero-shot entity extraction: generate ``TYPE: text`` lines, parse them into character spans."""

    labels: list[str] = []

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.types: list[str] = state["types"]
        self.labels = self.types
        self.generate_config = GenerateConfig(**state["generate"])

    @classmethod
    def from_config(cls, cfg: Config) -> PromptExtractor:
        if not cfg.task.labels:
            raise DataError("zero-shot entity extraction needs the entity types: set task.labels, e.g. [PER, LOC, ORG]")
        gen = cfg.generate.model_dump(mode="json")
        gen["max_new_tokens"] = min(gen["max_new_tokens"], 96)
        return cls({"types": list(cfg.task.labels), "template": cfg.prompt.template or DEFAULT_TEMPLATES["ner"],
                    "system_prompt": cfg.task.system_prompt, "text_column": cfg.data.text_column,
                    "tokens_column": cfg.data.tokens_column, "tags_column": cfg.data.tags_column,
                    "entities_column": cfg.data.entities_column, "generate": gen})

    def _text(self, row: dict[str, Any], records: Records, i: int) -> str:
        s = self.state
        if s["text_column"] in row:
            return _text(row, s["text_column"], records, i)
        if s["tokens_column"] in row and isinstance(row[s["tokens_column"]], list):
            from .tasks.ner import join_tokens

            return join_tokens([str(t) for t in row[s["tokens_column"]]])[0]
        raise DataError(f"{records.where(i)}: needs {s['text_column']!r} (raw text) or {s['tokens_column']!r} (tokens)")

    def predict_records(self, model: Any, tokenizer: Any, records: Records) -> tuple[list[dict[str, Any]], list[str]]:
        from .lm import context_window, fit_prompt, generate_ids

        texts = [self._text(r, records, i) for i, r in enumerate(records.rows)]
        limit = context_window(model, tokenizer) - self.generate_config.max_new_tokens
        report: list[str] = []
        prompts = []
        for i, text in enumerate(texts):
            user = fill(self.state["template"], text=text, types=", ".join(self.types))
            ids = tokenizer(render_prompt(tokenizer, chat_messages(user, self.state.get("system_prompt"))),
                            add_special_tokens=False)["input_ids"]
            prompts.append(fit_prompt(ids, limit, records.where(i), report))
        outputs = generate_ids(model, tokenizer, prompts, self.generate_config)
        results = []
        for text, out in zip(texts, outputs):
            entities, unparsed = parse_entities(out, text, self.types)
            results.append({"entities": entities, "unparsed": unparsed, "raw": out})
        return results, report

    def gold_spans(self, row: dict[str, Any], records: Records, i: int) -> set[tuple[str, int, int]]:
        s = self.state
        if s["entities_column"] in row:
            return {(str(e.get("label", e.get("type"))), int(e["start"]), int(e["end"])) for e in row[s["entities_column"]]}
        if s["tags_column"] in row and s["tokens_column"] in row:
            from .tags import detect_scheme, spans, to_bio
            from .tasks.ner import join_tokens

            tags = [str(t) for t in row[s["tags_column"]]]
            _, offsets = join_tokens([str(t) for t in row[s["tokens_column"]]])
            bio, _ = to_bio(tags, detect_scheme([tags]))
            return {(kind, offsets[a][0], offsets[b - 1][1]) for kind, a, b in spans(bio)}
        raise DataError(f"{records.where(i)}: evaluation needs gold entities ({s['entities_column']!r}) or "
                        f"tokens + tags ({s['tokens_column']!r}, {s['tags_column']!r})")

    def evaluate_records(self, model: Any, tokenizer: Any, records: Records) -> dict[str, Any]:
        gold = [self.gold_spans(r, records, i) for i, r in enumerate(records.rows)]
        preds, report = self.predict_records(model, tokenizer, records)
        pred_sets = [{(e["type"], e["start"], e["end"]) for e in p["entities"]} for p in preds]
        metrics = span_metrics(gold, pred_sets, self.types)
        metrics["unparsed_lines"] = sum(len(p["unparsed"]) for p in preds)
        metrics["records_with_unparsed"] = sum(bool(p["unparsed"]) for p in preds)
        if report:
            metrics["truncated_prompts"] = len(report)
        return metrics


def span_metrics(gold: list[set[tuple[str, int, int]]], pred: list[set[tuple[str, int, int]]],
                 types: list[str]) -> dict[str, Any]:
    """Strict entity P/R/F1 (exact type and span), micro-averaged, with a per-type report."""
    def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": n_gold}

    tp = sum(len(g & p) for g, p in zip(gold, pred))
    out: dict[str, Any] = prf(tp, sum(map(len, pred)), sum(map(len, gold)))
    out["per_type"] = {}
    for kind in types:
        g = [{x for x in s if x[0] == kind} for s in gold]
        p = [{x for x in s if x[0] == kind} for s in pred]
        out["per_type"][kind] = prf(sum(len(a & b) for a, b in zip(g, p)), sum(map(len, p)), sum(map(len, g)))
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
