"""Luigi targets whose existence is a row in the store's `task_markers` table.

The row is written by the store in the same transaction as the data it marks (see
`Store.replace_indicators(..., marker)`), so "complete" can never be true of half-written data.
(luigi.contrib.sqla commits marker and data separately and does not work with SQLAlchemy 2.)

Luigi asks every task whether it is complete, one call each; a rebuild of 50 chunks would open 50
connections for that. `prefetch` answers many marker ids with one query and keeps the answer briefly:
a stale "not complete" is harmless, because a chunk re-checks its marker inside its write transaction
and skips if another worker finished it first.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import luigi

from stockpipe import config
from stockpipe.store import Marker, open_store

_NEGATIVE_TTL_SECONDS = 5.0
_done: dict[str, set[str]] = {}
_checked_missing: dict[str, dict[str, float]] = {}


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


def forget(store_url: str | None = None) -> None:
    """Drop cached answers for one store, or for all (after markers were deleted, e.g. by a restore)."""
    if store_url is None:
        _done.clear()
        _checked_missing.clear()
        return
    _done.pop(store_url, None)
    _checked_missing.pop(store_url, None)


class MarkerTarget(luigi.Target):
    def __init__(self, marker_id: str, store_url: str | None = None):
        self.marker_id = marker_id
        self._store_url = store_url

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
        checked = _checked_missing.get(self.store_url, {}).get(self.marker_id)
        if checked is not None and time.monotonic() - checked < _NEGATIVE_TTL_SECONDS:
            return False
        return self.marker_id in prefetch(self.store_url, [self.marker_id])

    def marker(self, task: luigi.Task, stats: dict[str, Any] | None = None) -> Marker:
        return Marker(self.marker_id, task.get_task_family(), task.to_str_params(), stats or {})

    def record_done(self) -> None:
        _done.setdefault(self.store_url, set()).add(self.marker_id)
        _checked_missing.get(self.store_url, {}).pop(self.marker_id, None)
