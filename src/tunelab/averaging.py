"""An exponential moving average of the weights being trained (Polyak averaging; ``train.ema_decay``).

The average follows the trainable parameters only: frozen weights never change, so averaging them (as
``torch.optim.swa_utils.AveragedModel`` does, on a deep copy of the whole model) would only cost memory and time.
Early in training the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average is not
anchored to the random head it started from.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


class WeightAverage:
    """The moving average of a model's trainable parameters, swapped in for evaluation and kept at the end.

    Args:
        model: the model being trained (its parameters with ``requires_grad`` are followed).
        decay: the weight of the old average at each update, in (0, 1); 0.998 averages over ~500 steps.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> average = WeightAverage(model, decay=0.9)
        >>> average.update()
        >>> with average.applied():
        ...     _ = model(torch.zeros(1, 2))
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    def update(self) -> None:
        """Fold the current weights into the average (after each optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own weights again after it."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live):
                    p.copy_(v)

    def copy_to_model(self) -> None:
        """Replace the model's weights by the average for good (the end of training)."""
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """The average and its update count, by parameter name (for checkpoints)."""
        return {"updates": self.updates, "shadow": {n: s.clone() for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` gave; the parameter names must match."""
        missing = sorted(set(self.names) - set(state["shadow"]))
        if missing:
            raise KeyError(f"the weight average has no entry for {missing[:3]}")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for name, s in zip(self.names, self.shadow):
                s.copy_(state["shadow"][name])
