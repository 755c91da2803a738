"""Few-shot classification SetFit-style (Tunstall et al., 2022): contrastively tune sentence embeddings
on pairs drawn from the k labelled examples (same label -> cosine 1, different -> 0), then fit a
logistic-regression head on the tuned embeddings.

The head is stored as plain numbers (JSON), the encoder as safetensors: no file of it can run code.
Training hooks (``fit(hooks=...)``) run in the contrastive loop too: ``training_features`` sees the labelled
examples as ``{"text", "label"}`` before pairs are drawn, ``ctx.compute_loss()`` recomputes the pair loss.

Example:
    >>> run = tunelab.fit(model="minilm", strategy="setfit", train=eight_per_class)   # doctest: +SKIP
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from ..config import Config, SetFitConfig
from ..data import Records
from ..errors import ConfigError, DataError
from ..hooks import StepContext, TrainHook
from ..models import load_pretrained, quiet_loading
from ..probabilities import softmax
from ..sentence_embeddings import Embedder
from ..tasks.base import Task
from ..tasks.prompted_classification import LabelPrediction
from .base import FitJob, Fitted, Strategy, is_causal_lm


def sample_pairs(labels: list[int], pairs_per_example: int, seed: int,
                 max_pairs: int | None = None) -> list[tuple[int, int, float]]:
    """Contrastive pairs, half positive (same label) and half negative: every unique pair of distinct
    examples once, the smaller side cycled to match the larger (SetFit's "oversampling"), and at least
    ``pairs_per_example`` x n pairs in all (cycling both sides) when that is more; at most ``max_pairs``.
    The all-pairs count grows with k^2, which is what keeps a 64-shot model learning; the floor keeps a
    handful of examples from getting a handful of steps."""
    rng = random.Random(seed)
    n = len(labels)
    positives = [(i, j, 1.0) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    negatives = [(i, j, 0.0) for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]]
    rng.shuffle(positives)
    rng.shuffle(negatives)
    sides = [side for side in (positives, negatives) if side]
    if not sides:
        return []
    per_side = max(max(map(len, sides)), -(-pairs_per_example * n // len(sides)))
    if max_pairs is not None:
        per_side = min(per_side, max(1, max_pairs // len(sides)))
    pairs = [side[k % len(side)] for side in sides for k in range(per_side)]
    rng.shuffle(pairs)
    return pairs


def pair_count(labels: list[int], cfg: SetFitConfig) -> int:
    """How many pairs ``contrastive_tune`` trains on (``sample_pairs`` per epoch, without building them)."""
    n = len(labels)
    positives = sum(c * (c - 1) // 2 for c in Counter(labels).values())
    sides = [size for size in (positives, n * (n - 1) // 2 - positives) if size]
    if not sides:
        return 0
    per_side = max(max(sides), -(-cfg.pairs_per_example * n // len(sides)))
    per_side = min(per_side, max(1, cfg.max_pairs // len(sides)))
    return cfg.epochs * per_side * len(sides)


def contrastive_tune(embedder: Embedder, texts: list[str], labels: list[int], cfg: SetFitConfig, seed: int,
                     hooks: list[TrainHook] | None = None) -> dict[str, float]:
    """Cosine-similarity loss on sampled pairs (SetFit's default body training); returns timings.

    ``hooks`` see each step (``extra_loss``, ``after_backward`` with ``ctx.compute_loss()``,
    ``before_optimizer_step``, ``on_train_end``)."""
    hooks = hooks or []
    torch.manual_seed(seed)
    model = embedder.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    pairs = [p for epoch in range(cfg.epochs) for p in sample_pairs(labels, cfg.pairs_per_example, seed + epoch, cfg.max_pairs)]
    steps = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    from transformers import get_scheduler

    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.1 * steps), num_training_steps=steps)
    from ..progress import progress

    started = time.perf_counter()
    losses = []
    for start in progress(range(0, len(pairs), cfg.batch_size), total=steps, desc=f"setfit ({len(pairs):,} pairs)",
                          unit="step"):
        batch = pairs[start:start + cfg.batch_size]

        def compute_loss(batch: list[tuple[int, int, float]] = batch, **overrides: Any) -> torch.Tensor:
            if overrides:
                raise ConfigError(f"the SetFit loop reads texts; compute_loss takes no input overrides ({sorted(overrides)})")
            a = embedder.embed_batch([texts[i] for i, _, _ in batch])
            b = embedder.embed_batch([texts[j] for _, j, _ in batch])
            return torch.nn.functional.mse_loss((a * b).sum(-1), torch.tensor([t for _, _, t in batch]))

        loss = compute_loss()
        ctx = StepContext(model, {"pairs": batch}, None, start // cfg.batch_size, 1.0, compute_loss,
                          lambda value: value.backward())
        for hook in hooks:
            extra = hook.extra_loss(ctx)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        for hook in hooks:
            hook.after_backward(ctx)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for hook in hooks:
            hook.before_optimizer_step(model, ctx.step)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    for hook in hooks:
        hook.on_train_end(model)
    return {"pairs": len(pairs), "steps": steps, "seconds": time.perf_counter() - started,
            "final_loss": float(np.mean(losses[-10:])) if losses else float("nan")}


def fit_head(vectors: np.ndarray, labels: list[int], c: float, seed: int) -> dict[str, Any]:
    """A logistic-regression head on the embeddings, stored as plain numbers (coef, intercept, classes)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(vectors, labels)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; store both so prediction is one softmax
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return {"coef": coef.tolist(), "intercept": intercept.tolist(), "classes": clf.classes_.tolist()}


def head_probs(head: dict[str, Any], vectors: np.ndarray, n_labels: int) -> np.ndarray:
    """Class probabilities of the stored head for embeddings (labels the head never saw get 0)."""
    p = softmax(vectors @ np.asarray(head["coef"]).T + np.asarray(head["intercept"]))
    full = np.zeros((len(vectors), n_labels))
    full[:, head["classes"]] = p  # a label absent from the training examples keeps probability 0
    return full


class SetFitClassifier(Task):
    """The predicting half of a SetFit artifact: tuned encoder embeddings -> logistic-regression head."""

    name = "classification"
    Prediction = LabelPrediction
    strategies = ()

    def _texts(self, records: Records) -> list[str]:
        col = self.state["text_column"]
        texts = []
        for i, row in enumerate(records.rows):
            value = row.get(col)
            if value is None or not str(value).strip():
                raise DataError(f"{records.where(i)}, column {col!r}: missing or empty text")
            texts.append(str(value))
        return texts

    def probabilities(self, model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> np.ndarray:
        """Class probabilities for ``texts`` (embeddings of the tuned encoder, then the head)."""
        embedder = Embedder(model, tokenizer, self.state["max_length"])
        return head_probs(self.state["head"], embedder.encode(texts), len(self.labels))

    def predict_records(self, model: torch.nn.Module, processor: Any, records: Records,
                        batch_size: int = 64) -> list[dict[str, Any]]:
        texts = self._texts(records)
        if not texts:
            return []
        labels = self.labels
        return [{"label": labels[int(p.argmax())], "score": float(p.max()), "scores": dict(zip(labels, map(float, p)))}
                for p in self.probabilities(model, processor, texts)]

    def evaluate_records(self, model: torch.nn.Module, processor: Any, records: Records,
                         batch_size: int = 64) -> dict[str, Any]:
        texts = self._texts(records)
        col, labels = self.state["label_column"], self.labels
        gold = []
        for i, row in enumerate(records.rows):
            name = str(row.get(col, "")).strip()
            if name not in labels:
                raise DataError(f"{records.where(i)}, column {col!r}: unknown label {name!r}; labels are {labels}")
            gold.append(labels.index(name))
        pred = self.probabilities(model, processor, texts).argmax(axis=1).tolist()
        return M.single_label_metrics(pred, gold, labels)


def labelled_examples(train: Records, cfg: Config) -> list[dict[str, str]]:
    """``{"text", "label"}`` per training row, with the row named when text or label is missing."""
    d = cfg.data
    examples = []
    for i, row in enumerate(train.rows):
        value, label = row.get(d.text_column), row.get(d.label_column)
        if value is None or not str(value).strip():
            raise DataError(f"{train.where(i)}, column {d.text_column!r}: missing or empty text")
        if label is None or not str(label).strip():
            raise DataError(f"{train.where(i)}, column {d.label_column!r}: missing label")
        examples.append({"text": str(value), "label": str(label).strip()})
    return examples


class SetFit(Strategy):
    """The ``setfit`` strategy."""

    def fit(self, job: FitJob) -> Fitted:
        cfg, train = job.cfg, job.train
        if train is None:
            raise DataError("strategy setfit needs labelled examples: set data.train or pass train=...")
        if cfg.task.problem_type != "single_label":
            raise ConfigError("strategy setfit applies to single-label classification")
        if is_causal_lm(job.model.path):
            raise ConfigError(f"strategy setfit tunes sentence embeddings of an encoder; {cfg.model!r} is a causal LM "
                              "(use model: minilm, or strategy few_shot for in-context examples)")
        examples = labelled_examples(train, cfg)
        for hook in job.hooks:
            examples = hook.training_features(examples)
        names = [e["label"] for e in examples]
        labels = list(cfg.task.labels or sorted(set(names)))
        if len(set(names)) < 2:
            raise DataError(f"{train.source}: setfit needs examples of at least two labels, got {sorted(set(names))}")
        unknown = sorted(set(names) - set(labels))
        if unknown:
            raise DataError(f"{train.source}: labels {unknown} are not in task.labels {labels}")
        texts, y = [e["text"] for e in examples], [labels.index(n) for n in names]
        embedder = Embedder.load(job.model.path, max_length=cfg.setfit.max_length)
        n_pairs = pair_count(y, cfg.setfit)
        print(f"setfit: {len(texts)} examples, {len(labels)} labels -> {n_pairs:,} contrastive pairs, "
              f"{-(-n_pairs // cfg.setfit.batch_size):,} steps of batch {cfg.setfit.batch_size}", file=sys.stderr)
        timing = contrastive_tune(embedder, texts, y, cfg.setfit, cfg.train.seed, job.hooks)
        head = fit_head(embedder.encode(texts), y, cfg.setfit.head_c, cfg.train.seed)
        task = SetFitClassifier({"labels": labels, "text_column": cfg.data.text_column,
                                 "label_column": cfg.data.label_column, "head": head,
                                 "max_length": cfg.setfit.max_length})
        model, tokenizer = embedder.model, embedder.tokenizer
        val = task.evaluate_records(model, tokenizer, job.validation) if job.validation is not None else {}
        test = task.evaluate_records(model, tokenizer, job.test) if job.test is not None else None

        def write_parts(staging: Path) -> None:
            with quiet_loading():
                model.save_pretrained(staging / "model", safe_serialization=True)
            tokenizer.save_pretrained(staging / "tokenizer")

        total = sum(p.numel() for p in model.parameters())
        return Fitted(model, tokenizer, task, val, test, "encoder", {"trainable": total, "total": total}, write_parts,
                      size_hint=total * 4 + 2_000_000, report={"training": timing}, manifest={"training": timing},
                      validation_records=job.validation)

    def load(self, artifact_dir: Path, manifest: dict[str, Any], allow_network: bool) -> tuple[Any, Any, Any]:
        from transformers import AutoModel, AutoTokenizer

        with quiet_loading():
            model = load_pretrained(AutoModel, artifact_dir / "model")
        return model.eval(), load_pretrained(AutoTokenizer, artifact_dir / "tokenizer"), \
            SetFitClassifier(manifest["task"]["state"])
