"""How an artifact is made: ``finetune``, ``zero_shot`` / ``few_shot`` (prompting) and ``setfit``, each one
module behind the ``Strategy`` protocol (``fit`` / ``load``), registered by name; ``choose_strategy``
implements ``strategy: auto``.

Example:
    >>> from tunelab.registry import STRATEGIES
    >>> type(STRATEGIES.get("setfit")).__name__
    'SetFit'
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..config import Config
from ..data import Records
from ..registry import TASKS
from .base import FitJob, Fitted, Strategy, is_causal_lm, register_strategy
from .finetune import FineTune
from .prompted import Prompted
from .setfit import SetFit

register_strategy("finetune", FineTune())
register_strategy("zero_shot", Prompted())
register_strategy("few_shot", Prompted())
register_strategy("setfit", SetFit())


def choose_strategy(cfg: Config, train: Records | None, model_path: Any) -> tuple[str, str]:
    """``auto``: the strategy for this data and model, and why (one sentence, printed by ``fit``).

    No labelled data -> zero_shot (a causal LM; an encoder falls through to finetune, whose error says
    that training data is missing). Single-label classification where the typical class has at most
    ``few_shot_limit`` examples (the median class count; one rare class in a large set does not count)
    -> few-shot: setfit on an encoder, in-context on a causal LM. Everything else -> finetune.

    Args:
        cfg: the run config (``cfg.strategy`` other than auto is returned as set).
        train: the labelled records, if any.
        model_path: the resolved base model (its config tells encoder from causal LM).
    """
    if cfg.strategy != "auto":
        return cfg.strategy, "set in the config"
    if train is None or not len(train):
        if is_causal_lm(model_path):
            return "zero_shot", "no labelled data and a causal LM"
        return "finetune", "an encoder model (it needs labelled data)"
    task = TASKS.get(cfg.task.name).variant(cfg.data)
    if "few_shot" in task.strategies and getattr(cfg.task, "problem_type", None) == "single_label":
        counts = Counter(str(r.get(cfg.data.label_column)).strip() for r in train.rows)
        sizes = sorted(counts.values())
        median = sizes[len(sizes) // 2] if sizes else 0
        described = f"{len(train):,} labelled examples in {len(counts)} classes, median {median} per class"
        if counts and median <= cfg.few_shot_limit:
            causal = is_causal_lm(model_path)
            return ("few_shot" if causal else "setfit"), \
                f"{described} (<= few_shot_limit {cfg.few_shot_limit}): few-shot " + \
                ("in-context prompting of the causal LM" if causal else "SetFit-style contrastive tuning")
        return "finetune", f"{described} (> few_shot_limit {cfg.few_shot_limit})"
    return "finetune", f"{len(train):,} labelled examples for {cfg.task.name}"


__all__ = ["FitJob", "Fitted", "Strategy", "choose_strategy", "is_causal_lm", "register_strategy"]
