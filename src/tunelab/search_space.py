"""A search space: which config fields a hyperparameter search varies, and over what.

It is declared next to the config it varies, as a ``search:`` section of the same YAML file; each key is a
config field in dotted form and each value one distribution::

    search:
      train.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
      train.epochs: {int: [1, 3]}
      train.warmup_ratio: {uniform: [0.0, 0.2], step: 0.05}
      method.r: {choice: [4, 8, 16]}

Distributions: ``uniform`` and ``loguniform`` (floats, ``uniform`` may have a ``step``), ``int`` (with an
optional ``step``) and ``logint``, and ``choice`` (any values; a plain list is a choice too). The space is
checked against the config before any trial runs: every field must exist, ``low <= high``, and the config
validator must accept both ends of each range and every choice.

Example:
    >>> space = parse_space({"train.learning_rate": {"loguniform": [1e-5, 1e-3]}, "method.r": [4, 8]})
    >>> [(p.path, p.kind) for p in space]
    [('train.learning_rate', 'loguniform'), ('method.r', 'choice')]
    >>> check_space({"method": "lora"}, space)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import build_config
from .errors import ConfigError

KINDS = ("uniform", "loguniform", "int", "logint", "choice")
NOT_SEARCHABLE = ("output_dir", "allow_network")  # where a trial writes is the search's; network stays the user's call


@dataclass(frozen=True)
class Param:
    """One searched field.

    Args:
        path: the config field, dotted (``train.learning_rate``).
        kind: one of ``KINDS``.
        low, high: the range (ranges only).
        step: the grid of a ``uniform`` or ``int`` range (None: continuous / 1).
        choices: the values of a ``choice``.
    """

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = field(default_factory=tuple)

    def ends(self) -> list[Any]:
        """The values the config validator must accept: both ends of a range, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "logint"):
            return [int(self.low), int(self.high)]  # type: ignore[arg-type]
        return [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """This field's value for an Optuna ``trial``."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.path, int(self.low), int(self.high),  # type: ignore[arg-type]
                                     step=int(self.step or 1), log=self.kind == "logint")
        return trial.suggest_float(self.path, float(self.low), float(self.high),  # type: ignore[arg-type]
                                   step=self.step, log=self.kind == "loguniform")


def _number(value: Any, where: str, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    return value


def parse_param(path: str, spec: Any, where: str = "search") -> Param:
    """One ``field: distribution`` entry of a ``search:`` section as a ``Param`` (errors name ``where.path``).

    Args:
        path: the dotted config field.
        spec: ``{kind: [low, high]}`` (+ ``step``), ``{choice: [...]}`` or a plain list (a choice).
        where: how errors name the section.
    """
    name = f"{where}.{path}"
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise ConfigError(f"{where}: {path!r} is not a dotted config field (e.g. train.learning_rate)")
    if path.split(".")[0] in NOT_SEARCHABLE:
        raise ConfigError(f"{name}: {path.split('.')[0]} cannot be searched (each trial gets its own folder)")
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{name}: expected a distribution such as {{loguniform: [1e-5, 1e-3]}} or "
                          f"{{choice: [4, 8]}}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in KINDS and k != "step"]
    if unknown or len(kinds) != 1:
        raise ConfigError(f"{name}: give exactly one of {', '.join(KINDS)} (plus step for uniform/int)"
                          + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else ""))
    kind, values = kinds[0], spec[kinds[0]]
    if kind == "choice":
        if "step" in spec:
            raise ConfigError(f"{name}: step applies to uniform and int ranges, not choice")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{name}.choice: expected a non-empty list of values, got {values!r}")
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"{name}.choice: values must be numbers, strings, booleans or null (got {values!r})")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{name}.choice: {values!r} repeats a value")
        return Param(path, kind, choices=tuple(values))
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{name}.{kind}: expected [low, high], got {values!r}")
    integer = kind in ("int", "logint")
    low, high = (_number(v, f"{name}.{kind}", integer) for v in values)
    if low > high:
        raise ConfigError(f"{name}.{kind}: low {low!r} is greater than high {high!r}")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"{name}.{kind}: a log range needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None:
        if kind not in ("uniform", "int"):
            raise ConfigError(f"{name}.step: step applies to uniform and int ranges, not {kind}")
        step = _number(step, f"{name}.step", integer)
        if step <= 0:
            raise ConfigError(f"{name}.step: must be > 0, got {step!r}")
    return Param(path, kind, low, high, step)


def parse_space(section: Any, where: str = "search") -> list[Param]:
    """The ``search:`` section as a list of ``Param``.

    Args:
        section: a mapping of dotted config fields to distributions.
        where: how errors name the section.
    """
    if not isinstance(section, dict) or not section:
        raise ConfigError(f"{where}: expected a mapping of config fields to distributions, e.g. "
                          "{train.learning_rate: {loguniform: [1e-5, 1e-3]}}, got " + repr(section))
    return [parse_param(path, spec, where) for path, spec in section.items()]


def check_space(base: dict[str, Any], space: list[Param], where: str = "search") -> None:
    """Refuse, before any trial runs, a space the config cannot take: a field that does not exist, or a range
    end or choice the config validator refuses (the error names the searched field and the validator's reason).

    Args:
        base: the config the search varies (a plain mapping, without its ``search:`` section).
        space: the parsed space.
        where: how errors name the section.
    """
    build_config(base)  # the base itself first: its errors are the config's, not the search's
    for param in space:
        for value in param.ends():
            try:
                build_config(base, dotted={param.path: value})
            except ConfigError as err:
                reason = str(err).split("\n", 1)[-1].strip()
                if "unknown field" in reason:
                    raise ConfigError(f"{where}.{param.path}: not a field of this config ({reason})") from None
                raise ConfigError(f"{where}.{param.path}: the config refuses {value!r}: {reason}") from None


def apply(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the searched ``values`` ({dotted field: value}) set: the plain config of one trial.

    Args:
        base: the config the search varies.
        values: one trial's values.
    """
    return build_config(base, dotted=values).model_dump(mode="json", exclude_unset=True)


__all__ = ["KINDS", "Param", "apply", "check_space", "parse_param", "parse_space"]
