"""Helpers shared by the encoder tasks: a base model with a fresh head, label weights, token padding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import Records
from ..errors import ConfigError, DataError

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout", "classifier_dropout")


def load_with_head(auto_class: Any, model_path: Any, dropout: float | None,
                   **config_updates: Any) -> tuple[torch.nn.Module, list[str]]:
    """``auto_class.from_pretrained`` with config updates (labels, problem type) and an optional dropout
    override; returns the model and the names of its newly initialised (head) modules, which must always
    train and always be saved."""
    from ..models import load_pretrained, quiet_loading

    config = config_with_dropout(model_path, dropout)
    for key, value in config_updates.items():
        setattr(config, key, value)
    if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos  # decoder LMs pool at the last non-pad token
    with quiet_loading():  # tunelab reports the new head itself
        model, info = load_pretrained(auto_class, model_path, config=config, output_loading_info=True)
    head = sorted({key.split(".")[0] for key in info["missing_keys"]}) or ["classifier"]
    return model, head


def config_with_dropout(model_path: Any, dropout: float | None) -> Any:
    """The model's config, with every dropout probability it has set to ``dropout`` (None: unchanged)."""
    from transformers import AutoConfig

    from ..models import load_pretrained

    config = load_pretrained(AutoConfig, model_path)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    return config


