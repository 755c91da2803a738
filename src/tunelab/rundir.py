"""A run's output directory: one run at a time, and what a killed run left behind is cleaned or recovered.

``claim_run_dir`` takes an exclusive lock on ``output_dir/.tunelab.lock`` (an OS file lock: released when
the process ends, however it ends), so two trainings into one folder cannot overwrite each other; the
second is refused with the first one's process id. While it holds the lock it tidies up after runs that
were killed: temporary artifact and checkpoint files are removed, and an artifact that a crash left only
in its ``.artifact.old-*`` backup is put back. Each of these is said on stderr.

Example:
    >>> from tunelab.rundir import claim_run_dir                          # doctest: +SKIP
    >>> with claim_run_dir(Path("runs/r")):                                # doctest: +SKIP
    ...     ...  # train and save
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import TunelabError, disk_error

LOCK_NAME = ".tunelab.lock"


class RunDirBusyError(TunelabError):
    """Another tunelab process is writing into the same output_dir."""


@contextmanager
def claim_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process for the duration of the block (see the module docstring)."""
    import fcntl

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise disk_error(err, f"creating the output directory {run_dir}", run_dir.parent) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusyError(
                f"another tunelab run (process {holder}) is writing into {run_dir}; wait for it to finish or set "
                "a different output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        tidy_run_dir(run_dir)
        yield
    finally:
        os.close(fd)  # releases the lock


def tidy_run_dir(run_dir: Path, artifact_name: str = "artifact") -> list[str]:
    """Remove what killed saves left and recover an artifact stranded between the two renames of a save.
    Returns (and prints) one line per action. Call only while holding the run directory's lock."""
    actions: list[str] = []
    target = run_dir / artifact_name
    for old in sorted(run_dir.glob(f".{artifact_name}.old-*")):
        previous = old / "previous"
        if not target.exists() and (previous / "manifest.json").is_file():
            os.replace(previous, target)
            actions.append(f"recovered {target} from {old.name}, left there by a save that was interrupted")
        else:
            actions.append(f"removed {old.name}, an old copy kept during an interrupted save")
        shutil.rmtree(old, ignore_errors=True)
    for tmp in sorted(run_dir.glob(f".{artifact_name}.tmp-*")):
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        actions.append(f"removed {tmp.name} ({size / 1e6:.0f} MB), a partial artifact of a save that was interrupted")
    for tmp in sorted(run_dir.glob(".checkpoint-*.tmp")):
        tmp.unlink(missing_ok=True)
        actions.append(f"removed {tmp.name}, a partial checkpoint of a save that was interrupted")
    for line in actions:
        print(f"note: {line}", file=sys.stderr)
    return actions
