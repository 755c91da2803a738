"""Named-entity extraction by prompting a causal LM, without training: it generates ``TYPE: text`` lines
and a parser turns them into character spans, reporting every line it could not use.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from ..config import Config, GenerateConfig
from ..data import Records
from ..errors import DataError
from ..metrics import span_metrics
from ..prompts import chat_messages, fill, render_prompt
from .base import Task
from .entity_analysis import EntityAnalysis, entity_row
from .prompted_classification import _text
from .words import join_tokens

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


class Entity(BaseModel):
    """An entity span in the input text (character offsets, end exclusive)."""

    type: str
    start: int
    end: int
    text: str
    score: float | None = None


class ExtractedEntities(BaseModel):
    """One prompted extraction: the entities found, the output lines that could not be used, the raw output."""

    entities: list[Entity]
    unparsed: list[str] = []
    raw: str | None = None


class PromptExtractor(EntityAnalysis, Task):
    """Zero-shot entity extraction: generate ``TYPE: text`` lines, parse them into character spans."""

    name = "ner"
    Prediction = ExtractedEntities
    strategies = ()
    export_formats = ("onnx-genai",)  # it only generates
    default_template = ("Extract the named entities of these types from the text: {types}.\n"
                        "Write one entity per line as TYPE: entity text, copied exactly from the text. "
                        "If there are none, write none.\n\nText: {text}")

    def __init__(self, state: dict[str, Any]):
        super().__init__(state)
        self.types: list[str] = state["types"]
        self.generate_config = GenerateConfig(**state["generate"])

    @property
    def labels(self) -> list[str]:
        return list(self.types)

    @classmethod
    def from_prompt_config(cls, cfg: Config, train: Records | None, strategy: str) -> PromptExtractor:
        if strategy == "few_shot":
            from ..errors import ConfigError

            raise ConfigError("strategy few_shot for ner is not supported; use zero_shot or finetune")
        if not cfg.task.labels:
            raise DataError("zero-shot entity extraction needs the entity types: set task.labels, e.g. [PER, LOC, ORG]")
        gen = cfg.generate.model_dump(mode="json")
        gen["max_new_tokens"] = min(gen["max_new_tokens"], 96)
        return cls({"types": list(cfg.task.labels), "template": cfg.prompt.template or cls.default_template,
                    "system_prompt": cfg.task.system_prompt, "text_column": cfg.data.text_column,
                    "tokens_column": cfg.data.tokens_column, "tags_column": cfg.data.tags_column,
                    "entities_column": cfg.data.entities_column, "generate": gen})

    def _text(self, row: dict[str, Any], records: Records, i: int) -> str:
        s = self.state
        if s["text_column"] in row:
            return _text(row, s["text_column"], records, i)
        if s["tokens_column"] in row and isinstance(row[s["tokens_column"]], list):
            return join_tokens([str(t) for t in row[s["tokens_column"]]])[0]
        raise DataError(f"{records.where(i)}: needs {s['text_column']!r} (raw text) or {s['tokens_column']!r} (tokens)")

    def predict_records(self, model: Any, tokenizer: Any, records: Records, batch_size: int = 16) -> list[dict[str, Any]]:
        """Each record's entities, parsed from the generated lines."""
        from ..causal_lm import context_window, fit_prompt, generate_ids

        if not len(records):
            return []

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
        self.notes = report
        return results

    def gold_spans(self, row: dict[str, Any], records: Records, i: int) -> set[tuple[str, int, int]]:
        """The gold (type, start, end) spans of a record: offset entities, or tokens + tags."""
        s = self.state
        if s["entities_column"] in row:
            return {(str(e.get("label", e.get("type"))), int(e["start"]), int(e["end"])) for e in row[s["entities_column"]]}
        if s["tags_column"] in row and s["tokens_column"] in row:
            from ..tags import detect_scheme, spans, to_bio

            tags = [str(t) for t in row[s["tags_column"]]]
            _, offsets = join_tokens([str(t) for t in row[s["tokens_column"]]])
            bio, _ = to_bio(tags, detect_scheme([tags]))
            return {(kind, offsets[a][0], offsets[b - 1][1]) for kind, a, b in spans(bio)}
        raise DataError(f"{records.where(i)}: evaluation needs gold entities ({s['entities_column']!r}) or "
                        f"tokens + tags ({s['tokens_column']!r}, {s['tags_column']!r})")

    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per record: gold and extracted entities as character spans, counts per type and each error's kind."""
        rows = []
        for i, (row, prediction) in enumerate(zip(records.rows, predictions)):
            text = self._text(row, records, i)
            pred = {(e["type"], e["start"], e["end"]) for e in prediction["entities"]}
            rows.append(entity_row(text, self.gold_spans(row, records, i), pred, lambda span, t=text: t[span[1]:span[2]]))
        return rows

    def evaluate_records(self, model: Any, tokenizer: Any, records: Records, batch_size: int = 16) -> dict[str, Any]:
        gold = [self.gold_spans(r, records, i) for i, r in enumerate(records.rows)]
        preds = self.predict_records(model, tokenizer, records)
        report = self.notes
        pred_sets = [{(e["type"], e["start"], e["end"]) for e in p["entities"]} for p in preds]
        metrics = span_metrics(gold, pred_sets, self.types)
        metrics["unparsed_lines"] = sum(len(p["unparsed"]) for p in preds)
        metrics["records_with_unparsed"] = sum(bool(p["unparsed"]) for p in preds)
        if report:
            metrics["truncated_prompts"] = len(report)
        return metrics
