"""Export a fine-tuned artifact as a new artifact ``Predictor.load`` opens, in one of the formats in ``FORMATS``:

- ``onnx`` (encoder tasks: classification, NER, relation extraction, QA): the model (LoRA or IA3 merged into
  its weights first) traced with PyTorch's ONNX exporter (``torch.onnx``, the ``torch.export``-based path) with
  dynamic batch and sequence dimensions; ``quantize="int8"`` applies ONNX Runtime's dynamic int8 quantization
  to its linear layers (per-channel weight scales), ``quantize="fp16-weights"`` stores the weights in float16
  (half the file; ONNX Runtime computes in float32). At prediction ``tunelab.onnx_model.OnnxModel`` stands in
  for the torch model.
- ``onnx-genai`` (causal LMs: generation tasks, prompted NER): ONNX Runtime GenAI's engine, see
  ``tunelab.export_genai``.

Either way the same task code encodes inputs and decodes outputs, and the manifest records the runtime,
exporter, quantization and the parity check: ``check=DATA`` evaluates the source and the exported model on
the same records and stores the metric delta and the speed-up; a drop of the task's metric by more than
``max_drop`` points fails the export with a clear message, and nothing is written.

(optimum's ONNX exporter would be the usual tool for encoders; its current release requires transformers
< 4.58, which cannot be installed beside the transformers 5 tunelab is built on.)

Example:
    >>> path = tunelab.export("runs/sst2", quantize="int8", check="dev.tsv")   # doctest: +SKIP
    >>> tunelab.Predictor.load(path).predict("a fine film")                    # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .artifact import write_artifact
from .data import Records
from .errors import ConfigError
from .export_check import ExportError, compare, inherited_manifest, merged_model
from .export_genai import QUANTIZATIONS as GENAI_QUANTIZATIONS
from .export_genai import write_genai
from .onnx_model import INSTALL, OnnxModel, onnxruntime
from .predictor import Predictor

QUANTIZATIONS = ("int8", "fp16-weights")
OUTPUT_NAMES = ("logits", "start_logits", "end_logits")  # what tasks' ``extract`` read from a model output
FP16_MIN_ELEMENTS = 1024  # smaller tensors (biases, norms) stay float32: nothing to gain, precision to lose

__all__ = ["FORMATS", "ExportError", "ExportFormat", "compare", "export", "exportable_model", "write_onnx"]


class _Positional(torch.nn.Module):
    """The task model with positional inputs and a tuple of named outputs: what the exporter traces."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model(**dict(zip(self.inputs, args)))
        return tuple(getattr(result, name) for name in self.outputs)


def exportable_model(predictor: Predictor) -> torch.nn.Module:
    """The predictor's model as plain weights (adapters merged), or a clear error why it cannot be exported."""
    manifest = predictor.manifest
    if manifest.get("strategy") != "finetune" or manifest.get("model_format") not in ("full", "peft"):
        raise ConfigError(f"export to onnx takes a fine-tuned artifact with PyTorch weights; this one is strategy "
                          f"{manifest.get('strategy')!r}, model format {manifest.get('model_format')!r}")
    return merged_model(predictor).eval()


@dataclass(frozen=True)
class ExportFormat:
    """One ``tunelab export`` format.

    Args:
        name: what ``--format`` / ``format=`` says.
        quantizations: the ``quantize`` values it accepts (None: the format's default).
        write: ``(source predictor, target directory, quantize, check, max_drop, opset) -> artifact path``.
    """

    name: str
    quantizations: tuple[str, ...]
    write: Callable[[Predictor, Path, str | None, Any, float, int], Path]


def _onnx(source: Predictor, target: Path, quantize: str | None, check: Any, max_drop: float, opset: int) -> Path:
    return write_onnx(source, exportable_model(source), target, quantize=quantize, check=check, max_drop=max_drop,
                      opset=opset)


def _onnx_genai(source: Predictor, target: Path, quantize: str | None, check: Any, max_drop: float, opset: int) -> Path:
    return write_genai(source, target, quantize=quantize, check=check, max_drop=max_drop)  # no opset choice


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", QUANTIZATIONS, _onnx),
    "onnx-genai": ExportFormat("onnx-genai", GENAI_QUANTIZATIONS, _onnx_genai),
}


