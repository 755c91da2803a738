"""Adversarial training: each micro-batch also learns from its input embeddings pushed, within a small L2 ball,
in the direction that raises its loss most — so small changes of the input (typos, a synonym) move the model less.

``train.adversarial: {method: fgm | pgd | freelb, epsilon, steps, alpha}`` adds ``AdversarialTraining`` to the
loop's hooks; it works for every encoder task and method (full, LoRA, ...), because it perturbs the embedding
*outputs* (the model's ``inputs_embeds``), never the frozen or trained weights themselves:

- ``fgm`` (Miyato et al. 2017): one step of size ``epsilon`` along the clean loss's gradient (per example, L2
  normalised); one extra forward and backward per micro-batch.
- ``pgd`` (Madry et al. 2018): ``steps`` ascent steps of size ``alpha``, each projected back into the
  ``epsilon`` ball; the parameters learn from the last one; ``steps`` extra passes.
- ``freelb`` (Zhu et al. 2020): ``steps`` ascent steps from a random start, the parameters learning from every
  one (each weighted 1/steps); ``steps`` extra passes.

The clean loss's gradient with respect to the embeddings comes for free: a forward hook on the embedding layer
keeps it from the loop's own backward. Only real tokens (attention mask 1) are perturbed.

Example:
    >>> run = tunelab.fit({..., "train": {"adversarial": {"method": "fgm", "epsilon": 1.0}}})   # doctest: +SKIP
    >>> run.train.report["adversarial"]["seconds_share"]                                       # doctest: +SKIP
    0.48
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .hooks import StepContext, TrainHook

Ascent = Callable[["AdversarialTraining", StepContext, torch.Tensor, torch.Tensor], None]


def _per_example_unit(g: torch.Tensor) -> torch.Tensor:
    """``g`` divided by each example's L2 norm over tokens and features."""
    norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norms.view(-1, *[1] * (g.dim() - 1))


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``delta`` with each example's L2 norm cut to at most ``epsilon``."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (epsilon / norms).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))


class AdversarialTraining(TrainHook):
    """The hook behind ``train.adversarial`` (see the module docstring).

    Args:
        model: the model being trained (its input-embedding layer is watched for the clean gradient).
        method: ``fgm``, ``pgd`` or ``freelb``.
        epsilon: the L2 radius of each example's perturbation (over all its tokens' embeddings).
        steps: ascent steps (pgd, freelb).
        alpha: the size of one ascent step (pgd, freelb).
        seed: freelb's random start.
    """

    def __init__(self, model: torch.nn.Module, method: str, epsilon: float, steps: int = 3, alpha: float | None = None,
                 seed: int = 0):
        self.method, self.epsilon, self.steps = method, float(epsilon), int(steps)
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.epsilon / self.steps
        self.generator = torch.Generator().manual_seed(seed)
        self.embeddings = model.get_input_embeddings()
        self.watching, self.clean = True, None
        self.seconds, self.passes, self.calls = 0.0, 0, 0
        self.handle = self.embeddings.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        """On the loop's own training forward: keep the embedding output so its gradient survives backward."""
        if not (self.watching and module.training and torch.is_grad_enabled()):
            return None
        if output.requires_grad:
            output.retain_grad()
        else:  # frozen embeddings (LoRA and other adapters): make the output a leaf that collects its gradient
            output = output.detach().requires_grad_(True)
        self.clean = output
        return output

    def after_backward(self, ctx: StepContext) -> None:
        """Add the adversarial loss's gradients to the clean ones (the loop already did the clean backward)."""
        started = time.perf_counter()
        self.watching = False
        try:
            ids = ctx.batch["input_ids"]
            mask = ctx.batch["attention_mask"].unsqueeze(-1).to(torch.float32) if "attention_mask" in ctx.batch \
                else torch.ones(*ids.shape, 1)
            clean_grad = self.clean.grad if self.clean is not None and self.clean.grad is not None else None
            if clean_grad is None:  # gradient checkpointing or another path hid it: one extra pass to get it
                leaf = self.embeddings(ids).detach().requires_grad_(True)
                clean_grad = torch.autograd.grad(ctx.compute_loss(input_ids=None, inputs_embeds=leaf), leaf)[0]
                self.passes += 1
            ASCENTS[self.method](self, ctx, clean_grad.detach() * mask, mask)
        finally:
            self.watching, self.clean = True, None
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def _loss(self, ctx: StepContext, delta: torch.Tensor) -> torch.Tensor:
        """The micro-batch's loss with its embeddings moved by ``delta`` (the embedding layer stays in the graph)."""
        self.passes += 1
        return ctx.compute_loss(input_ids=None, inputs_embeds=self.embeddings(ctx.batch["input_ids"]) + delta)

    def on_train_end(self, model: torch.nn.Module) -> None:
        """Stop watching the embedding layer."""
        self.handle.remove()

    def summary(self, train_seconds: float) -> dict[str, Any]:
        """What it cost: extra forward/backward passes per micro-batch and its share of the training time."""
        return {"method": self.method, "epsilon": self.epsilon, "steps": self.steps if self.method != "fgm" else 1,
                "alpha": self.alpha, "extra_passes_per_batch": round(self.passes / max(1, self.calls), 2),
                "seconds": round(self.seconds, 2), "seconds_share": round(self.seconds / max(train_seconds, 1e-9), 3)}


def _fgm(hook: AdversarialTraining, ctx: StepContext, clean_grad: torch.Tensor, mask: torch.Tensor) -> None:
    ctx.backward(hook._loss(ctx, hook.epsilon * _per_example_unit(clean_grad)))


def _pgd(hook: AdversarialTraining, ctx: StepContext, clean_grad: torch.Tensor, mask: torch.Tensor) -> None:
    delta = _project(hook.alpha * _per_example_unit(clean_grad), hook.epsilon)
    for _ in range(hook.steps - 1):
        delta = delta.detach().requires_grad_(True)
        grad = torch.autograd.grad(hook._loss(ctx, delta), delta)[0] * mask
        delta = _project(delta.detach() + hook.alpha * _per_example_unit(grad), hook.epsilon)
    ctx.backward(hook._loss(ctx, delta.detach()))


def _freelb(hook: AdversarialTraining, ctx: StepContext, clean_grad: torch.Tensor, mask: torch.Tensor) -> None:
    start = torch.rand(clean_grad.shape, generator=hook.generator) * 2 - 1
    delta = _project(start.to(clean_grad) * mask * hook.epsilon / max(1.0, float(mask.sum()) ** 0.5), hook.epsilon)
    for _ in range(hook.steps):
        delta = delta.detach().requires_grad_(True)
        loss = hook._loss(ctx, delta) / hook.steps
        ctx.backward(loss)  # the parameters learn from every step; delta's own gradient says where to go next
        grad = delta.grad * mask
        delta = _project(delta.detach() + hook.alpha * _per_example_unit(grad), hook.epsilon)


ASCENTS: dict[str, Ascent] = {"fgm": _fgm, "pgd": _pgd, "freelb": _freelb}

__all__ = ["ASCENTS", "AdversarialTraining"]
