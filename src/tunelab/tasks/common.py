"""Loading a base model with a fresh task head: shared by every encoder task."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DataError

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout", "classifier_dropout")


def load_with_head(auto_class: Any, model_path: Any, dropout: float | None,
                   **config_updates: Any) -> tuple[torch.nn.Module, list[str]]:
    """``auto_class.from_pretrained`` with config updates (labels, problem type) and an optional dropout
    override; returns the model and the names of its newly initialised (head) modules, which must always
    train and always be saved."""
    from ..models import load_pretrained, quiet_loading

    config = config_with_dropout(model_path, dropout)
    for key, value in config_updates.items():
        setattr(config, key, value)
    if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos  # decoder LMs pool at the last non-pad token
    with quiet_loading():  # tunelab reports the new head itself
        model, info = load_pretrained(auto_class, model_path, config=config, output_loading_info=True)
    head = sorted({key.split(".")[0] for key in info["missing_keys"]}) or ["classifier"]
    return model, head


def config_with_dropout(model_path: Any, dropout: float | None) -> Any:
    """The model's config, with every dropout probability it has set to ``dropout`` (None: unchanged)."""
    from transformers import AutoConfig

    from ..models import load_pretrained

    config = load_pretrained(AutoConfig, model_path)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    return config


def label_weights(spec: str | dict[str, float] | None, labels: list[str], counts: dict[str, int]) -> torch.Tensor | None:
    """Loss weights per label: ``balanced`` (inverse frequency, as scikit-learn computes it) or a
    {label: weight} dict (unnamed labels weigh 1)."""
    if spec is None:
        return None
    if spec == "balanced":
        c = np.array([max(1, counts.get(name, 0)) for name in labels], dtype=float)
        return torch.tensor(c.sum() / (len(c) * c), dtype=torch.float)
    unknown = set(spec) - set(labels)
    if unknown:
        raise DataError(f"train.class_weights names unknown labels {sorted(unknown)}; labels are {labels}")
    return torch.tensor([float(spec.get(name, 1.0)) for name in labels], dtype=torch.float)


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after content (BERT: [CLS] / [SEP])."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []
