"""Generation tasks: chat-template encoding with reply-only loss, packing, truncation, bad dialogues,
decoding (greedy/beam/sample/stop strings/streaming), metrics, and the artifact round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tunelab
from tunelab.causal_lm import cut_at_stop, generate_ids, load_tokenizer, stream_ids
from tunelab.config import GenerateConfig, build_config
from tunelab.data import read_records
from tunelab.errors import ConfigError, DataError
from tunelab.metrics import generation_metrics
from tunelab.registry import TASKS
from tunelab.tasks.generation import GenerationTask


def _task(kind: str = "summarization", **data: object) -> GenerationTask:
    cfg = build_config({"task": kind, "data": {"max_length": 96, **data}})
    return TASKS.get(cfg.task.name).from_training_data(cfg, None)


def test_loss_covers_reply_tokens_only(tiny_llama: Path) -> None:
    tok = load_tokenizer(tiny_llama)
    task = _task()
    recs = read_records([{"text": "the cat sat on the mat", "target": "a cat sits"}])
    feat = task.encode(recs, tok, with_labels=True)[0]
    reply = [t for t, y in zip(feat["input_ids"], feat["labels"]) if y != -100]
    assert tok.decode(reply).startswith("a cat sits<|im_end|>")
    # Everything before the reply is the prompt the model continues from at prediction time.
    first = next(i for i, y in enumerate(feat["labels"]) if y != -100)
    assert feat["input_ids"][:first] == feat["prompt_ids"]
    assert tok.decode(feat["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert "Summarize" in tok.decode(feat["prompt_ids"])


def test_dialogue_trains_on_every_assistant_turn_and_checks_roles(tiny_llama: Path) -> None:
    tok = load_tokenizer(tiny_llama)
    task = _task("dialogue")
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
             {"role": "assistant", "content": "See you."}]
    feat = task.encode(read_records([{"messages": turns}]), tok, with_labels=True)[0]
    reply_text = tok.decode([t for t, y in zip(feat["input_ids"], feat["labels"]) if y != -100])
    assert "Hello!" in reply_text and "See you." in reply_text and "Bye" not in reply_text
    assert feat["references"] == ["See you."]

    bad = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again?"}]
    with pytest.raises(DataError, match=r"messages\[1\]: roles out of order"):
        task.encode(read_records([{"messages": bad}], name="chats.jsonl"), tok, with_labels=False)
    with pytest.raises(DataError, match="unknown role 'bot'"):
        task.encode(read_records([{"messages": [{"role": "bot", "content": "x"}]}]), tok, with_labels=False)
    with pytest.raises(DataError, match="last turn must be the assistant"):
        task.encode(read_records([{"messages": turns[:2] + turns[2:4]}]), tok, with_labels=True)


def test_empty_reference_and_missing_column_are_named(tiny_llama: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_llama)
    path = tmp_path / "sums.jsonl"
    path.write_text(json.dumps({"text": "a b c", "target": "ok"}) + "\n" + json.dumps({"text": "d e f", "target": " "}) + "\n")
    with pytest.raises(DataError, match=r"sums.jsonl line 2, column 'target': empty reference output"):
        _task().encode(read_records(path), tok, with_labels=True)
    multi = _task(reference_columns=["summary1", "summary2"])
    feat = multi.encode(read_records([{"text": "x", "summary1": "y1", "summary2": "y2"}]), tok, with_labels=True)[0]
    assert feat["references"] == ["y1", "y2"]  # the loss then uses the first reference as the target
    with pytest.raises(DataError, match=r"column 'summary1' \(reference output\) is missing"):
        multi.encode(read_records([{"text": "x", "other": "y"}]), tok, with_labels=True)


def test_long_inputs_are_shortened_and_reported(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok = load_tokenizer(tiny_llama)
    task = _task()
    long_text = " ".join(f"word{i}" for i in range(300))
    feat = task.encode(read_records([{"text": long_text, "target": "short"}], name="train"), tok, with_labels=True)[0]
    assert len(feat["input_ids"]) <= 96
    assert tok.decode([t for t, y in zip(feat["input_ids"], feat["labels"]) if y != -100]).startswith("short")
    assert "1 of 1 records were longer than data.max_length=96" in capsys.readouterr().err


def test_packing_keeps_examples_apart(tiny_llama: Path) -> None:
    tok = load_tokenizer(tiny_llama)
    task = _task(max_length=200)
    task.state["packing"] = True
    rows = [{"text": f"item {i}", "target": f"out {i}"} for i in range(6)]
    feats = task.encode(read_records(rows), tok, with_labels=True)
    packed = task.prepare_training_features(feats)
    assert len(packed) < len(feats) and sum(p["examples"] for p in packed) == 6
    assert sum(task.loss_units(p) for p in packed) == sum(task.loss_units(f) for f in feats)
    batch = task.collate(tok)(packed)
    assert "attention_mask" not in batch and "position_ids" in batch
    # With restarting positions the model must give each packed example the same logits as alone.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    first = packed[0]
    starts = [i for i, pos in enumerate(first["position_ids"]) if pos == 0] + [len(first["position_ids"])]
    n0, n1 = starts[1], starts[2] - starts[1]  # where the second packed example starts, and its length
    with torch.no_grad():
        together = model(input_ids=torch.tensor([first["input_ids"]]), position_ids=torch.tensor([first["position_ids"]]),
                         use_cache=False).logits  # as tunelab trains causal LMs: no KV cache
        second_alone = model(input_ids=torch.tensor([first["input_ids"][n0:n0 + n1]])).logits
    assert torch.allclose(together[0, n0:n0 + n1], second_alone[0], atol=1e-4)


def test_decoding_modes_stop_strings_and_streaming(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [tok("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")["input_ids"],
               tok("<|im_start|>user\na longer question here<|im_end|>\n<|im_start|>assistant\n")["input_ids"]]
    greedy = generate_ids(model, tok, prompts, GenerateConfig(max_new_tokens=6))
    # Batched, left-padded generation equals one-by-one generation.
    assert greedy == [generate_ids(model, tok, [p], GenerateConfig(max_new_tokens=6))[0] for p in prompts]
    beam = generate_ids(model, tok, prompts, GenerateConfig(strategy="beam", num_beams=3, max_new_tokens=6))
    assert len(beam) == 2
    s1 = generate_ids(model, tok, prompts, GenerateConfig(strategy="sample", seed=1, max_new_tokens=6))
    s2 = generate_ids(model, tok, prompts, GenerateConfig(strategy="sample", seed=1, max_new_tokens=6))
    assert s1 == s2
    raw_tokens = "".join(stream_ids(model, tok, prompts[0], GenerateConfig(max_new_tokens=6)))
    assert raw_tokens.strip() == greedy[0]
    with pytest.raises(tunelab.ConfigError, match="generate.strategy beam .* cannot stream"):
        next(stream_ids(model, tok, prompts[0], GenerateConfig(strategy="beam")))
    assert cut_at_stop("Answer: yes\n\nQuestion: next", ["\n\n", "Question:"]) == "Answer: yes"


def test_generation_metrics_words_and_chinese_characters() -> None:
    m = generation_metrics(["the cat sat on the mat"], [["the cat sat on a mat", "a cat on the mat"]])
    assert 80 < m["rouge1"] <= 100 and m["scored_on"] == "words" and m["bleu"] > 0 and m["chrf"] > 0
    zh = generation_metrics(["今天天气很好"], [["今天天气不错"]])
    assert zh["scored_on"] == "characters" and zh["rouge1"] == pytest.approx(100 * 4 / 6)


@pytest.mark.slow
def test_summarization_lora_sft_end_to_end(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"text": f"the {a} ate the {b}", "target": f"{a} ate"} for a in ("cat", "dog", "fox", "owl")
            for b in ("fish", "cake", "seed", "rice", "corn")]
    cfg = {"task": {"name": "summarization", "eval_generate": 2}, "model": str(tiny_llama),
           "output_dir": str(tmp_path / "sum"), "data": {"max_length": 64}, "generate": {"max_new_tokens": 6},
           "method": {"name": "lora", "r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
           "train": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2, "seed": 1}}
    run = tunelab.fit(cfg, train=rows)
    losses = [row["loss"] for row in run.train.history]
    assert losses[-1] < losses[0]
    assert {"loss", "perplexity", "rouge1", "rouge2", "rougeL", "bleu", "chrf"} <= set(run.metrics)
    assert run.metrics["samples"] == 2  # validation split generated in full at the end
    predictor = tunelab.Predictor.load(run.artifact_dir)
    out = predictor.predict(["the cat ate the rice", "the owl ate the corn"])
    assert [o["text"] for o in out] == [o["text"] for o in run.live.predict(["the cat ate the rice", "the owl ate the corn"])]
    assert "".join(predictor.stream("the cat ate the rice")).strip() == out[0]["text"]
    from tunelab.cli import main

    assert main(["predict", str(run.artifact_dir), "the cat ate the rice", "--stream"]) == 0
    assert capsys.readouterr().out.strip() == out[0]["text"]


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_model(tiny_llama: Path, tmp_path: Path) -> None:
    rows = [{"text": f"the {a} ate the {b}", "target": f"{a} ate"} for a in ("cat", "dog", "fox", "owl")
            for b in ("fish", "cake", "seed", "rice")]
    runs = []
    for checkpointing in (False, True):
        cfg = {"task": {"name": "summarization", "eval_generate": 0}, "model": str(tiny_llama),
               "output_dir": str(tmp_path / f"gc{checkpointing}"), "data": {"max_length": 64}, "generate": {"max_new_tokens": 2},
               "method": {"name": "lora", "r": 8}, "train": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2,
                                                           "seed": 3, "gradient_checkpointing": checkpointing}}
        runs.append(tunelab.fit(cfg, train=rows))
    base = runs[1].live.model.get_base_model()
    assert base.is_activation_checkpointing and not runs[0].live.model.get_base_model().is_activation_checkpointing
    np.testing.assert_allclose([h["loss"] for h in runs[1].train.history], [h["loss"] for h in runs[0].train.history],
                               rtol=1e-4)


def test_template_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"task.instruction: the template has no \{text\} slot"):
        build_config({"task": {"name": "summarization", "instruction": "Summarize it"}})
    with pytest.raises(ConfigError, match=r"prompt.template: unknown slot \{review\}"):
        build_config({"prompt": {"template": "Review: {review}"}})
    with pytest.raises(ConfigError, match=r"unknown slot \{types\}"):
        build_config({"task": {"name": "translation", "instruction": "{types}: {text}"}})
    cfg = build_config({"task": {"name": "translation", "instruction": "{source_lang}->{target_lang}: {text}"}})
    assert cfg.task.instruction.startswith("{source_lang}")


def test_left_padded_reply_only_logits_give_the_exact_loss(tiny_llama: Path) -> None:
    """The training batch keeps only the last positions' logits; the loss must equal the plain one."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_llama)
    task = _task(max_length=200)
    rows = [{"text": "short one", "target": "a reply that is rather long for its input"},
            {"text": "a much longer input text with many more words in it than the other", "target": "brief"}]
    feats = task.encode(read_records(rows), tok, with_labels=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = task.collate(tok)(feats)
    assert batch["logits_to_keep"].numel() < batch["input_ids"].shape[1]
    labels = batch.pop("labels")
    with torch.no_grad():
        trimmed = task.loss_sum(model(**batch), labels, None)
        plain = sum(F.cross_entropy(model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1],
                                    torch.tensor(f["labels"][1:]), ignore_index=-100, reduction="sum") for f in feats)
    assert torch.allclose(trimmed, plain, rtol=1e-4)


def test_gradient_checkpointing_on_a_model_without_a_transformer_is_a_config_error() -> None:
    import torch

    from tunelab.methods import enable_gradient_checkpointing

    with pytest.raises(ConfigError, match="train.gradient_checkpointing: Sequential has no transformer"):
        enable_gradient_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2)))
