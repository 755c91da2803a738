"""How the pretrained weights adapt: ``full`` fine-tuning or a ``peft`` method, each registered by name.

A method is a ``Method``: its options model (the ``method:`` config section), its default learning rate,
and ``apply``, which wraps the model and returns an ``Adaptation`` (the model to train, whether it is a peft
model, and any training hooks the method needs, e.g. AdaLoRA's rank allocation). Register your own with
``register_method``; peft's own methods are a few lines each below (fields tunelab does not name pass
straight through to peft via ``method.peft``). The task head is always trainable and always saved.

Example:
    >>> import tunelab
    >>> from tunelab.methods import MethodOptions, Adaptation
    >>> class Frozen(MethodOptions):
    ...     pass
    >>> def freeze_encoder(model, options, target):
    ...     for name, p in model.named_parameters():
    ...         p.requires_grad_(name.split(".")[0] in target.head)
    ...     return Adaptation(model, is_peft=False)
    >>> _ = tunelab.register_method("frozen_encoder", freeze_encoder, options=Frozen, default_learning_rate=1e-3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import Field

from .config import MethodOptions
from .errors import ConfigError, TrainingError
from .hooks import TrainHook
from .registry import METHODS


@dataclass
class Adaptation:
    """What a method's ``apply`` returns.

    Args:
        model: the model to train (the same module, or a peft wrapper).
        is_peft: saved as a peft adapter on top of the base model (else as full weights).
        hooks: training hooks the method needs (see ``tunelab.hooks``).
        merge: fold the adapter into the base weights when saving (lora).
    """

    model: torch.nn.Module
    is_peft: bool
    hooks: list[TrainHook] = field(default_factory=list)
    merge: bool = False


@dataclass
class Target:
    """What a method needs to know about the task's model.

    Args:
        peft_task_type: peft's TaskType for the task's head (None: a custom head).
        head: module names of the task's new head (always trained and saved).
        new_token_ids: ids of added tokens whose embedding rows must train (markers).
        total_steps: optimizer steps the run will take (AdaLoRA's schedule).
        modules: the modules peft methods adapt when ``method.target_modules`` is unset (None: peft's default for
            the model type).
        frozen: modules (by name) the task keeps at their pretrained weights under every method.
    """

    peft_task_type: str | None
    head: list[str]
    new_token_ids: list[int]
    total_steps: int
    modules: list[str] | None = None
    frozen: list[str] = field(default_factory=list)


Apply = Callable[[torch.nn.Module, Any, Target], Adaptation]


@dataclass
class Method:
    """A registered method: its options model, default learning rate and ``apply``."""

    name: str
    apply: Apply
    Options: type[MethodOptions]
    default_learning_rate: float

    def adapt(self, model: torch.nn.Module, options: MethodOptions, target: Target) -> Adaptation:
        """``apply`` plus the check that something will train."""
        adaptation = self.apply(model, options, target)
        if sum(p.numel() for p in adaptation.model.parameters() if p.requires_grad) == 0:
            raise TrainingError(f"method {self.name!r} left no trainable parameters; check its options")
        return adaptation


def register_method(name: str, apply: Apply, *, options: type[MethodOptions] = MethodOptions,
                    default_learning_rate: float = 5e-5, replace: bool = False) -> Method:
    """Make ``apply`` available as ``method: {name: <name>, ...}``.

    Args:
        name: the config name (an identifier).
        apply: ``apply(model, options, target) -> Adaptation``: adapt ``model`` (set ``requires_grad``, wrap it)
            given the validated ``options`` and the task's ``Target`` (head names, peft task type, steps).
        options: a ``MethodOptions`` subclass with the method's own fields.
        default_learning_rate: used when ``train.learning_rate`` is unset.
        replace: allow replacing a registered method of the same name.

    Example:
        >>> register_method("frozen_encoder", freeze_encoder, options=Frozen)   # doctest: +SKIP
    """
    if not (isinstance(options, type) and issubclass(options, MethodOptions)):
        raise ConfigError(f"register_method({name!r}): options must subclass tunelab.methods.MethodOptions")
    return METHODS.add(name, Method(name, apply, options, default_learning_rate), replace=replace)


# ---- full fine-tuning -----------------------------------------------------------------------------------
class FullOptions(MethodOptions):
    """Full fine-tuning's options."""

    train_word_embeddings: bool = Field(False, description=(
        "also train the word-embedding matrix. Off by default: it is about half of a small encoder's parameters "
        "(MiniLM: 30,522 x 384 of 22.7M), its dense gradient and AdamW state cost ~15% of a CPU step, and a "
        "fine-tune only touches the rows of the words in its data. Kept on when the task adds tokens (their rows "
        "must learn) or the matrix is tied to an output layer (generation)"))
    freeze_layers: int = Field(0, ge=0, description=(
        "also freeze the embeddings and the bottom N transformer layers, so the backward pass stops above them "
        "(MiniLM-L6 on SST-2, N=2: a CPU step takes ~0.7x the time; bench/results/time_to_accuracy.json). "
        "Lower layers hold general features a short fine-tune barely moves; 0 trains them all"))


def word_embeddings_to_freeze(model: torch.nn.Module, target: Target) -> torch.nn.Parameter | None:
    """The input word-embedding matrix, when freezing it leaves everything the task needs trainable: not when the
    task added tokens (markers whose rows must learn) nor when the matrix is tied to the output layer."""
    if target.new_token_ids:
        return None
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    try:
        output = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        output = None
    if embeddings is None or (output is not None and output.weight is embeddings.weight):
        return None
    return embeddings.weight


def layer_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The model's stack of transformer layers and its name: the first ``ModuleList`` as long as the config's
    layer count (``encoder.layer`` in BERT, ``layers`` in Llama, ``h`` in GPT-2), or None."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and count and len(module) == count:
            return name, module
    return None


def freeze_bottom_layers(model: torch.nn.Module, count: int, target: Target) -> None:
    """Freeze the bottom ``count`` transformer layers and every parameter registered before the stack (the
    embeddings), so no gradient flows below layer ``count``; the head and the layers above stay trainable (and so
    does a word-embedding matrix tied to the output layer)."""
    found = layer_stack(model)
    if found is None:
        raise ConfigError(f"method.freeze_layers: cannot find the transformer layer stack of "
                          f"{type(model).__name__} (no ModuleList as long as config.num_hidden_layers); set it to 0")
    name, stack = found
    if count >= len(stack):
        raise ConfigError(f"method.freeze_layers: {count} would freeze all {len(stack)} layers of "
                          f"{type(model).__name__}; use at most {len(stack) - 1}")
    if target.new_token_ids:
        raise ConfigError("method.freeze_layers freezes the embeddings, but the task adds tokens whose embedding rows "
                          "must learn; set it to 0 for this task")
    frozen = {id(p) for layer in stack[:count] for p in layer.parameters()}
    stack_start = name + "."
    for param_name, p in model.named_parameters():  # the task head is registered after the base model
        if param_name.startswith(stack_start):
            break
        frozen.add(id(p))
    try:  # a word-embedding matrix tied to the output layer (generation) is that layer too: it keeps training
        output = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        output = None
    if output is not None:
        frozen.discard(id(output.weight))
    for p in model.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)


