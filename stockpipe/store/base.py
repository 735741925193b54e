"""The store interface: every read and write the pipeline makes, in SQL both stores accept.

Tasks and services only hold a `Store`; which database is behind it is the URL's business. A dialect
provides a `Session` (one transaction on one connection) with four primitives: execute/fetch SQL,
read a query as Arrow, stage an Arrow table as a temporary relation, and bulk-insert Arrow rows.
Everything else is written once here.

SQL uses `:name` placeholders; each session translates them to its driver's style.
"""

from __future__ import annotations

import datetime as dt
import dataclasses
import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from stockpipe import markers
from stockpipe.store import changes
from stockpipe.store.schema import (
    BARS,
    BULK_TABLES,
    DAILY_WATCHLIST,
    INDICATORS,
    MIGRATIONS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_TABLE,
    SYMBOLS,
    TABLES,
    TASK_RUNS,
    VIEWS,
    Table,
)

log = logging.getLogger("stockpipe.store")
# How stockpipe writes Parquet (backups, bar snapshots): dictionary-encoding only the symbol column.
# Arrow's default tries a dictionary for every column and gives up on the doubles, which made writing
# a full rebuild's 6M-row backup 4.3 s of its 6.7 s; this way it is ~4x faster and the file smaller.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "lz4", "use_dictionary": ["symbol"]}

# A quoted literal or identifier is matched first and kept as it is: a value inlined into SQL (a
# backup's symbol list, a file path) may itself contain ':name'.
_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<![:\w]):([A-Za-z_]\w*)")


class StoreError(RuntimeError):
    """A store could not be opened or used; the message says which and why."""


class _CannotSwap(Exception):
    """A run's build table cannot be swapped in (the message says why)."""


class SchemaVersionError(StoreError):
    """The database was created by a different stockpipe version than this one."""


class IntegrityError(StoreError):
    """A stored table could not be read back; `table` names it (None: the database itself)."""

    def __init__(self, message: str, table: str | None, cause: str):
        super().__init__(message)
        self.table = table
        self.cause = cause


@dataclass
class IntegrityReport:
    """What `Store.check_integrity` found: per-table row counts and checksums, storage facts, and
    problems that leave the data readable but wrong (duplicate keys, a pending WAL)."""

    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Marker:
    """Completion record of one task, written in the same transaction as the data it marks."""

    marker_id: str
    task_family: str
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Session(ABC):
    """One connection inside one transaction."""

    @abstractmethod
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int | None:
        """Run a statement; the rows it changed where the database says (else None)."""

    @abstractmethod
    def fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]: ...

    @abstractmethod
    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> pa.Table: ...

    @abstractmethod
    def stage(self, name: str, data: pa.Table, like: Table) -> None:
        """Make `data` queryable as relation `name` until the transaction ends."""

    @abstractmethod
    def insert(self, table: Table, data: pa.Table) -> int:
        """Bulk-insert rows (already conformed to `table`)."""

    def lock(self, key: str) -> None:
        """Serialise writers of `key` across processes until the transaction ends (no-op if the
        store already serialises every writer)."""

    def lock_symbols(self, table: str, symbols: Sequence[str]) -> None:
        """Serialise writers of these symbols' rows of `table` until the transaction ends, so two
        delete-then-insert replaces of one key (a rebuild chunk next to a Daily) wait for each
        other instead of failing on the key (no-op if the store serialises every writer)."""

    def fetch_batches(self, sql: str, params: dict[str, Any] | None = None, schema: pa.Schema | None = None,
                      rows: int = 262_144) -> Iterator[pa.RecordBatch]:
        """A query's result in record batches (stores that can stream do, so memory stays bounded)."""
        yield from self.fetch_arrow(sql, params, schema).to_batches(rows)

    def fetch_each(self, queries: Iterable[tuple[str, dict[str, Any]]], schema: pa.Schema | None = None,
                   rows: int = 262_144) -> Iterator[pa.RecordBatch]:
        """The results of (sql, params) `queries`, one after the other, in record batches. A store
        may run the next query while the caller handles these rows: the caller does not use the
        session until the iteration ends."""
        for sql, params in queries:
            yield from self.fetch_batches(sql, params, schema, rows)


