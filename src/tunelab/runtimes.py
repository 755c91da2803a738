"""The model formats ``tunelab export`` writes, and how an artifact in each one is opened.

A strategy's ``load`` asks here first: an exported artifact names its format in ``manifest["model_format"]``
and keeps the task's own tokenizer, so only the model object differs (an ONNX Runtime session for encoders,
an ONNX Runtime GenAI engine for causal LMs) and the task code around it is the same.

Example:
    >>> RUNTIMES["onnx"](Path("artifact"), manifest)      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch


def _onnx(artifact_dir: Path, manifest: dict[str, Any]) -> torch.nn.Module:
    from .onnx_model import OnnxModel

    export = manifest["export"]
    return OnnxModel(artifact_dir / "model" / "model.onnx", export["inputs"], export["outputs"])


def _onnx_genai(artifact_dir: Path, manifest: dict[str, Any]) -> torch.nn.Module:
    from .genai_model import GenAIModel

    return GenAIModel(artifact_dir / "model")


# model_format -> the exported model of an artifact directory
RUNTIMES: dict[str, Callable[[Path, dict[str, Any]], torch.nn.Module]] = {"onnx": _onnx, "onnx-genai": _onnx_genai}
