"""A deadline for work on the main thread (a task the worker runs in its own process), and the
sections it must never cut short.

`deadline(seconds, message)` raises `TaskTimeout` in the block when time is up: SIGALRM's handler
runs on the main thread as soon as it is back in Python, or inside a C call that checks for signals
(a DuckDB query turns it into "Query interrupted", which the block re-raises as the timeout), and a
blocking system call (a lock wait, a FIFO) is interrupted to run it. Python runs signal handlers on
the main thread whichever thread the signal arrived on, so masking the signal cannot protect a
section; `uninterruptible()` does: a deadline that expires inside it fires when it ends.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


class TaskTimeout(BaseException):
    """Work ran past its deadline. A BaseException, so code catching `Exception` to clean up or
    retry does not swallow it."""


class _State:
    armed = False
    expired = False
    message = ""
    shielded = 0  # depth of uninterruptible() sections on the main thread
    pending = False  # expired inside one: raise when it ends


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _expire(signum, frame) -> None:
    if not _State.armed:
        return
    _State.expired = True
    if _State.shielded:
        _State.pending = True
        return
    raise TaskTimeout(_State.message)


@contextmanager
def deadline(seconds: float | None, message: str, interrupt: Callable[[], None] | None = None) -> Iterator[None]:
    """Raise `TaskTimeout(message)` in the block once it has run `seconds` (None or 0: no limit).
    Main thread only (signals are delivered there); elsewhere the block runs unbounded.

    `interrupt` is called from another thread when time is up, for calls that no signal brings
    back to Python (a PostgreSQL statement waiting in libpq): it makes them return, with an error,
    and the timeout is raised then."""
    if not seconds or not _on_main_thread():
        yield
        return
    if _State.armed:
        raise RuntimeError("deadlines do not nest")
    _State.armed, _State.expired, _State.pending, _State.message = True, False, False, message
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    watchdog = _Watchdog(seconds, interrupt) if interrupt is not None else None
    try:
        try:
            yield
        except TaskTimeout:
            raise
        except BaseException as exc:
            if _State.expired:
                raise TaskTimeout(message) from exc  # the interrupted call's own error, e.g. DuckDB's
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
            _State.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)


class _Watchdog:
    """Calls `interrupt` once `seconds` have passed, unless stopped first; never after `stop`
    returns (so a finished block's next statements are not cancelled)."""

    def __init__(self, seconds: float, interrupt: Callable[[], None]):
        self._interrupt = interrupt
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if not self._stopped:
                self._interrupt()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._timer.cancel()


@contextmanager
def uninterruptible() -> Iterator[None]:
    """A section a deadline must not cut short (a checkpoint): it fires when the section ends."""
    if not _on_main_thread():
        yield
        return
    _State.shielded += 1
    try:
        yield
    finally:
        _State.shielded -= 1
        if not _State.shielded and _State.pending and _State.armed:
            _State.pending = False
            raise TaskTimeout(_State.message)
