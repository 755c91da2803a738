"""Few-shot classification SetFit-style (Tunstall et al., 2022): contrastively tune sentence embeddings
on pairs drawn from the k labelled examples (same label -> cosine 1, different -> 0), then fit a
logistic-regression head on the tuned embeddings.

The head is stored as plain numbers (JSON), the encoder as safetensors: no file of it can run code.
"""

from __future__ import annotations

import random
from collections import Counter
import sys
import time
from typing import Any

import numpy as np
import torch

from .config import SetFitConfig
from .embed import Embedder


def sample_pairs(labels: list[int], pairs_per_example: int, seed: int, max_pairs: int | None = None) -> list[tuple[int, int, float]]:
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


def contrastive_tune(embedder: Embedder, texts: list[str], labels: list[int], cfg: SetFitConfig, seed: int) -> dict[str, float]:
    """Cosine-similarity loss on sampled pairs (SetFit's default body training); returns timings."""
    torch.manual_seed(seed)
    model = embedder.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    pairs = [p for epoch in range(cfg.epochs) for p in sample_pairs(labels, cfg.pairs_per_example, seed + epoch, cfg.max_pairs)]
    steps = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    from transformers import get_scheduler

    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.1 * steps), num_training_steps=steps)
    from .progress import progress

    started = time.perf_counter()
    losses = []
    for start in progress(range(0, len(pairs), cfg.batch_size), total=steps, desc=f"setfit ({len(pairs):,} pairs)",
                          unit="step"):
        batch = pairs[start:start + cfg.batch_size]
        a = embedder.embed_batch([texts[i] for i, _, _ in batch])
        b = embedder.embed_batch([texts[j] for _, j, _ in batch])
        target = torch.tensor([t for _, _, t in batch])
        loss = torch.nn.functional.mse_loss((a * b).sum(-1), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return {"pairs": len(pairs), "steps": steps, "seconds": time.perf_counter() - started,
            "final_loss": float(np.mean(losses[-10:])) if losses else float("nan")}


def fit_head(vectors: np.ndarray, labels: list[int], c: float, seed: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(vectors, labels)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; store both so prediction is one softmax
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return {"coef": coef.tolist(), "intercept": intercept.tolist(), "classes": clf.classes_.tolist()}


def head_probs(head: dict[str, Any], vectors: np.ndarray, n_labels: int) -> np.ndarray:
    logits = vectors @ np.asarray(head["coef"]).T + np.asarray(head["intercept"])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    full = np.zeros((len(vectors), n_labels))
    full[:, head["classes"]] = p  # a label absent from the training examples keeps probability 0
    return full
