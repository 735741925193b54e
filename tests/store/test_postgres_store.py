"""PostgreSQL only: writer locks (chunks of disjoint symbols write side by side, writers of one symbol
wait) and reclaiming the space of replaced rows."""

from __future__ import annotations

import datetime as dt

import psycopg2
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from stockpipe.indicators import indicator_rows
from stockpipe.store import open_store
from tests.store.test_contract import bars_rows


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


def _vacuums(store) -> int:
    return store.query("SELECT vacuum_count AS n FROM pg_stat_user_tables WHERE relname = 'indicators'").column("n")[0].as_py()


def test_replaced_rows_are_vacuumed_once_they_are_a_good_part_of_the_table(postgres_url):
    store = open_store(postgres_url)
    names = [f"S{i:03d}" for i in range(20)]
    for name in names:
        store.write_bars(bars_rows(name, dt.date(2020, 1, 1), 300))
    rows = indicator_rows(store.read_bars())
    store.replace_indicators(names, dt.date(2020, 1, 1), rows)
    store.reclaim("indicators", 0)  # a first load: nothing replaced, statistics gathered
    assert _vacuums(store) == 0
    assert store.query("SELECT reltuples AS n FROM pg_class WHERE relname = 'indicators'").column("n")[0].as_py() == rows.num_rows
    last_day = dt.date(2020, 1, 1) + dt.timedelta(days=299)
    store.replace_indicators(names, last_day, rows.filter(pa.compute.equal(rows.column("date"), pa.scalar(last_day))))
    store.reclaim("indicators", len(names))  # a day of 300: left to add up
    assert _vacuums(store) == 0
    store.replace_indicators(names, dt.date(2020, 1, 1), rows)
    store.reclaim("indicators", rows.num_rows)  # a full rebuild
    assert _vacuums(store) == 1


def test_after_a_backfill_a_chunks_bars_are_read_through_the_key_not_a_scan_of_all_bars(postgres_url):
    """The planner knows nothing of freshly loaded bars until they are analyzed; it then scanned
    every bar for each chunk's read (0.7 s a chunk on 6M bars). Backfill leaves statistics."""
    from stockpipe.services.ingest import backfill
    from stockpipe.services.symbols import collect_symbols
    from stockpipe.sources.demo import DemoSource
    from stockpipe.store.base import range_filter

    store = open_store(postgres_url)
    source = DemoSource(tickers=300, seed=3)
    collect_symbols(store, source, dt.date(2025, 10, 10), 5, None)
    backfill(store, source, dt.date(2023, 1, 2), dt.date(2025, 10, 10), batch_size=100, marker=None)
    assert store.query("SELECT reltuples AS n FROM pg_class WHERE relname = 'bars'").column("n")[0].as_py() > 0
    chunk = store.bar_symbols()[:10]
    where, params = range_filter(chunk, None, None, collate=store.codepoint_collation)
    with store.session(write=False) as session:
        plan = [r[0] for r in session.fetch(
            f"EXPLAIN SELECT symbol, date, open, high, low, close, volume FROM bars{where} ORDER BY symbol, date", params)]
    assert not any("Seq Scan on bars" in line for line in plan), plan


def test_a_rebuild_replacing_every_row_reuses_the_space_of_the_rows_it_replaced(postgres_url):
    """Each chunk's old rows are dead once it commits; VACUUMed only at the end, the table grew by
    all of them. Vacuumed as they add up, later chunks write into the earlier chunks' space."""
    from stockpipe.engines import open_engine
    from stockpipe.services.indicators import chunk, compute_chunk

    store = open_store(postgres_url)
    names = [f"S{i:03d}" for i in range(100)]
    store.write_bars(pa.concat_tables([bars_rows(name, dt.date(2020, 1, 1), 1000, price=10.0 + i)
                                       for i, name in enumerate(names)]))
    engine = open_engine("numpy")

    def rebuild() -> None:
        for symbols in chunk(names, 10):
            compute_chunk(store, symbols, dt.date(2020, 1, 1), engine=engine, warmup_bars=0, marker=None)

    def size() -> int:
        return store.query("SELECT pg_total_relation_size('indicators') AS n").column("n")[0].as_py()

    rebuild()
    store.reclaim("indicators", 0)
    first = size()
    before = store.read_indicators().drop(["created_at"])
    for _ in range(2):
        rebuild()
    assert store.read_indicators().drop(["created_at"]).equals(before)
    assert size() <= 1.35 * first, f"indicators grew from {first} to {size()} bytes over two more rebuilds"


def test_fetch_each_keeps_the_queries_order_and_raises_the_failing_ones_error(postgres_url):
    """The next query runs while the caller handles the current one's rows (a thread): the rows
    still come query by query, in order, and an error in a later query reaches the caller, whose
    session is then rolled back and the connection usable."""
    import pytest

    store = open_store(postgres_url)
    queries = [(f"SELECT g AS n FROM generate_series(:lo, :hi) g ORDER BY g", {"lo": lo, "hi": lo + 99_999})
               for lo in range(0, 500_000, 100_000)]
    schema = pa.schema([("n", pa.int64())])
    with store.session(write=False) as session:
        batches = list(session.fetch_each(queries, schema=schema, rows=30_000))
    assert pa.Table.from_batches(batches).column("n").to_pylist() == list(range(500_000))
    failing = queries[:2] + [("SELECT 1 / (g - g) AS n FROM generate_series(1, 3) g", {})] + queries[2:]
    seen = []
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with store.session(write=False) as session:
            for batch in session.fetch_each(failing, schema=schema):
                seen.append(batch.num_rows)
    assert sum(seen) == 200_000  # the rows of the queries before it, nothing after
    assert store.query("SELECT 1 AS one").column("one").to_pylist() == [1]
