"""Relation extraction between two marked entities (entity-marker representation).

Input: a sentence with SemEval-style markers (``<e1>…</e1>`` and ``<e2>…</e2>``), or a text plus two
character spans (columns ``e1_start``, ``e1_end``, ``e2_start``, ``e2_end``). The entities are wrapped in
marker tokens ``[E1] … [/E1]`` / ``[E2] … [/E2]`` added to the tokenizer (their embeddings are trained:
whole for ``full``, as trainable token rows for ``lora``); the head reads the hidden states at the two
start markers. Labels may carry a direction, like ``Cause-Effect(e1,e2)``.

Metric: the official SemEval-2010 Task 8 score — macro-F1 over the relation types excluding the negative
label (``Other``), with direction taken into account: a prediction is correct only with the right type
and direction — plus a per-relation report and accuracy.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..config import Config, DataConfig, TaskOptions
from ..data import Records, require_column
from ..errors import DataError
from ..probabilities import softmax
from .base import Task
from .common import LabelScores, label_weights, pad_batch, special_tokens_around

MARKERS = ["[E1]", "[/E1]", "[E2]", "[/E2]"]
_TAG = re.compile(r"</?e[12]>")
_DIRECTION = re.compile(r"\((e[12]),(e[12])\)$")


def relation_type(label: str) -> str:
    """'Cause-Effect(e1,e2)' -> 'Cause-Effect'."""
    return _DIRECTION.sub("", label)


def mark_entities(text: str, where: str) -> tuple[str, str, str]:
    """Replace ``<e1>``-style tags with marker tokens; return (marked text, e1 text, e2 text)."""
    tags = [(m.group(), m.start(), m.end()) for m in _TAG.finditer(text)]
    names = [t for t, _, _ in tags]
    for tag in ("<e1>", "</e1>", "<e2>", "</e2>"):
        if names.count(tag) != 1:
            raise DataError(f"{where}: expected exactly one {tag} marker, found {names.count(tag)}")
    order = {t: i for i, t in enumerate(names)}
    if not (order["<e1>"] < order["</e1>"] and order["<e2>"] < order["</e2>"]):
        raise DataError(f"{where}: a closing marker comes before its opening marker")
    if names not in (["<e1>", "</e1>", "<e2>", "</e2>"], ["<e2>", "</e2>", "<e1>", "</e1>"]):
        raise DataError(f"{where}: entity markers are nested or overlapping ({' '.join(names)}); "
                        "the two entities must be separate spans")
    pieces, last = [], 0
    replacement = {"<e1>": " [E1] ", "</e1>": " [/E1] ", "<e2>": " [E2] ", "</e2>": " [/E2] "}
    for tag, a, b in tags:
        pieces.append(text[last:a])
        pieces.append(replacement[tag])
        last = b
    pieces.append(text[last:])
    spans = {t: (a, b) for t, a, b in tags}
    e1 = text[spans["<e1>"][1] : spans["</e1>"][0]]
    e2 = text[spans["<e2>"][1] : spans["</e2>"][0]]
    for name, value in (("e1", e1), ("e2", e2)):
        if not value.strip():
            raise DataError(f"{where}: entity {name} is empty")
    return re.sub(r" {2,}", " ", "".join(pieces)).strip(), e1, e2


def tag_spans(text: str, e1: tuple[int, int], e2: tuple[int, int], where: str) -> str:
    """Text + two character spans -> text with <e1>/<e2> tags."""
    for name, (a, b) in (("e1", e1), ("e2", e2)):
        if not 0 <= a < b <= len(text):
            raise DataError(f"{where}: span {name} [{a}, {b}) is outside the text (length {len(text)})")
    if e1[0] < e2[1] and e2[0] < e1[1]:
        raise DataError(f"{where}: spans e1 {list(e1)} and e2 {list(e2)} overlap")
    inserts = sorted([(e1[0], "<e1>"), (e1[1], "</e1>"), (e2[0], "<e2>"), (e2[1], "</e2>")],
                     key=lambda x: (x[0], "/" not in x[1]))
    out, last = [], 0
    for pos, tag in inserts:
        out.append(text[last:pos])
        out.append(tag)
        last = pos
    out.append(text[last:])
    return "".join(out)


class EntityMarkerModel(torch.nn.Module):
    """An encoder plus a linear head over the concatenated hidden states at [E1] and [E2]."""

    base_model_prefix = "encoder"  # like transformers' heads: getattr(model, model.base_model_prefix) is the encoder

    def __init__(self, encoder: torch.nn.Module, num_labels: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # peft and accelerate look for .config
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(2 * encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, e1_index: torch.Tensor | None = None,
                e2_index: torch.Tensor | None = None, output_hidden_states: bool = False,
                inputs_embeds: torch.Tensor | None = None, **_: Any) -> Any:
        """Logits from the hidden states at the two entity markers (from ``input_ids`` or ``inputs_embeds``);
        without entity positions (``e1_index`` None) only the encoder's ``hidden_states`` (what analyze maps)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if inputs_embeds is not None:  # adversarial training and attributions feed embeddings, not ids
            kwargs["inputs_embeds"] = inputs_embeds
        encoded = self.encoder(input_ids=input_ids, output_hidden_states=output_hidden_states, **kwargs)
        if e1_index is None:
            return SequenceClassifierOutput(hidden_states=encoded.hidden_states)
        hidden = encoded.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = torch.cat([hidden[rows, e1_index], hidden[rows, e2_index]], dim=-1)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)), hidden_states=encoded.hidden_states)

    def get_input_embeddings(self) -> torch.nn.Module:
        """The encoder's word embeddings (peft and resizing look for them here)."""
        return self.encoder.get_input_embeddings()

    def save_pretrained(self, path: str | Path, **kwargs: Any) -> None:
        """The encoder as a plain transformers model, the head as head.safetensors beside it."""
        from safetensors.torch import save_file

        self.encoder.save_pretrained(path, **kwargs)
        save_file({k: v.contiguous() for k, v in self.classifier.state_dict().items()}, str(Path(path) / "head.safetensors"))


