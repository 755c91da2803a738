"""Maps of a dataset as the model sees it: each record's representation (``Task.representations``: by default the
mean of the model's last hidden states over its tokens) projected to two dimensions with PCA, t-SNE
(scikit-learn) and UMAP (when ``umap-learn`` is installed).

Example:
    >>> import numpy as np
    >>> points = project(np.random.default_rng(0).normal(size=(40, 8)), ["pca"])
    >>> points["pca"].shape
    (40, 2)
"""

from __future__ import annotations

import numpy as np


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


__all__ = ["PROJECTORS", "available", "project"]
