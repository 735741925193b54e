"""What only the DuckDB store does: its connections' memory is bounded by `[stockpipe]
duckdb_memory_limit` (DuckDB's own default, 80% of RAM, let a worker's cache grow with the store)."""

from __future__ import annotations

import datetime as dt

from stockpipe.services.ingest import ingest_date
from stockpipe.services.symbols import collect_symbols
from stockpipe.sources.demo import DemoSource

DAY = dt.date(2025, 10, 10)


def memory_limit(store) -> str:
    with store.session(write=False) as session:
        return session.fetch("SELECT current_setting('memory_limit')")[0][0]


def test_connections_take_the_configured_memory_limit_and_the_replica_copy_restores_it(duckdb_pipeline, tmp_path):
    store = duckdb_pipeline.store
    assert memory_limit(store) == "953.6 MiB", "the default is 1GB"
    store.close()

    duckdb_pipeline.configure("stockpipe", duckdb_memory_limit="300MB")
    store = duckdb_pipeline.store
    source = DemoSource(tickers=6, seed=3)
    collect_symbols(store, source, DAY, 5, None)
    ingest_date(store, source, DAY, days_back=5, backfill_sessions=30, marker=None)
    with store.holding():  # one connection across the copy and the check after it
        assert memory_limit(store) == "286.1 MiB"
        store.export_replica(tmp_path / "replica.duckdb")  # copies under its own, lower limit
        assert memory_limit(store) == "286.1 MiB", "the copy left DuckDB's default in place of the setting"
    store.close()

    duckdb_pipeline.configure("stockpipe", duckdb_memory_limit="")
    default = memory_limit(duckdb_pipeline.store)
    assert default not in ("286.1 MiB", "953.6 MiB") and default.endswith("GiB"), default
