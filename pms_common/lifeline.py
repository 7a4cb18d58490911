"""A process that must not outlive its parent."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Asks the kernel to send this process `signum` when its parent dies, even
    by SIGKILL; exec keeps the request, fork does not. Call it in a child
    before exec (preexec_fn), or first thing in a forked worker."""
    if sys.platform.startswith("linux"):  # elsewhere a clean stop still stops everything
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
