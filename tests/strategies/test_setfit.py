"""SetFit-style few-shot classification: contrastive pairs, the tuned encoder and a JSON head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tunelab
from tunelab.strategies.setfit import sample_pairs

from conftest import sentiment_rows


def test_setfit_path_trains_saves_and_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(16, seed=1)
    run = tunelab.fit(model=str(tiny_bert), output_dir=str(tmp_path / "sf"), train=rows,
                      validation=sentiment_rows(20, seed=9), strategy="setfit", setfit={"pairs_per_example": 6})
    assert run.live.manifest["strategy"] == "setfit"
    dev = sentiment_rows(20, seed=9)
    hits = [p["label"] == r["label"] for p, r in zip(run.live.predict(dev), dev)]
    assert run.metrics["accuracy"] == pytest.approx(sum(hits) / len(hits))
    texts = ["the game was superb", "the hotel was dreadful"]
    loaded = tunelab.Predictor.load(run.artifact_dir)
    a, b = loaded.predict(texts), run.live.predict(texts)
    assert [x["label"] for x in a] == [x["label"] for x in b]
    np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], rtol=1e-5)
    labels = [0, 0, 1, 1]
    pairs = sample_pairs(labels, 4, seed=0)  # the floor: 4 pairs x 4 examples, half of each kind
    assert len(pairs) == 16 and sum(t for _, _, t in pairs) == 8
    assert all((t == 1.0) == (labels[i] == labels[j]) and i != j for i, j, t in pairs)
    many = [0] * 10 + [1] * 10  # 90 unique positive pairs, 100 negative: positives cycled up to 100
    pairs = sample_pairs(many, 1, seed=0)
    assert len(pairs) == 200 and len({(i, j) for i, j, t in pairs if t == 0.0}) == 100
    assert len({(i, j) for i, j, t in pairs if t == 1.0}) == 90
    assert len(sample_pairs(many, 1, seed=0, max_pairs=50)) == 50
