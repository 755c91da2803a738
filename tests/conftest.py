"""Shared fixtures: a tiny random BERT built from a config (fast, no network) and small datasets."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Erin", "Farid"]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Quito", "Hanoi"]


def toy_sentences(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy NER task: a name and a city in one of two sentence shapes."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        if rng.random() < 0.5:
            tokens, tags = [name, "lives", "in", city, "."], ["B-PER", "O", "O", "B-LOC", "O"]
        else:
            tokens, tags = ["in", city, "we", "met", name, "Smith"], ["O", "B-LOC", "O", "O", "B-PER", "I-PER"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
ANIMALS = ["cat", "dog", "horse", "mouse", "goat", "duck"]


def toy_qa(n: int, seed: int = 0, filler: int = 0) -> list[dict]:
    """A learnable toy QA task: the colour of an animal, after ``filler`` sentences of padding."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, animal = rng.choice(COLORS), rng.choice(ANIMALS)
        pad = " ".join(["the weather was mild that day ."] * filler)
        context = f"{pad} the {animal} was {color} .".strip()
        start = context.index(f" was {color}") + 5
        rows.append({"id": str(i), "question": f"what color was the {animal} ?", "context": context,
                     "answers": {"text": [color], "answer_start": [start]}})
    return rows


def toy_relations(n: int, seed: int = 0) -> list[dict]:
    """Direction is decided by which entity comes first, the type by the verb."""
    rng = random.Random(seed)
    verbs = {"caused": "Cause-Effect", "contains": "Content-Container"}
    rows = []
    for _ in range(n):
        verb = rng.choice(list(verbs))
        a, b = rng.sample(["storm", "flood", "box", "jar", "virus", "fire"], 2)
        if rng.random() < 0.5:
            rows.append({"text": f"the <e1>{a}</e1> {verb} the <e2>{b}</e2>", "label": f"{verbs[verb]}(e1,e2)"})
        else:
            rows.append({"text": f"the <e2>{a}</e2> {verb} the <e1>{b}</e1>", "label": f"{verbs[verb]}(e2,e1)"})
        if rng.random() < 0.2:
            rows.append({"text": f"the <e1>{a}</e1> and the <e2>{b}</e2>", "label": "Other"})
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
        # random weights: the word embeddings must learn too (pretrained models keep them frozen by default)
        "method": {"name": "full", "train_word_embeddings": True},
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


@contextmanager
def live_server(args: list[str], wait_s: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tunelab serve ARGS`` in a subprocess on a free loopback port: yields (base url, process) once
    ``/ready`` answers, and stops it with SIGTERM afterwards (the output stays readable on the process)."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *args, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{server.communicate(timeout=10)[0]}")
            time.sleep(0.3)
        yield url, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        server.output = server.communicate(timeout=60)[0]


def chromium_path() -> str | None:
    """Debian's Chromium (``/usr/bin/chromium`` is a shell wrapper; Playwright needs the binary itself)."""
    for candidate in (os.environ.get("TUNELAB_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")  # not session-wide: Playwright's sync API keeps an event loop running meanwhile
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found: `apt-get install -y chromium` (make test installs it when it can), "
                    "or set TUNELAB_CHROMIUM to a Chromium binary")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


RED = (220, 30, 30)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide ViT on 32x32 images with random weights and its image processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def coloured_records(root: Path, n: int = 64) -> Path:
    """``n`` text+image records in ``root/train.jsonl`` whose label only the image's colour tells (red: pos,
    blue: neg); the text is noise. Images are PNGs in ``root/img``, named relative to the data file."""
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in (RED if label == "pos" else (30, 30, 220)))
        Image.new("RGB", (40, 40), colour).save(root / "img" / f"{i}.png")
        rows.append({"text": f"item number {rng.randint(0, 99)}", "image": f"img/{i}.png", "label": label})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "train.jsonl"
