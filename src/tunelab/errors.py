"""The errors tunelab raises on purpose. Each one names where the problem is and what was expected."""


class TunelabError(Exception):
    """Base class: a problem tunelab detected and can explain (bad input, missing model, ...)."""


class ConfigError(TunelabError):
    """A config field has a bad value; the message names the field and the allowed values."""


class DataError(TunelabError):
    """A data file or record is unusable; the message names the file, row/line and column."""


class ModelNotFoundError(TunelabError):
    """A model name or path cannot be resolved offline; the message says what to install or allow."""


class TrainingError(TunelabError):
    """Training cannot go on (NaN loss, stuck loss, nothing trainable)."""


class ArtifactError(TunelabError):
    """An artifact directory is missing, incomplete or from an incompatible version."""
