"""Maps of a dataset as the model sees it: each record's sentence representation (the mean of the model's last
hidden states over its tokens) projected to two dimensions with PCA, t-SNE (scikit-learn) and UMAP (when
``umap-learn`` is installed).

Example:
    >>> import numpy as np
    >>> points = project(np.random.default_rng(0).normal(size=(40, 8)), ["pca"])
    >>> points["pca"].shape
    (40, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inference import batched
from ..sentence_embeddings import mean_pool


def representations(model: torch.nn.Module, tokenizer: Any, texts: list[tuple[str, str | None]], max_length: int,
                    batch_size: int = 32) -> np.ndarray:
    """Mean-pooled last hidden states of ``model`` (the encoder of an encoder-decoder) for each text (pair).

    Args:
        model: a transformers (or peft) model of any head.
        tokenizer: its tokenizer.
        texts: (text, second text or None) per record.
        max_length: tokens per input after truncation.
        batch_size: inputs run through the model together.

    Returns:
        A [len(texts), hidden] float32 array, in order.
    """
    net = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
    padded = tokenizer.pad_token_id is not None

    def run(chunk: list[tuple[str, str | None]]) -> list[np.ndarray]:
        groups = [chunk] if padded else [[one] for one in chunk]
        out = []
        for group in groups:
            firsts, seconds = [t for t, _ in group], [p for _, p in group]
            enc = tokenizer(firsts, seconds if all(s is not None for s in seconds) else None, truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt")
            hidden = net(**enc, output_hidden_states=True).hidden_states[-1]
            out += list(mean_pool(hidden.float(), enc["attention_mask"]).numpy())
        return out

    rows = batched(model, texts, run, batch_size=batch_size, length=lambda t: len(t[0]) + len(t[1] or ""),
                   desc="representations")
    return np.asarray(rows, dtype=np.float32)


def available() -> list[str]:
    """The projections this installation can make (UMAP needs ``umap-learn``)."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return ["pca", "tsne"]
    return list(PROJECTORS)


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(x)


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=float(min(30, max(2, (len(x) - 1) // 3))), init="pca",
                random_state=seed).fit_transform(x)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    return umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)


PROJECTORS = {"pca": _pca, "tsne": _tsne, "umap": _umap}


def project(vectors: np.ndarray, methods: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """2-D coordinates of ``vectors`` by each method (standardised first; t-SNE's perplexity and UMAP's
    neighbours follow the number of points). Fewer than 5 points, or points that are all the same, give no map.

    Args:
        vectors: [points, dimensions].
        methods: any of ``pca``, ``tsne``, ``umap``.
        seed: for t-SNE and UMAP.
    """
    from sklearn.preprocessing import StandardScaler

    if len(vectors) < 5 or np.ptp(vectors, axis=0).max() < 1e-6:  # too few, or all the same point: no map
        return {}
    x = StandardScaler().fit_transform(vectors)
    return {m: np.asarray(PROJECTORS[m](x, seed), dtype=np.float64) for m in methods}


__all__ = ["PROJECTORS", "available", "project", "representations"]
