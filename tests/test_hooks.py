"""Training hooks reach every loop that trains: extra loss terms, extra gradients (adversarial), extra data,
per-step allocation — none of them an edit of the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import tunelab

from conftest import sentiment_rows, tiny_config


class FGM(tunelab.TrainHook):
    """Fast gradient method on the word embeddings (as in tunelab.hooks' docstring)."""

    def __init__(self, epsilon: float):
        self.epsilon, self.calls, self.losses = epsilon, 0, []

    def after_backward(self, ctx: tunelab.StepContext) -> None:
        emb = ctx.model.get_input_embeddings().weight
        before = emb.detach().clone()
        delta = self.epsilon * emb.grad / (emb.grad.norm() + 1e-12)
        with torch.no_grad():
            emb.add_(delta)
        adversarial = ctx.compute_loss()
        ctx.backward(adversarial)
        with torch.no_grad():
            emb.sub_(delta)
        assert torch.allclose(emb, before)
        self.calls += 1
        self.losses.append(adversarial.item())


def _fit(tiny_bert: Path, out: Path, hooks: list[Any], **train: Any) -> tunelab.Run:
    cfg = tiny_config(tiny_bert, out, epochs=1, dropout=0.0, **train)
    return tunelab.fit(cfg, train=sentiment_rows(48), hooks=hooks)


@pytest.mark.slow
def test_an_extra_loss_term_adds_to_the_loss_and_nothing_else(tiny_bert: Path, tmp_path: Path) -> None:
    class Constant(tunelab.TrainHook):
        def extra_loss(self, ctx: tunelab.StepContext) -> torch.Tensor:
            return torch.tensor(5.0)

    plain = _fit(tiny_bert, tmp_path / "a", [], grad_accum_steps=2)
    shifted = _fit(tiny_bert, tmp_path / "b", [Constant()], grad_accum_steps=2)
    # a constant has no gradient: the same training, every logged loss exactly 5 higher (the term is
    # scaled by each micro-batch's share of the accumulation window, so it sums to 5 per step)
    assert [round(b["loss"] - a["loss"], 5) for a, b in zip(plain.train.history, shifted.train.history)] == \
        [5.0] * plain.train.steps
    assert plain.metrics["accuracy"] == shifted.metrics["accuracy"]


@pytest.mark.slow
def test_adversarial_gradients_from_a_hook(tiny_bert: Path, tmp_path: Path) -> None:
    fgm = FGM(epsilon=1.0)
    attacked = _fit(tiny_bert, tmp_path / "fgm", [fgm])
    plain = _fit(tiny_bert, tmp_path / "plain", [])
    assert fgm.calls == attacked.train.steps  # once per micro-batch (one per step here)
    assert all(torch.isfinite(torch.tensor(fgm.losses)))
    # the perturbed gradients changed what was learned
    a = attacked.live.model.state_dict()["bert.encoder.layer.0.output.dense.weight"]
    b = plain.live.model.state_dict()["bert.encoder.layer.0.output.dense.weight"]
    assert not torch.equal(a, b)


def test_compute_loss_takes_embeddings_instead_of_ids(tiny_bert: Path, tmp_path: Path) -> None:
    seen = []

    class Embeds(tunelab.TrainHook):
        def after_backward(self, ctx: tunelab.StepContext) -> None:
            embeds = ctx.model.get_input_embeddings()(ctx.batch["input_ids"])
            seen.append((ctx.compute_loss().item(), ctx.compute_loss(input_ids=None, inputs_embeds=embeds).item()))

    _fit(tiny_bert, tmp_path / "e", [Embeds()])
    assert seen and all(a == pytest.approx(b, rel=1e-5) for a, b in seen)


@pytest.mark.slow
def test_replay_data_through_training_features(tiny_bert: Path, tmp_path: Path) -> None:
    class Replay(tunelab.TrainHook):
        def training_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return features + features[:16]  # old examples mixed back in

    plain = _fit(tiny_bert, tmp_path / "p", [])
    replayed = _fit(tiny_bert, tmp_path / "r", [Replay()])
    assert replayed.train.samples_seen == plain.train.samples_seen + 16


def test_the_setfit_loop_runs_the_same_hooks(tiny_bert: Path, tmp_path: Path) -> None:
    seen: dict[str, Any] = {"examples": None, "extra": 0, "steps": 0, "end": 0}

    class Watch(tunelab.TrainHook):
        def training_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
            seen["examples"] = features
            return features

        def extra_loss(self, ctx: tunelab.StepContext) -> torch.Tensor:
            seen["extra"] += 1
            return torch.zeros(())

        def before_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
            seen["steps"] += 1

        def on_train_end(self, model: torch.nn.Module) -> None:
            seen["end"] += 1

    fgm = FGM(epsilon=0.5)
    run = tunelab.fit({"model": str(tiny_bert), "output_dir": str(tmp_path / "sf"), "strategy": "setfit",
                       "setfit": {"pairs_per_example": 2, "batch_size": 8}}, train=sentiment_rows(12),
                      hooks=[Watch(), fgm])
    steps = run.live.manifest["training"]["steps"]
    assert seen["examples"][0] == {"text": sentiment_rows(12)[0]["text"], "label": "pos"}
    assert seen["extra"] == seen["steps"] == fgm.calls == steps > 0 and seen["end"] == 1
