"""How the pretrained weights adapt: ``full`` fine-tuning or a ``peft`` method, chosen by name.

Each method is a small function that builds the peft config from the few fields a person sets
(``MethodConfig``) plus ``method.peft``, passed straight through. The task head is always trainable
and always saved (``modules_to_save``).

``Adaptation`` also carries the per-step hooks a method needs inside the training loop (AdaLoRA's
rank reallocation and orthogonality penalty), so the loop stays method-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .config import MethodConfig
from .errors import ConfigError, TrainingError

ExtraLoss = Callable[[torch.nn.Module], torch.Tensor]


@dataclass
class Adaptation:
    model: torch.nn.Module
    is_peft: bool
    extra_losses: list[ExtraLoss] = field(default_factory=list)
    after_backward: list[Callable[[torch.nn.Module, int], None]] = field(default_factory=list)


def _peft_config(method: MethodConfig, task_type: str | None, head: list[str], total_steps: int,
                 task_extras: dict[str, Any]) -> Any:
    import peft

    common: dict[str, Any] = {"task_type": task_type}
    extra = {**task_extras, **method.peft}
    modules_to_save = sorted(set(head) | set(task_extras.get("modules_to_save", [])) | set(method.peft.get("modules_to_save") or []))
    extra.pop("modules_to_save", None)
    if method.name == "lora":
        kwargs = dict(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                      target_modules=method.target_modules, modules_to_save=modules_to_save)
        cls = peft.LoraConfig
    elif method.name == "adalora":
        kwargs = dict(init_r=method.r, target_r=max(1, method.r // 2), lora_alpha=method.alpha,
                      lora_dropout=method.dropout, target_modules=method.target_modules,
                      modules_to_save=modules_to_save, total_step=total_steps,
                      tinit=max(0, total_steps // 10), tfinal=max(0, total_steps // 5))
        cls = peft.AdaLoraConfig
    elif method.name == "ia3":
        kwargs = dict(target_modules=method.target_modules, modules_to_save=modules_to_save)
        if method.target_modules is not None and "feedforward_modules" not in extra:
            kwargs["feedforward_modules"] = []
        cls = peft.IA3Config
    elif method.name == "prompt_tuning":
        kwargs = dict(num_virtual_tokens=method.num_virtual_tokens, modules_to_save=modules_to_save)
        cls = peft.PromptTuningConfig
    elif method.name == "prefix_tuning":
        kwargs = dict(num_virtual_tokens=method.num_virtual_tokens, modules_to_save=modules_to_save)
        cls = peft.PrefixTuningConfig
    else:  # pragma: no cover - the config's Literal already rejects other names
        raise ConfigError(f"method.name: unknown method {method.name!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return cls(**common, **kwargs, **extra)
    except TypeError as err:
        raise ConfigError(f"method.peft: {err} (fields of peft.{cls.__name__})") from None
    except ValueError as err:
        raise ConfigError(f"method: peft rejected the {method.name} config: {err}") from None


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation recomputation in the transformer inside ``model`` (a task head may wrap it)."""
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False) and hasattr(module, "gradient_checkpointing_enable"):
            # Non-reentrant checkpointing: works when only adapter weights train (no input grads needed).
            # transformers 5 renamed the method (the old name still works and warns).
            enable = getattr(module, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(module, "config"):
                module.config.use_cache = False
            return
    raise ConfigError(f"train.gradient_checkpointing: {type(model).__name__} has no transformer that supports it")


def apply_method(model: torch.nn.Module, method: MethodConfig, task_type: str | None, head: list[str], total_steps: int,
                 task_extras: dict[str, Any] | None = None) -> Adaptation:
    """Wrap ``model`` for ``method`` and check that something will train. ``task_extras`` are peft fields a
    task needs (e.g. relation extraction's trainable marker-token rows)."""
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        adaptation = Adaptation(model, is_peft=False)
    else:
        import peft

        from .models import quiet_loading

        config = _peft_config(method, task_type, head, total_steps, task_extras or {})
        try:
            with quiet_loading():
                wrapped = peft.get_peft_model(model, config)
        except ValueError as err:
            raise ConfigError(f"method: peft could not apply {method.name} to this model: {err}") from None
        adaptation = Adaptation(wrapped, is_peft=True)
        if method.name == "adalora":
            weight = config.orth_reg_weight
            adaptation.extra_losses.append(lambda m: weight * adalora_orthogonality(m))
            adaptation.after_backward.append(lambda m, step: m.base_model.update_and_allocate(step))
    trainable = sum(p.numel() for p in adaptation.model.parameters() if p.requires_grad)
    if trainable == 0:
        raise TrainingError(f"method {method.name!r} left no trainable parameters; check method.target_modules")
    return adaptation


def adalora_orthogonality(model: torch.nn.Module) -> torch.Tensor:
    """AdaLoRA's orthogonality penalty on P and Q (as peft adds it when it computes the loss itself;
    tunelab computes the task loss, so it adds this term explicitly)."""
    total, count = None, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad and p.numel() > 0:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            term = torch.linalg.matrix_norm(cov - eye)
            total = term if total is None else total + term
            count += 1
    if total is None:
        return torch.zeros(())
    return total / count


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
