"""The DuckDB replica file a store publishes (`Store.export_replica`): its compatibility views, what it
holds, and its rows read back (to verify it, to judge it as a recovery option, to restore from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa

from stockpipe.store.base import StoreError, _one_line
from stockpipe.store.schema import VIEWS, Table


def add_views(path: Path) -> None:
    """The old system's compatibility views, over the replica's own copies of the tables."""
    import duckdb

    connection = duckdb.connect(str(path))
    try:
        for view in VIEWS:
            connection.execute(view.ddl())
        connection.execute("CHECKPOINT")
    finally:
        connection.close()


class Replica:
    """A replica file open read-only (a context manager that closes it)."""

    def __init__(self, connection):
        self._connection = connection

    def __enter__(self) -> "Replica":
        return self

    def __exit__(self, *exc) -> None:
        self._connection.close()

    def names(self) -> set[str]:
        """Its tables and views."""
        return {r[0] for r in self._connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}

    def row_count(self, table: str) -> int:
        return self._connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def schema_version(self) -> int | None:
        return self._connection.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]

    def batches(self, table: Table, rows: int) -> Iterable[pa.Table]:
        """`table`'s rows in the store's column order, `rows` at a time."""
        reader = self._connection.sql(f"SELECT {', '.join(table.columns)} FROM {table.name}").to_arrow_reader(rows)
        for batch in reader:
            yield pa.Table.from_batches([batch])


def open_replica(path: Path) -> Replica:
    """The replica at `path`, read-only; a file DuckDB cannot open raises StoreError with its reason."""
    import duckdb

    try:
        return Replica(duckdb.connect(str(path), read_only=True))
    except duckdb.Error as exc:
        raise StoreError(_one_line(exc)) from exc


def unreadable(path: Path) -> str | None:
    """Why the replica at `path` cannot be opened and its bars read (None: it can)."""
    import duckdb

    try:
        with open_replica(path) as replica:
            replica.row_count("bars")
    except StoreError as exc:
        return str(exc)
    except duckdb.Error as exc:
        return _one_line(exc)
    return None
