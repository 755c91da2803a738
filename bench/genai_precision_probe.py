"""Where the onnx-genai int8 engine's ROUGE-L cost comes from: the same int8 weights with int8 arithmetic
(ONNX Runtime's ``accuracy_level=4``, the model builder's CPU default, what ``tunelab export --format onnx-genai``
builds) and with float32 arithmetic (``accuracy_level=1``), against the PyTorch fp32 model — SmolLM2 zero-shot
DialogSum, the first 100 test dialogues, 3 references, greedy, 64 new tokens (bench/inference.py's setting),
plus the seconds each evaluation took (one run, same machine).

Run:  .venv/bin/python bench/genai_precision_probe.py [--data-dir ../shared/data]
Writes bench/results/genai_precision_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "genai_precision_probe.json")
    args = parser.parse_args()
    import tunelab
    from tunelab.data import read_records
    from tunelab.export_genai import _plain_config, padding_token
    from tunelab.genai_model import GenAIModel
    from tunelab.predictor import Predictor

    test = read_records(args.data_dir / "dialogsum" / "dialogsum.test.jsonl").subset(range(100))
    report: dict = {"command": "python bench/genai_precision_probe.py " + " ".join(sys.argv[1:]), "dialogues": 100}
    with tempfile.TemporaryDirectory() as tmp:
        source = tunelab.fit({"model": "smollm2", "strategy": "zero_shot", "output_dir": f"{tmp}/zs",
                              "task": {"name": "summarization", "eval_generate": 0,
                                       "instruction": "Summarize the following dialogue in one or two sentences.\n\n{text}"},
                              "data": {"text_column": "dialogue", "target_column": "summary1", "max_length": 512,
                                       "reference_columns": ["summary1", "summary2", "summary3"]},
                              "generate": {"strategy": "greedy", "max_new_tokens": 64, "batch_size": 16}}).artifact_dir
        torch_p = tunelab.Predictor.load(source)
        weights = Path(tmp) / "hf"
        torch_p.model.save_pretrained(weights)
        torch_p.processor.save_pretrained(weights)
        _plain_config(weights / "config.json")
        started = time.perf_counter()
        report["pytorch_fp32"] = {"rougeL": round(torch_p.evaluate(test)["rougeL"], 2),
                                  "seconds": round(time.perf_counter() - started, 1)}
        for level in (4, 1):
            out = Path(tmp) / f"int8-acc{level}"
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(weights), "-o", str(out),
                            "-p", "int8", "-e", "cpu", "-c", f"{tmp}/cache", "--extra_options",
                            f"accuracy_level={level}"], check=True, capture_output=True)
            settings = json.loads((out / "genai_config.json").read_text())
            settings["model"].update(pad_token_id=padding_token(torch_p.processor, {2}), eos_token_id=[2])
            (out / "genai_config.json").write_text(json.dumps(settings))
            engine = Predictor(GenAIModel(out), torch_p.processor, torch_p.task, {}, None)
            started = time.perf_counter()
            report[f"int8_accuracy_level_{level}"] = {"rougeL": round(engine.evaluate(test)["rougeL"], 2),
                                                      "seconds": round(time.perf_counter() - started, 1)}
            print(level, report[f"int8_accuracy_level_{level}"], flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
