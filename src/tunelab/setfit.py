"""Few-shot classification SetFit-style (Tunstall et al., 2022): contrastively tune sentence embeddings
on pairs drawn from the k labelled examples (same label -> cosine 1, different -> 0), then fit a
logistic-regression head on the tuned embeddings.

The head is stored as plain numbers (JSON), the encoder as safetensors: nothing is pickled.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import numpy as np
import torch

from .config import SetFitConfig
from .embed import Embedder


def sample_pairs(labels: list[int], pairs_per_example: int, seed: int) -> list[tuple[int, int, float]]:
    """For every example, ``pairs_per_example`` pairs alternating positive (same label) and negative."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    pairs = []
    for i, y in enumerate(labels):
        same = [j for j in by_label[y] if j != i]
        other = [j for j in range(len(labels)) if labels[j] != y]
        for n in range(pairs_per_example):
            if n % 2 == 0 and same:
                pairs.append((i, rng.choice(same), 1.0))
            elif other:
                pairs.append((i, rng.choice(other), 0.0))
    rng.shuffle(pairs)
    return pairs


def contrastive_tune(embedder: Embedder, texts: list[str], labels: list[int], cfg: SetFitConfig, seed: int) -> dict[str, float]:
    """Cosine-similarity loss on sampled pairs (SetFit's default body training); returns timings."""
    torch.manual_seed(seed)
    model = embedder.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    pairs = [p for epoch in range(cfg.epochs) for p in sample_pairs(labels, cfg.pairs_per_example, seed + epoch)]
    steps = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    from transformers import get_scheduler

    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.1 * steps), num_training_steps=steps)
    from tqdm.auto import tqdm

    started = time.perf_counter()
    losses = []
    for start in tqdm(range(0, len(pairs), cfg.batch_size), desc="setfit", unit="step", disable=not sys.stderr.isatty()):
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
