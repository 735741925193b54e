"""Publish a read-only DuckDB replica for dashboards and analysts.

Incremental: the temporary file starts as an older replica (the outgoing `.previous` file, moved,
or else a copy of the current one), and only what the store's change log says changed since that
replica's newest change is copied again (stockpipe.store.changes);
when the log cannot tell (no previous replica, an unreadable one or one of another schema version,
a restored store, too much change) or the caught-up copy fails verification, the replica is
exported whole, as the first one is. Either way it is written to a temporary file, verified (every table present, row counts equal to the source's in the
same snapshot), made read-only, then atomically renamed over the previous replica, which is kept as
`<name>.previous.duckdb`. A reader that has the old replica open keeps its file; a failed refresh
leaves the previous replica in place. (Copying a live database file can copy a half-written one.)
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from stockpipe.store import Store, StoreError, replica_file
from stockpipe.store.changes import replica_mark
from stockpipe.store.schema import VIEWS
from stockpipe.tempfiles import discard_orphans, temporary_for

log = logging.getLogger("stockpipe.replica")


class ReplicaError(RuntimeError):
    pass


def verify_replica(path: Path, expected: dict[str, int]) -> None:
    with replica_file.open_replica(path) as replica:
        present = replica.names()
        missing = sorted(set(expected) - present)
        if missing:
            raise ReplicaError(f"replica {path} lacks table(s) {', '.join(missing)}")
        missing = sorted({v.name for v in VIEWS} - present)
        if missing:
            raise ReplicaError(f"replica {path} lacks view(s) {', '.join(missing)}")
        for table, rows in expected.items():
            found = replica.row_count(table)
            if found != rows:
                raise ReplicaError(f"replica {path}: {table} has {found} rows, the store had {rows}")


def publish_replica(store: Store, path: Path) -> dict[str, Any]:
    started = time.monotonic()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_for(path)
    discard_orphans(path)
    for leftover in (temporary, temporary.with_name(temporary.name + ".wal")):
        leftover.unlink(missing_ok=True)
    discard_orphans(_previous(path))
    try:
        counts, mode, reason = _catch_up(store, path, temporary)
        if counts is None:
            _discard(temporary)
            counts, mode = store.export_replica(temporary), "full"
            replica_file.add_views(temporary)
            verify_replica(temporary, counts)
        os.chmod(temporary, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        previous = _previous(path)
        if path.exists():
            # Keep the outgoing replica as the backup without a moment where `path` is missing.
            discard_orphans(previous)
            link = temporary_for(previous)
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, previous)
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise
    stats = {"path": str(path), "tables": counts, "seconds": round(time.monotonic() - started, 3),
             "bytes": path.stat().st_size, "mode": mode}
    if reason:
        stats["full_because"] = reason
    log.info("replica %s refreshed (%s%s): %s", path, mode, f", because {reason}" if reason else "",
             ", ".join(f"{t} {n}" for t, n in counts.items()))
    return stats


def _catch_up(store: Store, path: Path, temporary: Path) -> tuple[dict[str, int] | None, str, str]:
    """A verified copy of the previous replica brought up to date in `temporary`: (counts,
    "incremental", ""), or (None, "full", why not).

    The copy is, when it can be, the outgoing `.previous` file itself, moved rather than copied:
    the publish that succeeds replaces it with the current replica anyway, and copying the current
    one (hundreds of MB) was most of a Daily's Replicate. It must be older than the current replica
    in the same change log; a reader holding it open makes DuckDB refuse to write it, and then, as
    when it is missing or the log cannot tell, the current replica is copied instead."""
    mark, reason = replica_mark(path)
    if mark is None:
        return None, "full", reason
    previous = _previous(path)
    older, _ = replica_mark(previous)
    if older is not None and older.change_id <= mark.change_id:
        os.replace(previous, temporary)
        counts, why = _update(store, temporary, older)
        if counts is not None:
            return counts, "incremental", ""
        log.info("catching up %s did not work (%s): catching up a copy of %s instead", previous.name, why, path.name)
        _discard(temporary)
    shutil.copyfile(path, temporary)
    counts, reason = _update(store, temporary, mark)
    if counts is None:
        return None, "full", reason
    return counts, "incremental", ""


def _update(store: Store, temporary: Path, mark) -> tuple[dict[str, int] | None, str]:
    """Bring the replica copy `temporary` (holding the changes up to `mark`) up to date and verify
    it: the store's row counts, or None and why not."""
    os.chmod(temporary, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        counts, reason = store.update_replica(temporary, mark)
        if counts is None:
            return None, reason
        replica_file.add_views(temporary)
        verify_replica(temporary, counts)
    except Exception as exc:  # noqa: BLE001 - any failure to catch up (a damaged copy, counts the log
        # cannot explain: a change it did not record) is what a full export is for; its own errors are not caught
        why = " ".join(str(exc).split())[:300]
        log.warning("catching up the previous replica failed: %s", why)
        return None, f"catching up failed ({why})"
    return counts, ""


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".previous" + path.suffix)


def _discard(temporary: Path) -> None:
    for leftover in (temporary, temporary.with_name(temporary.name + ".wal")):
        leftover.unlink(missing_ok=True)


def restore_from_replica(store: Store, path: Path, batch_rows: int = 500_000) -> dict[str, int]:
    """Fill an empty store (a damaged one moved aside) with every table of a replica, in one
    transaction: a failed restore leaves the store empty. The store keeps its own declared keys,
    which the replica does not carry (so the replica file itself cannot simply become the store)."""
    from stockpipe.store.schema import SCHEMA_VERSION, TABLES

    path = Path(path)
    try:
        replica = replica_file.open_replica(path)
    except StoreError as exc:
        raise ReplicaError(f"cannot open replica {path}: {exc}") from exc
    with replica:
        missing = sorted(({t.name for t in TABLES} | {"schema_version"}) - replica.names())
        if missing:
            raise ReplicaError(f"{path} is not a stockpipe replica: it lacks table(s) {', '.join(missing)}")
        version = replica.schema_version()
        if version != SCHEMA_VERSION:
            raise ReplicaError(f"replica {path} has schema version {version}, this stockpipe expects {SCHEMA_VERSION}")
        return store.fill_empty(lambda table: replica.batches(table, batch_rows), origin=str(path))
