"""The project lock: runs in one project take turns (a scheduled run waits for a manual one, and the
other way round), and a run's params snapshot is taken while it holds the lock.

The lock is an OS file lock, so it is released when its holder dies, even by SIGKILL. Within one
process it is re-entrant: the command that took the snapshot under the lock also runs the flow,
which takes the lock again.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Callable, Iterator

from tlpipe.io import locked

_HELD: dict[Path, int] = {}
_GUARD = threading.Lock()


def lock_file(project: Path) -> Path:
    return Path(project).resolve() / ".tlpipe" / "pipeline.lock"


@contextlib.contextmanager
def project_lock(project: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds the project's lock for the block; `on_wait` is called once if another process has it."""
    path = lock_file(project)
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
    with locked(path, on_wait=on_wait):
        with _GUARD:
            _HELD[path] = 1
        try:
            yield
        finally:
            with _GUARD:
                del _HELD[path]
