"""``tunelab demo``: the main job on the packaged defaults, end to end, in a couple of minutes on 2 cores.

Fine-tunes the packaged MiniLM with LoRA on the sentiment sample that ships with tunelab, evaluates it,
saves an artifact, reloads it, predicts new sentences and prints a short report.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from .api import fit, summary
from .config import load_config
from .predictor import Predictor

DEMO_SENTENCES = [
    "The soundtrack was wonderful and the ending left me smiling.",
    "The delivery was late and the charger broke on the first day.",
    "The menu looked dull, but the dessert was a real delight.",
    "Frankly, this laptop is not worth the money.",
]


def demo_data_path() -> Path:
    """The sentiment sample that ships with tunelab."""
    return Path(str(resources.files("tunelab") / "_resources" / "demo_sentiment.jsonl"))


def demo_config_path() -> Path:
    """The demo's config that ships with tunelab."""
    return Path(str(resources.files("tunelab") / "_resources" / "demo.yaml"))


def run_demo(output_dir: str = "runs/demo", overrides: list[str] | None = None) -> int:
    """Train, save, reload and predict on the packaged data; returns the exit status."""
    started = time.perf_counter()
    cfg = load_config(demo_config_path(), [f"data.train={demo_data_path()}", f"output_dir={output_dir}", *(overrides or [])])
    epochs = f"{cfg.train.epochs:g}" if cfg.train.epochs else "auto"
    print(f"tunelab demo: {cfg.method.name} on {cfg.model}, {epochs} epochs, data {cfg.data.train}")
    run = fit(cfg)
    predictor = Predictor.load(run.artifact_dir)
    print()
    print(summary(run))
    print("\npredictions from the reloaded artifact:")
    for text, pred in zip(DEMO_SENTENCES, predictor.predict(DEMO_SENTENCES)):
        print(f"  {pred['label']:>8}  {pred['score']:.3f}  {text}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Try: tunelab predict {run.artifact_dir} \"your sentence\"")
    return 0
