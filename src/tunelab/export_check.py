"""What every export format shares: the parity check of source against export, the error it raises, and the
source manifest fields an exported artifact inherits.

Example:
    >>> compare(Predictor.load("runs/sst2"), Predictor.load("runs/artifact-onnx-int8"), "dev.tsv", 1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .data import read_records
from .errors import ConfigError, TunelabError
from .predictor import Predictor

WRITTEN_BY_ARTIFACT = ("files", "sha256", "written_by", "format_version", "created", "libraries")


class ExportError(TunelabError):
    """The exported model is worse than allowed (``max_drop``), or the export itself failed."""


def inherited_manifest(source: Predictor) -> dict[str, Any]:
    """The source manifest without the fields ``write_artifact`` recomputes for the new artifact."""
    return {k: v for k, v in source.manifest.items() if k not in WRITTEN_BY_ARTIFACT}


def merged_model(predictor: Predictor) -> Any:
    """The predictor's model with a LoRA/IA3 adapter merged into its weights (other models as they are), or a
    clear error for adapters that cannot merge."""
    model = predictor.model
    if predictor.manifest.get("model_format") != "peft":
        return model
    if model.peft_config["default"].is_prompt_learning:
        method = predictor.manifest.get("method", {}).get("name")
        raise ConfigError(f"method {method} adds virtual tokens at run time, which cannot be merged into the "
                          "weights: export works for full, lora, adalora and ia3 models")
    return model.merge_and_unload()


def compare(original: Predictor, exported: Predictor, data: Any, max_drop: float,
            metric: tuple[str, bool] | None = None) -> dict[str, Any]:
    """The primary metric of both on ``data``, its drop in points, and the evaluation speed-up.

    Args:
        original: the source predictor.
        exported: the exported one.
        data: labelled records.
        max_drop: the largest allowed drop, in points.
        metric: (name, higher is better) to compare on (default: the task's primary metric).

    Raises:
        ExportError: the drop is larger than ``max_drop``.
    """
    records = read_records(data)
    name, higher_is_better = metric or original.task.primary_metric
    started = time.perf_counter()
    before = original.evaluate(records)[name]
    middle = time.perf_counter()
    after = exported.evaluate(records)[name]
    ended = time.perf_counter()
    scale = 100.0 if 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0 else 1.0  # accuracy/F1 as points
    drop = round((before - after if higher_is_better else after - before) * scale, 4)
    result = {"metric": name, "records": len(records), "source": before, "exported": after, "drop_points": drop,
              "max_drop_points": max_drop, "speedup": round((middle - started) / max(ended - middle, 1e-9), 2)}
    print(f"check on {len(records)} records: {name} {before:.4f} -> {after:.4f} (drop {drop:+.2f} points, "
          f"allowed {max_drop}); evaluation {result['speedup']}x as fast", file=sys.stderr)
    if drop > max_drop:
        raise ExportError(f"the exported model's {name} is {after:.4f} against {before:.4f}: a drop of {drop:.2f} "
                          f"points, more than max_drop={max_drop}; nothing was written (try without quantization)")
    return result
