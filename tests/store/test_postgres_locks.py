"""PostgreSQL writer locks: chunks of disjoint symbols write side by side, writers of one symbol wait."""

from __future__ import annotations

import psycopg2
from stockpipe.store import open_store


def _symbols_sharing_a_bucket(store) -> tuple[str, str]:
    rows = store.query(
        "SELECT s FROM (SELECT 'S' || g AS s FROM generate_series(1, 500) g) x "
        "WHERE hashtext(s) & 63 = hashtext('S1') & 63 ORDER BY s").column("s").to_pylist()
    return rows[0], rows[1]


def _lock_waits(store, table: str, symbols) -> bool:
    """True when locking `symbols` has to wait for another transaction (it gives up after 0.5 s)."""
    with store.session() as session:
        session.execute("SET LOCAL lock_timeout = '500ms'")
        try:
            session.lock_symbols(table, symbols)
        except psycopg2.errors.LockNotAvailable:
            return True
    return False


def _symbol_outside_the_buckets_of(store, symbols) -> str:
    return store.query(
        "SELECT min('T' || g) AS s FROM generate_series(1, 500) g WHERE hashtext('T' || g) & 63 <> ALL("
        "SELECT hashtext(x) & 63 FROM unnest(CAST(:m AS varchar[])) x)", {"m": list(symbols)}).column("s")[0].as_py()


def test_a_chunk_waits_only_for_writers_of_its_own_symbols(postgres_url):
    store, other = open_store(postgres_url), open_store(postgres_url + "?application_name=other")
    first, same_bucket = _symbols_sharing_a_bucket(store)
    bulk = [f"M{i:04d}" for i in range(80)] + [first]  # more symbols than a chunk: locked by bucket
    with store.session() as holder:
        holder.lock_symbols("indicators", [first, "ZZZ"])  # a chunk writing `first`
        assert not _lock_waits(other, "indicators", [same_bucket])  # another chunk: same bucket, other symbol
        assert not _lock_waits(other, "bars", [first])  # another table
        assert _lock_waits(other, "indicators", [first])  # the same symbol
        assert _lock_waits(other, "indicators", bulk)  # a bulk writer of it
    with store.session() as holder:
        holder.lock_symbols("indicators", bulk)  # a bulk writer (an ingest, a restore)
        assert _lock_waits(other, "indicators", [same_bucket])  # a chunk of a symbol in its buckets
        assert not _lock_waits(other, "indicators", [_symbol_outside_the_buckets_of(store, bulk)])