def label_weights(spec: str | dict[str, float] | None, labels: list[str], counts: dict[str, int]) -> torch.Tensor | None:
    """Loss weights per label: ``balanced`` (inverse frequency, as scikit-learn computes it) or a
    {label: weight} dict (unnamed labels weigh 1)."""
    if spec is None:
        return None
    if spec == "balanced":
        c = np.array([max(1, counts.get(name, 0)) for name in labels], dtype=float)
        return torch.tensor(c.sum() / (len(c) * c), dtype=torch.float)
    unknown = set(spec) - set(labels)
    if unknown:
        raise DataError(f"train.class_weights names unknown labels {sorted(unknown)}; labels are {labels}")
    return torch.tensor([float(spec.get(name, 1.0)) for name in labels], dtype=torch.float)


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after content (BERT: [CLS] / [SEP])."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def pad_batch(
    features: list[dict[str, Any]],
    pad_token_id: int,
    label_dtype: torch.dtype | None,
    label_pad: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad token lists to the longest in this batch (dynamic padding) and build the attention mask.

    ``label_pad`` set: labels are per-token lists, padded with it (-100: ignored by the loss).
    """
    longest = max(len(f["input_ids"]) for f in features)
    n = len(features)
    input_ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, longest), dtype=torch.long)
    has_types = "token_type_ids" in features[0]
    token_types = torch.zeros((n, longest), dtype=torch.long) if has_types else None
    for row, feat in enumerate(features):
        ids = feat["input_ids"]
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        if token_types is not None:
            token_types[row, : len(ids)] = torch.as_tensor(feat["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if token_types is not None:
        batch["token_type_ids"] = token_types
    if label_dtype is not None and "labels" in features[0]:
        if label_pad is None:
            batch["labels"] = torch.as_tensor([f["labels"] for f in features], dtype=label_dtype)
        else:
            labels = torch.full((n, longest), label_pad, dtype=label_dtype)
            for row, feat in enumerate(features):
                labels[row, : len(feat["labels"])] = torch.as_tensor(feat["labels"], dtype=label_dtype)
            batch["labels"] = labels
    return batch


class LabelScores:
    """Explanation members for tasks whose predictions carry ``scores`` per label (classification, relation,
    prompted classification): the target is a label, its score the prediction's probability for it."""

    labels: list[str]
    explains_by_prediction = True

    def explain_targets(self, prediction: dict[str, Any]) -> list[str]:
        """The labels, the predicted one (multi-label: the highest-scoring one) first."""
        if prediction.get("label") is not None:
            first = str(prediction["label"])
        elif prediction.get("scores"):
            first = max(prediction["scores"], key=prediction["scores"].get)
        else:
            raise DataError("this prediction has no label scores to explain (a regression model?)")
        return [first] + [name for name in self.labels if name != first]

    def explain_resolve_target(self, prediction: dict[str, Any], target: str | None) -> str:
        """The predicted label when ``target`` is None, else ``target`` if it is one of the model's labels."""
        targets = self.explain_targets(prediction)
        if target is not None and str(target) not in targets:
            raise ConfigError(f"target {target!r} is not a label of this model; its labels: {', '.join(self.labels)}")
        return targets[0] if target is None else str(target)

    def explain_score(self, prediction: dict[str, Any], target: str) -> float:
        """The prediction's probability for ``target``."""
        return float(prediction["scores"][target])

    # ---- error analysis: one label per record ------------------------------------------------------
    def gold_label(self, records: Records, i: int) -> str:
        """Record ``i``'s gold label, checked against the model's labels."""
        column = self.state["label_column"]
        raw = records.rows[i].get(column)
        if raw is None or not str(raw).strip():
            raise DataError(f"{records.where(i)}, column {column!r}: missing label (analysis needs labelled data)")
        name = label_str(raw)
        if name not in self.labels:
            raise DataError(f"{records.where(i)}, column {column!r}: unknown label {name!r}; "
                            f"the model's labels: {', '.join(self.labels)}")
        return name

    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per record: gold and predicted label, the probabilities, and the loss -log p(gold)."""
        rows = []
        for i, (row, prediction) in enumerate(zip(records.rows, predictions)):
            gold = self.gold_label(records, i)
            probs = [float(prediction["scores"][name]) for name in self.labels]
            gold_index = self.labels.index(gold)
            pair = self.state.get("text_pair_column")
            rows.append({"text": str(row[self.explain_column(row)]), "gold": gold, "pred": prediction["label"],
                         **({"text_pair": str(row[pair])} if pair else {}),
                         "correct": prediction["label"] == gold, "loss": -float(np.log(max(probs[gold_index], 1e-12))),
                         "probs": probs, "gold_index": gold_index, "group_gold": gold, "group_pred": prediction["label"]})
        return rows

    def analysis_metrics(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Accuracy and macro-F1 over the rows' labels."""
        from sklearn.metrics import f1_score

        if not rows:
            return {"accuracy": 0.0, "f1_macro": 0.0}
        gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
        return {"accuracy": float(np.mean([r["correct"] for r in rows])),
                "f1_macro": float(f1_score(gold, pred, labels=sorted(set(gold) | set(pred)), average="macro",
                                           zero_division=0))}

    def analysis_sections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-label precision/recall/F1, the confusion matrix and the most confused pairs (with an example)."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
        p, r, f, support = precision_recall_fscore_support(gold, pred, labels=self.labels, zero_division=0)
        per_label = {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(support[k])}
                     for k, name in enumerate(self.labels)}
        matrix = confusion_matrix(gold, pred, labels=self.labels)
        examples: dict[tuple[str, str], str] = {}
        for row in sorted(rows, key=lambda x: -x["loss"]):
            examples.setdefault((row["gold"], row["pred"]), row["text"])
        pairs = sorted(((int(matrix[a, b]), self.labels[a], self.labels[b]) for a in range(len(self.labels))
                        for b in range(len(self.labels)) if a != b and matrix[a, b]), reverse=True)[:10]
        return [
            {"title": "Per label", "table": [{"label": k, **v} for k, v in per_label.items()],
             "plot": {"kind": "per_label", "report": per_label}},
            {"title": "Confusion matrix", "table": [], "plot": {"kind": "confusion", "matrix": matrix.tolist(),
                                                                "labels": list(self.labels)}},
            {"title": "Most confused pairs", "table": [{"gold": g, "predicted": q, "count": n, "example": examples[(g, q)]}
                                                      for n, g, q in pairs],
             "note": "" if pairs else "no confusions: every prediction is right"},
        ]


def label_str(value: Any) -> str:
    """A label as the string the label map keeps: 1, 1.0 and "1" are the same label."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()

