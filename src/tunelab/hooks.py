"""Training hooks: where a new training method lives, instead of in an edit of the loop.

Every loop that trains (fine-tuning in ``train.py``, the SetFit contrastive loop) calls the hooks it is
given, in order, at these points:

==========================  =================================================================================
``training_features``       before training: the examples to train on (add replay data, reorder, filter)
``extra_loss(ctx)``         per micro-batch, before backward: a term added to the loss (EWC, a penalty),
                            scaled by the micro-batch's share of the accumulation window
``after_backward(ctx)``     per micro-batch, after backward: more gradient (adversarial training: perturb
                            the embeddings, ``ctx.backward(ctx.compute_loss())``, restore)
``before_optimizer_step``   per optimizer step, after clipping (AdaLoRA's rank allocation)
``on_evaluate``             after each evaluation during training: the step and the metrics (a search's
                            pruner reports them and may stop the trial by raising)
``on_train_end``            after the last step (release what the hook holds)
==========================  =================================================================================

``ctx.compute_loss(**overrides)`` computes the task loss of the current micro-batch with the model as it is
now, normalised exactly like the loop's own loss; ``overrides`` replace batch inputs, e.g.
``compute_loss(input_ids=None, inputs_embeds=perturbed)`` (``None`` removes an input). The SetFit loop
recomputes its contrastive loss (no overrides: its inputs are texts).

Example: fast gradient method (Miyato et al., 2017) as a hook
    >>> import torch
    >>> class FGM(TrainHook):
    ...     def __init__(self, epsilon=1.0):
    ...         self.epsilon = epsilon
    ...     def after_backward(self, ctx):
    ...         emb = ctx.model.get_input_embeddings().weight
    ...         if emb.grad is None:
    ...             return
    ...         delta = self.epsilon * emb.grad / (emb.grad.norm() + 1e-12)
    ...         with torch.no_grad():
    ...             emb.add_(delta)
    ...         ctx.backward(ctx.compute_loss())
    ...         with torch.no_grad():
    ...             emb.sub_(delta)
    >>> run = tunelab.fit(cfg, train=rows, hooks=[FGM(0.5)])   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class StepContext:
    """What a hook sees of one micro-batch.

    Args:
        model: the model being trained (unwrapped: its own modules and parameters).
        batch: the micro-batch's model inputs (labels removed); for SetFit, ``{"pairs": [...]}``.
        labels: the micro-batch's labels (``None`` where the loop has none).
        step: optimizer steps done before this one.
        weight: this micro-batch's share of the accumulation window (extra loss terms are scaled by it).
        compute_loss: ``compute_loss(**overrides)`` -> the task loss of this micro-batch, as the loop computes it.
        backward: adds a loss's gradients (``loss.backward`` through the loop's accelerator).
    """

    model: torch.nn.Module
    batch: dict[str, Any]
    labels: Any
    step: int
    weight: float
    compute_loss: Callable[..., torch.Tensor]
    backward: Callable[[torch.Tensor], None]


class TrainHook:
    """Base class of training hooks: override the points you need (each default does nothing)."""

    def training_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The training examples (task features; SetFit: ``{"text", "label"}``) the loop will use."""
        return features

    def extra_loss(self, ctx: StepContext) -> torch.Tensor | None:
        """A term to add to this micro-batch's loss before backward (None: nothing)."""
        return None

    def after_backward(self, ctx: StepContext) -> None:
        """Called after this micro-batch's backward; may add gradients with ``ctx.backward``."""

    def before_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        """Called once per optimizer step, after gradient clipping, before the update."""

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> None:
        """Called after each evaluation during training with the optimizer step and the validation metrics."""

    def on_train_end(self, model: torch.nn.Module) -> None:
        """Called once after training."""


def with_overrides(batch: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``overrides`` applied (an override of ``None`` removes that input)."""
    merged = {**batch, **overrides}
    return {k: v for k, v in merged.items() if v is not None}
