"""Shared fixtures: a tiny random BERT built from a config (fast, no network) and small datasets."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["great", "wonderful", "lovely", "superb", "delightful", "excellent", "charming", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "clumsy", "tedious", "horrible", "dull"]
NOUNS = ["film", "meal", "phone", "book", "show", "album", "hotel", "game"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable toy task: the adjective decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        adjective = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        rows.append({"text": f"the {rng.choice(NOUNS)} was {adjective}", "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the packaged MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.models import resolve_model

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm").path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def sentiment_file(tmp_path: Path) -> Path:
    path = tmp_path / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(64)), encoding="utf-8")
    return path


def tiny_config(model: Path, out: Path, **train: object) -> dict:
    """A fast config for the tiny model."""
    return {
        "model": str(model),
        "output_dir": str(out),
        "strategy": "finetune",  # tiny datasets would otherwise pick the few-shot path (strategy: auto)
        "method": {"name": "full"},
        "data": {"max_length": 32},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 3, **train},
    }


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama with random weights and the packaged SmolLM2 tokenizer (chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.models import resolve_model

    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
