"""Progress for every long phase: a tqdm bar on a terminal; elsewhere (CI, logs, pipes) a line every
``TUNELAB_PROGRESS_SECONDS`` (30) seconds, with the rate and the time left.

Example:
    >>> from tunelab.progress import progress
    >>> sum(progress(range(3), total=3, desc="demo", quiet=True))
    3
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def progress(items: Iterable[T], *, total: int, desc: str, unit: str = "batch", quiet: bool = False) -> Iterator[T]:
    """Yield ``items`` while showing progress on stderr (see the module docstring). ``quiet`` shows nothing.

    Args:
        items: what to iterate over.
        total: how many items there are (for the rate and the time left).
        desc: what is being done, e.g. ``"setfit pairs"``.
        unit: the name of one item.
        quiet: show nothing (short phases).
    """
    if quiet or total <= 0:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        return
    every = float(os.environ.get("TUNELAB_PROGRESS_SECONDS", "30"))
    started = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every and done < total:
            last = now
            rate = done / (now - started)
            print(f"{desc}: {done:,}/{total:,} ({done / total:.0%}), {rate:.2f} {unit}/s, "
                  f"about {_clock((total - done) / rate)} left", file=sys.stderr, flush=True)
    if time.perf_counter() - started > every:
        print(f"{desc}: done in {_clock(time.perf_counter() - started)}", file=sys.stderr, flush=True)
