"""DuckDB store: the embedded default.

DuckDB lets one process at a time open a file for writing, and Luigi runs each task in a worker
process of its own. Every connection is therefore opened under an advisory file lock
(`<file>.lock`): shared for reads (read-only connections may coexist), exclusive for writes, so a
worker waits its turn instead of failing on DuckDB's own "could not set lock" error.

When a connection is closed matters as much as how it is opened: closing a write connection
checkpoints the WAL into the file, and a checkpoint cut off by a process exit, or run by a thread
the interpreter is tearing down, corrupted files under `--workers 2`. So connections are closed
only by the thread that used them, at points the code chooses, never in the background:
- a Luigi worker running tasks in its own process (stockpipe/execution.py) keeps its connection
  across transactions and tasks (`stockpipe.store.connections_kept()`), hands it over after any
  transaction during which another process started waiting for the lock (`<file>.wait`), releases
  it whenever it has no task to run, and checkpoints and closes it when its run ends;
- a Luigi task process (a child of the worker) keeps its connection for its one task, hands it over
  the same way, and checkpoints and closes it before the process exits;
- any other process (the CLI) closes it after each transaction unless it asked to hold it for a
  block of work (`DuckDBStore.holding()`); every process closes it before it forks.
A checkpoint is never cut short by a task's in-process timeout (stockpipe/deadline.py).
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import multiprocessing
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from stockpipe.deadline import uninterruptible
from stockpipe.store.base import Session, Store, StoreError, translate_placeholders
from stockpipe.store.schema import BULK_TABLES, Table

_LIVE_STORES: "weakref.WeakSet[DuckDBStore]" = weakref.WeakSet()

# Copying the tables into the replica with DuckDB's default limit (80% of RAM) peaked at 1.25 GB for
# 6M bars + 6M indicator rows; bounded, the same copy took the same time at 0.38 GB.
REPLICA_MEMORY_LIMIT = "300MB"


def _connection_memory_limit() -> str:
    """`[stockpipe] duckdb_memory_limit` (empty: DuckDB's default, 80% of RAM). DuckDB keeps every
    block it reads cached up to its limit: with its default, a worker that had rebuilt 20,000
    symbols held 4.6 GB, growing with the store; bounded, only the chunk's own work needs memory."""
    from stockpipe import config

    return config.duckdb_memory_limit()


@contextmanager
def _memory_limit(session, limit: str) -> Iterator[None]:
    session.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        try:
            usual = _connection_memory_limit()
            session.execute(f"SET memory_limit = '{usual}'" if usual else "RESET memory_limit")
        except Exception:  # noqa: BLE001 - a failed copy's error is the one to report
            pass


def duckdb_path(url: str) -> Path:
    """duckdb:///relative/path.duckdb (relative to the working directory) or duckdb:////absolute."""
    prefix = "duckdb:///"
    if not url.startswith(prefix):
        raise StoreError(f"not a DuckDB URL: {url!r} (expected duckdb:///path/to/file.duckdb)")
    path = url[len(prefix) :]
    if not path or path == ":memory:":
        raise StoreError(
            f"{url!r}: stockpipe needs a DuckDB file (several processes share it); in-memory DuckDB is not supported"
        )
    return Path(path)


class _DuckDBSession(Session):
    def __init__(self, connection):
        self._con = connection
        self._registered: list[str] = []

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._con.execute(translate_placeholders(sql, "dollar"), params or {})

    def fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._con.execute(translate_placeholders(sql, "dollar"), params or {}).fetchall()

    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        table = self._con.sql(translate_placeholders(sql, "dollar"), params=params or {}).to_arrow_table()
        return table.cast(schema) if schema is not None and table.schema != schema else table

    def fetch_batches(self, sql: str, params: dict[str, Any] | None = None, schema: pa.Schema | None = None,
                      rows: int = 262_144):
        reader = self._con.sql(translate_placeholders(sql, "dollar"), params=params or {}).to_arrow_reader(rows)
        for batch in reader:
            yield batch.cast(schema) if schema is not None and batch.schema != schema else batch

    def stage(self, name: str, data: pa.Table, like: Table) -> None:
        self._con.register(name, data)
        self._registered.append(name)

    def insert(self, table: Table, data: pa.Table) -> int:
        # The view is dropped by close(), after COMMIT or ROLLBACK: unregistering inside a failed
        # transaction raises "transaction is aborted" and would hide the real error.
        name = f"_stockpipe_insert_{len(self._registered)}"
        self._con.register(name, data)
        self._registered.append(name)
        columns = ", ".join(table.columns)
        self._con.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {name}")
        return data.num_rows

    def close(self) -> None:
        for name in self._registered:
            self._con.unregister(name)


@dataclass
class _Held:
    connection: Any
    lock_file: Any
    write: bool
    pid: int
    last_used: float


class DuckDBStore(Store):
    dialect = "duckdb"
    single_writer_process = True
    # Replacing in place costs DuckDB little (a chunk's deletes are marks in its row groups), and a
    # build table beside the live one grew the file: 553 MB -> 975 MB after three full rebuilds
    # (the freed blocks stay in the file; in place: 616 MB), 0.25 GB more peak memory, and no faster
    # (a full rebuild replacing 6.1M rows: 11.6 s aside, 11.3 s in place).
    builds_aside = False
    # A short rebuild's or a Daily's chunk reads ~500 bars a symbol (the warmup) to write a few rows,
    # in two queries of its own (its latest rows, its bars) whose fixed costs added up over 50 chunks;
    # ten chunks' inputs come in two. A full history's chunk (~125k bars) fills half of this, so
    # memory stays a few chunks'. (PostgreSQL reads a chunk by its key index; one query for many
    # chunks was planned as a scan of every bar, and its 13-session rebuild got slower.)
    read_ahead_bars = 250_000

    def __init__(self, url: str):
        super().__init__(url)
        self.path = duckdb_path(url)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._wait_path = self.path.with_name(self.path.name + ".wait")
        self._reset_after_fork()
        _LIVE_STORES.add(self)

    def _reset_after_fork(self) -> None:
        # A forked worker starts with no connection of its own; its parent's (and the parent's
        # lock) are not its to use or close.
        self._guard = threading.RLock()
        self._held: _Held | None = None
        self._hold_depth = 0
        self._wait_probe = None
        self._run_lock_file = None
        self._exit_hook = None

    def declares_key(self, table: Table) -> bool:
        return table.name not in BULK_TABLES

    def _schema_filter(self) -> str:
        return " AND table_catalog = current_database() AND table_schema = 'main'"

    # -- holding a connection --------------------------------------------------------------------
    @contextmanager
    def holding(self) -> Iterator[None]:
        """Keep the connection across the transactions of this block (one open instead of many),
        still handing it over after any transaction during which another process started waiting."""
        with self._guard:
            self._hold_depth += 1
        try:
            yield
        finally:
            with self._guard:
                self._hold_depth -= 1
                if self._hold_depth == 0:
                    self._release()

    def _keeps_connection(self) -> bool:
        # A Luigi task process lives for one task, and a worker running tasks in its own process
        # keeps the connection for its run: either costs nobody anything, as long as it lets go
        # when someone waits.
        return self._hold_depth > 0 or Store.connections_kept > 0 or multiprocessing.parent_process() is not None

    def _acquire(self, write: bool) -> _Held:
        import duckdb

        held = self._held
        if held is not None and (held.write or not write):
            return held
        if held is not None:
            self._release()
        if self._keeps_connection():
            # Every task writes (its data, or at least its marker): opening for writing at once saves
            # reopening the file when the first write comes (each open replays the WAL).
            write = True
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write = True  # the first operation on a new store creates the file
        lock_file = open(self._lock_path, "a+")
        mode = fcntl.LOCK_EX if write else fcntl.LOCK_SH
        try:
            fcntl.flock(lock_file, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(self._wait_path, "a+") as waiting:
                fcntl.flock(waiting, fcntl.LOCK_SH)  # tells the holder someone waits
                fcntl.flock(lock_file, mode)
        limit = _connection_memory_limit()
        try:
            connection = duckdb.connect(str(self.path), read_only=not write,
                                        config={"memory_limit": limit} if limit else {})
        except duckdb.Error as exc:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()
            raise StoreError(
                f"cannot open DuckDB file {self.path}: {exc}. Another program (not a stockpipe worker) may "
                f"hold it open; close it, or read the replica instead."
            ) from exc
        self._held = _Held(connection, lock_file, write, os.getpid(), time.monotonic())
        self._close_before_exit()
        return self._held

    def _close_before_exit(self) -> None:
        if self._exit_hook is not None or multiprocessing.parent_process() is None:
            return  # the main process closes at exit through atexit (below)
        # A multiprocessing child leaves through os._exit, which skips atexit; multiprocessing's
        # own finalizers run first, on this (the main) thread, after the task has finished.
        from multiprocessing import util

        self._exit_hook = util.Finalize(self, DuckDBStore.close, args=(self,), exitpriority=100)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        with uninterruptible():  # a task's in-process timeout never cuts a checkpoint short
            try:
                if held.write:
                    held.connection.execute("CHECKPOINT")  # the WAL's content in the file before letting go
            finally:
                try:
                    held.connection.close()
                finally:
                    fcntl.flock(held.lock_file, fcntl.LOCK_UN)
                    held.lock_file.close()

    def release_if_waited_for(self) -> None:
        """Hand the connection over now if another process waits for the file (a holder about to
        do something other than use the store, e.g. ask the scheduler for work)."""
        with self._guard:
            if self._held is not None and self._someone_waits():
                self._release()

    def _someone_waits(self) -> bool:
        if self._wait_probe is None:
            self._wait_probe = open(self._wait_path, "a+")
        try:
            fcntl.flock(self._wait_probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._wait_probe, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        with self._guard:
            self._release()

    @contextmanager
    def run_lock(self, key: str) -> Iterator[None]:
        # One byte of `<file>.runs` per key (record locks: released by the kernel when the holder
        # dies, one file whatever the number of keys).
        import hashlib

        offset = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") & 0x3FFFFFFF
        if self._run_lock_file is None:
            self._run_lock_file = open(self.path.with_name(self.path.name + ".runs"), "a+")
        handle = self._run_lock_file
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            logging.getLogger("stockpipe.store").info("%s: waiting for another run doing the same work", key)
            self.close()  # that run needs the file: never wait while holding it
            fcntl.lockf(handle, fcntl.LOCK_EX, 1, offset)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN, 1, offset)

    def export_bars(self, path, symbols, start, warmup_bars=0) -> int:
        # DuckDB writes the Parquet snapshot itself: no Arrow copy of the bars in this process.
        sql, params = self._bar_export_query(symbols, start, warmup_bars)
        target = str(path).replace("'", "''")
        with self.session(write=False) as session:
            return int(session.fetch(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION lz4_raw)", params)[0][0])

    def export_replica(self, path) -> dict[str, int]:
        # A read-only DuckDB cannot attach a new file, so this takes the writer lock for the copy.
        counts: dict[str, int] = {}
        with self.session(write=True) as session, _memory_limit(session, REPLICA_MEMORY_LIMIT), \
                _replica_attached(session, path):
            for table in self.replica_tables():
                session.execute(f"CREATE TABLE replica.{table.name} AS SELECT * FROM main.{table.name}")
                counts[table.name] = int(session.fetch(f"SELECT count(*) FROM main.{table.name}")[0][0])
        return counts

    def update_replica(self, path, mark):
        # In one transaction of the store, with the replica attached (see export_replica).
        with self.session(write=True) as session, _memory_limit(session, REPLICA_MEMORY_LIMIT):
            copies, why = self._replica_copies(session, mark)
            if copies is None:
                return None, why
            with _replica_attached(session, path):
                for table, window in copies:
                    columns = ", ".join(table.columns)
                    where = "" if window is None else " WHERE " + window.where()
                    params = {} if window is None else window.params
                    session.execute(f"DELETE FROM replica.{table.name}{where}", params)
                    session.execute(f"INSERT INTO replica.{table.name} ({columns}) "
                                    f"SELECT {columns} FROM main.{table.name}{where}", params)
                counts = {t.name: int(session.fetch(f"SELECT count(*) FROM main.{t.name}")[0][0]) for t in self.replica_tables()}
        return counts, ""

    # -- integrity --------------------------------------------------------------------------------
    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + ".wal")

    def check_integrity(self):
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such DuckDB file")
        report = super().check_integrity()
        wal = report.storage.get("wal_file_bytes", 0)
        if wal:
            report.problems.append(
                f"{self.wal_path} holds {wal:,} bytes of committed but un-checkpointed changes while no stockpipe "
                f"writer is running: the last writer did not close cleanly, and a copy of {self.path.name} alone "
                f"would miss them (any write, e.g. `stockpipe init-db`, checkpoints them)")
        return report

    def _full_scan_sql(self, table, columns) -> str:
        listed = ", ".join(f'"{c}"' for c in columns)
        return f'SELECT count(*), sum(hash({listed})) % 9223372036854775807 FROM "{table}"'

    def _storage_facts(self, session) -> dict[str, Any]:
        # Read while holding the lock, so no stockpipe writer is mid-transaction: a .wal now is one
        # a writer left behind.
        size = session.fetch_arrow("PRAGMA database_size").to_pylist()[0]
        return {
            "file": str(self.path),
            "file_bytes": self.path.stat().st_size,
            "wal_file_bytes": self.wal_path.stat().st_size if self.wal_path.exists() else 0,
            "block_size": size["block_size"],
            "total_blocks": size["total_blocks"],
            "used_blocks": size["used_blocks"],
            "free_blocks": size["free_blocks"],
        }

    # -- sessions --------------------------------------------------------------------------------
    @contextmanager
    def _open_session(self, write: bool) -> Iterator[Session]:

        with self._guard:
            held = self._acquire(write)
            connection = held.connection
            session = _DuckDBSession(connection)
            connection.execute("BEGIN TRANSACTION")
            try:
                yield session
            except BaseException as exc:
                # A failed connection is not worth keeping; the error that brought us here is the
                # one to report, not a clean-up's ("cannot rollback - no transaction is active").
                _rollback_keeping(exc, lambda: connection.execute("ROLLBACK"), session.close, self._release)
                raise
            else:
                connection.execute("COMMIT")
                session.close()
                held.last_used = time.monotonic()
                if not self._keeps_connection() or self._someone_waits():
                    self._release()



@contextmanager
def _replica_attached(session, path) -> Iterator[None]:
    """The replica file at `path` attached as `replica` to the session's transaction, committed with
    it. DuckDB detaches only outside a transaction: the block's work is committed (a full disk fails
    there), the file detached, and the empty transaction the session will commit opened."""
    target = str(path).replace("'", "''")
    session.execute(f"ATTACH '{target}' AS replica")
    try:
        yield
        session.execute("COMMIT")
    except BaseException as exc:
        # A failed copy (e.g. a full disk) may have ended the transaction already: the copy's own
        # error is the one to report, not the clean-up's. Detached even after a failure, so this
        # connection never keeps the replica file.
        _rollback_keeping(exc, lambda: session.execute("ROLLBACK"),
                          lambda: session.execute("DETACH DATABASE IF EXISTS replica"),
                          lambda: session.execute("BEGIN TRANSACTION"))
        raise
    session.execute("DETACH DATABASE IF EXISTS replica")
    session.execute("BEGIN TRANSACTION")

def _rollback_keeping(error: BaseException, *steps) -> None:
    """Run clean-up steps after `error`; their own failures (\"cannot rollback - no transaction is
    active\" after a full disk ended the transaction) are logged, never raised in its place."""
    for step in steps:
        try:
            step()
        except Exception as cleanup_error:  # noqa: BLE001 - the original error is the one raised
            logging.getLogger("stockpipe.store").debug("clean-up after %r failed: %s", error, cleanup_error)


@contextmanager
def read_only_session(url_or_path: str) -> Iterator[Session]:
    """A read-only session on any DuckDB file, outside stockpipe's locking (for files that are not
    a stockpipe store, e.g. the old system's database being imported)."""
    import duckdb

    path = duckdb_path(url_or_path) if url_or_path.startswith("duckdb:") else Path(url_or_path)
    if not path.is_file():
        raise StoreError(f"{path}: no such DuckDB file")
    try:
        connection = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise StoreError(f"cannot open DuckDB file {path} for reading: {exc}") from exc
    session = _DuckDBSession(connection)
    try:
        yield session
    finally:
        session.close()
        connection.close()


def _release_before_fork() -> None:
    # DuckDB caches open databases per process: a child forked while its parent holds one would
    # reuse the parent's copy (and both would write one file). Forks are rare (one per task), so
    # the parent lets go first and reconnects later.
    for store in list(_LIVE_STORES):
        store.close()


def _forget_parents_connections() -> None:
    for store in list(_LIVE_STORES):
        store._reset_after_fork()


def _close_all() -> None:
    import gc

    for store in list(_LIVE_STORES):
        try:
            store.close()
        except Exception:  # noqa: BLE001 - closing at exit must not mask the real exit status
            pass
    # DuckDB type objects caught in reference cycles (seen when pandas is first used after a query)
    # are otherwise reported by nanobind as leaks on every exit.
    gc.collect()


os.register_at_fork(before=_release_before_fork, after_in_child=_forget_parents_connections)
atexit.register(_close_all)
