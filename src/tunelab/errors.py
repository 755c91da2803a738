"""The errors tunelab raises on purpose. Each one names where the problem is and what was expected."""

from typing import Any


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


class InputError(TunelabError):
    """A command-line usage mistake (a missing file, a flag that does not apply)."""


def disk_error(err: OSError, doing: str, where: Any, needed: int | None = None) -> TunelabError:
    """An OSError while writing, as one sentence: what was being written, why it failed, what to do.
    ``needed`` (bytes), when known, says how much free space the write takes."""
    import errno
    import shutil

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = None
        need = f"; it needs about {needed / 1e6:.0f} MB" if needed else ""
        have = f" ({free / 1e6:.0f} MB free)" if free is not None else ""
        return DiskFullError(f"no space left on the device while {doing}{need}{have}. Free some space and run again; "
                             "nothing that was there before was removed")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TunelabError(f"permission denied while {doing}: {err.strerror} ({err.filename or where})")
    return TunelabError(f"could not finish {doing}: {err.strerror or err} ({err.filename or where})")


class DiskFullError(TunelabError):
    """The disk filled up while tunelab was writing; the previous files are kept."""
