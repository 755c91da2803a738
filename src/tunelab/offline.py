"""Offline-first: nothing touches the network unless the user asks.

Imported by ``tunelab/__init__`` before transformers, because huggingface_hub reads HF_HUB_OFFLINE
once at import time.
"""

from __future__ import annotations

import os

NETWORK_ENV = "TUNELAB_ALLOW_NETWORK"


def network_allowed_by_env() -> bool:
    """Whether the environment allows the network (``TUNELAB_ALLOW_NETWORK=1``)."""
    return os.environ.get(NETWORK_ENV, "").lower() in ("1", "true", "yes")


def apply_offline_default() -> None:
    """Set HF_HUB_OFFLINE=1 unless the user allowed the network (or set it themselves)."""
    if not network_allowed_by_env():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # Quiet, predictable tokenizers in forked data loaders and tests.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def allow_network_now() -> None:
    """Lift offline mode for this process (a config with ``allow_network: true``)."""
    os.environ["HF_HUB_OFFLINE"] = "0"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = False
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        pass
