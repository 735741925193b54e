"""Stores: one interface (`Store`), DuckDB and PostgreSQL implementations chosen by URL."""

from __future__ import annotations

from stockpipe.store.base import Marker, SchemaVersionError, Session, Store, StoreError
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


__all__ = ["Marker", "SCHEMA_VERSION", "SchemaVersionError", "Session", "Store", "StoreError", "open_store"]