class RelationOptions(TaskOptions):
    """``task:`` for relation extraction."""

    negative_label: str = Field("Other", description="the no-relation label, left out of macro-F1")


class RelationColumns(DataConfig):
    """``data:`` for relation extraction (entity spans may also come as e1_start/e1_end/e2_start/e2_end)."""

    label_column: str = "label"


class RelationPrediction(BaseModel):
    """One relation: the label (with direction), its probability, the two entities' texts, every label's."""

    label: str
    score: float
    e1: str
    e2: str
    scores: dict[str, float]


class RelationTask(LabelScores, Task):
    """Relation classification between two marked entities (see the module docstring)."""

    Options = RelationOptions
    Columns = RelationColumns
    Prediction = RelationPrediction
    peft_task_type = None  # a custom head: peft wraps it as a plain model
    primary_metric = ("macro_f1", True)
    augment_kind = "marked_text"  # the <e1>…</e1> and <e2>…</e2> spans are never touched

    def __init__(self, state: dict[str, Any]):
        super().__init__(state)
        self.label_to_id = {name: i for i, name in enumerate(self.labels)}

    def explain_protected(self, text: str) -> list[tuple[int, int]]:
        """The two marked entities stay whole when an explanation removes words: it is about the words that
        relate them."""
        tags = {m.group(): (m.start(), m.end()) for m in _TAG.finditer(text)}
        if len(tags) != 4:
            raise DataError("explain a relation input written with <e1>…</e1> and <e2>…</e2> markers")
        return sorted((tags[f"<{e}>"][0], tags[f"</{e}>"][1]) for e in ("e1", "e2"))

    @classmethod
    def from_training_data(cls, cfg: Config, train: Records) -> RelationTask:
        d = cfg.data
        require_column(train, d.label_column, "relation labels", "data.label_column")
        counts = Counter(str(r.get(d.label_column, "")).strip() for r in train.rows)
        if "" in counts:
            i = next(i for i, r in enumerate(train.rows) if not str(r.get(d.label_column, "")).strip())
            raise DataError(f"{train.where(i)}, column {d.label_column!r}: missing label")
        labels = sorted(counts)
        if len(labels) < 2:
            raise DataError(f"{train.source}: only one relation label ({labels}); need two or more")
        negative = cfg.task.negative_label
        state = {"text_column": d.text_column, "label_column": d.label_column, "max_length": d.max_length,
                 "labels": labels, "label_counts": dict(counts), "negative_label": negative if negative in counts else None}
        return cls(state)

    def stratify_keys(self, records: Records) -> list[str]:
        return [str(r.get(self.state["label_column"])).strip() for r in records.rows]

    def class_weights(self, spec: str | dict[str, float] | None) -> torch.Tensor | None:
        return label_weights(spec, self.labels, self.state.get("label_counts", {}))

    # ---- tokenizer and features --------------------------------------------------------------------
    def prepare_processor(self, tokenizer: Any) -> None:
        """Add the marker tokens (a no-op for a tokenizer saved with them)."""
        tokenizer.add_special_tokens({"additional_special_tokens": MARKERS}, replace_extra_special_tokens=False)
        self.state["vocab_size"] = len(tokenizer)
        self.state["marker_ids"] = tokenizer.convert_tokens_to_ids(MARKERS)

    def _marked(self, row: dict[str, Any], records: Records, i: int) -> tuple[str, str, str]:
        col = self.state["text_column"]
        where = f"{records.where(i)}, column {col!r}"
        text = row.get(col)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: empty text")
        if all(k in row for k in ("e1_start", "e1_end", "e2_start", "e2_end")):
            try:
                e1 = (int(row["e1_start"]), int(row["e1_end"]))
                e2 = (int(row["e2_start"]), int(row["e2_end"]))
            except (TypeError, ValueError):
                raise DataError(f"{records.where(i)}: e1_start/e1_end/e2_start/e2_end must be integers") from None
            text = tag_spans(text, e1, e2, records.where(i))
        if text.startswith('"') and text.endswith('"'):
            text = text[1:-1]  # SemEval quotes every sentence
        return mark_entities(text, where)

    def encode(self, records: Records, tokenizer: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        prefix, suffix = special_tokens_around(tokenizer)
        body = self.state["max_length"] - len(prefix) - len(suffix)
        e1_id, e2_id = tokenizer.convert_tokens_to_ids(["[E1]", "[E2]"])
        marked = [self._marked(row, records, i) for i, row in enumerate(records.rows)]
        enc = tokenizer([m[0] for m in marked], add_special_tokens=False)
        features = []
        for i, ids in enumerate(enc["input_ids"]):
            p1, p2 = ids.index(e1_id), ids.index(e2_id)
            if len(ids) > body:
                # Keep a window that holds both entities, centred on them.
                lo, hi = min(p1, p2), max(p1, p2)
                if hi - lo + 1 > body:
                    raise DataError(f"{records.where(i)}: the two entities are {hi - lo} tokens apart, more than "
                                    f"data.max_length allows ({self.state['max_length']}); raise it")
                start = max(0, min(lo - (body - (hi - lo + 1)) // 2, len(ids) - body))
                ids = ids[start : start + body]
                p1, p2 = p1 - start, p2 - start
            feat: dict[str, Any] = {"input_ids": prefix + ids + suffix, "e1_index": p1 + len(prefix),
                                    "e2_index": p2 + len(prefix), "e1": marked[i][1], "e2": marked[i][2]}
            if with_labels:
                label = str(records.rows[i].get(self.state["label_column"], "")).strip()
                if label not in self.label_to_id:
                    raise DataError(f"{records.where(i)}, column {self.state['label_column']!r}: unknown relation "
                                    f"{label!r}; labels seen in training: {', '.join(self.labels)}")
                feat["labels"] = self.label_to_id[label]
            features.append(feat)
        return features

    def collate(self, processor: Any) -> Any:
        base = partial(pad_batch, pad_token_id=processor.pad_token_id or 0, label_dtype=torch.long)

        def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            batch = base(features)
            batch["e1_index"] = torch.tensor([f["e1_index"] for f in features], dtype=torch.long)
            batch["e2_index"] = torch.tensor([f["e2_index"] for f in features], dtype=torch.long)
            return batch

        return collate

    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.float(), labels, weight=weights, reduction="sum")

    # ---- model -----------------------------------------------------------------------------------
    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        from safetensors.torch import load_file
        from transformers import AutoModel

        from ..models import load_pretrained, quiet_loading
        from .common import config_with_dropout

        config = config_with_dropout(model_path, dropout)
        with quiet_loading():
            encoder = load_pretrained(AutoModel, model_path, config=config, add_pooling_layer=False) \
                if config.model_type == "bert" else load_pretrained(AutoModel, model_path, config=config)
            if encoder.get_input_embeddings().num_embeddings != self.state["vocab_size"]:
                encoder.resize_token_embeddings(self.state["vocab_size"], mean_resizing=False)
        head_dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        model = EntityMarkerModel(encoder, len(self.labels), head_dropout)
        local = not isinstance(model_path, str) or Path(model_path).exists()
        head_file = Path(model_path) / "head.safetensors" if local else None
        if head_file is not None and head_file.is_file():
            model.classifier.load_state_dict(load_file(str(head_file)))
        return model, ["classifier"]

    def export_example(self) -> list[dict[str, Any]]:
        col = self.state["text_column"]
        return [{col: "The <e1>storm</e1> caused the <e2>flood</e2> last night."},
                {col: "A <e1>cup</e1> of <e2>tea</e2>."}]

    def trainable_token_ids(self) -> list[int]:
        """The marker embeddings train under every method."""
        return list(self.state["marker_ids"])

    # ---- predictions and metrics -----------------------------------------------------------------
    def scales_temperature(self) -> bool:
        """Scores are softmax(logits / temperature) (temperature 1 until one is fitted)."""
        return True

    def decode(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        probs = softmax(np.stack(outputs) / self.state.get("temperature", 1.0))
        return [{"label": self.labels[int(p.argmax())], "score": float(p.max()), "e1": f["e1"], "e2": f["e2"],
                 "scores": dict(zip(self.labels, map(float, p)))} for p, f in zip(probs, features)]

    def compute_metrics(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> dict[str, Any]:
        pred = [self.labels[int(np.argmax(o))] for o in outputs]
        gold = [self.labels[f["labels"]] for f in features]
        return relation_metrics(gold, pred, self.state.get("negative_label"))

    def plots(self, metrics: dict[str, Any], folder: Path) -> list[Path]:
        from ..plots import per_label_f1_png

        path = folder / "per_type_f1.png"
        per_label_f1_png(metrics["per_type"], path, title="validation scores per relation type")
        return [path]


def relation_metrics(gold: list[str], pred: list[str], negative: str | None) -> dict[str, Any]:
    """The official SemEval-2010 Task 8 score: per relation type (directions merged for counting), a
    prediction is correct only if it matches the gold label exactly (type and direction); precision =
    correct / predicted of that type, recall = correct / gold of that type; macro-F1 = mean F1 over the
    types present in the gold labels, excluding the negative label (``Other``)."""
    types = sorted({relation_type(g) for g in gold} - {negative})
    per: dict[str, dict[str, float]] = {}
    for kind in types:
        correct = sum(1 for g, p in zip(gold, pred) if g == p and relation_type(g) == kind)
        predicted = sum(1 for p in pred if relation_type(p) == kind)
        actual = sum(1 for g in gold if relation_type(g) == kind)
        precision = correct / predicted if predicted else 0.0
        recall = correct / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[kind] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return {
        "macro_f1": float(np.mean([v["f1"] for v in per.values()])) if per else 0.0,
        "macro_precision": float(np.mean([v["precision"] for v in per.values()])) if per else 0.0,
        "macro_recall": float(np.mean([v["recall"] for v in per.values()])) if per else 0.0,
        "accuracy": float(np.mean([g == p for g, p in zip(gold, pred)])) if gold else 0.0,
        "per_type": per,
    }
