"""Adversarial training (train.adversarial): the perturbation adds gradient without touching the clean forward,
stays inside its budget, raises the loss, and trains every encoder task with full fine-tuning and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.adversarial import AdversarialTraining, _project
from tunelab.hooks import StepContext

from conftest import sentiment_rows, tiny_config, toy_qa, toy_relations, toy_sentences


def tiny_classifier(tiny_bert: Path) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert, trust_remote_code=False)
    batch = dict(tokenizer(["the film was great", "a dull and tedious meal"], padding=True, return_tensors="pt"))
    return model.train(), batch, torch.tensor([1, 0])


def context(model: torch.nn.Module, batch: dict, labels: torch.Tensor) -> StepContext:
    def compute_loss(**overrides):
        inputs = {k: v for k, v in {**batch, **overrides}.items() if v is not None}
        return torch.nn.functional.cross_entropy(model(**inputs).logits, labels)

    return StepContext(model, batch, labels, 0, 1.0, compute_loss, lambda loss: loss.backward())


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_the_perturbation_adds_gradient_and_leaves_the_clean_forward_alone(tiny_bert: Path, method: str) -> None:
    model, batch, labels = tiny_classifier(tiny_bert)
    model.eval()  # no dropout: the forward is deterministic, so "unchanged" can be exact
    ctx = context(model, batch, labels)
    with torch.no_grad():
        before = model(**batch).logits.clone()
    ctx.compute_loss().backward()
    clean = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    hook = AdversarialTraining(model, method, epsilon=0.5, steps=3)
    model.train(False)
    model.get_input_embeddings().train(True)  # the hook watches training forwards
    loss = ctx.compute_loss()
    loss.backward()
    hook.after_backward(ctx)
    hook.on_train_end(model)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    changed = [n for n in clean if not torch.allclose(grads[n], clean[n])]
    assert changed and any("classifier" in n for n in changed)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # no weight was moved, nothing left behind
    assert hook.passes == {"fgm": 1, "pgd": 3, "freelb": 3}[method] and hook.calls == 1


def test_fgm_moves_the_embeddings_uphill_within_epsilon(tiny_bert: Path) -> None:
    model, batch, labels = tiny_classifier(tiny_bert)
    model.eval()
    ctx = context(model, batch, labels)
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    clean = ctx.compute_loss(input_ids=None, inputs_embeds=embeds)
    grad = torch.autograd.grad(clean, embeds)[0] * batch["attention_mask"].unsqueeze(-1)
    delta = 0.5 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1)
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((2,), 0.5))
    assert ctx.compute_loss(input_ids=None, inputs_embeds=embeds + delta) > clean


def test_projection_keeps_each_example_inside_the_ball() -> None:
    delta = torch.randn(4, 7, 8) * torch.tensor([0.1, 1.0, 10.0, 100.0]).view(4, 1, 1)
    norms = _project(delta, 2.0).flatten(1).norm(dim=1)
    assert torch.all(norms <= 2.0 + 1e-5) and norms[0] == pytest.approx(float(delta[0].norm()), rel=1e-5)


@pytest.mark.parametrize(("task", "rows", "method", "peft"), [
    ("classification", sentiment_rows, "fgm", False),
    ("classification", sentiment_rows, "pgd", True),
    ("ner", toy_sentences, "freelb", False),
    ("relation", toy_relations, "fgm", True),
    ("qa", toy_qa, "pgd", False),
])
def test_every_encoder_task_trains_adversarially(tiny_bert: Path, tmp_path: Path, task: str, rows, method: str,
                                                 peft: bool) -> None:
    config = {**tiny_config(tiny_bert, tmp_path / task, epochs=1, adversarial={"method": method, "epsilon": 0.5,
                                                                                "steps": 2}), "task": task}
    if peft:
        config["method"] = {"name": "lora", "r": 4}
    run = tunelab.fit(config, train=rows(24))
    report = json.loads((run.artifact_dir / "metrics.json").read_text())["adversarial"]
    assert report["method"] == method and report["extra_passes_per_batch"] == (1 if method == "fgm" else 2)
    assert 0 < report["seconds_share"] < 1
    assert tunelab.Predictor.load(run.artifact_dir).predict([rows(1, seed=3)[0]])


def test_bad_adversarial_settings_are_named(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(tunelab.ConfigError, match="train.adversarial.epsilon"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "a", adversarial={"method": "fgm", "epsilon": 0}),
                    train=sentiment_rows(16))
    with pytest.raises(tunelab.ConfigError, match="train.adversarial.method"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "b", adversarial={"method": "fsgm"}), train=sentiment_rows(16))
    with pytest.raises(tunelab.ConfigError, match="train.adversarial: .*finetune strategy"):
        tunelab.fit({**tiny_config(tiny_bert, tmp_path / "c", adversarial={"method": "fgm"}), "strategy": "setfit"},
                    train=sentiment_rows(16))
