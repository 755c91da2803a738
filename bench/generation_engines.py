"""Which engine should tunelab's fast generation use? SmolLM2-135M-Instruct greedy decoding, 128 new tokens,
single stream and 8 prompts batched: transformers fp32 (tunelab's reference path) vs CTranslate2 int8 — a first
measurement for issue 11's generation engine (ONNX Runtime GenAI and llama.cpp not yet measured here).

Run:  .venv/bin/pip install ctranslate2 && .venv/bin/python bench/generation_engines.py
Writes bench/results/generation_engines.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 128


def main() -> None:
    import ctranslate2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models import resolve_model

    path = resolve_model("smollm2").path
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a short story about a cat who learns to fly."}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    report: dict = {"command": "python bench/generation_engines.py", "model": "SmolLM2-135M-Instruct",
                    "new_tokens": NEW_TOKENS, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(Path(sys.executable).with_name("ct2-transformers-converter")), "--model", str(path),
                        "--output_dir", f"{tmp}/ct2", "--quantization", "int8"], check=True, capture_output=True)
        gen = ctranslate2.Generator(f"{tmp}/ct2", device="cpu", compute_type="int8", intra_threads=torch.get_num_threads())
        tokens = tok.convert_ids_to_tokens(ids)
        kwargs = {"max_length": NEW_TOKENS, "min_length": NEW_TOKENS, "sampling_topk": 1, "include_prompt_in_result": False}
        gen.generate_batch([tokens], **kwargs)  # warm-up
        started = time.perf_counter()
        out = gen.generate_batch([tokens], **kwargs)
        report["ct2_int8_tok_s"] = round(len(out[0].sequences_ids[0]) / (time.perf_counter() - started), 1)
        started = time.perf_counter()
        out = gen.generate_batch([tokens] * 8, **kwargs)
        report["ct2_int8_batch8_tok_s"] = round(sum(len(o.sequences_ids[0]) for o in out) / (time.perf_counter() - started), 1)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    x = torch.tensor([ids])
    with torch.inference_mode():
        model.generate(x, max_new_tokens=8, do_sample=False)  # warm-up
        started = time.perf_counter()
        out = model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    report["transformers_fp32_tok_s"] = round((out.shape[1] - x.shape[1]) / (time.perf_counter() - started), 1)
    report["ct2_vs_transformers"] = round(report["ct2_int8_tok_s"] / report["transformers_fp32_tok_s"], 2)
    out_path = ROOT / "bench" / "results" / "generation_engines.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
