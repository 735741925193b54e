"""DuckDB store: the embedded default.

DuckDB lets one process at a time open a file for writing, and Luigi's `--workers N` runs tasks in N
processes. So no connection outlives an operation, and every connection is opened under an advisory
file lock (`<file>.lock`): shared for reads (read-only connections may coexist), exclusive for writes.
A worker waits for the lock instead of failing on DuckDB's own "could not set lock" error.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from stockpipe.store.base import Session, Store, StoreError, translate_placeholders
from stockpipe.store.schema import Table


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

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._con.execute(translate_placeholders(sql, "dollar"), params or {})

    def fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._con.execute(translate_placeholders(sql, "dollar"), params or {}).fetchall()

    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        table = self._con.sql(translate_placeholders(sql, "dollar"), params=params or {}).to_arrow_table()
        return table.cast(schema) if schema is not None and table.schema != schema else table

    def stage(self, name: str, data: pa.Table, like: Table) -> None:
        self._con.register(name, data)

    def insert(self, table: Table, data: pa.Table) -> int:
        self._con.register("_stockpipe_insert", data)
        try:
            columns = ", ".join(table.columns)
            self._con.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM _stockpipe_insert")
        finally:
            self._con.unregister("_stockpipe_insert")
        return data.num_rows


class DuckDBStore(Store):
    dialect = "duckdb"

    def __init__(self, url: str):
        super().__init__(url)
        self.path = duckdb_path(url)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def _schema_filter(self) -> str:
        return " AND table_catalog = current_database() AND table_schema = 'main'"

    @contextmanager
    def _open_session(self, write: bool) -> Iterator[Session]:
        import duckdb

        if not self.path.exists():
            if not write:
                # A read of a store that was never written: create it empty rather than fail.
                write = True
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                try:
                    connection = duckdb.connect(str(self.path), read_only=not write)
                except duckdb.IOException as exc:
                    raise StoreError(
                        f"cannot open DuckDB file {self.path}: {exc}. Another program (not a stockpipe "
                        f"worker) may hold it open; close it, or read the replica instead."
                    ) from exc
                try:
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        yield _DuckDBSession(connection)
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
                finally:
                    connection.close()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def file_size(self) -> int:
        return os.path.getsize(self.path) if self.path.exists() else 0
