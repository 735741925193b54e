"""Processes forked by a stockpipe run die with it.

`luigi` forks helpers that inherit its stdout: the multiprocessing manager behind
`[worker] cache_task_completion`, and one process per task under `--workers N`. When only `luigi`
is killed (OOM killer, `kill <pid>` from a supervisor), those helpers used to live on, holding the
output pipe open so `luigi ... | tee log` never ended. Every child forked from a process that
imported stockpipe asks the kernel for SIGTERM when its parent dies (Linux `PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_parent_at_fork: int | None = None


def _before_fork() -> None:
    global _parent_at_fork
    _parent_at_fork = os.getpid()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if _parent_at_fork is not None and os.getppid() != _parent_at_fork:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request was in place


if sys.platform.startswith("linux"):
    os.register_at_fork(before=_before_fork, after_in_child=_die_with_parent)
