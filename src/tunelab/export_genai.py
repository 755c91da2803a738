"""Export a causal-LM artifact (a fine-tuned generation model, LoRA merged, or a zero/few-shot artifact's base
model) to ONNX Runtime GenAI: tunelab's fast generation engine on CPUs.

ONNX Runtime GenAI's model builder writes the decoder with its fused attention and KV cache, its weights
quantized block-wise (MatMulNBits) to ``int8`` (the default) or ``int4``, or kept ``fp32``. On the packaged
SmolLM2 int8 was both faster and closer to fp32 than int4 (whose weights were already 4-bit in the GGUF file
and lose more when quantized again): see ``bench/results/inference.json``.
The result is an artifact: the task, its prompts and tokenizer as they were, ``model/`` holding the engine,
and a manifest recording the runtime, precision and parity check. ``Predictor.load`` runs it through
``tunelab.genai_model.GenAIModel``, behind the same generation code as the PyTorch model.

Example:
    >>> tunelab.export("runs/dialogsum", format="onnx-genai", quantize="int4", check="dev.jsonl")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .artifact import write_artifact
from .causal_lm import GenerateOnly, generation_kwargs
from .config import GenerateConfig
from .errors import ConfigError
from .export_check import ExportError, compare, inherited_manifest, merged_model
from .genai_model import GenAIModel, onnxruntime_genai
from .predictor import Predictor

QUANTIZATIONS = ("int8", "int4", "fp32")  # the model builder's CPU precisions; the first is the default


def write_genai(source: Predictor, target: Path, *, quantize: str | None = None, check: Any = None,
                max_drop: float = 1.0) -> Path:
    """Build the ONNX Runtime GenAI engine of ``source``'s causal LM and write it as an artifact at ``target``.

    Args:
        source: a causal-LM predictor (generation task or prompted NER; full, LoRA or zero/few-shot).
        target: the artifact directory to write.
        quantize: ``int8`` (default), ``int4`` or ``fp32``.
        check: labelled records: generate with source and engine, compare the task's metric (ROUGE-L for
            generation), refuse to write when it drops by more than ``max_drop`` points.
        max_drop: the largest allowed drop, in points.
    """
    og = onnxruntime_genai()
    precision = quantize or QUANTIZATIONS[0]
    if precision not in QUANTIZATIONS:
        raise ConfigError(f"the onnx-genai format quantizes to {', '.join(QUANTIZATIONS)}, not {precision!r}")
    tokenizer, task = source.processor, source.task
    if isinstance(source.model, GenerateOnly):
        raise ConfigError(f"{source.path} is already an exported engine; export its source artifact instead")
    model = merged_model(source)
    eos = generation_kwargs(GenerateConfig(), tokenizer)["eos_token_id"]
    pad = padding_token(tokenizer, set(eos))
    with tempfile.TemporaryDirectory(prefix=".tunelab-export-") as tmp:
        started = time.perf_counter()
        weights = Path(tmp) / "hf"
        model.save_pretrained(weights, safe_serialization=True)
        tokenizer.save_pretrained(weights)
        _plain_config(weights / "config.json")
        engine = Path(tmp) / "engine"
        print(f"building the onnx-genai engine ({precision}) ...", file=sys.stderr)
        _build(weights, engine, precision, Path(tmp) / "cache")
        shutil.rmtree(weights)
        settings_path = engine / "genai_config.json"
        settings = json.loads(settings_path.read_text())
        # right padding with a token prompts do not contain; every token that ends a reply in tunelab ends it here
        settings["model"].update(pad_token_id=pad, eos_token_id=eos)
        settings_path.write_text(json.dumps(settings, indent=4))
        seconds = time.perf_counter() - started
        exported = Predictor(GenAIModel(engine), tokenizer, task, {}, None)
        parity = compare(source, exported, check, max_drop, metric=task.export_metric) if check is not None else None
        manifest = inherited_manifest(source)
        manifest.update(model_format="onnx-genai", export={
            "runtime": f"onnxruntime-genai {og.__version__}", "builder": "onnxruntime_genai.models.builder",
            "quantization": precision, "pad_token_id": pad, "eos_token_id": eos, "source": str(source.path),
            "seconds": round(seconds, 2), "check": parity})
        del exported  # the engine's files are copied next; release the session first

        def write_parts(staging: Path) -> None:
            top = Path(source.path).resolve()
            shutil.copytree(top, staging, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if n in ("model", "manifest.json")]
                            if Path(folder).resolve() == top else [])
            shutil.copytree(engine, staging / "model")
            if not (staging / "tokenizer").is_dir():  # zero/few-shot artifacts name their base model instead
                tokenizer.save_pretrained(staging / "tokenizer")

        size = sum(f.stat().st_size for f in engine.iterdir())
        written = write_artifact(target, manifest, write_parts, size_hint=size + 10_000_000)
    print(f"exported {source.path} -> {written} (onnx-genai, {precision})", file=sys.stderr)
    return written


def padding_token(tokenizer: Any, ends: set[int]) -> int:
    """A special token the chat template does not write and no reply ends with (ONNX Runtime GenAI masks its
    pad token wherever it occurs); the last vocabulary id when every special token is in use."""
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": "a"}, {"role": "user", "content": "b"},
                                              {"role": "assistant", "content": "c"}], tokenize=False)
    used = set(tokenizer(rendered, add_special_tokens=True)["input_ids"]) | ends
    return next((int(t) for t in sorted(tokenizer.all_special_ids) if t not in used), len(tokenizer) - 1)


def _plain_config(path: Path) -> None:
    """Drop settings the builder misreads: an empty ``quantization_config`` (left by GGUF dequantization) and
    the training-time ``use_cache: false``."""
    config = json.loads(path.read_text())
    if config.get("quantization_config", {}) is None:
        del config["quantization_config"]
    config["use_cache"] = True
    path.write_text(json.dumps(config, indent=2))


def _build(weights: Path, out: Path, precision: str, cache: Path) -> None:
    """Run ONNX Runtime GenAI's model builder (CPU execution provider) in a child process."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(weights), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ExportError(f"ONNX Runtime GenAI's model builder could not build this model:\n{tail}")