def _full(model: torch.nn.Module, options: FullOptions, target: Target) -> Adaptation:
    kept = tuple(f"{name}." for name in target.frozen)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(kept))
    if options.freeze_layers:
        freeze_bottom_layers(model, options.freeze_layers, target)
    if not options.train_word_embeddings:
        frozen = word_embeddings_to_freeze(model, target)
        if frozen is not None:
            frozen.requires_grad_(False)
    return Adaptation(model, is_peft=False)


# ---- peft methods ---------------------------------------------------------------------------------------
class PeftOptions(MethodOptions):
    """Options every peft method shares."""

    target_modules: list[str] | str | None = Field(None, description="modules to adapt; peft's default if unset")
    peft: dict[str, Any] = Field(default_factory=dict, description="extra fields for the peft config")


class LoraOptions(PeftOptions):
    r: int = Field(8, ge=1, description="rank")
    alpha: int = Field(16, ge=1, description="scaling numerator")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    merge: bool = Field(False, description="merge the adapter into the base weights when saving")


class AdaLoraOptions(PeftOptions):
    r: int = Field(8, ge=1, description="initial rank (the target is half)")
    alpha: int = Field(16, ge=1, description="scaling numerator")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the adapter's input")


class VirtualTokenOptions(PeftOptions):
    num_virtual_tokens: int = Field(20, ge=1, description="prompt/prefix tuning length")


def _token_rows(options: PeftOptions, target: Target, method: str) -> dict[str, Any]:
    """Added tokens' embeddings train: only those rows under LoRA, the whole matrix under the others."""
    if not target.new_token_ids:
        return {}
    if method == "lora":
        return {"trainable_token_indices": {"word_embeddings": list(target.new_token_ids)}}
    return {"modules_to_save": ["word_embeddings"]}


