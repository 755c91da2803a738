"""Which engine should tunelab's fast generation use? SmolLM2-135M-Instruct greedy decoding, 128 new tokens
(one short prompt), single stream and 8 prompts batched, in one run: transformers fp32 (tunelab's reference
path), CTranslate2 int8, and ONNX Runtime GenAI int8 and int4 (built by ``tunelab export --format onnx-genai``).
The full comparison with llama.cpp and ROUGE-L is in bench/inference.py.

Run:  .venv/bin/pip install ctranslate2 onnxruntime-genai && .venv/bin/python bench/generation_engines.py
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
        import tunelab
        from tunelab.causal_lm import _left_pad

        source = tunelab.fit({"model": "smollm2", "strategy": "zero_shot", "task": "summarization",
                              "output_dir": f"{tmp}/zero-shot"}).artifact_dir
        for precision in ("int8", "int4"):
            engine = tunelab.Predictor.load(tunelab.export(source, f"{tmp}/{precision}", format="onnx-genai",
                                                           quantize=precision)).model
            kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False,
                      "eos_token_id": [tok.eos_token_id], "pad_token_id": tok.pad_token_id}
            for batch in (1, 8):
                inputs = _left_pad([ids] * batch, tok.pad_token_id)
                engine.generate(**_left_pad([ids], tok.pad_token_id), **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
                started = time.perf_counter()
                out = engine.generate(**inputs, **kwargs)
                rate = batch * (out.shape[1] - len(ids)) / (time.perf_counter() - started)
                report[f"onnx_genai_{precision}" + ("_batch8" if batch == 8 else "") + "_tok_s"] = round(rate, 1)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    x = torch.tensor([ids])
    with torch.inference_mode():
        model.generate(x, max_new_tokens=8, do_sample=False)  # warm-up
        started = time.perf_counter()
        out = model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    report["transformers_fp32_tok_s"] = round((out.shape[1] - x.shape[1]) / (time.perf_counter() - started), 1)
    report["ct2_vs_transformers"] = round(report["ct2_int8_tok_s"] / report["transformers_fp32_tok_s"], 2)
    report["onnx_genai_int8_vs_transformers"] = round(report["onnx_genai_int8_tok_s"] / report["transformers_fp32_tok_s"], 2)
    out_path = ROOT / "bench" / "results" / "generation_engines.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
