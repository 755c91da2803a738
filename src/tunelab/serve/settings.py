"""What ``tunelab serve`` is told: which artifacts under which names, where to listen, and its limits.

Example:
    >>> ServeSettings(models={"sentiment": "runs/sst2"}).host
    '127.0.0.1'
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a model name is a label, never a path


class ServeSettings(BaseModel):
    """The server's settings (``tunelab serve --config serve.yaml``, or the CLI flags).

    Args:
        models: model name -> artifact directory. Names are letters, digits, ``.``, ``_``, ``-`` (no ``/``).
        host: the address to bind; loopback unless told otherwise (a non-loopback host needs API keys).
        port: the TCP port.
        keys_file: a file of hashed API keys (``tunelab serve --new-key`` writes its lines).
        keys_env: an environment variable holding comma-separated API keys.
        max_batch_size: the most inputs one model call takes (1: no micro-batching).
        max_wait_ms: how long a request may wait for others to share its batch.
        model_batch_size: inputs per forward pass within a micro-batch: it is sorted by length and run in chunks
            of this size, so short inputs are not padded to the longest (chunks of 8 ran 1.58x faster than one
            padded pass of 32 on SST-2 sentences: ``model_ceiling`` in ``bench/results/serve.json``).
        max_inputs: inputs per request.
        max_chars: characters per input text.
        max_body_bytes: request body size.
        timeout_s: a request that takes longer gets 504.
        rate_per_minute: requests per minute per key (0: unlimited).
        cors_origins: origins allowed to call the API from a browser (none by default).
        log_inputs: write request texts to the log (off by default).
        share_bases: LoRA (peft) artifacts on the same base model share one copy of it in memory, each
            request running with its own model's adapter switched on.
        ui: serve the web page at ``/`` (its API calls need a key like any other client's).
    """

    model_config = ConfigDict(extra="forbid")

    models: dict[str, Path] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    keys_file: Path | None = None
    keys_env: str = "TUNELAB_API_KEYS"
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    model_batch_size: int = Field(8, ge=1, le=4096)
    max_inputs: int = Field(64, ge=1)
    max_chars: int = Field(20_000, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    rate_per_minute: int = Field(0, ge=0)
    cors_origins: list[str] = Field(default_factory=list)
    log_inputs: bool = False
    share_bases: bool = True
    ui: bool = True

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, Path]) -> dict[str, Path]:
        for name in models:
            if not NAME.match(name):
                raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, no '/')")
        return models

    @property
    def loopback(self) -> bool:
        """Whether the server only listens on this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
