"""Stores: one interface (`Store`), DuckDB and PostgreSQL implementations chosen by URL."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from stockpipe.store.base import BAR_SNAPSHOT, Marker, SchemaVersionError, Session, Store, StoreError
from stockpipe.store.schema import SCHEMA_VERSION

_OPEN: dict[tuple[str, int], Store] = {}


def open_store(url: str) -> Store:
    """The store for `url`, shared within a process (a forked Luigi worker gets its own)."""
    import os

    key = (url, os.getpid())
    store = _OPEN.get(key)
    if store is None:
        if url.startswith("duckdb:"):
            from stockpipe.store.duckdb_store import DuckDBStore

            store = DuckDBStore(url)
        elif url.startswith(("postgresql:", "postgresql+psycopg2:", "postgres:")):
            from stockpipe.store.postgres_store import PostgresStore

            store = PostgresStore(url)
        else:
            raise StoreError(
                f"unknown store URL {url!r}: use duckdb:///path/file.duckdb or postgresql+psycopg2://user@host/db"
            )
        _OPEN[key] = store
    return store


@contextmanager
def connections_kept() -> Iterator[None]:
    """Within this block, this process's stores keep their connections across transactions (a
    worker running one task after another in its own process opens a DuckDB file once per run, not
    once per transaction); every one is closed (DuckDB: checkpointed) by this thread at its end."""
    Store.connections_kept += 1
    try:
        yield
    finally:
        Store.connections_kept -= 1
        if Store.connections_kept == 0:
            close_all()


def close_all() -> None:
    """Close every store this process opened (DuckDB: checkpoint, then let go of the file)."""
    import os

    for (_, pid), store in list(_OPEN.items()):
        if pid == os.getpid():
            store.close()


def interrupt_all() -> None:
    """Stop the statements this process's stores are running (callable from any thread)."""
    import os

    for (_, pid), store in list(_OPEN.items()):
        if pid == os.getpid():
            store.interrupt()


def release_waited_for() -> None:
    """Let go of every kept connection another process waits for."""
    import os

    for (_, pid), store in list(_OPEN.items()):
        if pid == os.getpid():
            store.release_if_waited_for()


@contextmanager
def read_foreign(url: str) -> Iterator[Session]:
    """A read-only session on a database that is not a stockpipe store (the old system's, to import
    from): no schema check, nothing created in it. `url` is a PostgreSQL URL, a duckdb:/// URL or the
    path of a DuckDB file."""
    if url.startswith(("postgresql:", "postgresql+psycopg2:", "postgres:")):
        from stockpipe.store.postgres_store import PostgresStore

        foreign = PostgresStore(url)
        try:
            with foreign._open_session(write=False) as session:
                yield session
        finally:
            foreign.close()
    else:
        from stockpipe.store.duckdb_store import read_only_session

        with read_only_session(url) as session:
            yield session


__all__ = ["BAR_SNAPSHOT", "Marker", "SCHEMA_VERSION", "SchemaVersionError", "Session", "Store", "StoreError", "close_all", "connections_kept",
           "interrupt_all", "open_store", "read_foreign", "release_waited_for"]
