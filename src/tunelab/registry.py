"""Registries: the one place where task, method and strategy names are listed.

Built-in tasks, methods and strategies register themselves when ``tunelab`` is imported; your own code
registers more the same way, without editing tunelab (in the spirit of peft's ``register_peft_method``).
A name that is not registered yet triggers one import of the plug-in modules named in the environment
variable ``TUNELAB_PLUGINS`` (comma-separated) and of the ``tunelab.plugins`` entry points, so another
process (``tunelab predict``, a server) finds your task too. An artifact never names code to import: its
manifest only names the task, and loading it needs the plug-in to be installed or listed.

Example:
    >>> import tunelab
    >>> "classification" in tunelab.registry.TASKS.names()
    True
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")
_plugins_loaded = False


@dataclass
class Registry(Generic[T]):
    """Named entries of one kind (``task``, ``method``, ``strategy``)."""

    kind: str
    entries: dict[str, T] = field(default_factory=dict)

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` under ``name``; a name already taken is an error unless ``replace``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"a {self.kind} name must be a plain identifier, got {name!r}")
        if name in self.entries and not replace and self.entries[name] is not entry:
            raise ConfigError(f"{self.kind} {name!r} is already registered; pass replace=True to override it")
        self.entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry for ``name``; unknown names load the plug-ins once, then fail listing the known names."""
        if name not in self.entries:
            load_plugins()
        if name not in self.entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}. A {self.kind} of your "
                              f"own is registered with tunelab.register_{self.kind}(...); for other processes list "
                              "its module in TUNELAB_PLUGINS")
        return self.entries[name]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries


TASKS: Registry[Any] = Registry("task")
METHODS: Registry[Any] = Registry("method")
STRATEGIES: Registry[Any] = Registry("strategy")
AUGMENTERS: Registry[Any] = Registry("augmentation")  # filled by tunelab.augment
RECOGNIZERS: Registry[Any] = Registry("recognizer")  # speech engines, filled by tunelab.speech


def load_plugins() -> list[str]:
    """Import the plug-in modules (``TUNELAB_PLUGINS`` and ``tunelab.plugins`` entry points) once."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    loaded = []
    for module in filter(None, (m.strip() for m in os.environ.get("TUNELAB_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"TUNELAB_PLUGINS names {module!r}, which cannot be imported: {err}") from None
        loaded.append(module)
    from importlib.metadata import entry_points

    for point in entry_points(group="tunelab.plugins"):
        point.load()
        loaded.append(point.value)
    return loaded
