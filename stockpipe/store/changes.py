"""The change log (`store_changes`) and how a replica catches up with it.

Every write of bars or indicators records, in its own transaction, the symbol range and date range
it touched (deleted or inserted). Changes are numbered under a lock held until commit, so numbers
follow commit order and a snapshot of the store holds every change up to its newest one: a replica
copied from that snapshot is complete up to that number, its "mark". The replica carries the log
too, so its newest row is its mark; catching up means re-copying, from one snapshot of the store,
exactly the rows the later changes cover (deleting the replica's rows there first).

When the log cannot tell what changed, the replica is exported whole instead: no mark (an empty
log, a replica of another schema version, one that cannot be read), a mark the store does not hold
as it is (the store was restored or replaced), a change of everything ("*", written by a restore),
or so much change that copying it piecewise would cost more than a full export.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from stockpipe.store.schema import BULK_TABLES, SCHEMA_VERSION, STORE_CHANGES

log = logging.getLogger("stockpipe.replica")

EVERYTHING = "*"  # table_name of a change that touched every table (a restore)
LOCK = "stockpipe:store_changes"
COLUMNS = ", ".join(STORE_CHANGES.columns)
# Beyond these, catching up would copy most of a table anyway: export it whole instead (bounded
# memory: the full export goes by symbol ranges). Calendar days back from the newest change's end.
MAX_WINDOW_DAYS = 120
MAX_WHOLE_HISTORY_RANGES = 20


def record(session, table: str, symbols: Sequence[str] | None, date_from: dt.date | None,
           date_to: dt.date | None, now: dt.datetime) -> None:
    """Log that a write touched `table`'s rows of `symbols` (their code-point range; None: every
    symbol) between the dates (None: unbounded). Call it last in the write's transaction: the
    lock it takes is held until commit and orders every writer's commit after it."""
    ordered = sorted(symbols) if symbols is not None else None
    session.lock(LOCK)
    session.execute(
        f"INSERT INTO store_changes ({COLUMNS}) SELECT coalesce(max(change_id), 0) + 1, :t, :lo, :hi, "
        "CAST(:df AS DATE), CAST(:dt AS DATE), :at FROM store_changes",
        {"t": table, "lo": ordered[0] if ordered else None, "hi": ordered[-1] if ordered else None,
         "df": date_from, "dt": date_to, "at": now},
    )


def prune(session, before: dt.datetime) -> int:
    """Forget the changes logged before `before`, always keeping the newest (numbering goes on
    from it). A replica whose mark is gone is then exported whole: the log stays bounded (a
    Daily and a rebuild add a few rows a day) at the cost of one full export for a replica left
    behind that long."""
    session.lock(LOCK)
    doomed = session.fetch("SELECT count(*) FROM store_changes WHERE changed_at < :b AND "
                           "change_id < (SELECT max(change_id) FROM store_changes)", {"b": before})[0][0]
    if doomed:
        session.execute("DELETE FROM store_changes WHERE changed_at < :b AND "
                        "change_id < (SELECT max(change_id) FROM store_changes)", {"b": before})
    return int(doomed)


@dataclass(frozen=True)
class Change:
    change_id: int
    table_name: str
    symbol_from: str | None
    symbol_to: str | None
    date_from: dt.date | None
    date_to: dt.date | None
    changed_at: dt.datetime

    @classmethod
    def of(cls, row: Sequence[Any]) -> "Change":
        return cls(int(row[0]), *row[1:])


def newest_change(session) -> Change | None:
    rows = session.fetch(f"SELECT {COLUMNS} FROM store_changes ORDER BY change_id DESC LIMIT 1")
    return Change.of(rows[0]) if rows else None


def changes_since(session, mark: Change) -> list[Change] | None:
    """The changes after `mark`, or None if the store does not hold `mark` as the replica does."""
    rows = [Change.of(r) for r in session.fetch(
        f"SELECT {COLUMNS} FROM store_changes WHERE change_id >= :m ORDER BY change_id", {"m": mark.change_id})]
    if not rows or rows[0] != mark:
        return None
    return rows[1:]


def replica_mark(path: Path) -> tuple[Change | None, str]:
    """The newest change a replica file holds, or None and why it cannot be caught up."""
    import duckdb

    if not Path(path).exists():
        return None, "no previous replica"
    try:
        connection = duckdb.connect(str(path), read_only=True)
        try:
            tables = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "schema_version" not in tables or "store_changes" not in tables:
                return None, "the previous replica has no change log (an older schema)"
            version = connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                return None, f"the previous replica has schema version {version}, not {SCHEMA_VERSION}"
            rows = connection.execute(f"SELECT {COLUMNS} FROM store_changes ORDER BY change_id DESC LIMIT 1").fetchall()
        finally:
            connection.close()
    except duckdb.Error as exc:
        return None, f"the previous replica cannot be read ({' '.join(str(exc).split())[:200]})"
    if not rows:
        return None, "the previous replica holds no change"
    return Change.of(rows[0]), ""


@dataclass(frozen=True)
class Window:
    """Rows of one bulk table to copy again: a SQL condition and its parameters."""

    table: str
    condition: str  # "{collate}" marks where a symbol comparison needs the store's code-point collation
    params: dict[str, Any]

    def where(self, collate: str = "") -> str:
        return self.condition.replace("{collate}", collate)


def windows(changes: Sequence[Change]) -> tuple[list[Window] | None, str]:
    """What to copy again for `changes`, per bulk table: the envelope of the date-bounded changes
    (a Daily's or a rebuild's dates for every symbol: one window), and the whole history of the
    symbol ranges of changes without a start date (split symbols recomputed in full). Copying more
    than what changed is harmless (the replica's rows there are replaced by the store's); None
    (and why) when the changes call for a full export."""
    found: list[Window] = []
    for change in changes:
        if change.table_name == EVERYTHING:
            return None, f"change {change.change_id} touched every table (a restore)"
        if change.table_name not in BULK_TABLES:
            return None, f"change {change.change_id} of table {change.table_name}, which the log does not follow"
    for table in sorted(BULK_TABLES):
        own = [c for c in changes if c.table_name == table]
        bounded = [c for c in own if c.date_from is not None]
        unbounded = [c for c in own if c.date_from is None]
        if bounded:
            start = min(c.date_from for c in bounded)
            end = None if any(c.date_to is None for c in bounded) else max(c.date_to for c in bounded)
            newest = max((c.date_to or c.date_from) for c in bounded)
            if (newest - start).days > MAX_WINDOW_DAYS:
                return None, f"{table} changed from {start} on, more than {MAX_WINDOW_DAYS} days"
            params: dict[str, Any] = {"df": start}
            condition = "date >= :df"
            if end is not None:
                condition += " AND date <= :dt"
                params["dt"] = end
            if all(c.symbol_from is not None for c in bounded):
                condition += " AND symbol{collate} BETWEEN :lo AND :hi"
                params.update(lo=min(c.symbol_from for c in bounded), hi=max(c.symbol_to for c in bounded))
            found.append(Window(table, condition, params))
        ranges = sorted({(c.symbol_from, c.symbol_to) for c in unbounded})
        if any(lo is None for lo, _ in ranges):
            return None, f"{table} changed for every symbol over its whole history"
        if len(ranges) > MAX_WHOLE_HISTORY_RANGES:
            return None, f"{table} changed over the whole history of {len(ranges)} symbol ranges"
        for lo, hi in ranges:
            found.append(Window(table, "symbol{collate} BETWEEN :lo AND :hi", {"lo": lo, "hi": hi}))
    return found, ""
