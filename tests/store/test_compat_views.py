"""The old system's tables as views: its operators' and watchlist queries run unchanged on both
stores and on the replica, and agree with stockpipe's own tables and scan."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from stockpipe import config, tasks
from stockpipe.store import SchemaVersionError, StoreError, open_store
from stockpipe.store.base import translate_placeholders
from stockpipe.store.schema import SCHEMA_VERSION, VIEWS
from stockpipe.watchlist.rules import DEFAULT_RULES, parse_rules
from tests.watchlist.old_queries import OLD_QUERIES, PROGRESS

pytestmark = pytest.mark.both_stores

DAY = dt.date(2025, 10, 10)

def test_old_queries_run_unchanged_and_agree_with_stockpipe(pipeline):
    pipeline.configure("demo", tickers=100)
    pipeline.configure("stockpipe", min_symbols=100)
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store

    progress = store.query(PROGRESS).to_pylist()
    ours = store.query("SELECT date, count(DISTINCT symbol) AS s, count(*) AS n FROM indicators "
                       "WHERE date >= :d GROUP BY date ORDER BY date", {"d": dt.date(2025, 9, 29)}).to_pylist()
    assert [(r["date"], r["ticker_count"], r["indicator_count"]) for r in progress] == [(r["date"], r["s"], r["n"]) for r in ours]
    assert len(progress) == 10 and progress[-1]["ticker_count"] == 100

    latest = {}
    for row in store.read_indicators().to_pylist():
        latest[row["symbol"]] = row["avg_volume_30"]  # rows come sorted by symbol, date
    old_symbols = {r["symbol"]: r["avg_volume_30"] for r in store.query("SELECT * FROM nasdaq_symbols").to_pylist()}
    assert old_symbols == latest
    assert store.query("SELECT count(*) AS n FROM stock_data").column("n")[0].as_py() == store.bars_extent()[2]

    # The old queries over the views pick what the built-in rules pick, in the same order.
    frame = store.scan_frame(DAY).to_pandas()
    picked = {}
    for rule in parse_rules(DEFAULT_RULES):
        old = store.query(OLD_QUERIES[rule.name], {"scan_date": DAY}).column("symbol").to_pylist()
        assert old == list(rule.hits(frame)["symbol"]), rule.name
        assert old, f"the demo market has hits for {rule.name}"
        picked[rule.name] = old
    # ... and daily_watchlist is their priority dedupe.
    expected, seen = [], set()
    for name in ("rsi_oversold", "bollinger_lower_touch", "high_volume_breakout"):
        expected += [(s, name) for s in picked[name] if s not in seen]
        seen |= set(picked[name])
    watchlist = store.read_watchlist(since=DAY, until=DAY).to_pylist()
    assert sorted((r["symbol"], r["scan_reason"]) for r in watchlist) == sorted(expected)

    # The replica answers the same queries with the same rows.
    replica = duckdb.connect(str(config.replica_path()), read_only=True)
    try:
        for name, sql in OLD_QUERIES.items():
            rows = replica.execute(translate_placeholders(sql, "dollar"), {"scan_date": DAY}).fetchall()
            assert [r[0] for r in rows] == picked[name], name
        assert replica.execute(PROGRESS).fetchall() == [tuple(r.values()) for r in progress]
        assert dict(replica.execute("SELECT symbol, avg_volume_30 FROM nasdaq_symbols").fetchall()) == latest
    finally:
        replica.close()


def test_init_db_upgrades_a_version_1_store_with_the_views(store_url):
    store = open_store(store_url)
    store.ensure_schema()
    with store.session() as session:  # what a stockpipe of schema version 1 left behind
        for view in VIEWS:
            session.execute(f"DROP VIEW {view.name}")
        session.execute("DELETE FROM schema_version")
        session.execute("INSERT INTO schema_version (version, applied_at) VALUES (1, :t)", {"t": dt.datetime(2025, 1, 1)})
    stale = type(store)(store_url)
    with pytest.raises(SchemaVersionError, match=r"schema version 1.*init-db"):
        stale.ensure_schema()
    assert stale.upgrade_schema() == (1, SCHEMA_VERSION)
    assert stale.query("SELECT count(*) AS n FROM technical_indicators").column("n")[0].as_py() == 0
    fresh = type(store)(store_url)
    fresh.ensure_schema()
    assert fresh.upgrade_schema() == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_a_database_holding_the_old_tables_is_refused_with_what_to_do(store_url):
    store = open_store(store_url)
    # An operator pointing stockpipe at the old system's own database.
    with store._open_session(True) as session:
        session.execute("CREATE TABLE stock_data (ticker VARCHAR, date DATE)")
    with pytest.raises(StoreError, match=r"already has table\(s\) stock_data.*import-legacy"):
        store.ensure_schema()
    tables = store._open_session(False)
    with tables as session:
        assert session.fetch("SELECT count(*) FROM information_schema.tables WHERE table_name = 'bars'")[0][0] == 0