def _peft_adapt(model: torch.nn.Module, name: str, config_cls: str, options: PeftOptions, target: Target,
                kwargs: dict[str, Any]) -> Adaptation:
    import peft

    from .models import quiet_loading

    extras = _token_rows(options, target, name)
    modules_to_save = sorted(set(target.head) | set(extras.pop("modules_to_save", []))
                             | set(options.peft.get("modules_to_save") or []))
    passthrough = {**extras, **{k: v for k, v in options.peft.items() if k != "modules_to_save"}}
    if kwargs.get("target_modules", "unset") is None and target.modules is not None:
        if not target.modules:
            raise ConfigError(f"method: {name} has no module to adapt by default here (every tower frozen?); set "
                              "method.target_modules (module names, or a regex over them)")
        kwargs["target_modules"] = target.modules
    kwargs = {k: v for k, v in {**kwargs, "modules_to_save": modules_to_save}.items() if v is not None}
    cls = getattr(peft, config_cls)
    try:
        config = cls(task_type=target.peft_task_type, **kwargs, **passthrough)
    except TypeError as err:
        raise ConfigError(f"method.peft: {err} (fields of peft.{cls.__name__})") from None
    except ValueError as err:
        raise ConfigError(f"method: peft rejected the {name} config: {err}") from None
    try:
        with quiet_loading():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"method: peft could not apply {name} to this model: {err}") from None
    return Adaptation(wrapped, is_peft=True)


def _lora(model: torch.nn.Module, o: LoraOptions, target: Target) -> Adaptation:
    adaptation = _peft_adapt(model, "lora", "LoraConfig", o, target, dict(
        r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=o.target_modules))
    adaptation.merge = o.merge
    return adaptation


class AdaLoraHook(TrainHook):
    """AdaLoRA inside tunelab's loop: its orthogonality penalty on P and Q (peft adds it only when it computes
    the loss itself) and its rank reallocation after each step's clipping."""

    def __init__(self, weight: float):
        self.weight = weight

    def extra_loss(self, ctx: Any) -> torch.Tensor:
        return self.weight * adalora_orthogonality(ctx.model)

    def before_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)


def _adalora(model: torch.nn.Module, o: AdaLoraOptions, target: Target) -> Adaptation:
    steps = target.total_steps
    adaptation = _peft_adapt(model, "adalora", "AdaLoraConfig", o, target, dict(
        init_r=o.r, target_r=max(1, o.r // 2), lora_alpha=o.alpha, lora_dropout=o.dropout,
        target_modules=o.target_modules, total_step=steps, tinit=max(0, steps // 10), tfinal=max(0, steps // 5)))
    adaptation.hooks.append(AdaLoraHook(adaptation.model.peft_config["default"].orth_reg_weight))
    return adaptation


def _ia3(model: torch.nn.Module, o: PeftOptions, target: Target) -> Adaptation:
    kwargs: dict[str, Any] = {"target_modules": o.target_modules}
    if o.target_modules is not None and "feedforward_modules" not in o.peft:
        kwargs["feedforward_modules"] = []
    return _peft_adapt(model, "ia3", "IA3Config", o, target, kwargs)


def _virtual_tokens(config_cls: str, name: str) -> Apply:
    def apply(model: torch.nn.Module, o: VirtualTokenOptions, target: Target) -> Adaptation:
        if target.peft_task_type is None:
            raise ConfigError(f"method.name: {name} needs a task with a standard head (a peft task type); this task "
                              "has its own head: use full, lora, adalora or ia3")
        return _peft_adapt(model, name, config_cls, o, target, {"num_virtual_tokens": o.num_virtual_tokens})
    return apply


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


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """{"total", "trainable"} parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# Learning rates that work for each method on small encoders (used when train.learning_rate is unset).
register_method("full", _full, options=FullOptions, default_learning_rate=5e-5)
register_method("lora", _lora, options=LoraOptions, default_learning_rate=1e-3)
register_method("adalora", _adalora, options=AdaLoraOptions, default_learning_rate=1e-3)
register_method("ia3", _ia3, options=PeftOptions, default_learning_rate=3e-3)
register_method("prompt_tuning", _virtual_tokens("PromptTuningConfig", "prompt_tuning"), options=VirtualTokenOptions,
                default_learning_rate=3e-2)
register_method("prefix_tuning", _virtual_tokens("PrefixTuningConfig", "prefix_tuning"), options=VirtualTokenOptions,
                default_learning_rate=1e-2)

