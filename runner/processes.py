"""Child processes that do not outlive the command that started them."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """In a child process before it starts (`preexec_fn`): on Linux, the kernel sends it SIGTERM when
    the process that started it dies, even by SIGKILL, so no child outlives its run. Elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
