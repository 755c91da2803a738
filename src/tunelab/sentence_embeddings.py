"""Sentence embeddings from an encoder (mean pooling over real tokens, L2-normalised), as
sentence-transformers computes them for all-MiniLM-L6-v2. Used to pick similar demonstrations and
by the SetFit-style few-shot path.

Example:
    >>> from tunelab.sentence_embeddings import Embedder                              # doctest: +SKIP
    >>> e = Embedder.load("minilm"); e.encode(["a fine film"]).shape      # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .inference import batched
from .models import load_pretrained, quiet_loading, resolve_model


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the hidden states over the real (unmasked) tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class Embedder:
    """A sentence encoder: ``encode`` texts to unit vectors; ``embed_batch`` keeps autograd for training.

    Args:
        model: a transformers encoder (``AutoModel``).
        tokenizer: its tokenizer.
        max_length: tokens per text after truncation.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_length: int = 128):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load(cls, name_or_path: Any, *, allow_network: bool = False, max_length: int = 128) -> Embedder:
        """An Embedder for a model name or folder (resolved offline unless ``allow_network``)."""
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(str(name_or_path), allow_network=allow_network).path
        with quiet_loading():
            model = load_pretrained(AutoModel, path)
        return cls(model.eval(), load_pretrained(AutoTokenizer, path), max_length)

    def embed_batch(self, texts: list[str]) -> torch.Tensor:
        """Differentiable embeddings of one batch (for training)."""
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        out = self.model(**enc).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(out, enc["attention_mask"]), dim=-1)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts`` as a [len(texts), hidden] array (no autograd), in order."""
        rows = batched(self.model, texts, lambda chunk: list(self.embed_batch(chunk).numpy()), batch_size=batch_size,
                       length=len, longest_first=False)
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.model.config.hidden_size)


def text_representations(model: torch.nn.Module, tokenizer: Any, texts: list[tuple[str, str | None]], max_length: int,
                         batch_size: int = 32) -> np.ndarray:
    """Mean-pooled last hidden states of ``model`` (the encoder of an encoder-decoder) for each text (pair).

    Args:
        model: a transformers (or peft) model of any head.
        tokenizer: its tokenizer.
        texts: (text, second text or None) per record.
        max_length: tokens per input after truncation.
        batch_size: inputs run through the model together.

    Returns:
        A [len(texts), hidden] float32 array, in order.
    """
    net = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
    padded = tokenizer.pad_token_id is not None

    def run(chunk: list[tuple[str, str | None]]) -> list[np.ndarray]:
        groups = [chunk] if padded else [[one] for one in chunk]
        out = []
        for group in groups:
            firsts, seconds = [t for t, _ in group], [p for _, p in group]
            enc = tokenizer(firsts, seconds if all(s is not None for s in seconds) else None, truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt")
            hidden = net(**enc, output_hidden_states=True).hidden_states[-1]
            out += list(mean_pool(hidden.float(), enc["attention_mask"]).numpy())
        return out

    rows = batched(model, texts, run, batch_size=batch_size, length=lambda t: len(t[0]) + len(t[1] or ""),
                   desc="representations")
    return np.asarray(rows, dtype=np.float32)
