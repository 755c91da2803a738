"""Text classification: single-label, multi-label, regression, and sentence pairs.

The same ``encode`` runs at training and at prediction time (no train/serve skew); ``state`` is the
plain-data description of the label space that the artifact stores.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from .. import metrics as M
from ..config import Config, DataConfig, TaskOptions
from ..data import Records, require_column
from ..errors import ConfigError, DataError
from ..probabilities import sigmoid, softmax
from .base import ExplainInputs, Task
from .common import LabelScores, label_str, label_weights, pad_batch
from .prompted_classification import PromptClassifier


class ClassificationOptions(TaskOptions):
    """``task:`` for classification."""

    problem_type: Literal["single_label", "multi_label", "regression"] = Field(
        "single_label", description="classification: one label, several labels, or a number per text")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="multi_label: score above which a label is on")
    system_prompt: str | None = Field(None, description="zero/few-shot: a system turn (default: the chat template's)")
    fusion: Literal["concat", "gated", "cross_attention", "text_only", "image_only"] | None = Field(
        None, description="with data.image_column: how text and image join (default concat); text_only and "
        "image_only ablate one tower")
    image_model: str | None = Field(None, description="with data.image_column: the image encoder, a packaged name "
                                    "or a local HF vision folder (default efficientnet-lite0)")
    frozen: list[Literal["text", "image"]] = Field(default_factory=list, description="with data.image_column: "
                                                   "towers that keep their pretrained weights")
    image_cache_mb: int = Field(2048, ge=0, description="with a frozen image tower: keep its output for each distinct "
                                "image while training (the tower then runs once per image, not once per epoch and "
                                "evaluation), up to this many MB; 0: off")
    modality_dropout: float = Field(0.0, ge=0.0, lt=0.5, description="with a two-tower fusion: while training, the "
                                    "share of records whose text is hidden from the head, and the same share whose "
                                    "image is (never both), so that the head learns from each input, not only the "
                                    "easier one; 0: off")


class ClassificationColumns(DataConfig):
    """``data:`` for classification."""

    text_pair_column: str | None = Field(None, description="second text for sentence-pair tasks")
    label_column: str = "label"
    label_separator: str = Field("|", description="multi_label: separator when labels come as one string")
    image_column: str | None = Field(None, description="an image per record (a path relative to the data file, "
                                     "bytes, or a data URI): text+image classification with task.fusion")


class ClassPrediction(BaseModel):
    """One classification prediction: ``label`` + ``score`` (single-label), ``labels`` (multi-label), or
    ``score`` alone (regression); ``scores`` per label."""

    label: str | None = None
    labels: list[str] | None = None
    score: float | None = None
    scores: dict[str, float] | None = None


class ClassificationTask(LabelScores, Task):
    """Text classification: single-label, multi-label, regression, and sentence pairs."""

    Options = ClassificationOptions
    Columns = ClassificationColumns
    Prediction = ClassPrediction
    Prompted = PromptClassifier
    strategies = ("finetune", "zero_shot", "few_shot", "setfit")
    prompt_slots = frozenset({"text", "text_pair", "labels"})
    peft_task_type = "SEQ_CLS"
    augment_kind = "text"  # the first text (of a pair) is augmented
    with_images: ClassVar[type[ClassificationTask] | None] = None  # the text+image form (set by tunelab.tasks)

    def __init__(self, state: dict[str, Any]):
        super().__init__(state)
        self.problem_type: str = state["problem_type"]
        self.label_to_id = {name: i for i, name in enumerate(self.labels)}

    # ---- building the label space (training data only) -------------------------------------------
    @classmethod
    def variant(cls, data: Any) -> type[Task]:
        """The text+image form when ``data.image_column`` is set, else this class."""
        images = cls.with_images
        if getattr(data, "image_column", None) and images is not None and not issubclass(cls, images):
            return images
        return cls

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Task:
        """A saved task: the text+image form when its state has an image column."""
        images = cls.with_images
        if state.get("image_column") and images is not None and not issubclass(cls, images):
            return images(state)
        return cls(state)

    @classmethod
    def from_training_data(cls, cfg: Config, train: Records) -> ClassificationTask:
        if cls.variant(cfg.data) is not cls:
            return cls.variant(cfg.data).from_training_data(cfg, train)
        for name in ("fusion", "image_model", "frozen", "modality_dropout"):
            if getattr(cfg.task, name) and not getattr(cfg.data, "image_column", None):
                raise ConfigError(f"task.{name} applies to text+image classification: set data.image_column")
        d = cfg.data
        state: dict[str, Any] = {
            "problem_type": cfg.task.problem_type,
            "text_column": d.text_column,
            "text_pair_column": d.text_pair_column,
            "label_column": d.label_column,
            "label_separator": d.label_separator,
            "max_length": d.max_length,
            "threshold": cfg.task.threshold,
        }
        cls._require_inputs(cfg, train)
        require_column(train, d.label_column, "labels", "data.label_column")
        if cfg.task.problem_type != "regression":
            seen: Counter[str] = Counter()
            for i, row in enumerate(train.rows):
                for name in _label_names(row.get(d.label_column), train, i, d.label_column, cfg.task.problem_type,
                                         d.label_separator):
                    seen[name] += 1
            if len(seen) < 2 and cfg.task.problem_type == "single_label":
                raise DataError(f"{train.source}: column {d.label_column!r} has only one label ({list(seen)}); need two or more")
            state["labels"] = sorted(seen, key=_natural_key)
            state["label_counts"] = {k: seen[k] for k in state["labels"]}
        else:
            # Regression targets are standardised for training (a fresh head outputs ~0, and losses on raw
            # scales of 1-5 or 0-100 train poorly); predictions are mapped back to the original scale.
            task = cls({**state, "target_mean": 0.0, "target_std": 1.0})
            values = np.array([task._label_value(r.get(d.label_column), train, i) for i, r in enumerate(train.rows)])
            state["target_mean"] = float(values.mean())
            state["target_std"] = float(values.std()) or 1.0
        return cls(state)

    @classmethod
    def _require_inputs(cls, cfg: Config, train: Records) -> None:
        """Check that the training records have the columns a model reads (the text, and its pair)."""
        require_column(train, cfg.data.text_column, "input text", "data.text_column")
        if cfg.data.text_pair_column:
            require_column(train, cfg.data.text_pair_column, "second text of the pair", "data.text_pair_column")

    def input_columns(self) -> list[str]:
        pair = self.state.get("text_pair_column")
        return [self.state["text_column"]] + ([pair] if pair else [])

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, (tuple, list)):
            if self.state.get("text_pair_column") and len(item) == 2:
                return {self.state["text_column"]: item[0], self.state["text_pair_column"]: item[1]}
            raise DataError("(text, text_pair) inputs need a model trained on sentence pairs "
                            "(data.text_pair_column); this one takes single texts")
        return super().input_row(item)

    def class_weights(self, spec: str | dict[str, float] | None) -> torch.Tensor | None:
        if self.problem_type == "regression":
            return None
        return label_weights(spec, self.labels, self.state.get("label_counts", {}))

    def stratify_keys(self, records: Records) -> list[str] | None:
        if self.problem_type != "single_label":
            return None
        return [str(r.get(self.state["label_column"])).strip() for r in records.rows]

    # ---- records -> features (shared by training and prediction) ---------------------------------
    def encode(self, records: Records, tokenizer: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        s = self.state
        require_column(records, s["text_column"], "input text", "data.text_column")
        pair_col = s.get("text_pair_column")
        if pair_col:
            require_column(records, pair_col, "second text of the pair", "data.text_pair_column")
        texts = [_text(row, s["text_column"], records, i) for i, row in enumerate(records.rows)]
        pairs = [_text(row, pair_col, records, i) for i, row in enumerate(records.rows)] if pair_col else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=s["max_length"])
        features = []
        has_types = "token_type_ids" in enc
        for i in range(len(texts)):
            feat: dict[str, Any] = {"input_ids": enc["input_ids"][i]}
            if has_types:
                feat["token_type_ids"] = enc["token_type_ids"][i]
            features.append(feat)
        if with_labels:
            require_column(records, s["label_column"], "labels", "data.label_column")
            for i, row in enumerate(records.rows):
                features[i]["labels"] = self._label_value(row.get(s["label_column"]), records, i)
        return features

    def _label_value(self, raw: Any, records: Records, i: int) -> Any:
        col = self.state["label_column"]
        if self.problem_type == "regression":
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise DataError(f"{records.where(i)}, column {col!r}: expected a number, got {raw!r}") from None
            if not np.isfinite(value):
                raise DataError(f"{records.where(i)}, column {col!r}: label is {value}")
            return value
        names = _label_names(raw, records, i, col, self.problem_type, self.state["label_separator"])
        for name in names:
            if name not in self.label_to_id:
                raise DataError(
                    f"{records.where(i)}, column {col!r}: unknown label {name!r}; "
                    f"labels seen in training: {', '.join(self.labels)}"
                )
        if self.problem_type == "single_label":
            return self.label_to_id[names[0]]
        hot = [0.0] * len(self.labels)
        for name in names:
            hot[self.label_to_id[name]] = 1.0
        return hot

    def collate(self, processor: Any) -> Any:
        dtype = torch.long if self.problem_type == "single_label" else torch.float
        return partial(pad_batch, pad_token_id=processor.pad_token_id or 0, label_dtype=dtype)

    # ---- model -----------------------------------------------------------------------------------
    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        """The base model with a classification head; returns it and the names of its new (head) modules."""
        from transformers import AutoModelForSequenceClassification

        from .common import load_with_head

        updates: dict[str, Any] = {
            "num_labels": 1 if self.problem_type == "regression" else len(self.labels),
            "problem_type": {"single_label": "single_label_classification",
                             "multi_label": "multi_label_classification", "regression": "regression"}[self.problem_type],
        }
        if self.labels:
            updates.update(id2label=dict(enumerate(self.labels)), label2id=dict(self.label_to_id))
        return load_with_head(AutoModelForSequenceClassification, model_path, dropout, **updates)

    # ---- loss, decoding, metrics -----------------------------------------------------------------
    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Summed (not averaged) loss over the batch, so gradient accumulation can normalise by the
        number of examples in the whole accumulation window."""
        logits = outputs.logits
        if self.problem_type == "single_label":
            return F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum")
        if self.problem_type == "multi_label":
            per = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=weights, reduction="none")
            return per.mean(dim=1).sum()
        target = (labels - self.state["target_mean"]) / self.state["target_std"]
        return F.mse_loss(logits.float().squeeze(-1), target, reduction="sum")

    def _unscale(self, logits: np.ndarray) -> np.ndarray:
        return logits.reshape(-1) * self.state["target_std"] + self.state["target_mean"]

    def decode(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One prediction per record (classification: one feature per record)."""
        logits = np.stack(outputs)
        if self.problem_type == "regression":
            return [{"score": float(v)} for v in self._unscale(logits)]
        if self.problem_type == "multi_label":
            probs = sigmoid(logits)
            th = self.state["threshold"]
            return [
                {"labels": [self.labels[j] for j in np.flatnonzero(p >= th)], "scores": dict(zip(self.labels, map(float, p)))}
                for p in probs
            ]
        probs = softmax(logits / self.state.get("temperature", 1.0))
        return [
            {"label": self.labels[int(p.argmax())], "score": float(p.max()), "scores": dict(zip(self.labels, map(float, p)))}
            for p in probs
        ]

    # ---- explanations ------------------------------------------------------------------------------
    def explain_inputs(self, tokenizer: Any, record: dict[str, Any], target: str, prediction: dict[str, Any]) -> ExplainInputs:
        """The batch ``encode`` makes for ``record`` (same ids), each token's span in the text, and the target
        label's probability (softmax, or its sigmoid for multi-label)."""
        s = self.state
        pair_col = s.get("text_pair_column")
        text = str(record[s["text_column"]])
        pair = str(record[pair_col]) if pair_col else None
        enc = tokenizer(text, pair, truncation=True, max_length=s["max_length"], return_offsets_mapping=True,
                        return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()
        spans = [(a, b) if sid == 0 and b > a else None for sid, (a, b) in zip(enc.sequence_ids(0), offsets)]
        index = self.labels.index(target)

        def score(outputs: Any) -> torch.Tensor:
            logits = outputs.logits.float()
            if self.problem_type == "multi_label":
                return torch.sigmoid(logits)[:, index]
            return torch.softmax(logits / s.get("temperature", 1.0), dim=-1)[:, index]

        return ExplainInputs(dict(enc), spans, score)

    # ---- error analysis: single-label in LabelScores; multi-label and regression here -------------
    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Single-label: see ``LabelScores``; multi-label: label sets (correct = the exact set, loss = mean BCE);
        regression: numbers (loss = squared error)."""
        if self.problem_type == "single_label":
            return super().analysis_rows(records, predictions)
        rows = []
        for i, (row, prediction) in enumerate(zip(records.rows, predictions)):
            gold = self._label_value(row.get(self.state["label_column"]), records, i)
            text = str(row[self.state["text_column"]])
            if self.problem_type == "regression":
                rows.append({"text": text, "gold": f"{gold:g}", "pred": f"{prediction['score']:g}", "gold_value": gold,
                             "pred_value": prediction["score"], "correct": None, "loss": (prediction["score"] - gold) ** 2})
                continue
            on = {self.labels[k] for k, v in enumerate(gold) if v}
            p = np.clip([prediction["scores"][name] for name in self.labels], 1e-12, 1 - 1e-12)
            loss = -float(np.mean(np.asarray(gold) * np.log(p) + (1 - np.asarray(gold)) * np.log(1 - p)))
            rows.append({"text": text, "gold": "|".join(sorted(on)), "pred": "|".join(sorted(prediction["labels"])),
                         "gold_set": sorted(on), "pred_set": sorted(prediction["labels"]),
                         "correct": on == set(prediction["labels"]), "loss": loss})
        return rows

    def analysis_metrics(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Single-label: accuracy and macro-F1; multi-label: exact-set accuracy and micro-F1; regression: RMSE."""
        if self.problem_type == "single_label":
            return super().analysis_metrics(rows)
        if self.problem_type == "regression":
            return {"rmse": float(np.sqrt(np.mean([r["loss"] for r in rows]))) if rows else 0.0}
        tp = sum(len(set(r["gold_set"]) & set(r["pred_set"])) for r in rows)
        n_pred, n_gold = sum(len(r["pred_set"]) for r in rows), sum(len(r["gold_set"]) for r in rows)
        return {"exact_match": float(np.mean([r["correct"] for r in rows])) if rows else 0.0,
                "f1_micro": 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0}

    def analysis_sections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Single-label: see ``LabelScores``; multi-label: per-label P/R/F1; regression: none."""
        if self.problem_type == "single_label":
            return super().analysis_sections(rows)
        if self.problem_type == "regression":
            return []
        report = {}
        for name in self.labels:
            tp = sum(name in r["gold_set"] and name in r["pred_set"] for r in rows)
            n_pred, n_gold = sum(name in r["pred_set"] for r in rows), sum(name in r["gold_set"] for r in rows)
            p, rc = tp / n_pred if n_pred else 0.0, tp / n_gold if n_gold else 0.0
            report[name] = {"precision": p, "recall": rc, "f1": 2 * p * rc / (p + rc) if p + rc else 0.0, "support": n_gold}
        return [{"title": "Per label", "table": [{"label": k, **v} for k, v in report.items()],
                 "plot": {"kind": "per_label", "report": report}}]

    def scales_temperature(self) -> bool:
        """Single-label scores are softmax(logits / temperature) (temperature 1 until one is fitted)."""
        return self.problem_type == "single_label"

    @property
    def primary_metric(self) -> tuple[str, bool]:
        """(metric name, higher is better)."""
        return {"single_label": ("accuracy", True), "multi_label": ("f1_micro", True), "regression": ("rmse", False)}[
            self.problem_type
        ]

    def compute_metrics(self, outputs: list[np.ndarray], features: list[dict[str, Any]]) -> dict[str, Any]:
        logits = np.stack(outputs)
        labels = np.asarray([f["labels"] for f in features])
        if self.problem_type == "single_label":
            return M.single_label_metrics(logits.argmax(-1).tolist(), labels.tolist(), self.labels)
        if self.problem_type == "multi_label":
            pred = (sigmoid(logits) >= self.state["threshold"]).astype(int)
            return M.multi_label_metrics(pred, labels.astype(int), self.labels)
        return M.regression_metrics(self._unscale(logits), labels.reshape(-1))

    def plots(self, metrics: dict[str, Any], folder: Path) -> list[Path]:
        from ..plots import confusion_matrix_png

        if "confusion_matrix" not in metrics:
            return []
        path = folder / "confusion_matrix.png"
        confusion_matrix_png(metrics["confusion_matrix"], self.labels, path, title="validation confusion matrix")
        return [path]


def _natural_key(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def _text(row: dict[str, Any], column: str, records: Records, i: int) -> str:
    if column not in row:
        raise DataError(f"{records.where(i)}: column {column!r} is missing")
    value = row[column]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise DataError(f"{records.where(i)}, column {column!r}: empty text")
    text = str(value)
    if not text.strip():
        raise DataError(f"{records.where(i)}, column {column!r}: empty text")
    return text


def _label_names(raw: Any, records: Records, i: int, column: str, problem_type: str, separator: str) -> list[str]:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{records.where(i)}, column {column!r}: missing label")
    if problem_type == "multi_label":
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(separator)
        names = [label_str(x) for x in items if str(x).strip()]
        if not names:
            raise DataError(f"{records.where(i)}, column {column!r}: no labels in {raw!r}")
        return names
    if isinstance(raw, (list, tuple, dict)):
        raise DataError(f"{records.where(i)}, column {column!r}: expected one label, got {raw!r} "
                        "(multi-label? set task.problem_type)")
    return [label_str(raw)]
