"""Named-entity recognition (token classification).

Input records are either pre-split ``tokens`` + ``tags`` (CoNLL-style files, JSONL) in any of BIO, IOB1,
BIOES or BMES — converted to BIO on reading — or raw ``text`` + character-offset ``entities``
(``[{"start": 0, "end": 5, "label": "PER"}]``). Words are split into sub-tokens; the label sits on a
word's first sub-token and the others are ignored by the loss. Inputs longer than the model's window are
cut into overlapping windows (``task.stride`` sub-tokens shared), so no token is dropped; at prediction
each word is read from the window in which it is most central.

Two options help an encoder read more than the sentence it is given:

- ``task.case_markers`` (on by default for a lower-casing tokenizer, like the packaged MiniLM's): a trained
  marker token goes before each capitalised (``[CAP]``) or all-caps (``[UP]``) word, so an uncased model
  sees capitalisation again — the strongest cue for names in English (ULMFiT's ``xxmaj``/``xxup``).
- ``task.document_context``: consecutive records of one document (``data.document_column``; CoNLL files with
  ``-DOCSTART-`` carry it) are read as one input in overlapping windows, so each sentence is labelled with
  its neighbours in view (FLERT-style document context); predictions and scores stay per record. Records
  that name no document are read as one running text: turn it on only for consecutive sentences.

Metrics are entity-level precision/recall/F1 with seqeval's strict IOB2 semantics, plus a per-type report.
``predict`` returns entity spans with type, character offsets, text and score.
"""

from __future__ import annotations

import sys
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config import Config, DataConfig, TaskOptions
from ..data import Records
from ..errors import ConfigError, DataError
from ..probabilities import softmax
from ..tags import TagError, detect_scheme, spans, split_tag, to_bio
from .base import Task
from .common import label_weights, pad_batch, special_tokens_around
from .entity_analysis import EntityAnalysis, entity_row
from .prompted_ner import Entity, PromptExtractor
from .words import _CJK, WORD_RE, join_tokens, split_words, word_pattern  # noqa: F401  (public from here too)

CASE_MARKERS = ["[CAP]", "[UP]"]


def case_class(word: str) -> int | None:
    """0 for a capitalised word (``London``, ``I``), 1 for an all-caps one (``EU``), None otherwise."""
    if not word[:1].isupper():
        return None
    return 1 if len(word) > 1 and word.isupper() else 0


def lower_cases(tokenizer: Any) -> bool:
    """Whether the tokenizer maps ``Paris`` and ``paris`` to the same pieces (an uncased model)."""
    return tokenizer.tokenize("Paris Hilton") == tokenizer.tokenize("paris hilton")


class NerOptions(TaskOptions):
    """``task:`` for named-entity recognition."""

    tag_scheme: Literal["auto", "bio", "iob1", "bioes", "bmes"] = Field(
        "auto", description="tag scheme of the data, converted to BIO on reading (auto: detect)")
    stride: int | None = Field(None, ge=0, description="sub-tokens shared by consecutive windows of a long input "
                               "(default: a quarter of data.max_length)")
    case_markers: bool | Literal["auto"] = Field(
        "auto", description="mark capitalised and all-caps words with two trained marker tokens, giving an "
        "uncased (lower-casing) tokenizer back the capitalisation cue; auto: on when the tokenizer lower-cases")
    document_context: bool = Field(False, description="read each sentence inside windows of its document "
                                   "(consecutive records sharing data.document_column, e.g. CoNLL -DOCSTART- "
                                   "blocks; records without it are one running text, in order) so neighbouring "
                                   "sentences give context; predictions and scores stay per record")
    system_prompt: str | None = Field(None, description="zero-shot: a system turn (default: the chat template's)")


class NerColumns(DataConfig):
    """``data:`` for named-entity recognition."""

    tokens_column: str = Field("tokens", description="pre-split tokens (a list per record)")
    tags_column: str = Field("tags", description="one tag per token")
    entities_column: str = Field("entities", description="character-offset entities for raw text_column")
    document_column: str = Field("document", description="which document a record belongs to (CoNLL files "
                                 "with -DOCSTART- lines get it on reading); used by task.document_context")


