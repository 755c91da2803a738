"""Export a fine-tuned encoder artifact to ONNX (optionally int8-quantized), as an artifact ``Predictor.load`` opens.

The model (LoRA or IA3 merged into its weights first) is traced with PyTorch's ONNX exporter (``torch.onnx``,
the ``torch.export``-based path) with dynamic batch and sequence dimensions; ``quantize="int8"`` applies ONNX
Runtime's dynamic int8 quantization to the weights of its linear layers. The result is a complete artifact:
the processor, config and metrics of the source, ``model/model.onnx``, and a manifest recording the runtime,
exporter, opset, quantization, inputs/outputs and the parity check. At prediction the same task code encodes
inputs and decodes outputs (``tunelab.onnx_model.OnnxModel`` stands in for the torch model).

``check=DATA`` evaluates the source and the exported model on the same records and stores the metric
delta and the speed-up; a drop of the task's primary metric by more than ``max_drop`` points fails the
export with a clear message, and nothing is written.

(optimum's ONNX exporter would be the usual tool; its current release requires transformers < 4.58, which
cannot be installed beside the transformers 5 tunelab is built on.)

Example:
    >>> path = tunelab.export("runs/sst2", quantize="int8", check="dev.tsv")   # doctest: +SKIP
    >>> tunelab.Predictor.load(path).predict("a fine film")                    # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .artifact import write_artifact
from .data import Records, read_records
from .errors import ConfigError, TunelabError
from .onnx_model import INSTALL, OnnxModel, onnxruntime
from .predictor import Predictor

QUANTIZATIONS = ("int8",)
OUTPUT_NAMES = ("logits", "start_logits", "end_logits")  # what tasks' ``extract`` read from a model output
WRITTEN_BY_ARTIFACT = ("files", "sha256", "written_by", "format_version", "created", "libraries")


class ExportError(TunelabError):
    """The exported model is worse than allowed (``max_drop``), or the export itself failed."""


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
        raise ConfigError(f"export takes a fine-tuned artifact with PyTorch weights; this one is strategy "
                          f"{manifest.get('strategy')!r}, model format {manifest.get('model_format')!r}")
    if not predictor.task.exportable:
        raise ConfigError(f"task {predictor.task.name} cannot be exported to ONNX: {predictor.task.export_note}")
    model = predictor.model
    if manifest["model_format"] == "peft":
        method = manifest.get("method", {}).get("name")
        if model.peft_config["default"].is_prompt_learning:
            raise ConfigError(f"method {method} adds virtual tokens at run time, which cannot be merged into the "
                              "weights: export works for full, lora, adalora and ia3 models")
        model = model.merge_and_unload()
    return model.eval()


def export(artifact: str | Path, output: str | Path | None = None, *, quantize: str | None = None,
           check: Any = None, max_drop: float = 1.0, opset: int = 18) -> Path:
    """Export ``artifact`` to ONNX and write it as a new artifact.

    Args:
        artifact: a fine-tuned encoder artifact (classification, NER, relation extraction, QA).
        output: where to write (default: ``artifact-onnx`` or ``artifact-onnx-int8`` beside the source).
        quantize: ``"int8"`` for dynamic int8 weights (ONNX Runtime's quantization tools), or None.
        check: labelled records (file, list of dicts, ...) to compare source and export on.
        max_drop: the largest allowed drop of the primary metric, in points (accuracy/F1 x 100).
        opset: the ONNX opset to export to.

    Returns:
        the exported artifact's directory.

    Example:
        >>> export("runs/sst2", quantize="int8", check="dev.tsv", max_drop=0.5)   # doctest: +SKIP
    """
    source = Predictor.load(artifact)
    model = exportable_model(source)
    target = Path(output) if output else source.path.parent / ("artifact-onnx" + (f"-{quantize}" if quantize else ""))
    return write_onnx(source, model, target, quantize=quantize, check=check, max_drop=max_drop, opset=opset)


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
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (or none), not {quantize!r}")
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
            quantize_dynamic(str(onnx_path), str(quantized), weight_type=QuantType.QInt8)
            onnx_path = quantized
        seconds = time.perf_counter() - started
        exported = Predictor(OnnxModel(onnx_path, inputs, outputs), processor, task, {}, None)
        parity = compare(source, exported, check, max_drop) if check is not None else None
        manifest = {k: v for k, v in source.manifest.items() if k not in WRITTEN_BY_ARTIFACT}
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


def compare(original: Predictor, exported: Predictor, data: Any, max_drop: float) -> dict[str, Any]:
    """The primary metric of both on ``data``, its drop in points, and the evaluation speed-up.

    Args:
        original: the source predictor.
        exported: the exported one.
        data: labelled records.
        max_drop: the largest allowed drop, in points.

    Raises:
        ExportError: the drop is larger than ``max_drop``.
    """
    records = read_records(data)
    name, higher_is_better = original.task.primary_metric
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
