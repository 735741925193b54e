"""Luigi targets whose existence is a row in the store: a marker in `task_markers`, or a run's plan
in `run_plans` (`PlanTarget`).

The row is written by the store in the same transaction as the data it marks (see
`Store.replace_indicators(..., marker)`), so "complete" can never be true of half-written data.
(luigi.contrib.sqla commits marker and data separately and does not work with SQLAlchemy 2.)

Completion checks are exact: a marker written by this or any other process (another worker, an
assistant, another machine) is seen by the next check, whatever `[worker] cache_task_completion`
says. Only "complete" answers are remembered, because a marker is never removed except by
`stockpipe restore`, which calls `forget()`.

One deliberate exception: a rebuild's chunks. Luigi asks each of 50 chunks whether it is complete,
one call each; one query answers all of a plan's chunks (`prefetch_prefix`), and for
`ADVISORY_MISSING_SECONDS` after it a chunk it found missing is reported missing without asking again. That answer can only be
stale one way (another worker finished the chunk meanwhile), and a chunk re-checks its marker inside
its write transaction and skips, so the worst case is a finished chunk scheduled once more that
does nothing. Targets gating other work (symbols, bars, the watchlist...) never use it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

import luigi

from stockpipe import config
from stockpipe.store import Marker, open_store

ADVISORY_MISSING_SECONDS = 1.0
_done: dict[str, set[str]] = {}
_checked_missing: dict[str, dict[str, float]] = {}
_checked_prefixes: dict[str, dict[str, float]] = {}


def prefetch(store_url: str, marker_ids: Iterable[str]) -> set[str]:
    """Look up many markers in one query; returns those complete."""
    ids = list(marker_ids)
    done = open_store(store_url).completed(ids)
    _done.setdefault(store_url, set()).update(done)
    now = time.monotonic()
    missing = _checked_missing.setdefault(store_url, {})
    for marker_id in ids:
        if marker_id not in done:
            missing[marker_id] = now
    return done


def prefetch_prefix(store_url: str, prefix: str) -> set[str]:
    """Look up every marker under `prefix` in one query (a plan's chunks); returns those complete."""
    done = open_store(store_url).completed_prefix(prefix)
    _done.setdefault(store_url, set()).update(done)
    _checked_prefixes.setdefault(store_url, {})[prefix] = time.monotonic()
    return done


def forget(store_url: str | None = None) -> None:
    """Drop cached answers for one store, or for all (after markers were deleted, e.g. by a restore)."""
    if store_url is None:
        _done.clear()
        _checked_missing.clear()
        _checked_prefixes.clear()
        return
    _done.pop(store_url, None)
    _checked_missing.pop(store_url, None)
    _checked_prefixes.pop(store_url, None)


def _forget_missing() -> None:
    _checked_missing.clear()
    _checked_prefixes.clear()


# A forked worker must ask the store itself: its parent's "missing" answers predate the fork.
os.register_at_fork(after_in_child=_forget_missing)


class MarkerTarget(luigi.Target):
    def __init__(self, marker_id: str, store_url: str | None = None, advisory_prefix: str | None = None):
        """`advisory_prefix`: this marker is one of a family under that prefix (a plan's chunks)
        whose "missing" answers may be reused briefly (see the module's docstring)."""
        self.marker_id = marker_id
        self._store_url = store_url
        self.advisory_prefix = advisory_prefix

    @property
    def store_url(self) -> str:
        # Resolved on use: Luigi builds outputs far more often than it asks whether they exist.
        if self._store_url is None:
            self._store_url = config.store_url()
        return self._store_url

    def __repr__(self) -> str:
        return f"MarkerTarget({self.marker_id!r})"

    def exists(self) -> bool:
        if self.marker_id in _done.get(self.store_url, ()):
            return True
        if self.advisory_prefix is None:
            return self.marker_id in prefetch(self.store_url, [self.marker_id])
        now = time.monotonic()
        checked = _checked_missing.get(self.store_url, {}).get(self.marker_id)
        if checked is None:
            checked = _checked_prefixes.get(self.store_url, {}).get(self.advisory_prefix)
        if checked is not None and now - checked < ADVISORY_MISSING_SECONDS:
            return False
        return self.marker_id in prefetch_prefix(self.store_url, self.advisory_prefix)

    def marker(self, task: luigi.Task, stats: dict[str, Any] | None = None) -> Marker:
        return Marker(self.marker_id, task.get_task_family(), task.to_str_params(), stats or {})

    def record_done(self) -> None:
        _done.setdefault(self.store_url, set()).add(self.marker_id)
        _checked_missing.get(self.store_url, {}).pop(self.marker_id, None)


class PlanTarget(luigi.Target):
    """A run's plan, stored once (see services/rebuild.py): it exists for every worker on every machine."""

    def __init__(self, plan_id: str, store_url: str | None = None):
        self.plan_id = plan_id
        self._store_url = store_url

    def __repr__(self) -> str:
        return f"PlanTarget({self.plan_id!r})"

    def exists(self) -> bool:
        return open_store(self._store_url or config.store_url()).read_run_plan(self.plan_id) is not None