def export(artifact: str | Path, output: str | Path | None = None, *, format: str = "onnx",
           quantize: str | None = None, check: Any = None, max_drop: float = 1.0, opset: int = 18) -> Path:
    """Export ``artifact`` and write it as a new artifact.

    Args:
        artifact: a fine-tuned encoder artifact (``onnx``: classification, NER, relation extraction, QA), or a
            causal-LM artifact (``onnx-genai``: generation tasks and prompted NER, fine-tuned or zero/few-shot).
        output: where to write (default: ``artifact-FORMAT[-QUANTIZE]`` beside the source).
        format: ``onnx`` or ``onnx-genai`` (see ``FORMATS``).
        quantize: ``onnx``: ``int8`` (dynamic int8 weights) or ``fp16-weights``; ``onnx-genai``: ``int8``
            (its default), ``int4`` or ``fp32``. None: the format's default (fp32 for onnx).
        check: labelled records (file, list of dicts, ...) to compare source and export on.
        max_drop: the largest allowed drop of the task's metric, in points (accuracy/F1 x 100, ROUGE-L).
        opset: the ONNX opset of the ``onnx`` format.

    Returns:
        the exported artifact's directory.

    Example:
        >>> export("runs/sst2", quantize="int8", check="dev.tsv", max_drop=0.5)   # doctest: +SKIP
        >>> export("runs/dialogsum", format="onnx-genai")                          # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    kind = FORMATS[format]
    if quantize is not None and quantize not in kind.quantizations:
        raise ConfigError(f"the {format} format quantizes to {', '.join(kind.quantizations)} (or none), not {quantize!r}")
    source = Predictor.load(artifact)
    task = source.task
    if format not in task.export_formats:
        why = task.export_note or (f"its format is {', '.join(task.export_formats)}" if task.export_formats else "")
        raise ConfigError(f"task {task.name} ({source.manifest.get('strategy')}) cannot be exported to {format}: {why}")
    suffix = f"-{quantize}" if quantize else ""
    target = Path(output) if output else source.path.parent / f"artifact-{format}{suffix}"
    return kind.write(source, target, quantize, check, max_drop, opset)


def write_onnx(source: Predictor, model: torch.nn.Module, target: Path, *, quantize: str | None = None,
               check: Any = None, max_drop: float = 1.0, opset: int = 18,
               extra: dict[str, Any] | None = None) -> Path:
    """Trace ``model`` (the source's model, possibly compressed) to ONNX and write an artifact at ``target``.

    Args:
        source: the predictor of the source artifact (its task, processor and manifest are reused).
        model: the torch model to export.
        target: the artifact directory to write.
        quantize, check, max_drop, opset: as in ``export``.
        extra: more manifest fields (e.g. ``compression``).
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ConfigError(f"the onnx format quantizes to {', '.join(QUANTIZATIONS)} (or none), not {quantize!r}")
    ort = onnxruntime()
    task, processor = source.task, source.processor
    features = task.encode(Records(task.export_example(), "export example", None, []), processor, with_labels=False)
    batch = task.collate(processor)(features)
    batch.pop("labels", None)
    inputs = list(batch)
    with torch.inference_mode():
        sample = model(**batch)
    outputs = [name for name in OUTPUT_NAMES if getattr(sample, name, None) is not None]

    with tempfile.TemporaryDirectory(prefix=".tunelab-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        _trace(model, batch, inputs, outputs, onnx_path, opset)
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(tmp) / "model.int8.onnx"
            # one scale per output channel: on SST-2 and CoNLL-2003 closer to fp32 than one per tensor, as fast
            quantize_dynamic(str(onnx_path), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
            onnx_path = quantized
        elif quantize == "fp16-weights":
            onnx_path = _fp16_weights(onnx_path)
        seconds = time.perf_counter() - started
        exported = Predictor(OnnxModel(onnx_path, inputs, outputs), processor, task, {}, None)
        parity = compare(source, exported, check, max_drop) if check is not None else None
        manifest = inherited_manifest(source)
        manifest.update(model_format="onnx", export={
            "runtime": f"onnxruntime {ort.__version__}", "exporter": f"torch.onnx {torch.__version__}",
            "opset": opset, "quantization": quantize or "none", "inputs": inputs, "outputs": outputs,
            "source": str(source.path), "seconds": round(seconds, 2), "check": parity}, **(extra or {}))

        def write_parts(staging: Path) -> None:
            top = source.path.resolve()
            shutil.copytree(top, staging, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if n in ("model", "manifest.json")]
                            if Path(folder).resolve() == top else [])
            (staging / "model").mkdir()
            shutil.copy(onnx_path, staging / "model" / "model.onnx")

        written = write_artifact(target, manifest, write_parts, size_hint=onnx_path.stat().st_size + 2_000_000)
    print(f"exported {source.path} -> {written} (onnx, opset {opset}, quantization {quantize or 'none'})",
          file=sys.stderr)
    return written


def _fp16_weights(path: Path) -> Path:
    """The model at ``path`` with its large float32 weights stored as float16, each cast back to float32 by a
    ``Cast`` node (ONNX Runtime folds the casts when it loads the model: half the file, float32 arithmetic)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and int(np.prod(tensor.dims)) >= FP16_MIN_ELEMENTS:
            half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name + "__fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=onnx.TensorProto.FLOAT,
                                          name=tensor.name + "__to_fp32"))
        else:
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    out = path.with_name("model.fp16-weights.onnx")
    onnx.save(model, str(out))
    return out


def _trace(model: torch.nn.Module, batch: dict[str, torch.Tensor], inputs: list[str], outputs: list[str],
           path: Path, opset: int) -> None:
    """``torch.onnx.export`` with dynamic batch (and sequence) dimensions."""
    import warnings

    try:
        import onnxscript  # noqa: F401  (the exporter's dependency)
    except ImportError:
        raise ConfigError(f"exporting to ONNX needs onnx and onnxscript: {INSTALL}") from None
    rows, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # one entry for the wrapper's *args: a spec per input tensor
    dynamic = tuple({0: rows, 1: length} if batch[name].dim() == 2 else {0: rows} for name in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on shared dimension names and deprecations
        try:
            torch.onnx.export(_Positional(model, inputs, outputs).eval(), tuple(batch[name] for name in inputs),
                              str(path), input_names=inputs, output_names=outputs, dynamic_shapes=(dynamic,),
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
        except Exception as err:  # the exporter raises many kinds; say which model and why, then stop
            raise ExportError(f"torch.onnx could not export this model: {err}") from None
