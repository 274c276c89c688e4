"""The project lock: runs in one project take turns (a scheduled run waits for a manual one, and the
other way round), and a run's params snapshot is taken while it holds the lock.

The lock is an OS lock (flock) on the project folder itself, so taking it writes nothing, and it is
released when its holder dies, even by SIGKILL. Within one process it is re-entrant: the command that
took the snapshot under the lock also runs the flow, which takes the lock again.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

from tlpipe.io import lock_exclusive

_HELD: dict[Path, int] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def project_lock(project: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds the project's lock for the block; `on_wait` is called once if another process has it."""
    path = Path(project).resolve()
    with _GUARD:
        depth = _HELD.get(path, 0)
        if depth:
            _HELD[path] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[path] -= 1
        return
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        lock_exclusive(handle, on_wait)
        with _GUARD:
            _HELD[path] = 1
        try:
            yield
        finally:
            with _GUARD:
                del _HELD[path]
    finally:
        os.close(handle)  # releases the lock
