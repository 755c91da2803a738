"""Loading a base model with a fresh task head: shared by every encoder task."""

from __future__ import annotations

from typing import Any

import torch

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout", "classifier_dropout")


def load_with_head(auto_class: Any, model_path: Any, dropout: float | None, **config_updates: Any) -> tuple[torch.nn.Module, list[str]]:
    """``auto_class.from_pretrained`` with config updates (labels, problem type) and an optional dropout
    override; returns the model and the names of its newly initialised (head) modules, which must always
    train and always be saved."""
    from transformers import AutoConfig

    from ..models import quiet_loading

    config = AutoConfig.from_pretrained(model_path)
    for key, value in config_updates.items():
        setattr(config, key, value)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos  # decoder LMs pool at the last non-pad token
    with quiet_loading():  # tunelab reports the new head itself
        model, info = auto_class.from_pretrained(model_path, config=config, output_loading_info=True)
    head = sorted({key.split(".")[0] for key in info["missing_keys"]}) or ["classifier"]
    return model, head
