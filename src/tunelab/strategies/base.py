"""The Strategy protocol: how an artifact is made (``fit``) and opened again (``load``).

``fine-tune``, ``prompted`` (zero-/few-shot) and ``setfit`` are strategies; each returns the same
``Fitted`` (the model, its processor and the task object that predicts with them, the metrics, and a
function writing its files), so ``tunelab.fit`` builds one manifest and ``Predictor`` one interface for all.

Example:
    >>> from tunelab.registry import STRATEGIES
    >>> sorted(STRATEGIES.names())
    ['few_shot', 'finetune', 'setfit', 'zero_shot']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..config import Config
from ..data import Records
from ..errors import ConfigError
from ..hooks import TrainHook
from ..models import ResolvedModel
from ..registry import STRATEGIES


@dataclass
class FitJob:
    """Everything a strategy's ``fit`` gets.

    Args:
        cfg: the validated config.
        strategy: the strategy's registered name (one class may serve several, e.g. zero_shot and few_shot).
        model: the resolved base model.
        train, validation, test: the records (``train`` None for zero-shot; ``validation`` None: the strategy
            splits it off or skips validation).
        run_dir: the locked output directory.
        hooks: training hooks from the caller (``fit(hooks=...)``), run by every loop that trains.
        speech: the speech recogniser that transcribed ``data.audio_column`` (its manifest entry), if any.
    """

    cfg: Config
    strategy: str
    model: ResolvedModel
    train: Records | None
    validation: Records | None
    test: Records | None
    run_dir: Path
    hooks: list[TrainHook] = field(default_factory=list)
    speech: dict[str, Any] | None = None


@dataclass
class Fitted:
    """What a strategy's ``fit`` returns; ``tunelab.fit`` turns it into an artifact and a ``Run``.

    Args:
        model, processor, task: what predicts (``task.predict_records(model, processor, records, ...)``).
        validation, test: the metrics (``{}`` / None when there was no such data).
        model_format: how ``write_parts`` saved the model (``full``, ``peft``, ``encoder``, ``none``).
        parameters: {"total", "trainable"} counts.
        write_parts: writes the strategy's files (model, processor, ...) into the staging folder.
        size_hint: bytes ``write_parts`` will write (for a clear disk-full message).
        report: extra entries of metrics.json (timings, best step, ...).
        manifest: extra manifest fields (the method used, ...).
        train: the training loop's result (None for strategies that do not run tunelab's loop).
        validation_records: the records ``validation`` was measured on (given or split off), for ``train.report``.
    """

    model: Any
    processor: Any
    task: Any
    validation: dict[str, Any]
    test: dict[str, Any] | None
    model_format: str
    parameters: dict[str, int]
    write_parts: Callable[[Path], None]
    size_hint: int = 2_000_000
    report: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    train: Any = None
    validation_records: Records | None = None


class Strategy(Protocol):
    """A strategy: ``fit`` a job into ``Fitted``; ``load`` an artifact it wrote back into (model, processor, task)."""

    def fit(self, job: FitJob) -> Fitted:
        """Make the artifact's parts for ``job``: train (or prompt), evaluate, and say how to save them."""
        ...

    def load(self, artifact_dir: Path, manifest: dict[str, Any], allow_network: bool) -> tuple[Any, Any, Any]:
        """Open an artifact this strategy wrote: its model, processor and the task that predicts with them."""
        ...


def register_strategy(name: str, strategy: Strategy, *, replace: bool = False) -> Strategy:
    """Make ``strategy`` available as ``strategy: <name>`` in configs, and to ``Predictor.load``.

    Args:
        name: the config name (an identifier).
        strategy: an object with ``fit(job) -> Fitted`` and ``load(artifact_dir, manifest, allow_network)
            -> (model, processor, task)``. Tasks list the strategies they support in ``Task.strategies``.
        replace: allow replacing a registered strategy of the same name.

    Example:
        >>> register_strategy("distill", DistillStrategy())      # doctest: +SKIP
    """
    if not (callable(getattr(strategy, "fit", None)) and callable(getattr(strategy, "load", None))):
        raise ConfigError(f"register_strategy({name!r}, ...): the strategy needs fit(job) and load(...) methods")
    return STRATEGIES.add(name, strategy, replace=replace)


def is_causal_lm(path: Any) -> bool:
    """Whether the model at ``path`` is a decoder-only causal LM (by its config)."""
    from transformers import AutoConfig

    from ..models import load_pretrained

    config = load_pretrained(AutoConfig, path)
    archs = " ".join(getattr(config, "architectures", None) or [])
    return "CausalLM" in archs or (not getattr(config, "is_encoder_decoder", False)
                                   and config.model_type in ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma"))
