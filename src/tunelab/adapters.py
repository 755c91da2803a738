"""Many peft adapters, one base model: artifacts fine-tuned with LoRA (or another peft method) on the same base
model share one copy of its weights in memory, and each prediction runs with its own adapter switched on.

A ``BasePool`` loads adapter artifacts onto shared bases (peft's multi-adapter ``load_adapter`` /
``set_adapter``); a Predictor loaded through it holds an ``ActiveAdapter``, which switches its adapter on and
keeps the base to itself while a batch runs (a lock: adapters on one base take turns, other models do not wait).
Artifacts share a base when they name the same base model, task, peft method and head shape (number of labels,
vocabulary size); any other artifact loads on its own, as without a pool.

Example:
    >>> pool = BasePool()
    >>> a = Predictor.load("runs/support-lora", pool=pool)        # doctest: +SKIP
    >>> b = Predictor.load("runs/billing-lora", pool=pool)        # doctest: +SKIP
    >>> a.model is b.model                                        # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ArtifactError
from .models import quiet_loading, resolve_model
from .registry import TASKS


def base_for(task: Any, manifest: dict[str, Any], allow_network: bool) -> torch.nn.Module:
    """The artifact's base model with its task's head, before any adapter (the caller's word on the network,
    never the manifest's)."""
    base, _ = task.build_model(resolve_model(manifest["base_model"]["name"], allow_network=allow_network).path,
                               dropout=None)
    return base


@dataclass
class SharedBase:
    """One base model in memory and the adapters loaded on it."""

    model: Any  # a peft.PeftModel
    key: tuple
    adapters: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class ActiveAdapter:
    """A Predictor's adapter on a shared base: ``use()`` switches it on for the duration of a batch."""

    base: SharedBase
    name: str

    @contextmanager
    def use(self) -> Iterator[Any]:
        """The shared model with this adapter on, kept to the caller until the block ends."""
        with self.base.lock:
            if self.base.model.active_adapter != self.name:
                self.base.model.set_adapter(self.name)
            yield self.base.model


class BasePool:
    """Shared base models for adapter artifacts (see the module docstring).

    Example:
        >>> pool = BasePool()
        >>> len(pool.bases)
        0
    """

    def __init__(self) -> None:
        self.bases: dict[tuple, SharedBase] = {}
        self._lock = threading.Lock()
        self._count = 0

    @staticmethod
    def accepts(manifest: dict[str, Any]) -> bool:
        """Whether an artifact is an adapter that can share its base (fine-tuned, saved as a peft adapter)."""
        return manifest.get("strategy", "finetune") == "finetune" and manifest.get("model_format") == "peft"

    def load(self, artifact_dir: Path, manifest: dict[str, Any], allow_network: bool) -> tuple[Any, Any, Any, ActiveAdapter]:
        """(shared model, processor, task, its adapter) for an adapter artifact: onto a base already in the pool
        when one matches, else onto a new one.

        Raises:
            ArtifactError: the adapter's files cannot be read.
        """
        task = TASKS.get(manifest["task"]["name"]).from_state(manifest["task"]["state"])
        processor = task.load_processor(artifact_dir / "tokenizer")
        model_dir = artifact_dir / "model"
        try:
            peft_type = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))["peft_type"]
        except (OSError, ValueError, KeyError) as err:
            raise ArtifactError(f"{model_dir}/adapter_config.json: cannot read the adapter's peft_type ({err})") from None
        base_path = str(resolve_model(manifest["base_model"]["name"], allow_network=allow_network).path)
        key = (base_path, task.name, peft_type, len(task.labels), len(processor), task.base_identity())
        with self._lock:
            self._count += 1
            name = f"adapter{self._count}"
            shared = self.bases.get(key)
            if shared is not None:
                with shared.lock, quiet_loading():
                    shared.model.load_adapter(model_dir, adapter_name=name, is_trainable=False)
            else:
                import peft

                base = base_for(task, manifest, allow_network)
                with quiet_loading():
                    model = peft.PeftModel.from_pretrained(base, model_dir, adapter_name=name, trust_remote_code=False)
                shared = self.bases[key] = SharedBase(model.eval(), key)
            shared.adapters.add(name)
        return shared.model, processor, task, ActiveAdapter(shared, name)

    def release(self, adapter: ActiveAdapter) -> None:
        """Forget an adapter (a model unloaded from a server); its base goes when its last adapter does."""
        with self._lock, adapter.base.lock:
            shared = adapter.base
            shared.adapters.discard(adapter.name)
            if not shared.adapters:
                self.bases.pop(shared.key, None)
            elif adapter.name in shared.model.peft_config:
                if shared.model.active_adapter == adapter.name:
                    shared.model.set_adapter(next(iter(shared.adapters)))
                shared.model.delete_adapter(adapter.name)


__all__ = ["ActiveAdapter", "BasePool", "SharedBase", "base_for"]