class EntityPrediction(BaseModel):
    """One NER prediction: entity spans, plus the tag and the text of every word."""

    entities: list[Entity]
    tags: list[str]
    words: list[str]


class NerTask(EntityAnalysis, Task):
    """Named-entity recognition by token classification (see the module docstring)."""

    Options = NerOptions
    Columns = NerColumns
    Prediction = EntityPrediction
    Prompted = PromptExtractor
    strategies = ("finetune", "zero_shot")
    prompt_slots = frozenset({"text", "types"})
    peft_task_type = "TOKEN_CLS"
    per_token = True
    primary_metric = ("f1", True)

    def __init__(self, state: dict[str, Any]):
        super().__init__(state)
        self.label_to_id = {name: i for i, name in enumerate(self.labels)}

    def input_schema(self) -> type[BaseModel]:
        s = self.state
        return create_model("NerInput", __config__=ConfigDict(extra="allow"),
                            **{s["text_column"]: (str | None, None), s["tokens_column"]: (list[str] | None, None)})

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, (tuple, list)):
            return {self.state["tokens_column"]: [str(t) for t in item]}
        return super().input_row(item)

    # ---- label space ------------------------------------------------------------------------------
    @classmethod
    def from_training_data(cls, cfg: Config, train: Records) -> NerTask:
        d, t = cfg.data, cfg.task
        stride = t.stride if t.stride is not None else d.max_length // 4
        if stride >= d.max_length // 2:
            raise ConfigError(f"task.stride ({stride}) must be less than half of data.max_length ({d.max_length})")
        state: dict[str, Any] = {
            "tokens_column": d.tokens_column, "tags_column": d.tags_column, "text_column": d.text_column,
            "entities_column": d.entities_column, "max_length": d.max_length, "stride": stride,
            "tag_scheme": t.tag_scheme, "labels": ["O"], "case_markers": t.case_markers,
            "document_context": t.document_context, "document_column": d.document_column,
        }
        probe = cls(state)
        if t.tag_scheme == "auto" and _has(train, d.tags_column):
            tag_lists = []
            for i, row in enumerate(train.rows):
                tags = row.get(d.tags_column)
                if isinstance(tags, list):
                    try:
                        tag_lists.append([split_tag(str(t)) and str(t) for t in tags])
                    except TagError as err:
                        raise DataError(f"{train.where(i)}, field {d.tags_column!r}: {err}") from None
            state["tag_scheme"] = detect_scheme(tag_lists)
        examples = probe._examples(train, with_labels=True, scheme=state["tag_scheme"])
        kinds = Counter(kind for ex in examples for kind, _, _ in spans(ex["tags"]))  # entities, not tags
        if not kinds:
            raise DataError(f"{train.source}: no entities in the training data (every tag is O)")
        types = sorted(kinds)
        state["labels"] = ["O"] + [f"{p}-{k}" for k in types for p in ("B", "I")]
        state["entity_counts"] = dict(sorted(kinds.items()))
        state["tag_counts"] = dict(Counter(tag for ex in examples for tag in ex["tags"]))
        # Raw text at prediction is split into words the way the training tokens were.
        state["word_pattern"] = word_pattern([w for ex, row in zip(examples, train.rows)
                                              if d.tokens_column in row for w in ex["words"]])
        return cls(state)

    def stratify_keys(self, records: Records) -> None:
        return None

    def class_weights(self, spec: str | dict[str, float] | None) -> torch.Tensor | None:
        return label_weights(spec, self.labels, self.state.get("tag_counts", {}))

    # ---- records -> word-level examples ----------------------------------------------------------
    def _examples(self, records: Records, *, with_labels: bool, scheme: str | None = None) -> list[dict[str, Any]]:
        """Each record as words + character offsets (+ BIO tags). Repairs of invalid tag sequences are
        counted and reported once per file."""
        s = self.state
        scheme = scheme or s["tag_scheme"]
        out = []
        repaired, first_repair = 0, ""
        for i, row in enumerate(records.rows):
            if s["tokens_column"] in row:
                ex = self._from_tokens(row, records, i, with_labels, scheme)
            elif s["text_column"] in row:
                ex = self._from_text(row, records, i, with_labels)
            else:
                raise DataError(f"{records.where(i)}: needs {s['tokens_column']!r} (+ {s['tags_column']!r}) or "
                                f"{s['text_column']!r} (+ {s['entities_column']!r}); found {sorted(row)}")
            if ex.pop("repairs", 0):
                repaired += 1
                first_repair = first_repair or records.where(i)
            out.append(ex)
        if repaired:
            print(f"tunelab: {records.source}: repaired invalid {scheme.upper()} tag sequences in {repaired} "
                  f"record(s) (first: {first_repair}); a continuation tag without a start now starts the entity",
                  file=sys.stderr)
        return out

    def _from_tokens(self, row: dict[str, Any], records: Records, i: int, with_labels: bool, scheme: str) -> dict[str, Any]:
        s = self.state
        tokens = row[s["tokens_column"]]
        if not isinstance(tokens, list) or not tokens:
            raise DataError(f"{records.where(i)}, field {s['tokens_column']!r}: expected a non-empty list of tokens")
        tokens = [str(t) for t in tokens]
        text, offsets = join_tokens(tokens)
        ex: dict[str, Any] = {"words": tokens, "offsets": offsets, "text": text}
        if with_labels:
            tags = row.get(s["tags_column"])
            if not isinstance(tags, list):
                raise DataError(f"{records.where(i)}: field {s['tags_column']!r} is missing or not a list of tags")
            if len(tags) != len(tokens):
                raise DataError(f"{records.where(i)}: {len(tokens)} tokens but {len(tags)} tags in "
                                f"{s['tokens_column']!r}/{s['tags_column']!r}; they must be the same length")
            try:
                ex["tags"], ex["repairs"] = to_bio([str(t) for t in tags], scheme)
            except TagError as err:
                raise DataError(f"{records.where(i)}, field {s['tags_column']!r}: {err}") from None
        return ex

    def _from_text(self, row: dict[str, Any], records: Records, i: int, with_labels: bool) -> dict[str, Any]:
        s = self.state
        text = row[s["text_column"]]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{records.where(i)}, field {s['text_column']!r}: empty text")
        words, offsets = split_words(text, s.get("word_pattern"))
        ex: dict[str, Any] = {"words": words, "offsets": offsets, "text": text}
        if with_labels:
            entities = row.get(s["entities_column"])
            if not isinstance(entities, list):
                raise DataError(f"{records.where(i)}: field {s['entities_column']!r} is missing or not a list")
            tags = ["O"] * len(words)
            starts = {a: k for k, (a, _) in enumerate(offsets)}
            ends = {b: k for k, (_, b) in enumerate(offsets)}
            for e in entities:
                where = f"{records.where(i)}, field {s['entities_column']!r}, entity {e!r}"
                try:
                    a, b, kind = int(e["start"]), int(e["end"]), str(e.get("label", e.get("type")))
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{where}: expected {{'start': int, 'end': int, 'label': str}}") from None
                if not 0 <= a < b <= len(text):
                    raise DataError(f"{where}: span [{a}, {b}) is outside the text (length {len(text)})")
                if "text" in e and text[a:b] != e["text"]:
                    raise DataError(f"{where}: text[{a}:{b}] is {text[a:b]!r}, not {e['text']!r}")
                if a not in starts or b not in ends:
                    raise DataError(f"{where}: span [{a}, {b}) {text[a:b]!r} cuts through a word; "
                                    "entity boundaries must fall on word boundaries")
                first, last = starts[a], ends[b]
                if any(t != "O" for t in tags[first : last + 1]):
                    raise DataError(f"{where}: overlaps another entity (nested entities are not supported)")
                tags[first : last + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (last - first)
            ex["tags"] = tags
        return ex

    # ---- tokenizer --------------------------------------------------------------------------------
    def prepare_processor(self, tokenizer: Any) -> None:
        """Decide on case markers (auto: when the tokenizer lower-cases) and add their tokens; a no-op for a
        tokenizer saved with them."""
        s = self.state
        if s.get("case_markers") == "auto":
            s["case_markers"] = lower_cases(tokenizer)
        if s.get("case_markers"):
            tokenizer.add_special_tokens({"additional_special_tokens": CASE_MARKERS}, replace_extra_special_tokens=False)
            s["marker_ids"] = tokenizer.convert_tokens_to_ids(CASE_MARKERS)
        s["vocab_size"] = len(tokenizer)

    def _groups(self, records: Records) -> list[list[int]]:
        """Record indices read together. Without task.document_context each record alone; with it, runs
        of consecutive records of one document (data.document_column), or — when the records name no
        documents — all of them as one running text, in order."""
        column = self.state.get("document_column", "document")
        if not self.state.get("document_context"):
            return [[r] for r in range(len(records))]
        if not any(column in row for row in records.rows):
            return [list(range(len(records)))] if len(records) else []
        groups: list[list[int]] = []
        previous: Any = object()
        for r, row in enumerate(records.rows):
            document = row.get(column)
            if document is None or document != previous:
                groups.append([])
            groups[-1].append(r)
            previous = document
        return groups

    def _with_case_markers(self, ids: list[int], word_ids: list[int | None],
                           words: list[str]) -> tuple[list[int], list[int | None]]:
        """Insert a case marker before the first sub-token of each capitalised / all-caps word. Markers
        belong to no word: they carry no label and are never read as a prediction."""
        markers = self.state.get("marker_ids")
        if not markers:
            return ids, word_ids
        out_ids: list[int] = []
        out_words: list[int | None] = []
        for k, (token, w) in enumerate(zip(ids, word_ids)):
            if w is not None and (k == 0 or word_ids[k - 1] != w):
                kind = case_class(words[w])
                if kind is not None:
                    out_ids.append(markers[kind])
                    out_words.append(None)
            out_ids.append(token)
            out_words.append(w)
        return out_ids, out_words

    # ---- word-level examples -> windows of sub-tokens --------------------------------------------
    def encode(self, records: Records, tokenizer: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        examples = self._examples(records, with_labels=with_labels)
        golds: list[list[int] | None] = []
        for r, ex in enumerate(examples):
            gold = [self.label_to_id.get(t, -1) for t in ex["tags"]] if with_labels else None
            if gold is not None and -1 in gold:
                bad = ex["tags"][gold.index(-1)]
                raise DataError(f"{records.where(r)}: tag {bad!r} was never seen in training; known: {', '.join(self.labels)}")
            golds.append(gold)
        groups = self._groups(records)
        group_words = [[w for r in group for w in examples[r]["words"]] for group in groups]
        enc = tokenizer(group_words, is_split_into_words=True, add_special_tokens=False, truncation=False)
        prefix, suffix = special_tokens_around(tokenizer)
        body = self.state["max_length"] - len(prefix) - len(suffix)
        stride = min(self.state["stride"], body - 1)
        features: list[dict[str, Any]] = []
        for g, group in enumerate(groups):
            ids, word_ids = self._with_case_markers(enc["input_ids"][g], enc.word_ids(g), group_words[g])
            gold = [label for r in group for label in golds[r]] if with_labels else None
            start, first = 0, True
            while True:
                end = min(start + body, len(ids))
                window_words = [None] * len(prefix) + list(word_ids[start:end]) + [None] * len(suffix)
                feat: dict[str, Any] = {
                    "input_ids": prefix + ids[start:end] + suffix,
                    "record": g, "word_ids": window_words, "window": (start, end, len(ids)),
                }
                if first:  # per-record data travels with the group's first window
                    feat["parts"] = [{"words": examples[r]["words"], "offsets": examples[r]["offsets"],
                                      "text": examples[r]["text"], "gold": examples[r].get("tags")} for r in group]
                if gold is not None:
                    labels = []
                    for j, w in enumerate(window_words):
                        k = start + j - len(prefix)  # index of this sub-token in the whole input
                        is_first_piece = w is not None and (k == 0 or word_ids[k - 1] != w)
                        labels.append(gold[w] if is_first_piece else -100)
                    feat["labels"] = labels
                features.append(feat)
                first = False
                if end >= len(ids):
                    break
                start = end - stride
        return features

    def collate(self, processor: Any) -> Any:
        return partial(pad_batch, pad_token_id=processor.pad_token_id or 0, label_dtype=torch.long, label_pad=-100)

    def loss_units(self, feature: dict[str, Any]) -> int:
        return sum(1 for x in feature["labels"] if x != -100)

    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        logits = outputs.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=weights,
                               ignore_index=-100, reduction="sum")

    # ---- model -----------------------------------------------------------------------------------
    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        from transformers import AutoModelForTokenClassification

        from .common import load_with_head

        model, head = load_with_head(AutoModelForTokenClassification, model_path, dropout, num_labels=len(self.labels),
                                     id2label=dict(enumerate(self.labels)), label2id=dict(self.label_to_id))
        vocab = self.state.get("vocab_size")
        if vocab and model.get_input_embeddings().num_embeddings != vocab:
            from ..models import quiet_loading

            with quiet_loading():  # new case-marker rows start near the mean embedding, trained from there
                model.resize_token_embeddings(vocab, mean_resizing=True)
        return model, head

    def trainable_token_ids(self) -> list[int]:
        """The case-marker embeddings train under every method."""
        return list(self.state.get("marker_ids") or [])

    # ---- outputs -> words -> entities ------------------------------------------------------------
    def _word_probs(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[tuple[dict, np.ndarray]]:
        """Per record: (its words/offsets/text/gold, [n_words, n_labels] probabilities). Each word is read
        from its first sub-token in the window where that sub-token is farthest from a window edge."""
        records: dict[int, dict[str, Any]] = {}
        for feat, logits in zip(features, outputs):
            rec = records.setdefault(feat["record"], {"parts": None, "best": {}})
            if "parts" in feat:
                rec["parts"] = feat["parts"]
            start, end, total = feat["window"]
            probs = softmax(logits)
            seen: set[int] = set()
            for j, w in enumerate(feat["word_ids"]):
                if w is None or w in seen:
                    continue
                seen.add(w)
                # distance to the nearest window edge that is not the input's own edge
                left = j if start > 0 else 10**9
                right = (end - start) - j if end < total else 10**9
                margin = min(left, right)
                if w not in rec["best"] or margin > rec["best"][w][0]:
                    rec["best"][w] = (margin, probs[j])
        result = []
        for g in sorted(records):
            parts = records[g]["parts"]
            n_words = sum(len(part["words"]) for part in parts)
            word_probs = np.zeros((n_words, len(self.labels)), dtype=np.float32)
            word_probs[:, 0] = 1.0  # a word with no sub-tokens (dropped by the tokenizer) reads as O
            for w, (_, p) in records[g]["best"].items():
                word_probs[w] = p
            start = 0
            for part in parts:  # a document group splits back into its records
                result.append((part, word_probs[start : start + len(part["words"])]))
                start += len(part["words"])
        return result

    def _tags(self, word_probs: np.ndarray) -> list[str]:
        return [self.labels[k] for k in word_probs.argmax(-1)]

    def decode(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        predictions = []
        for head, probs in self._word_probs(outputs, features):
            tags = self._tags(probs)
            best = probs.max(-1)
            entities = []
            for kind, a, b in spans(tags):
                start, end = head["offsets"][a][0], head["offsets"][b - 1][1]
                entities.append({"type": kind, "start": start, "end": end, "text": head["text"][start:end],
                                 "score": float(best[a:b].mean())})
            predictions.append({"entities": entities, "tags": tags, "words": head["words"]})
        return predictions

    def compute_metrics(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> dict[str, Any]:
        from ..metrics import entity_metrics

        gold, pred = [], []
        for head, probs in self._word_probs(outputs, features):
            gold.append(head["gold"])
            pred.append(self._tags(probs))
        return entity_metrics(gold, pred)

    # ---- data augmentation: tokens and tags, entity words fixed -------------------------------------
    augment_kind = "tokens"

    def augment_units(self, row: dict[str, Any]) -> list[Any]:
        """The record's tokens with their BIO tags (any scheme in the data is read as BIO); entity tokens fixed."""
        from ..augment import Unit

        s = self.state
        if s["tokens_column"] not in row or s["tags_column"] not in row:
            raise DataError(f"NER augmentation needs records of {s['tokens_column']!r} and {s['tags_column']!r} "
                            "(tokens and tags), not text with entity offsets")
        ex = self._examples(Records([row], "input", None, list(row)), with_labels=True)[0]
        return [Unit(w, t, t != "O") for w, t in zip(ex["words"], ex["tags"])]

    def augment_record(self, row: dict[str, Any], units: list[Any]) -> dict[str, Any]:
        """The record with the augmented tokens and their tags (BIO)."""
        return {**row, self.state["tokens_column"]: [u.text for u in units],
                self.state["tags_column"]: [u.tag or "O" for u in units]}

    # ---- explanations: one predicted entity at a time -------------------------------------------
    def explain_column(self, record: dict[str, Any]) -> str:
        """The tokens column when the record has one, else the text column."""
        return self.state["tokens_column"] if self.state["tokens_column"] in record else self.state["text_column"]

    def explain_text(self, record: dict[str, Any]) -> str:
        """The record's text as the model reads it (tokens joined by spaces); entity offsets refer to it."""
        return self._examples(Records([record], "input", None, list(record)), with_labels=False)[0]["text"]

    def explain_targets(self, prediction: dict[str, Any]) -> list[str]:
        """Each predicted entity as ``TYPE@start:end`` (character offsets in the text), in text order."""
        return [f"{e['type']}@{e['start']}:{e['end']}" for e in prediction["entities"]]

    def explain_resolve_target(self, prediction: dict[str, Any], target: str | None) -> str:
        """The first predicted entity when ``target`` is None; else the entity named ``TYPE@start:end``, or the
        first one whose text or type is ``target``."""
        targets = self.explain_targets(prediction)
        if not targets:
            raise DataError("no entity was predicted in this text, so there is none to explain")
        if target is None or target in targets:
            return targets[0] if target is None else target
        for key, entity in zip(targets, prediction["entities"]):
            if target in (entity["text"], entity["type"]):
                return key
        raise ConfigError(f"target {target!r} is not a predicted entity (give TYPE@start:end, its text or its type); "
                          "predicted: " + ", ".join(f"{t} {e['text']!r}" for t, e in zip(targets, prediction["entities"])))

    def explain_inputs(self, tokenizer: Any, record: dict[str, Any], target: str, prediction: dict[str, Any]) -> Any:
        """The window ``encode`` makes that holds the entity, each token's word span, and the entity's type
        probability: the mean over its words of p(B-TYPE) at the first and p(I-TYPE) at the rest (first sub-tokens)."""
        from .base import ExplainInputs

        kind, _, span = target.partition("@")
        start, end = (int(x) for x in span.split(":"))
        features = self.encode(Records([record], "input", None, list(record)), tokenizer, with_labels=False)
        part = features[0]["parts"][0]
        words = [k for k, (a, b) in enumerate(part["offsets"]) if start <= a and b <= end]
        feature = next((f for f in features if all(w in f["word_ids"] for w in words)), None)
        if feature is None:
            raise DataError(f"entity {target} is longer than one window of the model ({self.state['max_length']} tokens)")
        firsts = [feature["word_ids"].index(w) for w in words]
        tags = [self.label_to_id[f"{'B' if k == 0 else 'I'}-{kind}"] for k in range(len(words))]
        spans = [None if w is None else tuple(part["offsets"][w]) for w in feature["word_ids"]]
        batch = self.collate(tokenizer)([{k: feature[k] for k in ("input_ids", "token_type_ids") if k in feature}])

        def score(outputs: Any) -> torch.Tensor:
            probs = torch.softmax(outputs.logits.float(), dim=-1)
            return probs[:, firsts, tags].mean(-1)

        return ExplainInputs(batch, spans, score, firsts)

    # ---- error analysis (metrics and sections: EntityAnalysis) ------------------------------------
    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per record: gold and predicted entities (strict IOB2, as the metrics count them), counts per type, and
        each error's kind (boundary, type, both, missed, spurious); the loss is the number of wrong entities."""
        return [entity_row(ex["text"], set(spans(ex["tags"], strict=True)), set(spans(prediction["tags"], strict=True)),
                           lambda span, words=ex["words"]: " ".join(words[span[1]:span[2]]))
                for ex, prediction in zip(self._examples(records, with_labels=True), predictions)]

    def plots(self, metrics: dict[str, Any], folder: Path) -> list[Path]:
        from ..plots import per_label_f1_png

        if "per_type" not in metrics:
            return []
        path = folder / "per_type_f1.png"
        per_label_f1_png(metrics["per_type"], path, title="validation scores per entity type")
        return [path]


def _has(records: Records, column: str) -> bool:
    return any(column in r for r in records.rows[:50])
