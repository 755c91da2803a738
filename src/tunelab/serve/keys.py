"""API keys: bearer tokens checked against their SHA-256 hashes in constant time, each with its scopes.

A key file holds one key per line: ``sha256:<hex digest> [scope,scope,...]`` — a scope is a model name, ``*``
(every model, the default) or ``admin``. The tokens themselves are never stored; ``new_key`` makes a token and
the line that admits it. An environment variable may also hold comma-separated tokens (every model).

Example:
    >>> token, line = new_key(["sentiment"])
    >>> KeyStore.parse([line]).check(token).allows("sentiment")
    True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One accepted key: its id (the hash's first characters, safe to log) and its scopes."""

    id: str
    scopes: frozenset[str]

    def allows(self, model: str) -> bool:
        """Whether this key may call ``model``."""
        return "*" in self.scopes or model in self.scopes

    @property
    def admin(self) -> bool:
        """Whether this key may load and unload models."""
        return "admin" in self.scopes


def digest(token: str) -> bytes:
    """The SHA-256 of a token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_key(scopes: list[str] | None = None) -> tuple[str, str]:
    """A fresh random token and the key-file line that admits it with ``scopes`` (default: every model)."""
    token = "tl-" + secrets.token_urlsafe(32)
    return token, f"sha256:{digest(token).hex()} {','.join(scopes or ['*'])}"


class KeyStore:
    """The accepted keys. ``check`` compares a presented token's hash with every stored hash (constant time,
    whichever matches), so timing reveals nothing about which key is close."""

    def __init__(self, keys: list[tuple[bytes, Key]]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (otherwise the API is open, which only a loopback server allows)."""
        return bool(self.keys)

    @classmethod
    def parse(cls, lines: list[str], where: str = "keys") -> KeyStore:
        """Keys from key-file lines (blank lines and ``#`` comments skipped)."""
        keys = []
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if not parts[0].startswith("sha256:") or len(parts) > 2:
                raise ConfigError(f"{where} line {number}: expected 'sha256:<hex> [scopes]' (tunelab serve --new-key)")
            try:
                hashed = bytes.fromhex(parts[0][len("sha256:"):])
            except ValueError:
                hashed = b""
            if len(hashed) != 32:
                raise ConfigError(f"{where} line {number}: the sha256 digest must be 64 hex characters")
            scopes = frozenset(s for s in (parts[1] if len(parts) > 1 else "*").split(",") if s)
            keys.append((hashed, Key(parts[0][7:19], scopes)))
        return cls(keys)

    @classmethod
    def load(cls, path: Path | None, env_value: str | None) -> KeyStore:
        """Keys from a key file and from an environment variable's comma-separated tokens (every model)."""
        keys: list[tuple[bytes, Key]] = []
        if path is not None:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise ConfigError(f"cannot read the key file {path}: {err.strerror}") from None
            keys += cls.parse(lines, str(path)).keys
        for token in (env_value or "").split(","):
            if token.strip():
                hashed = digest(token.strip())
                keys.append((hashed, Key(hashed.hex()[:12], frozenset({"*"}))))
        return cls(keys)

    def check(self, token: str | None) -> Key | None:
        """The key a bearer token belongs to, or None."""
        if not token:
            return None
        presented = digest(token)
        found = None
        for hashed, key in self.keys:  # no early exit: every comparison runs
            if hmac.compare_digest(presented, hashed):
                found = key
        return found
