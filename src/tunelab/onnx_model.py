"""A model exported to ONNX, run by ONNX Runtime behind the torch-module interface tasks already use.

``OnnxModel(**batch)`` takes the task's collated tensors and returns an object with the exported outputs as
attributes (``logits``, or ``start_logits`` / ``end_logits``), so a task's ``extract``, ``decode`` and metrics
run unchanged: one task code path for PyTorch and ONNX Runtime.

Example:
    >>> model = OnnxModel("artifact/model/model.onnx", ["input_ids", "attention_mask"], ["logits"])  # doctest: +SKIP
    >>> model(input_ids=ids, attention_mask=mask).logits.shape                                         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .errors import ArtifactError, ConfigError

INSTALL = "pip install 'tunelab[onnx]'"


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a clear error saying which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"ONNX models need onnxruntime: {INSTALL}") from None
    return ort


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session that a task calls like its PyTorch model.

    Args:
        path: the ``.onnx`` file.
        inputs: the input names the export recorded (checked against the file at load).
        outputs: the output names, returned as attributes of the result.
    """

    def __init__(self, path: str | Path, inputs: list[str], outputs: list[str]):
        super().__init__()
        ort = onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise ArtifactError(f"{path} is not a model ONNX Runtime can load: {str(err).splitlines()[0][:200]}") from None
        found = [i.name for i in self.session.get_inputs()]
        made = [o.name for o in self.session.get_outputs()]
        if sorted(found) != sorted(inputs) or sorted(made) != sorted(outputs):
            raise ArtifactError(f"{path} does not match its manifest: inputs {found} / outputs {made}, the manifest "
                                f"says {inputs} / {outputs}")
        self.inputs, self.outputs = list(inputs), list(outputs)

    def forward(self, **batch: torch.Tensor) -> Any:
        """Run the session on the batch's tensors; returns the outputs as tensors, by name."""
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            raise ArtifactError(f"the exported model needs inputs {missing}, which this task's batch does not have")
        feed = {name: batch[name].detach().cpu().numpy() for name in self.inputs}
        values = self.session.run(self.outputs, feed)
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(self.outputs, values)})