class Store(ABC):
    dialect: str = ""
    # Whether a rebuild replacing every indicator row writes into a table of its own (begin_build).
    builds_aside: bool = True
    # Appended to a text column to compare it by code point, as Python sorts: a database that sorts
    # by a language's rules (en_US puts 'BFAM' before 'BF-B') would otherwise drop symbols from a
    # range whose ends Python chose.
    codepoint_collation: str = ""
    # Whether a symbol range beside a list of symbols lets the store skip blocks (DuckDB's min/max
    # per row group). PostgreSQL gains nothing from it and multiplies the two filters' selectivity:
    # a chunk's 120,000 bars were estimated at 1,000 rows, which chose a worse plan.
    symbol_ranges_prune: bool = True
    # One process at a time may write the database (DuckDB's file lock): worker processes of one
    # run would only take turns at it, so a run's tasks are better run in one process (execution.py).
    single_writer_process: bool = False
    # Bars a chunk run in the worker's process reads at once for itself and the plan's next
    # unfinished chunks (services/indicators.py); 0 = each chunk reads its own.
    read_ahead_bars: int = 0
    # > 0 while this process runs tasks in its own worker: stores that connect per transaction
    # keep their connection instead (see `stockpipe.store.connections_kept`).
    connections_kept: int = 0

    def __init__(self, url: str):
        self.url = url
        self._schema_checked = False
        # Rows this process deleted to replace them, per table, since it last reclaimed their space.
        self.replaced_since_vacuum: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted_url()!r})"

    def redacted_url(self) -> str:
        from stockpipe.redaction import redact_url

        return redact_url(self.url)

    # -- selecting symbols the store's way ---------------------------------------------------------
    def _symbol_filter(self, column: str, symbols: Sequence[str], params: dict[str, Any], name: str = "s") -> str:
        """`symbol_filter` with this store's collation and symbol-range choice."""
        return symbol_filter(column, symbols, params, name, collate=self.codepoint_collation,
                             ranged=self.symbol_ranges_prune)

    def _range_filter(self, symbols: Sequence[str] | None, start: dt.date | None,
                      end: dt.date | None) -> tuple[str, dict[str, Any]]:
        """`range_filter` with this store's collation and symbol-range choice."""
        return range_filter(symbols, start, end, collate=self.codepoint_collation, ranged=self.symbol_ranges_prune)

    def _bar_export_query(self, symbols: Sequence[str], start: dt.date | None, warmup: int) -> tuple[str, dict[str, Any]]:
        """`_bar_export_query` with this store's collation and symbol-range choice."""
        return _bar_export_query(symbols, start, warmup, collate=self.codepoint_collation, ranged=self.symbol_ranges_prune)

    # -- dialect primitives -------------------------------------------------------------------
    @abstractmethod
    def _open_session(self, write: bool) -> Any:
        """Context manager yielding a Session; commits on success, rolls back on error."""

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        if not self._schema_checked:
            self.ensure_schema()
        with self._open_session(write) as session:
            yield session

    @contextmanager
    def run_lock(self, key: str) -> Iterator[None]:
        """Hold `key` against every other process using this store (not only this machine's, on
        PostgreSQL) while a task does its work, so two runs of one task (two overlapping Dailies of
        one date) do not both do it: the second waits, then finds it done. A killed holder's lock
        goes with its process. The holder's own task timeout bounds the wait."""
        yield

    # -- schema ---------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create missing tables; refuse to work on a database of another schema version."""
        with self._open_session(True) as session:
            # Two first runs on an empty PostgreSQL database must not both create the tables.
            session.lock("stockpipe:schema")
            found = self._stored_version(session)
            if found is None:
                self._refuse_tables_named_like_views(session)
                session.execute(SCHEMA_VERSION_TABLE.ddl())
                for table in TABLES:
                    session.execute(table.ddl(declare_key=self.declares_key(table)))
                for view in VIEWS:
                    session.execute(view.ddl())
                session.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)",
                    {"v": SCHEMA_VERSION, "t": utcnow()},
                )
            elif found != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.redacted_url()} has stockpipe schema version {found}, this stockpipe expects "
                    f"{SCHEMA_VERSION}: run `stockpipe init-db` to upgrade it"
                    + (" (it is newer than this stockpipe: upgrade stockpipe)" if found > SCHEMA_VERSION else "")
                )
        self._schema_checked = True

    def upgrade_schema(self) -> tuple[int | None, int]:
        """Create or upgrade the schema; returns (version found, version now)."""
        with self._open_session(True) as session:
            session.lock("stockpipe:schema")
            found = self._stored_version(session)
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.redacted_url()} has schema version {found}, newer than this stockpipe "
                    f"({SCHEMA_VERSION}): upgrade stockpipe"
                )
            if found is not None:
                if found < SCHEMA_VERSION:
                    self._refuse_tables_named_like_views(session)
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(version, ()):
                        session.execute(statement)
                    session.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)",
                        {"v": version, "t": utcnow()},
                    )
        if found is None:
            self.ensure_schema()
        self._schema_checked = True
        return found, SCHEMA_VERSION

    def _stored_version(self, session: Session) -> int | None:
        exists = session.fetch(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
            + self._schema_filter()
        )[0][0]
        if not exists:
            return None
        row = session.fetch("SELECT max(version) FROM schema_version")[0][0]
        return None if row is None else int(row)

    def _schema_filter(self) -> str:
        return ""

    def _refuse_tables_named_like_views(self, session: Session) -> None:
        """The compatibility views take the old system's table names: a database that still holds
        those tables (stockpipe pointed at the old database) is refused with what to do instead."""
        names = ", ".join(f"'{view.name}'" for view in VIEWS)
        taken = [r[0] for r in session.fetch(
            f"SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            f"AND table_name IN ({names})" + self._schema_filter() + " ORDER BY 1"
        )]
        if taken:
            raise StoreError(
                f"{self.redacted_url()} already has table(s) {', '.join(taken)} (the old system's schema?): "
                f"stockpipe needs those names for its compatibility views. Give stockpipe a database of its "
                f"own and copy the old data over with `stockpipe import-legacy URL-of-this-database`"
            )

    def declares_key(self, table: Table) -> bool:
        return True

    # -- markers --------------------------------------------------------------------------------
    def _claim(self, session: Session, marker: Marker | None) -> bool:
        """Lock the marker's key; False if another writer already completed it."""
        if marker is None:
            return True
        session.lock(marker.marker_id)
        done = session.fetch("SELECT 1 FROM task_markers WHERE marker_id = :m", {"m": marker.marker_id})
        return not done

    def _touch(self, session: Session, marker: Marker | None) -> None:
        if marker is None:
            return
        session.execute(
            "INSERT INTO task_markers (marker_id, task_family, params, stats, completed_at) "
            "VALUES (:m, :f, :p, :s, :t)",
            {
                "m": marker.marker_id,
                "f": marker.task_family,
                "p": json.dumps(marker.params, sort_keys=True, default=str),
                "s": json.dumps(marker.stats, sort_keys=True, default=str),
                "t": utcnow(),
            },
        )

    def touch(self, marker: Marker) -> bool:
        """Record a completion that has no data of its own (e.g. a no-op day)."""
        with self.session() as session:
            if not self._claim(session, marker):
                return False
            self._touch(session, marker)
            return True

    def completed(self, marker_ids: Iterable[str]) -> set[str]:
        ids = list(marker_ids)
        if not ids:
            return set()
        with self.session(write=False) as session:
            rows = session.fetch("SELECT marker_id FROM task_markers WHERE marker_id = ANY(:ids)", {"ids": ids})
        return {r[0] for r in rows}

    def completed_prefix(self, prefix: str) -> set[str]:
        """Every marker id starting with `prefix` (e.g. all chunks of one plan), in one query."""
        with self.session(write=False) as session:
            rows = session.fetch(
                "SELECT marker_id FROM task_markers WHERE substr(marker_id, 1, :n) = :p", {"n": len(prefix), "p": prefix}
            )
        return {r[0] for r in rows}

    def read_marker(self, marker_id: str) -> dict[str, Any] | None:
        found = self.markers(exact=marker_id)
        return found[0] if found else None

    def markers(self, prefix: str | None = None, exact: str | None = None) -> list[dict[str, Any]]:
        where, params = "", {}
        if exact is not None:
            where, params = " WHERE marker_id = :m", {"m": exact}
        elif prefix is not None:
            where, params = " WHERE substr(marker_id, 1, :n) = :p", {"n": len(prefix), "p": prefix}
        with self.session(write=False) as session:
            rows = session.fetch(
                "SELECT marker_id, task_family, params, stats, completed_at FROM task_markers"
                + where
                + " ORDER BY marker_id",
                params,
            )
        return [
            {
                "marker_id": r[0],
                "task_family": r[1],
                "params": _json_object(r[2], r[0], "params"),
                "stats": _json_object(r[3], r[0], "stats"),
                "completed_at": r[4],
            }
            for r in rows
        ]

    def newest_markers(self) -> list[dict[str, Any]]:
        """The most recently completed marker of each task family."""
        with self.session(write=False) as session:
            rows = session.fetch(
                "SELECT marker_id, task_family, params, stats, completed_at FROM task_markers t "
                "WHERE completed_at = (SELECT max(completed_at) FROM task_markers n WHERE n.task_family = t.task_family) "
                "ORDER BY task_family, marker_id"
            )
        return [{"marker_id": r[0], "task_family": r[1], "params": json.loads(r[2] or "{}"),
                 "stats": json.loads(r[3] or "{}"), "completed_at": r[4]} for r in rows]

    def delete_markers(self, marker_ids: Sequence[str]) -> int:
        if not marker_ids:
            return 0
        with self.session() as session:
            before = session.fetch("SELECT count(*) FROM task_markers WHERE marker_id = ANY(:ids)", {"ids": list(marker_ids)})
            session.execute("DELETE FROM task_markers WHERE marker_id = ANY(:ids)", {"ids": list(marker_ids)})
        return int(before[0][0])

    # -- runs: plans, chunk failures, reports -------------------------------------------------------
    def add_run_plan(self, plan_id: str, kind: str, start_date: dt.date, plan: str, backup_path: str | None,
                     planned_on: str, created_at: dt.datetime) -> bool:
        """Store a run's plan (`plan`: its JSON document) once. False, and nothing changed, when the
        run already has one: a stored plan is never replaced."""
        with self.session() as session:
            session.lock(f"run_plans/{plan_id}")
            if session.fetch("SELECT 1 FROM run_plans WHERE plan_id = :p", {"p": plan_id}):
                return False
            session.execute(
                "INSERT INTO run_plans (plan_id, kind, start_date, plan, backup_path, planned_on, created_at) "
                "VALUES (:p, :k, :d, :plan, :b, :h, :t)",
                {"p": plan_id, "k": kind, "d": start_date, "plan": plan, "b": backup_path, "h": planned_on,
                 "t": created_at},
            )
        return True

    _RUN_PLAN_COLUMNS = ("plan_id", "kind", "start_date", "plan", "backup_path", "planned_on", "created_at")

    def read_run_plan(self, plan_id: str) -> dict[str, Any] | None:
        """The stored row of a run's plan (its `plan` column as stored text), or None."""
        found = self.read_run_plans(plan_id)
        return found[0] if found else None

    def read_run_plans(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        where, params = ("", {}) if plan_id is None else (" WHERE plan_id = :p", {"p": plan_id})
        with self.session(write=False) as session:
            rows = session.fetch(f"SELECT {', '.join(self._RUN_PLAN_COLUMNS)} FROM run_plans{where} ORDER BY plan_id",
                                 params)
        return [dict(zip(self._RUN_PLAN_COLUMNS, r)) for r in rows]

    def record_chunk_failure(self, plan_id: str, chunk_id: int, error: str, error_type: str, host: str) -> None:
        """Keep the chunk's last failure, in a transaction of its own (the chunk's was rolled back)."""
        with self.session() as session:
            session.lock(f"run_chunk_failures/{plan_id}/{chunk_id}")
            params = {"p": plan_id, "c": chunk_id, "e": error, "y": error_type, "h": host, "t": utcnow()}
            # UPDATE or INSERT rather than DELETE then INSERT: DuckDB before 1.2 refuses to re-insert a
            # key deleted in the same transaction.
            if session.fetch("SELECT 1 FROM run_chunk_failures WHERE plan_id = :p AND chunk_id = :c",
                             {"p": plan_id, "c": chunk_id}):
                session.execute("UPDATE run_chunk_failures SET error = :e, error_type = :y, host = :h, failed_at = :t "
                                "WHERE plan_id = :p AND chunk_id = :c", params)
            else:
                session.execute("INSERT INTO run_chunk_failures (plan_id, chunk_id, error, error_type, host, failed_at) "
                                "VALUES (:p, :c, :e, :y, :h, :t)", params)

    def read_chunk_failures(self, plan_id: str) -> list[dict[str, Any]]:
        columns = ("chunk_id", "error", "error_type", "host", "failed_at")
        with self.session(write=False) as session:
            rows = session.fetch(f"SELECT {', '.join(columns)} FROM run_chunk_failures WHERE plan_id = :p "
                                 "ORDER BY chunk_id", {"p": plan_id})
        return [dict(zip(columns, r)) for r in rows]

    def start_run_attempt(self, plan_id: str, owner: str) -> dt.datetime:
        """When `owner`'s attempt at the run started: now, unless this owner already started it
        (a task with dynamic dependencies is re-entered once per batch of them)."""
        with self.session() as session:
            session.lock(f"run_reports/{plan_id}")
            found = session.fetch("SELECT attempt_owner, attempt_started_at FROM run_reports WHERE plan_id = :p",
                                  {"p": plan_id})
            if found and found[0][0] == owner and found[0][1] is not None:
                return found[0][1]
            now = utcnow()
            if found:
                session.execute("UPDATE run_reports SET attempt_owner = :o, attempt_started_at = :t WHERE plan_id = :p",
                                {"p": plan_id, "o": owner, "t": now})
            else:
                session.execute("INSERT INTO run_reports (plan_id, attempt_owner, attempt_started_at) VALUES (:p, :o, :t)",
                                {"p": plan_id, "o": owner, "t": now})
        return now

    def finish_run(self, plan_id: str, report: str, finished_at: dt.datetime, marker: Marker | None = None,
                   built_aside: bool = False, keep_replaced: bool = False, chunks: int | None = None) -> bool:
        """Store the run's final report (JSON), replacing an earlier one (the attempt is over), with
        the run's completion marker in one transaction. False, and nothing written, if another
        worker completed the run meanwhile. A run planned to build its rows aside (`begin_build`)
        swaps its table in within the same transaction (`_swap_in`), if it still has one (a restore
        drops it with the chunks' markers, and they redo their rows in place). `keep_replaced`: the
        table it replaces is the run's backup (`_swap_in`); otherwise it is dropped. `chunks`: how
        many chunk markers the run has when it is done; fewer under the lock (a restore forgot them
        after the caller saw them) and StoreError, nothing written."""
        try:
            return self._finish_run(plan_id, report, finished_at, marker, built_aside, keep_replaced, chunks)
        except _CannotSwap as exc:
            # Its chunks are forgotten with their table, in one transaction: run again, they redo
            # their rows in place.
            with self.session() as session:
                self._drop_build(session, plan_id)
                self._forget_run_markers(session, plan_id)
            raise StoreError(f"run {plan_id}: {exc}, so its rows, built in a table of their own, were not swapped in; "
                             "its chunks are forgotten: run the same command again to redo them in place") from None

    def _finish_run(self, plan_id: str, report: str, finished_at: dt.datetime, marker: Marker | None,
                    built_aside: bool, keep_replaced: bool, chunks: int | None) -> bool:
        with self.session() as session:
            if not self._claim(session, marker):
                return False
            if chunks is not None:
                prefix = markers.chunks_of(plan_id)
                done = session.fetch("SELECT count(*) FROM task_markers WHERE substr(marker_id, 1, :n) = :p",
                                     {"n": len(prefix), "p": prefix})[0][0]
                if done < chunks:
                    raise StoreError(f"run {plan_id}: {done} of its {chunks} chunks are done (a `stockpipe restore` "
                                     "forgot them meanwhile?): not finished; run the same command again to redo them")
            if built_aside and _build_name(plan_id) in self._build_tables(session):
                self._swap_in(session, plan_id, keep_replaced)
            session.lock(f"run_reports/{plan_id}")
            params = {"p": plan_id, "r": report, "t": finished_at}
            if session.fetch("SELECT 1 FROM run_reports WHERE plan_id = :p", {"p": plan_id}):
                session.execute("UPDATE run_reports SET report = :r, finished_at = :t, restored_at = NULL, "
                                "attempt_owner = NULL, attempt_started_at = NULL WHERE plan_id = :p", params)
            else:
                session.execute("INSERT INTO run_reports (plan_id, report, finished_at) VALUES (:p, :r, :t)", params)
            self._touch(session, marker)
        return True

    def read_run_reports(self, plan_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Per run: its report row (`report` as stored text, NULL while unfinished)."""
        columns = ("plan_id", "attempt_owner", "attempt_started_at", "report", "finished_at", "restored_at")
        where, params = ("", {}) if plan_id is None else (" WHERE plan_id = :p", {"p": plan_id})
        with self.session(write=False) as session:
            rows = session.fetch(f"SELECT {', '.join(columns)} FROM run_reports{where}", params)
        return {r[0]: dict(zip(columns, r)) for r in rows}

    # -- symbols --------------------------------------------------------------------------------
    def replace_universe(self, rows: pa.Table, marker: Marker | None = None) -> bool:
        """Upsert the source's universe; symbols it no longer lists become inactive, never deleted."""
        rows = SYMBOLS.conform(rows)
        columns = SYMBOLS.columns
        updates = ", ".join(
            f"{c} = COALESCE(excluded.{c}, symbols.{c})" if c == "avg_volume_30" else f"{c} = excluded.{c}"
            for c in columns
            if c != "symbol"
        )
        with self.session() as session:
            if not self._claim(session, marker):
                return False
            session.stage("incoming_symbols", rows, SYMBOLS)
            session.execute(
                "UPDATE symbols SET is_active = FALSE, updated_at = :t "
                "WHERE is_active AND symbol NOT IN (SELECT symbol FROM incoming_symbols)",
                {"t": utcnow()},
            )
            session.execute(
                f"INSERT INTO symbols ({', '.join(columns)}) SELECT {', '.join(columns)} FROM incoming_symbols "
                f"ON CONFLICT (symbol) DO UPDATE SET {updates}"
            )
            self._touch(session, marker)
        return True

    def read_symbols(self, active_only: bool = True) -> pa.Table:
        where = " WHERE is_active" if active_only else ""
        with self.session(write=False) as session:
            return session.fetch_arrow(f"SELECT * FROM symbols{where} ORDER BY symbol", schema=SYMBOLS.schema)

    def active_symbols(self) -> list[str]:
        with self.session(write=False) as session:
            return [r[0] for r in session.fetch("SELECT symbol FROM symbols WHERE is_active ORDER BY symbol")]

    # -- bars -----------------------------------------------------------------------------------
    def write_bars(self, rows: pa.Table, marker: Marker | None = None) -> bool:
        """Upsert bars: a (symbol, date) already stored is replaced, so late corrections heal."""
        rows = BARS.conform(rows)
        with self.session() as session:
            if not self._claim(session, marker):
                return False
            if rows.num_rows:
                session.lock_symbols("bars", pc_unique_symbols(rows))
                session.stage("incoming_bars", rows, BARS)
                session.execute(
                    "DELETE FROM bars WHERE EXISTS (SELECT 1 FROM incoming_bars i "
                    "WHERE i.symbol = bars.symbol AND i.date = bars.date)"
                )
                session.insert(BARS, rows)
                changes.record(session, "bars", pc_unique_symbols(rows), *_date_extent(rows), utcnow())
            self._touch(session, marker)
        return True

    def last_bar_dates(self, symbols: Sequence[str]) -> dict[str, dt.date]:
        """Each symbol's latest stored bar date (symbols without bars are left out)."""
        return self._bar_dates("max", symbols)

    def first_bar_dates(self, symbols: Sequence[str]) -> dict[str, dt.date]:
        """Each symbol's earliest stored bar date (symbols without bars are left out)."""
        return self._bar_dates("min", symbols)

    def _bar_dates(self, aggregate: str, symbols: Sequence[str]) -> dict[str, dt.date]:
        with self.session(write=False) as session:
            rows = session.fetch(f"SELECT symbol, {aggregate}(date) FROM bars WHERE symbol = ANY(:s) GROUP BY symbol",
                                 {"s": list(symbols)})
        return {r[0]: r[1] for r in rows}

    def bar_symbols(self) -> list[str]:
        """Every symbol with at least one bar (active or not), sorted."""
        with self.session(write=False) as session:
            return [r[0] for r in session.fetch("SELECT DISTINCT symbol FROM bars ORDER BY symbol")]

    def last_bar_date(self) -> dt.date | None:
        """The latest stored bar's date (None: no bar), without counting the bars."""
        with self.session(write=False) as session:
            return session.fetch("SELECT max(date) FROM bars")[0][0]

    def bars_extent(self) -> tuple[dt.date | None, dt.date | None, int]:
        with self.session(write=False) as session:
            first, last, count = session.fetch("SELECT min(date), max(date), count(*) FROM bars")[0]
        return first, last, int(count)

    def read_bars(
        self,
        symbols: Sequence[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
        warmup_bars: int = 0,
        schema: pa.Schema = BARS.schema,
    ) -> pa.Table:
        """Bars sorted by symbol and date, with the columns of `schema` (`BAR_SNAPSHOT`: what the
        indicators read). With `warmup_bars`, each symbol's window also reaches back exactly that
        many of its own bars before `start` (history the recursive indicators need)."""
        return self.read_bars_many([(symbols, start, warmup_bars)], end=end, schema=schema)[0]

    def read_bars_many(
        self, reads: Sequence[tuple[Sequence[str] | None, dt.date | None, int]], *, end: dt.date | None = None,
        schema: pa.Schema = BARS.schema,
    ) -> list[pa.Table]:
        """`read_bars(symbols, start, end, warmup_bars)` of each (symbols, start, warmup_bars), all
        from one snapshot of the store: a write committed meanwhile shows in every one or in none
        (a chunk reading its symbols from several starts replaces their rows up to one last date)."""
        with self.session(write=False) as session:
            self._repeatable_reads(session)
            return [self._read_bars_in(session, symbols, start, end, warmup_bars, schema)
                    for symbols, start, warmup_bars in reads]

    def _read_bars_in(self, session: Session, symbols: Sequence[str] | None, start: dt.date | None,
                      end: dt.date | None, warmup_bars: int, schema: pa.Schema) -> pa.Table:
        if start is None or warmup_bars <= 0:
            return self._read_bar_range(session, symbols, start, end, schema)
        window = self._read_bar_range(session, symbols, _warmup_window_start(start, warmup_bars), end, schema)
        trimmed, short = _trim_warmup(window, start, warmup_bars)
        if short:
            trimmed = pa.concat_tables([_drop_symbols(trimmed, short), self._read_bar_range(session, short, None, end, schema)])
            trimmed = trimmed.sort_by([("symbol", "ascending"), ("date", "ascending")])
        return trimmed

    def export_bars(self, path, symbols: Sequence[str], start: dt.date | None, warmup_bars: int = 0) -> int:
        """Write to a Parquet file the (symbol, date, close, volume) rows that
        `read_bars(symbols, start, warmup_bars=warmup_bars)` returns, without bringing them through
        Python rows: the snapshot an engine computing elsewhere (Spark) reads. Returns the row count."""
        import pyarrow.parquet as pq

        sql, params = self._bar_export_query(symbols, start, warmup_bars)
        with self.session(write=False) as session:
            rows = session.fetch_arrow(sql, params, schema=BAR_SNAPSHOT)
        pq.write_table(rows, path, **PARQUET_OPTIONS)
        return rows.num_rows

    def _read_bar_range(self, session: Session, symbols: Sequence[str] | None, start: dt.date | None,
                        end: dt.date | None, schema: pa.Schema) -> pa.Table:
        where, params = self._range_filter(symbols, start, end)
        sql = f"SELECT {', '.join(schema.names)} FROM bars{where} ORDER BY symbol, date"
        return session.fetch_arrow(sql, params, schema=schema)

    # -- indicators -----------------------------------------------------------------------------
    def latest_indicator_dates(self, symbols: Sequence[str], before: dt.date) -> dict[str, dt.date]:
        params: dict[str, Any] = {"d": before}
        where = self._symbol_filter("symbol", symbols, params)
        with self.session(write=False) as session:
            rows = session.fetch(f"SELECT symbol, max(date) FROM indicators WHERE {where} AND date < :d GROUP BY symbol", params)
        return {r[0]: r[1] for r in rows}

    def replace_indicators(
        self, symbols: Sequence[str], start: dt.date, rows: pa.Table, marker: Marker | None = None,
        whole_symbols: Sequence[str] = (), end: dt.date | None = None, into: str | None = None,
    ) -> bool:
        """Replace the symbols' indicator rows from `start` (to `end`, the last date the caller read
        bars of) with the marker, in one transaction: readers see the old rows or the new ones,
        never neither. Rows after `end`, written meanwhile by another run from bars this caller
        never saw, stand. False if already completed.

        `into`: the build table of a run that replaces the whole table (`begin_build`); the rows
        go there, out of readers' sight until `finish_run` swaps it in, and the change log is
        told nothing yet. A write to the indicators table itself is made in every build table too."""
        rows = INDICATORS.conform(_stamped(rows))
        until = "" if end is None else " AND date <= :e"
        target = into or INDICATORS.name
        with self.session() as session:
            if not self._claim(session, marker):
                return False
            session.lock_symbols("indicators", sorted(set(symbols) | set(whole_symbols)))
            bound: dict[str, Any] = {} if end is None else {"e": end}
            params: dict[str, Any] = {"d": start, **bound}
            where = self._symbol_filter("symbol", symbols, params)
            deleted = [session.execute(f"DELETE FROM {target} WHERE {where} AND date >= :d{until}", params)]
            if whole_symbols:
                whole: dict[str, Any] = dict(bound)
                where = self._symbol_filter("symbol", whole_symbols, whole, "w")
                deleted.append(session.execute(f"DELETE FROM {target} WHERE {where}{until}", whole))
            if rows.num_rows:
                session.insert(dataclasses.replace(INDICATORS, name=target), rows)
                latest = _latest_per_symbol(rows, "avg_volume_30")
                if latest.num_rows:
                    # symbols.avg_volume_30 mirrors each symbol's latest average volume.
                    session.stage("latest_volume", latest, INDICATORS)
                    # ... unless a newer row (another run's) has the say.
                    # Rows between a symbol's latest new row and `end` were all just deleted: only
                    # rows after `end` can be newer, and saying so lets the store skip the rest.
                    session.execute(
                        "UPDATE symbols SET avg_volume_30 = l.avg_volume_30 FROM latest_volume l "
                        "WHERE symbols.symbol = l.symbol AND NOT EXISTS "
                        f"(SELECT 1 FROM indicators n WHERE n.symbol = l.symbol AND n.date > l.date{' AND n.date > :e' if end is not None else ''})",
                        bound,
                    )
            if into is None:
                # A run building aside swaps in its table whole: it must hold this write too.
                for build in self._builds_to_follow(session):
                    self._mirror(session, build, symbols, start, end)
                    if whole_symbols:
                        self._mirror(session, build, whole_symbols, None, end)
                # Whole-history symbols' rows reach back years: logged on their own, not widening the rest.
                self._record_indicator_change(session, symbols, start, end,
                                              _drop_symbols(rows, whole_symbols) if whole_symbols else rows)
                if whole_symbols:
                    changes.record(session, "indicators", whole_symbols, None, end, utcnow())
            self._touch(session, marker)
        self.replaced_since_vacuum[target] += sum(n for n in deleted if n and n > 0)
        return True

    # -- a whole-table rebuild, built aside -------------------------------------------------------
    # A rebuild that replaces every indicator row deletes and re-inserts all of them in place: on
    # PostgreSQL each chunk's inserts then meet the keys its DELETE left (uniqueness checks, index
    # growth) and the table needs VACUUMs to stay its size. Such a run writes into an empty table
    # of the same layout instead, which readers never see, and swaps it in when its last chunk is
    # done. Every other write of indicators meanwhile (a Daily, a restore) is made in that table
    # too (`_mirror`), so the swapped-in table holds it.
    def begin_build(self, plan_id: str, symbols: Sequence[str], start: dt.date) -> bool:
        """An empty build table for the chunks of run `plan_id` to write into, when the run replaces
        every stored indicator row (from on or before the first stored date, every symbol that has
        rows). False, and the run replaces rows in place, when it replaces less, when another run
        is building aside, when objects outside stockpipe depend on the table (`_build_blocker`), or
        on a store that replaces in place as well (`builds_aside`)."""
        if not self.builds_aside:
            return False
        name = _build_name(plan_id)
        with self.session() as session:
            # Writers mirror into the build tables they find under this lock, held to their commit:
            # a write this transaction cannot see is made in the new table too.
            session.lock(changes.LOCK)
            for table in self._build_tables(session):
                if table == name or self._abandoned_build(session, table):
                    # This run's, left by an attempt that died before storing its plan; or of a run
                    # that has no plan or is finished (its rows are not waited for).
                    log.info("%s: dropping %s, of no run under way", plan_id, table)
                    session.execute(f"DROP TABLE {table}")
                else:
                    log.info("%s replaces rows in place: %s is being built by another run", plan_id, table)
                    return False
            stored, first = self._indicator_extent(session)
            if not stored or first is None or first < start or not set(stored) <= set(symbols):
                return False
            blocker = self._build_blocker(session)
            if blocker:
                log.info("%s replaces rows in place, not in a table swapped in at the end: %s", plan_id, blocker)
                return False
            session.execute(dataclasses.replace(INDICATORS, name=name).ddl(declare_key=self.declares_key(INDICATORS)))
        log.info("%s replaces every indicator row: its chunks write into %s, swapped in at the end", plan_id, name)
        return True

    def build_table(self, plan_id: str) -> str | None:
        """The build table run `plan_id`'s chunks write into, if it has one (see `begin_build`): its
        existence is what says so, and whoever drops one forgets the run's chunks with it."""
        name = _build_name(plan_id)
        with self.session(write=False) as session:
            return name if name in self._build_tables(session) else None

    def _drop_build(self, session: Session, plan_id: str) -> None:
        """Drop run `plan_id`'s build table, if it has one; the caller forgets its chunks' markers."""
        session.execute(f"DROP TABLE IF EXISTS {_build_name(plan_id)}")

    def _abandoned_build(self, session: Session, table: str) -> bool:
        """Whether build table `table` belongs to no run still under way (no plan, or finished)."""
        return not any(_build_name(plan_id) == table and finished is None
                       for plan_id, finished, _ in self._run_states(session))

    def _run_states(self, session: Session) -> list[tuple[str, dt.datetime | None, dt.datetime | None]]:
        """Every planned run, with when it finished and when it was restored (None: not)."""
        return session.fetch("SELECT p.plan_id, r.finished_at, r.restored_at FROM run_plans p "
                             "LEFT JOIN run_reports r ON r.plan_id = p.plan_id")

    def _builds_to_follow(self, session: Session) -> list[str]:
        """The build tables a write of the indicators table must be made in too, found under the
        lock `begin_build` takes (held until commit)."""
        if not self.builds_aside:
            return []
        session.lock(changes.LOCK)
        return self._build_tables(session)

    def _mirror(self, session: Session, build: str, symbols: Sequence[str], start: dt.date | None,
                end: dt.date | None) -> None:
        """Make `build` hold what the indicators table holds for `symbols` between the dates."""
        where, params = self._range_filter(symbols, start, end)
        columns = ", ".join(INDICATORS.columns)
        session.execute(f"DELETE FROM {build}{where}", params)
        session.execute(f"INSERT INTO {build} ({columns}) SELECT {columns} FROM indicators{where}", params)

    def _swap_in(self, session: Session, plan_id: str, keep_replaced: bool) -> None:
        """Make run `plan_id`'s build table the indicators table, in the caller's transaction: the
        tables trade names, the views are bound to the new one, it gets the old one's settings, and
        the old one stays as the run's backup (`backup_table_name`; dropped if not `keep_replaced`,
        a run planned with a backup file)."""
        build = _build_name(plan_id)
        self._lock_for_swap(session)
        blocker = self._build_blocker(session)  # something of the users' may have come meanwhile
        if blocker:
            raise _CannotSwap(blocker)
        self._drop_backup_tables(session)
        retired = backup_table_name(plan_id)
        session.execute(f"ALTER TABLE indicators RENAME TO {retired}")
        session.execute(f"ALTER TABLE {build} RENAME TO indicators")
        for view in VIEWS:
            session.execute(view.ddl())  # bound to the new table where a view follows the old one
        self._carry_table_settings(session, retired, build)
        if not keep_replaced:
            session.execute(f"DROP TABLE {retired}")
        # Every row changed: a replica is exported whole next time.
        changes.record(session, INDICATORS.name, None, None, None, utcnow())

    # A run built aside has no backup file: the table it replaces is its backup, kept by the swap
    # (a rename, where exporting ~6M rows took longer than the chunks writing them). Until the swap
    # the indicators table itself holds the rows the run replaces. A run whose build is dropped
    # instead (a restore, a swap that gave up) writes in place when it runs again: its chunks copy
    # the indicators table to its backup table first (`keep_as_backup`). A swap drops the backup
    # tables of finished runs (one is kept: the newest), never that of a run still to be redone
    # (unfinished, or restored); `stockpipe cleanup` drops one after `backups_days`.
    def keep_as_backup(self, plan_id: str) -> bool:
        """Copy the indicators table to run `plan_id`'s backup table, unless it has one (True if
        it copied), before the run writes in place."""
        name = backup_table_name(plan_id)
        with self.session() as session:
            session.lock(f"backup/{plan_id}")  # the run's other chunks wait, then find it
            if name in self._backup_tables(session):
                return False
            log.info("%s writes in place from now on: copying the indicators table to %s, its backup", plan_id, name)
            session.execute(f"CREATE TABLE {name} AS SELECT * FROM indicators")
            self._revoke_from_others(session, name)
        return True

    def _drop_backup_tables(self, session: Session) -> None:
        """Drop the backup tables of finished runs (and of runs the store no longer knows)."""
        needed = {backup_table_name(plan_id) for plan_id, finished, restored in self._run_states(session)
                  if finished is None or restored is not None}
        for table in self._backup_tables(session):
            if table not in needed:
                log.info("dropping %s, the backup table of an earlier finished run (one is kept)", table)
                session.execute(f"DROP TABLE {table}")

    def has_backup_table(self, plan_id: str) -> bool:
        """Whether run `plan_id`'s backup table (see `_swap_in`) is in the store."""
        with self.session(write=False) as session:
            return backup_table_name(plan_id) in self._backup_tables(session)

    def backup_table_bytes(self, plan_id: str) -> int:
        """The disk run `plan_id`'s backup table takes (0 without one, or where the store cannot tell)."""
        return 0

    def drop_backup_table(self, plan_id: str) -> bool:
        """Drop run `plan_id`'s backup table; False if it had none."""
        name = backup_table_name(plan_id)
        with self.session() as session:
            if name not in self._backup_tables(session):
                return False
            session.execute(f"DROP TABLE {name}")
        return True

    def restore_from_backup_table(self, plan_id: str, symbols: Sequence[str], start: dt.date,
                                  end: dt.date | None) -> tuple[int, int]:
        """Undo run `plan_id`, built aside, in one transaction, as `restore_indicators` does with a
        backup file: a run still building drops its build (the indicators table never held its
        rows); otherwise the rows of its backup table are put back over the range it replaced, and
        the table is dropped (a rerun keeps what it replaces anew). Its markers are forgotten, and it
        is marked restored. (Rows put back, markers forgotten.)"""
        name = backup_table_name(plan_id)
        restored = 0
        with self.session() as session:
            session.lock(markers.rebuild_from(plan_id))  # after a swap committing now, or before it: never across it
            session.lock_symbols("indicators", list(symbols))
            state = session.fetch("SELECT finished_at, restored_at FROM run_reports WHERE plan_id = :p", {"p": plan_id})
            swapped = bool(state) and state[0][0] is not None and state[0][1] is None
            if _build_name(plan_id) in self._build_tables(session):
                self._drop_build(session, plan_id)
            elif name in self._backup_tables(session):
                where, params = self._range_filter(symbols, start, end)
                columns = ", ".join(INDICATORS.columns)
                session.execute(f"DELETE FROM indicators{where}", params)
                restored = session.execute(
                    f"INSERT INTO indicators ({columns}) SELECT {columns} FROM {name}{where}", params) or 0
                for build in self._builds_to_follow(session):
                    self._mirror(session, build, symbols, start, end)
                self._record_indicator_change(session, symbols, start, end, INDICATORS.schema.empty_table())
                session.execute(f"DROP TABLE {name}")
            elif swapped:
                raise StoreError(
                    f"run {plan_id}: its backup table {name} is gone (a later full rebuild's swap drops a finished "
                    "run's, keeping one, and `stockpipe cleanup` drops it after backups_days): nothing to put back, "
                    "nothing changed")
            # Otherwise none of the run's rows are stored (undone already, or never swapped in).
            forgotten = self._mark_undone(session, plan_id)
        return int(restored), forgotten

    def _forget_run_markers(self, session: Session, plan_id: str) -> int:
        """Delete run `plan_id`'s chunk markers and its final marker (how many, where the store tells)."""
        prefix = markers.chunks_of(plan_id)
        return session.execute("DELETE FROM task_markers WHERE substr(marker_id, 1, :n) = :p OR marker_id = :f",
                               {"n": len(prefix), "p": prefix, "f": markers.rebuild_from(plan_id)}) or 0

    def _mark_undone(self, session: Session, plan_id: str) -> int:
        """A restore's end: the run's markers forgotten (those written since its caller listed them
        too), its report marked restored; how many markers went."""
        forgotten = self._forget_run_markers(session, plan_id)
        session.execute("UPDATE run_reports SET restored_at = :t WHERE plan_id = :p", {"p": plan_id, "t": utcnow()})
        return forgotten

    def _build_tables(self, session: Session) -> list[str]:
        """The build tables in the store, sorted."""
        return [t for t in self._tables_named(session, BUILD_PREFIX) if _RUN_TABLE.fullmatch(t)]

    def _backup_tables(self, session: Session) -> list[str]:
        """The backup tables in the store (see `_swap_in`), sorted: only names stockpipe gives, so
        a table of the users' named alike (indicators_backup_2025) is never taken for one."""
        return [t for t in self._tables_named(session, BACKUP_PREFIX) if _RUN_TABLE.fullmatch(t)]

    def _tables_named(self, session: Session, prefix: str) -> list[str]:
        """The tables whose names start with `prefix`, sorted."""
        return sorted(r[0] for r in session.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND starts_with(CAST(table_name AS VARCHAR), :p)" + self._schema_filter(), {"p": prefix}))

    def _indicator_extent(self, session: Session) -> tuple[list[str], dt.date | None]:
        """The symbols that have indicator rows, and the first date of any."""
        symbols = [r[0] for r in session.fetch("SELECT DISTINCT symbol FROM indicators")]
        first = session.fetch("SELECT min(date) FROM indicators")[0][0]
        return symbols, first

    def _build_blocker(self, session: Session) -> str | None:
        """Why the indicators table must not be swapped for another (objects of the database's
        users that depend on it), or None."""
        return None

    def _lock_for_swap(self, session: Session) -> None:
        """Keep readers and writers of the indicators table out until the swap commits."""

    def _carry_table_settings(self, session: Session, old: str, new_name_before: str) -> None:
        """Give the swapped-in table what the old one had beyond its rows (grants, key names)."""

    def _revoke_from_others(self, session: Session, table: str) -> None:
        """Leave `table` readable by its owner only (a backup: nobody's to read, nothing to keep a role)."""

    def change_mark(self) -> changes.Change | None:
        """The change log's newest entry (None: an empty log): what `changes_since` counts from."""
        with self.session(write=False) as session:
            return changes.newest_change(session)

    def changes_since(self, mark: changes.Change | None) -> list[changes.Change] | None:
        """The writes logged after `mark` (every logged one for None), or None when the store no
        longer holds `mark` as it was (restored or replaced meanwhile)."""
        with self.session(write=False) as session:
            if mark is None:
                return [changes.Change.of(r) for r in session.fetch(
                    f"SELECT {changes.COLUMNS} FROM store_changes ORDER BY change_id")]
            return changes.changes_since(session, mark)

    def read_indicators(
        self, symbols: Sequence[str] | None = None, start: dt.date | None = None, end: dt.date | None = None
    ) -> pa.Table:
        where, params = self._range_filter(symbols, start, end)
        with self.session(write=False) as session:
            return session.fetch_arrow(
                f"SELECT * FROM indicators{where} ORDER BY symbol, date", params, schema=INDICATORS.schema
            )

    def export_indicators(self, path, symbols: Sequence[str], start: dt.date, metadata: dict[str, str],
                          end: dt.date | None = None, batch_symbols: int = 100) -> int:
        """Write the symbols' indicator rows from `start` (to `end`) to a Parquet file, streamed, with
        key-value `metadata` plus the row count and checksum (`stockpipe.rows`, `stockpipe.checksum`)
        a reader verifies the file against. The file is synced to disk before this returns.

        Rows go over `batch_symbols` symbols at a time (in sorted symbol ranges), all from one
        snapshot: memory is bounded by a batch, not by the rows replaced (a full rebuild's backup
        held in memory at once took 2 GB for 6M rows). Within a batch they come in the order the
        store keeps them: a restore needs no order, and sorting each batch cost PostgreSQL a fifth
        of a full rebuild's backup (14 s -> 11 s for 6.1M rows, with one batch per 100 symbols
        instead of one per block the CSV reader parsed)."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow.parquet as pq

        from stockpipe.store.checksum import batch_checksum

        ordered = sorted(set(symbols))
        count, checksum = 0, 0
        queries = []
        for first in range(0, len(ordered), batch_symbols):
            where, params = self._range_filter(ordered[first:first + batch_symbols], start, end)
            queries.append((f"SELECT * FROM indicators{where}", params))
        # A thread sums a batch's checksum while this one writes it: both release the GIL, and
        # one after the other they were half of a DuckDB backup's time. One batch in flight at most.
        with self.session(write=False) as session, open(path, "wb") as sink, \
                ThreadPoolExecutor(1, thread_name_prefix="stockpipe-checksum") as pool:
            self._snapshot(session)
            writer = pq.ParquetWriter(sink, INDICATORS.schema, **PARQUET_OPTIONS)
            summing = None
            try:
                for batch in session.fetch_each(queries, schema=INDICATORS.schema):
                    if summing is not None:
                        checksum += summing.result()
                    summing = pool.submit(batch_checksum, batch)
                    writer.write_batch(batch)
                    count += batch.num_rows
                if summing is not None:
                    checksum += summing.result()
                writer.add_key_value_metadata({**metadata, "stockpipe.rows": str(count),
                                               "stockpipe.checksum": format(checksum % (1 << 64), "016x")})
            finally:
                writer.close()
            sink.flush()
            os.fsync(sink.fileno())
        return count

    def indicator_summary(self, symbols: Sequence[str], start: dt.date) -> dict[str, Any]:
        """What a rebuild from `start` would replace: symbols, rows and date range."""
        with self.session(write=False) as session:
            # Per symbol first: count(DISTINCT) sorted all 6M rows of a full rebuild on PostgreSQL (2 s,
            # against 0.7 s for the grouping).
            row = session.fetch(
                "SELECT count(*), sum(n), min(lo), max(hi) FROM (SELECT symbol, count(*) AS n, "
                "min(date) AS lo, max(date) AS hi FROM indicators WHERE symbol = ANY(:s) AND date >= :d "
                "GROUP BY symbol) per_symbol",
                {"s": list(symbols), "d": start},
            )[0]
        return {"symbols": int(row[0]), "rows": int(row[1] or 0), "first_date": row[2], "last_date": row[3]}

    def restore_indicators(
        self, rows: pa.Table | Iterable[pa.RecordBatch], symbols: Sequence[str], start: dt.date,
        forget_markers: Sequence[str] = (), end: dt.date | None = None, undone_run: str | None = None,
    ) -> int:
        """Put back saved rows (a table, or batches streamed from a backup) for `symbols` from `start`
        to `end` (the range that was saved), and forget the markers of the run that replaced them (so
        rerunning that run redoes it) and mark that run's report restored, in one transaction. Rows after `end` were computed from bars
        the backup never covered and stand."""
        batches = rows.to_batches() if isinstance(rows, pa.Table) else rows
        restored = 0
        with self.session() as session:
            if undone_run is not None:
                session.lock(markers.rebuild_from(undone_run))  # never across the run's finish
            session.lock_symbols("indicators", list(symbols))
            session.execute(
                "DELETE FROM indicators WHERE symbol = ANY(:s) AND date >= :d" + ("" if end is None else " AND date <= :e"),
                {"s": list(symbols), "d": start, **({} if end is None else {"e": end})},
            )
            touched: set[str] = set()
            low = high = None
            for batch in batches:
                if batch.num_rows:
                    table = INDICATORS.conform(pa.Table.from_batches([batch]))
                    restored += session.insert(INDICATORS, table)
                    touched.update(pc_unique_symbols(table))
                    first, last = _date_extent(table)
                    low = first if low is None else min(low, first)
                    high = last if high is None else max(high, last)
            if undone_run is not None:
                self._drop_build(session, undone_run)  # its chunks are forgotten: they redo in place
            window = (sorted(set(symbols) | touched), start if low is None else min(start, low),
                      end if end is None or high is None else max(end, high))
            for build in self._builds_to_follow(session):
                self._mirror(session, build, *window)
            # One change for the whole restore, over the rows of every batch.
            self._record_indicator_change(session, *window, INDICATORS.schema.empty_table())
            if forget_markers:
                session.execute("DELETE FROM task_markers WHERE marker_id = ANY(:ids)", {"ids": list(forget_markers)})
            if undone_run is not None:
                self._mark_undone(session, undone_run)
        return restored

    # -- watchlist ------------------------------------------------------------------------------
    def scan_frame(self, day: dt.date) -> pa.Table:
        """One date's bars, indicators (as of that date) and symbol facts, for the watchlist rules."""
        with self.session(write=False) as session:
            return session.fetch_arrow(
                "SELECT b.symbol, s.name, s.sector, s.market_cap, s.is_etf, b.open, b.high, b.low, b.close, b.volume, "
                "i.sma_20, i.sma_50, i.rsi_14, i.macd, i.macd_signal, i.macd_hist, i.bb_upper, i.bb_middle, "
                "i.bb_lower, i.bb_position, i.avg_volume_30 "
                "FROM bars b JOIN indicators i ON i.symbol = b.symbol AND i.date = b.date "
                "JOIN symbols s ON s.symbol = b.symbol WHERE b.date = :d AND s.is_active ORDER BY b.symbol",
                {"d": day},
            )

    def replace_watchlist(self, day: dt.date, rows: pa.Table, marker: Marker | None = None) -> bool:
        """That date's watchlist rows replaced, with the marker, in one transaction."""
        rows = DAILY_WATCHLIST.conform(rows)
        with self.session() as session:
            if not self._claim(session, marker):
                return False
            session.execute("DELETE FROM daily_watchlist WHERE scan_date = :d", {"d": day})
            if rows.num_rows:
                session.insert(DAILY_WATCHLIST, rows)
            self._touch(session, marker)
        return True

    def read_watchlist(self, since: dt.date | None = None, until: dt.date | None = None) -> pa.Table:
        where, params = range_filter(None, since, until, date_column="scan_date")
        with self.session(write=False) as session:
            return session.fetch_arrow(
                f"SELECT * FROM daily_watchlist{where} ORDER BY scan_date, priority, symbol", params,
                schema=DAILY_WATCHLIST.schema,
            )

    def latest_watchlist_date(self) -> dt.date | None:
        """The latest date with a watchlist row (None: none yet)."""
        with self.session(write=False) as session:
            return session.fetch("SELECT max(scan_date) FROM daily_watchlist")[0][0]

    # -- imports --------------------------------------------------------------------------------
    def add_rows(self, table: Table, rows: pa.Table, marker: Marker | None = None,
                 key: Sequence[str] | None = None) -> int | None:
        """Insert the rows whose `key` (default: the table's) is not stored yet, keeping what is
        stored, with the marker in one transaction. Returns how many were added (also put in the
        marker's stats as rows_added / rows_kept), or None if the marker was already completed."""
        rows = table.conform(rows)
        key = tuple(key or table.key)
        with self.session() as session:
            if not self._claim(session, marker):
                return None
            added = 0
            if rows.num_rows:
                session.stage("incoming_rows", rows, table)
                match = " AND ".join(f"t.{k} = i.{k}" for k in key)
                new = f"FROM incoming_rows i WHERE NOT EXISTS (SELECT 1 FROM {table.name} t WHERE {match})"
                added = int(session.fetch(f"SELECT count(*) {new}")[0][0])
                session.execute(
                    f"INSERT INTO {table.name} ({', '.join(table.columns)}) "
                    f"SELECT {', '.join('i.' + c for c in table.columns)} {new}"
                )
                if added and table.name in BULK_TABLES:
                    changes.record(session, table.name, pc_unique_symbols(rows), *_date_extent(rows), utcnow())
            if marker is not None:
                stats = {**marker.stats, "rows_added": added, "rows_kept": rows.num_rows - added}
                self._touch(session, Marker(marker.marker_id, marker.task_family, marker.params, stats))
        return added

    def _record_indicator_change(self, session: Session, symbols: Sequence[str], start: dt.date,
                                 end: dt.date | None, rows: pa.Table) -> None:
        """Log the replaced range: the symbols from `start` (to `end`), widened to the rows written."""
        touched = set(symbols)
        first, last = start, end
        if rows.num_rows:
            touched.update(pc_unique_symbols(rows))
            low, high = _date_extent(rows)
            first = min(first, low)
            last = None if last is None else max(last, high)
        if touched:
            changes.record(session, "indicators", sorted(touched), first, last, utcnow())

    def fill_empty(self, rows_of: Callable[[Table], Iterable[pa.Table]], origin: str) -> dict[str, int]:
        """Fill an empty store (a damaged one moved aside) with every table's rows, `rows_of(table)`
        from `origin` (a replica), in one transaction: a failed fill leaves the store empty. A store
        holding any row is refused. Returns the rows written per table."""
        counts: dict[str, int] = {}
        self.ensure_schema()  # a new, empty file gets its tables (with their keys) first
        with self.session() as session:
            for table in TABLES:
                stored = session.fetch(f"SELECT count(*) FROM {table.name}")[0][0]
                if stored:
                    raise StoreError(
                        f"{self.redacted_url()} is not empty ({table.name} has {stored:,} rows): a replica is restored "
                        f"into an empty store; move the damaged one aside first")
            for table in TABLES:
                counts[table.name] = 0
                for rows in rows_of(table):
                    counts[table.name] += session.insert(table, table.conform(rows))
                log.info("restored %s: %d rows from %s", table.name, counts[table.name], origin)
            # The filled store's log no longer describes its rows since any replica's mark.
            self.record_restore(session)
        return counts

    # -- replica --------------------------------------------------------------------------------
    def record_restore(self, session: Session) -> None:
        """Log, in a restore's transaction, that every table changed: the next replica is exported whole."""
        changes.record(session, changes.EVERYTHING, None, None, None, utcnow())

    def replica_tables(self) -> list[Table]:
        return [SCHEMA_VERSION_TABLE, *TABLES]

    def export_replica(self, path, batch_symbols: int = 100) -> dict[str, int]:
        """Copy every table into a new DuckDB file from one consistent snapshot; returns row counts.
        Bulk tables go over in symbol ranges so memory stays bounded by a batch, not the table."""
        counts: dict[str, int] = {}
        target = _replica_target(path)
        try:
            with self.session(write=False) as session:
                self._snapshot(session)
                for table in self.replica_tables():
                    target.execute(table.ddl(declare_key=False))
                    counts[table.name] = 0
                    if table.name in BULK_TABLES:
                        symbols = [r[0] for r in session.fetch(f"SELECT DISTINCT symbol FROM {table.name} ORDER BY 1")]
                        ranges = [symbols[i : i + batch_symbols] for i in range(0, len(symbols), batch_symbols)]
                        queries = [(f"SELECT * FROM {table.name} WHERE symbol BETWEEN :lo AND :hi", {"lo": r[0], "hi": r[-1]})
                                   for r in ranges]
                    else:
                        queries = [(f"SELECT * FROM {table.name}", {})]
                    for sql, params in queries:
                        rows = session.fetch_arrow(sql, params, schema=table.schema)
                        target.register("_rows", rows)
                        target.execute(f"INSERT INTO {table.name} SELECT * FROM _rows")
                        target.unregister("_rows")
                        counts[table.name] += rows.num_rows
            target.execute("CHECKPOINT")
        finally:
            target.close()
        return counts

    def reclaim_during_run(self, table: str) -> None:
        """Between a run's writes: make the space of rows replaced so far reusable once they are a
        good part of `table`, so a rebuild replacing most of it does not grow it by all of them (a
        no-op where the store needs none)."""

    def prune_changes(self, before: dt.datetime) -> int:
        """Drop change-log rows logged before `before` (the newest always stays); how many went."""
        with self.session() as session:
            return changes.prune(session, before)

    def reclaim(self, table: str, replaced_rows: int) -> None:
        """After a run replaced `replaced_rows` rows of `table` (delete then insert): once the rows
        replaced since the last time are a good part of the table, make their space reusable and
        refresh the planner's statistics, so repeated rebuilds do not grow the database without
        bound (a no-op where the store needs neither)."""

    def _replica_copies(self, session, mark: changes.Change) -> tuple[list[tuple[Table, changes.Window | None]] | None, str]:
        """What a replica holding the changes up to `mark` needs copied, in `session`'s snapshot:
        every small table whole (window None) and the bulk tables' changed windows; or None and why
        the change log cannot tell."""
        since = changes.changes_since(session, mark)
        if since is None:
            return None, f"the store does not hold the previous replica's newest change {mark.change_id} (restored or replaced since?)"
        found, why = changes.windows(since)
        if found is None:
            return None, why
        tables = {table.name: table for table in self.replica_tables()}
        copies: list[tuple[Table, changes.Window | None]] = [(t, None) for t in tables.values() if t.name not in BULK_TABLES]
        return copies + [(tables[window.table], window) for window in found], ""

    def update_replica(self, path, mark: changes.Change) -> tuple[dict[str, int] | None, str]:
        """Bring `path`, a writable copy of a replica holding the store's changes up to `mark`, up
        to date from one consistent snapshot: small tables copied whole, bulk tables only where
        later changes touched them (changes.windows). Returns the store's row counts in that
        snapshot, or None and why the change log cannot tell what changed (then export in full)."""
        target = _replica_target(path)
        try:
            with self.session(write=False) as session:
                self._snapshot(session)
                copies, why = self._replica_copies(session, mark)
                if copies is None:
                    return None, why
                target.execute("BEGIN TRANSACTION")
                for table, window in copies:
                    columns = ", ".join(table.columns)
                    where = "" if window is None else " WHERE " + window.where()
                    params = {} if window is None else window.params
                    target.execute(translate_placeholders(f"DELETE FROM {table.name}{where}", "dollar"), params)
                    query = (f"SELECT {columns} FROM {table.name}" if window is None
                             else self._window_query(table, columns, window.where(self.codepoint_collation)))
                    for batch in session.fetch_batches(query, params, schema=table.schema):
                        target.register("_rows", batch)
                        target.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM _rows")
                        target.unregister("_rows")
                counts = {t.name: int(session.fetch(f"SELECT count(*) FROM {t.name}")[0][0]) for t in self.replica_tables()}
                target.execute("COMMIT")
            target.execute("CHECKPOINT")
        finally:
            target.close()
        return counts, ""

    def _window_query(self, table: Table, columns: str, where: str) -> str:
        """The rows of a bulk table a change window covers."""
        return f"SELECT {columns} FROM {table.name} WHERE {where}"

    def _snapshot(self, session: Session) -> None:
        """Make the session's reads one consistent snapshot (a no-op where they already are)."""

    def _repeatable_reads(self, session: Session) -> None:
        """Make the session's reads of bars one snapshot (a no-op where a transaction is one)."""

    # -- reports --------------------------------------------------------------------------------
    def query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        """A read-only query for reports (`:name` placeholders)."""
        with self.session(write=False) as session:
            return session.fetch_arrow(sql, params or {})

    # -- integrity --------------------------------------------------------------------------------
    def check_integrity(self) -> IntegrityReport:
        """Read every value of every table in one read-only transaction (a full read makes the
        database verify every stored block it holds), and count duplicate keys. Never creates or
        changes anything; raises IntegrityError naming the table that cannot be read."""
        report = IntegrityReport()
        table = None
        try:
            with self._open_session(False) as session:
                report.storage.update(self._storage_facts(session))
                keys = {t.name: t.key for t in (SCHEMA_VERSION_TABLE, *TABLES)}
                # A rebuild's build table is no part of the data yet, a backup table no longer is, and
                # a swap may drop either meanwhile.
                names = [r[0] for r in session.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
                    + self._schema_filter() + " ORDER BY table_name") if not _RUN_TABLE.fullmatch(r[0])]
                missing = sorted(set(keys) - set(names))
                if missing:
                    report.problems.append(f"missing table(s) {', '.join(missing)}: run `stockpipe init-db`")
                for table in names:
                    columns = [r[0] for r in session.fetch(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = :t"
                        + self._schema_filter() + " ORDER BY ordinal_position", {"t": table})]
                    rows, checksum = session.fetch(self._full_scan_sql(table, columns))[0]
                    report.tables[table] = {"rows": int(rows), "checksum": int(checksum or 0)}
                    key = keys.get(table, ())
                    self._probe_key_index(session, table, key)
                    if key:
                        listed = ", ".join(key)
                        found = session.fetch(
                            f"SELECT count(*), sum(n), min(example) FROM (SELECT {listed}, count(*) AS n, "
                            f"CAST(concat_ws(' ', {listed}) AS VARCHAR) AS example "
                            f"FROM {table} GROUP BY {listed} HAVING count(*) > 1) d")[0]
                        if found[0]:
                            report.tables[table]["duplicate_keys"] = int(found[0])
                            report.problems.append(
                                f"{table}: {int(found[0]):,} duplicate ({listed}) key(s), {int(found[1]):,} rows "
                                f"(e.g. {found[2]})")
                table = None
        except IntegrityError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the table and its error are the report
            # The database's own words, not a wrapper's guess at the cause.
            cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
            where = f"table {table}" if table else "the database"
            raise IntegrityError(f"{self.redacted_url()}: reading {where} failed: {_one_line(cause)}", table,
                                 _one_line(cause)) from exc
        return report

    def _full_scan_sql(self, table: str, columns: Sequence[str]) -> str:
        """count(*) and a checksum over every column of every row."""
        return f"SELECT count(*), sum(hashtext(CAST(t AS text))) FROM {table} t"

    def _storage_facts(self, session: Session) -> dict[str, Any]:
        return {}

    def _probe_key_index(self, session: Session, table: str, key: Sequence[str]) -> None:
        """Look up the first and last key through the table's key index, where a scan would not read it."""
        if not key or not self.declares_key(next((t for t in TABLES if t.name == table), SCHEMA_VERSION_TABLE)):
            return
        order = ", ".join(key)
        for direction in ("ASC", "DESC"):
            found = session.fetch(f"SELECT {order} FROM {table} ORDER BY {order} {direction} LIMIT 1")
            if found:
                params = {f"k{i}": value for i, value in enumerate(found[0])}
                session.fetch(f"SELECT count(*) FROM {table} WHERE "
                              + " AND ".join(f"{column} = :k{i}" for i, column in enumerate(key)), params)

    def session_counts(self, start: dt.date, end: dt.date | None = None) -> pa.Table:
        """Per stored date from `start` (to `end`): symbols and rows of bars and of indicators
        (aggregated in the database: only one row per date comes back)."""
        where, params = range_filter(None, start, end)
        with self.session(write=False) as session:
            return session.fetch_arrow(
                "SELECT coalesce(b.date, i.date) AS date, coalesce(b.symbols, 0) AS bar_symbols, "
                "coalesce(b.n, 0) AS bar_rows, coalesce(i.symbols, 0) AS indicator_symbols, "
                "coalesce(i.n, 0) AS indicator_rows FROM "
                f"(SELECT date, count(DISTINCT symbol) AS symbols, count(*) AS n FROM bars{where} GROUP BY date) b "
                "FULL OUTER JOIN "
                f"(SELECT date, count(DISTINCT symbol) AS symbols, count(*) AS n FROM indicators{where} GROUP BY date) i "
                "ON b.date = i.date ORDER BY 1",
                params,
                schema=pa.schema([("date", pa.date32()), ("bar_symbols", pa.int64()), ("bar_rows", pa.int64()),
                                  ("indicator_symbols", pa.int64()), ("indicator_rows", pa.int64())]),
            )

    def missing_on(self, day: dt.date) -> dict[str, list[str]]:
        """Active symbols without a bar on `day`, and those with a bar but no indicator row."""
        with self.session(write=False) as session:
            no_bar = session.fetch(
                "SELECT s.symbol FROM symbols s WHERE s.is_active AND NOT EXISTS "
                "(SELECT 1 FROM bars b WHERE b.symbol = s.symbol AND b.date = :d) ORDER BY 1", {"d": day})
            no_indicator = session.fetch(
                "SELECT b.symbol FROM bars b JOIN symbols s ON s.symbol = b.symbol WHERE b.date = :d AND s.is_active "
                "AND NOT EXISTS (SELECT 1 FROM indicators i WHERE i.symbol = b.symbol AND i.date = :d) ORDER BY 1",
                {"d": day})
        return {"without_bars": [r[0] for r in no_bar], "without_indicators": [r[0] for r in no_indicator]}

    def nulls_despite_history(self, since: dt.date, first_valid: Mapping[str, int]) -> list[dict[str, Any]]:
        """Per date from `since` on which some symbol has an indicator NULL although it had enough bars
        for it (`first_valid`: indicator -> 0-based bar position of its first value): the date, how many
        such symbols, and per indicator how many of them lack it."""
        position = "(coalesce(p.n, 0) + r.k)"
        flags = {name: f"({position} >= {int(first)} AND i.{name} IS NULL)" for name, first in sorted(first_valid.items())}
        if not flags:
            return []
        with self.session(write=False) as session:
            return session.fetch_arrow(
                "WITH prior AS (SELECT symbol, count(*) AS n FROM bars WHERE date < :since GROUP BY symbol), "
                "recent AS (SELECT symbol, date, row_number() OVER (PARTITION BY symbol ORDER BY date) - 1 AS k "
                "FROM bars WHERE date >= :since) "
                "SELECT r.date AS date, count(*) AS symbols, "
                + ", ".join(f"sum(CASE WHEN {flag} THEN 1 ELSE 0 END) AS {name}" for name, flag in flags.items())
                + " FROM recent r LEFT JOIN prior p ON p.symbol = r.symbol "
                "JOIN indicators i ON i.symbol = r.symbol AND i.date = r.date "
                f"WHERE {' OR '.join(flags.values())} GROUP BY r.date",
                {"since": since},
            ).to_pylist()

    # -- task runs ------------------------------------------------------------------------------
    def record_task_run(self, run: Mapping[str, Any], with_attempt: bool = True) -> int | None:
        """Append one run of a task to `task_runs` (`run`: its columns but `attempt`, which is that
        task's earlier runs + 1, counted in the same statement). Returns the attempt written, or None
        without `with_attempt` (one query fewer)."""
        with self.session() as session:
            session.execute(
                "INSERT INTO task_runs (task_id, task_family, params, status, attempt, started_at, finished_at, "
                "duration_seconds, error, host) VALUES (:task_id, :task_family, :params, :status, "
                "(SELECT count(*) + 1 FROM task_runs WHERE task_id = :task_id), :started_at, :finished_at, "
                ":duration_seconds, :error, :host)",
                {c: run[c] for c in TASK_RUNS.columns if c != "attempt"},
            )
            if not with_attempt:
                return None
            return int(session.fetch("SELECT max(attempt) FROM task_runs WHERE task_id = :t", {"t": run["task_id"]})[0][0])

    def task_runs_of_day(self, day: dt.date) -> pa.Table:
        """The `task_runs` rows of one date's pipeline: tasks whose `date` parameter is `day`, and
        the chunks of that day's indicator plan (`daily-<day>`), oldest first."""
        with self.session(write=False) as session:
            return session.fetch_arrow(
                "SELECT * FROM task_runs WHERE (params LIKE :own AND task_family <> 'IndicatorChunk') "
                "OR params LIKE :chunk ORDER BY started_at, task_id",
                {"own": f'%"date": "{day}"%', "chunk": f'%"plan_id": "{markers.daily_plan_id(day)}"%'},
                schema=TASK_RUNS.schema,
            )

    def close(self) -> None:
        """Release pooled connections (a no-op for stores that hold none between operations)."""

    def release_if_waited_for(self) -> None:
        """Let go of a kept connection if another process waits for it (a no-op for stores that
        several processes write at once)."""

    def interrupt(self) -> None:
        """Ask the statements this process is running to stop, from any thread (a task's deadline
        expired while its main thread waits inside the database client, where no signal handler
        runs). A no-op for stores whose calls a signal already interrupts (DuckDB)."""


BAR_SNAPSHOT = pa.schema([BARS.schema.field(c) for c in ("symbol", "date", "close", "volume")])


# DuckDB keeps every block it wrote in its buffer pool, up to 80% of the machine's memory: a whole
# replica exported from PostgreSQL peaked at 1.8 GB. Written blocks are in the file; let them go.
REPLICA_WRITER_MEMORY = "256MB"


def _replica_target(path):
    """A DuckDB connection writing the replica file at `path`, its memory bounded."""
    import duckdb

    return duckdb.connect(str(path), config={"memory_limit": REPLICA_WRITER_MEMORY})


def _stamped(rows: pa.Table) -> pa.Table:
    """Indicator rows with `created_at` set to now: the time they were written, by the store."""
    if "created_at" in rows.column_names:
        rows = rows.drop_columns(["created_at"])
    return rows.append_column("created_at", pa.repeat(pa.scalar(utcnow(), pa.timestamp("us")), rows.num_rows))


def _date_extent(rows: pa.Table) -> tuple[dt.date, dt.date]:
    import pyarrow.compute as pc

    extent = pc.min_max(rows.column("date"))
    return extent["min"].as_py(), extent["max"].as_py()


def _warmup_window_start(start: dt.date, warmup: int) -> dt.date:
    # Sessions are at most 5 in 7 days, minus holidays: this window holds `warmup` sessions of any
    # exchange; symbols that traded less in it (halts, listings) are read in full.
    return start - dt.timedelta(days=warmup * 7 // 5 + 45)


def _bar_export_query(symbols: Sequence[str], start: dt.date | None, warmup: int, collate: str = "",
                      ranged: bool = True) -> tuple[str, dict[str, Any]]:
    """SQL selecting exactly what `read_bars(symbols, start, warmup_bars=warmup)` returns (see there
    and `_trim_warmup`): each symbol's last `warmup` bars before `start` and every bar from it, or
    the whole history of a symbol with fewer than `warmup` bars in the look-back window."""
    columns = "symbol, date, close, volume"
    if start is None or warmup <= 0:
        where, params = range_filter(symbols, start, None, collate=collate, ranged=ranged)
        return f"SELECT {columns} FROM bars{where}", params
    params: dict[str, Any] = {"d": start, "w": _warmup_window_start(start, warmup), "n": warmup}
    where = symbol_filter("symbol", symbols, params, collate=collate, ranged=ranged)
    # The window functions run over the look-back window only (~1.1 x warmup bars a symbol), not
    # the whole history; a symbol with fewer than `warmup` bars before `start` there is read in full.
    sql = (
        f"WITH win AS (SELECT {columns}, "
        "row_number() OVER (PARTITION BY symbol, date < :d ORDER BY date DESC) AS back, "
        "count(*) FILTER (WHERE date < :d) OVER (PARTITION BY symbol) AS before_in_window "
        f"FROM bars WHERE {where} AND date >= :w) "
        f"SELECT {columns} FROM win WHERE date >= :d OR back <= :n OR before_in_window < :n "
        f"UNION ALL SELECT {columns} FROM bars WHERE {where} AND date < :w "
        "AND symbol IN (SELECT symbol FROM win WHERE before_in_window < :n)"
    )
    return sql, params


def _json_object(text: str | None, marker_id: str, column: str) -> dict[str, Any]:
    """A marker's JSON column; garbage there is named and read as {"unreadable": why}, so one
    damaged marker never stops a rerun, `stockpipe status` or a restore."""
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        value = exc
    if isinstance(value, dict):
        return value
    why = f"marker {marker_id}: {column} is not a JSON object ({value})"
    log.warning("%s: ignored", why)
    return {"unreadable": why}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


BUILD_PREFIX = "indicators_build_"
BACKUP_PREFIX = "indicators_backup_"
_RUN_TABLE = re.compile(r"indicators_(build|backup)_[0-9a-f]{12}")  # a run's build or backup table


def _build_name(plan_id: str) -> str:
    """Run `plan_id`'s build table (see `Store.begin_build`)."""
    return f"{BUILD_PREFIX}{_run_hash(plan_id)}"


def backup_table_name(plan_id: str) -> str:
    """The table that keeps the rows run `plan_id` replaced, when it was built aside."""
    return f"{BACKUP_PREFIX}{_run_hash(plan_id)}"


def _run_hash(plan_id: str) -> str:
    import hashlib

    return hashlib.sha256(plan_id.encode("utf-8")).hexdigest()[:12]


def _trim_warmup(bars: pa.Table, start: dt.date, warmup: int) -> tuple[pa.Table, list[str]]:
    """Keep each symbol's last `warmup` bars before `start` and everything from `start`; name the
    symbols with fewer than `warmup` bars before `start` in the window."""
    import numpy as np
    import pyarrow.compute as pc

    from stockpipe.indicators.table import symbol_runs

    if bars.num_rows == 0:
        return bars, []
    names, starts, ends = symbol_runs(bars.column("symbol"))
    lengths = ends - starts
    before = pc.less(bars.column("date"), pa.scalar(start, pa.date32())).to_numpy(zero_copy_only=False)
    before_counts = np.add.reduceat(before.astype(np.int64), starts)
    short = [names[i] for i in np.flatnonzero(before_counts < warmup)]
    keep_from = starts + np.maximum(before_counts - warmup, 0)
    position = np.arange(bars.num_rows)
    keep = position >= np.repeat(keep_from, lengths)
    return bars.filter(pa.array(keep)), short


def _drop_symbols(bars: pa.Table, symbols: Sequence[str]) -> pa.Table:
    import pyarrow.compute as pc

    return bars.filter(pc.invert(pc.is_in(bars.column("symbol"), pa.array(list(symbols), pa.string()))))


def _latest_per_symbol(rows: pa.Table, column: str) -> pa.Table:
    """The last row's `column` of each symbol (rows sorted by symbol, date) as (symbol, date, column)."""
    import numpy as np
    import pyarrow.compute as pc

    symbols = rows.column("symbol")
    if rows.num_rows == 0:
        return rows.select(["symbol", "date", column])
    ends = pc.run_end_encode(symbols.combine_chunks()).run_ends.to_numpy() - 1
    return rows.take(pa.array(np.asarray(ends, dtype=np.int64))).select(["symbol", "date", column])


def pc_unique_symbols(rows: pa.Table) -> list[str]:
    import pyarrow.compute as pc

    return sorted(pc.unique(rows.column("symbol")).to_pylist())


def range_filter(
    symbols: Sequence[str] | None, start: dt.date | None, end: dt.date | None, date_column: str = "date",
    collate: str = "", ranged: bool = True,
) -> tuple[str, dict[str, Any]]:
    """` WHERE ...` (or "") and its parameters for optional symbols and an inclusive date range."""
    filters: list[str] = []
    params: dict[str, Any] = {}
    if symbols is not None:
        filters.append(symbol_filter("symbol", symbols, params, collate=collate, ranged=ranged))
    if start is not None:
        filters.append(f"{date_column} >= :start")
        params["start"] = start
    if end is not None:
        filters.append(f"{date_column} <= :end")
        params["end"] = end
    return (" WHERE " + " AND ".join(filters)) if filters else "", params


def symbol_filter(column: str, symbols: Sequence[str], params: dict[str, Any], name: str = "s", collate: str = "",
                  ranged: bool = True) -> str:
    """`column = ANY(list)`, plus (`ranged`) the list's range so a store can skip blocks of other
    symbols (chunks are ranges of sorted symbols, and bulk tables are written in symbol order). The
    range's ends are Python's code-point order: `collate` makes the store compare the same way (see
    `Store.codepoint_collation`)."""
    ordered = sorted(symbols)
    if not ordered:
        return "FALSE"
    params[name] = ordered
    if not ranged:
        return f"{column} = ANY(:{name})"
    params[f"{name}_lo"], params[f"{name}_hi"] = ordered[0], ordered[-1]
    return f"{column}{collate} BETWEEN :{name}_lo AND :{name}_hi AND {column} = ANY(:{name})"


def translate_placeholders(sql: str, style: str) -> str:
    """`:name` -> `$name` (DuckDB) or `%(name)s` (psycopg2), outside quoted literals."""
    template = "${}" if style == "dollar" else "%({})s"
    return _PLACEHOLDER.sub(lambda m: template.format(m[1]) if m[1] else m[0], sql)
