"""One contract, run unchanged against DuckDB and a real PostgreSQL database."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stockpipe.indicators import INDICATOR_COLUMNS, indicator_rows
from stockpipe.store import BAR_SNAPSHOT, Marker, SchemaVersionError, StoreError, open_store
from stockpipe.store.schema import DAILY_WATCHLIST, INDICATORS, RUN_TABLES, SCHEMA_VERSION, SCHEMA_VERSION_TABLE, TABLES

pytestmark = pytest.mark.both_stores


def symbols_rows(*names: str, **overrides) -> pa.Table:
    n = len(names)
    columns = {
        "symbol": list(names),
        "name": [f"{s} Corp" for s in names],
        "exchange": ["NYSE"] * n,
        "sector": ["Technology"] * n,
        "industry": [None] * n,
        "market_cap": [1e9] * n,
        "is_etf": [False] * n,
        "is_active": [True] * n,
        "avg_volume_30": [None] * n,
        "updated_at": pa.array([dt.datetime(2025, 1, 1)] * n, pa.timestamp("us")),
    }
    columns.update(overrides)
    return pa.table(columns)


def bars_rows(symbol: str, start: dt.date, count: int, price: float = 10.0) -> pa.Table:
    dates = [start + dt.timedelta(days=i) for i in range(count)]
    close = price + np.arange(count) * 0.01
    return pa.table({
        "symbol": [symbol] * count,
        "date": pa.array(dates, pa.date32()),
        "open": close, "high": close + 0.5, "low": close - 0.5, "close": close,
        "volume": pa.array([1000 + i for i in range(count)], pa.int64()),
    })


# information_schema's name for each Arrow type of the schema, per store.
SQL_TYPE_NAMES = {
    "duckdb": {pa.string(): "VARCHAR", pa.date32(): "DATE", pa.float64(): "DOUBLE", pa.int64(): "BIGINT",
               pa.int32(): "INTEGER", pa.bool_(): "BOOLEAN", pa.timestamp("us"): "TIMESTAMP"},
    "postgresql": {pa.string(): "character varying", pa.date32(): "date", pa.float64(): "double precision",
                   pa.int64(): "bigint", pa.int32(): "integer", pa.bool_(): "boolean",
                   pa.timestamp("us"): "timestamp without time zone"},
}


def test_schema_is_created_idempotently_with_public_columns(store):
    """Every public table, column for column: name, order, type, NOT NULL, and the declared key."""
    store.ensure_schema()
    store.ensure_schema()
    names = SQL_TYPE_NAMES[store.dialect]
    for table in (*TABLES, SCHEMA_VERSION_TABLE):
        columns = store.query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = :t ORDER BY ordinal_position", {"t": table.name},
        ).to_pylist()
        expected = [{"column_name": f.name, "data_type": names[f.type],
                     "is_nullable": "NO" if f.name in table.key or f.name in table.not_null else "YES"}
                    for f in table.schema]
        assert columns == expected, table.name
        key = store.query(
            "SELECT k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
            "AND k.table_name = c.table_name WHERE c.table_name = :t AND c.constraint_type = 'PRIMARY KEY' "
            "ORDER BY k.ordinal_position", {"t": table.name},
        ).column("column_name").to_pylist()
        # DuckDB keeps the (symbol, date) key of the bulk tables by its writes, not by an index (README).
        declared = table.key if store.declares_key(table) else ()
        assert tuple(key) == declared, table.name
    assert [t.name for t in TABLES] == ["symbols", "bars", "indicators", "task_markers", "daily_watchlist", "task_runs",
                                       "store_changes", "run_plans", "run_chunk_failures", "run_reports"]
    assert INDICATORS.columns == ["symbol", "date", *INDICATOR_COLUMNS, "created_at"]


def test_schema_version_mismatch_is_refused_with_advice(store_url):
    store = open_store(store_url)
    store.ensure_schema()
    with store.session() as session:
        session.execute("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)",
                        {"v": SCHEMA_VERSION + 1, "t": dt.datetime(2030, 1, 1)})
    fresh = type(store)(store_url)
    with pytest.raises(SchemaVersionError, match=rf"schema version {SCHEMA_VERSION + 1}.*expects {SCHEMA_VERSION}.*init-db"):
        fresh.ensure_schema()


def test_universe_upsert_deactivates_missing_symbols_and_keeps_text_intact(store):
    assert store.replace_universe(symbols_rows("AAA", "005930.KS", name=["a, \"quoted\"", "삼성전자"]))
    store.replace_universe(symbols_rows("AAA", "BBB"))
    rows = {r["symbol"]: r for r in store.read_symbols(active_only=False).to_pylist()}
    assert rows["005930.KS"]["is_active"] is False
    assert rows["005930.KS"]["name"] == "삼성전자"
    assert rows["AAA"]["is_active"] and rows["BBB"]["is_active"]
    assert store.active_symbols() == ["AAA", "BBB"]


def test_marker_is_written_with_data_once(store):
    marker = Marker("IngestDate/2025-01-10", "IngestDate", {"date": "2025-01-10"}, {"bars_stored": 5})
    assert store.write_bars(bars_rows("AAA", dt.date(2025, 1, 1), 5), marker)
    assert store.completed(["IngestDate/2025-01-10", "nope"]) == {"IngestDate/2025-01-10"}
    assert store.read_marker("IngestDate/2025-01-10")["stats"] == {"bars_stored": 5}
    # A second writer of the same marker writes nothing (another worker finished it first).
    assert not store.write_bars(bars_rows("AAA", dt.date(2025, 1, 1), 5, price=99.0), marker)
    assert store.read_bars(["AAA"]).column("close").to_pylist()[0] == 10.0


def test_bars_upsert_replaces_corrected_bars(store):
    store.write_bars(bars_rows("AAA", dt.date(2025, 1, 1), 10))
    store.write_bars(bars_rows("AAA", dt.date(2025, 1, 8), 5, price=20.0))
    bars = store.read_bars(["AAA"])
    assert bars.num_rows == 12
    assert bars.column("close").to_pylist()[7] == 20.0
    assert store.bars_extent() == (dt.date(2025, 1, 1), dt.date(2025, 1, 12), 12)


def test_read_bars_reaches_back_warmup_bars_per_symbol(store):
    store.write_bars(pa.concat_tables([bars_rows("AAA", dt.date(2024, 1, 1), 100), bars_rows("BBB", dt.date(2024, 3, 1), 100)]))
    bars = store.read_bars(["AAA", "BBB"], start=dt.date(2024, 4, 1), warmup_bars=5)
    by_symbol = {}
    for row in bars.to_pylist():
        by_symbol.setdefault(row["symbol"], []).append(row["date"])
    assert by_symbol["AAA"][0] == dt.date(2024, 3, 27)
    assert by_symbol["BBB"][0] == dt.date(2024, 3, 27)
    assert by_symbol["AAA"] == sorted(by_symbol["AAA"])


def test_failed_replace_leaves_previous_rows_and_no_marker(store):
    bars = bars_rows("AAA", dt.date(2024, 1, 1), 80)
    store.write_bars(bars)
    first = indicator_rows(store.read_bars())
    store.replace_indicators(["AAA"], dt.date(2024, 1, 1), first)
    broken = first.set_column(0, "symbol", pa.array([None] * first.num_rows, pa.string()))
    marker = Marker("IndicatorChunk/x/0", "IndicatorChunk")
    with pytest.raises(Exception, match=r"(?i)not.null"):  # each driver's own not-null violation
        store.replace_indicators(["AAA"], dt.date(2024, 1, 1), broken, marker)
    assert store.read_indicators(["AAA"]).num_rows == 80
    assert store.completed(["IndicatorChunk/x/0"]) == set()


def test_replace_indicators_swaps_rows_and_marker_together(store):
    store.replace_universe(symbols_rows("AAA"))
    store.write_bars(bars_rows("AAA", dt.date(2024, 1, 1), 80))
    rows = indicator_rows(store.read_bars())
    assert store.replace_indicators(["AAA"], dt.date(2024, 1, 1), rows, Marker("IndicatorChunk/p/0", "IndicatorChunk"))
    stored = store.read_indicators(["AAA"])
    assert stored.num_rows == 80
    np.testing.assert_array_equal(stored.column("rsi_14").to_numpy(zero_copy_only=False), rows.column("rsi_14").to_numpy(zero_copy_only=False))
    assert stored.column("sma_50")[48].as_py() is None and stored.column("sma_50")[49].as_py() is not None
    assert store.read_symbols().column("avg_volume_30")[0].as_py() == rows.column("avg_volume_30")[-1].as_py()
    assert store.indicator_summary(["AAA"], dt.date(2024, 3, 1))["rows"] == 20


def test_indicator_summary_counts_symbols_rows_and_dates(store):
    for name, days in (("AAA", 80), ("BBB", 70)):
        store.write_bars(bars_rows(name, dt.date(2024, 1, 1), days))
    store.replace_indicators(["AAA", "BBB"], dt.date(2024, 1, 1), indicator_rows(store.read_bars()))
    expected = store.read_indicators(["AAA", "BBB", "CCC"], start=dt.date(2024, 3, 1))
    dates = expected.column("date").to_pylist()
    assert store.indicator_summary(["AAA", "BBB", "CCC"], dt.date(2024, 3, 1)) == {
        "symbols": 2, "rows": expected.num_rows, "first_date": min(dates), "last_date": max(dates)}
    assert store.indicator_summary(["CCC"], dt.date(2024, 1, 1)) == {
        "symbols": 0, "rows": 0, "first_date": None, "last_date": None}


def test_restore_puts_rows_back_and_forgets_markers(store):
    store.write_bars(bars_rows("AAA", dt.date(2024, 1, 1), 60))
    rows = indicator_rows(store.read_bars())
    store.replace_indicators(["AAA"], dt.date(2024, 1, 1), rows)
    saved = store.read_indicators(["AAA"], start=dt.date(2024, 2, 1))
    store.replace_indicators(["AAA"], dt.date(2024, 2, 1), rows.slice(0, 0), Marker("IndicatorChunk/r/0", "IndicatorChunk"))
    assert store.read_indicators(["AAA"]).num_rows == 31
    store.restore_indicators(saved, ["AAA"], dt.date(2024, 2, 1), ["IndicatorChunk/r/0"])
    assert store.read_indicators(["AAA"]).num_rows == 60
    assert store.completed(["IndicatorChunk/r/0"]) == set()


def test_unknown_url_is_named():
    with pytest.raises(StoreError, match="sqlite:///x"):
        open_store("sqlite:///x")


def test_bulk_writes_round_trip_values_exactly(store):
    rng = np.random.default_rng(5)
    n = 2000
    values = rng.normal(0, 1, n) * 10.0 ** rng.integers(-300, 300, n)
    values[::97] = np.nan  # NULL in the store
    symbols = [f"S{i:05d}" for i in range(n)]
    columns = {name: values for name in INDICATORS.columns if name not in ("symbol", "date", "created_at")}
    rows = pa.table({"symbol": symbols, "date": pa.array([dt.date(1999, 12, 31)] * n, pa.date32()),
                     **{k: pa.array(v, from_pandas=True) for k, v in columns.items()},
                     "created_at": pa.array([dt.datetime(1970, 1, 1, 0, 0, 0, 1)] * n, pa.timestamp("us"))})
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    store.replace_indicators(symbols, dt.date(1999, 1, 1), rows)
    back = store.read_indicators(symbols)
    got = back.column("macd").to_numpy(zero_copy_only=False).astype(float)
    np.testing.assert_array_equal(got, values)  # bit-exact, NaN where NULL
    assert back.column("macd").null_count == len(values[::97])
    # created_at is the store's: the time of the write, whatever the computation handed over.
    assert before <= back.column("created_at")[0].as_py() <= dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    store.restore_indicators(rows, symbols, dt.date(1999, 1, 1))  # a backup's rows keep their own
    assert store.read_indicators(symbols).column("created_at")[0].as_py() == dt.datetime(1970, 1, 1, 0, 0, 0, 1)
    store.replace_universe(symbols_rows("삼성전자.KS", "É", name=["한글 이름, \"quoted\"\nline", ""], is_etf=[True, False]))
    names = {r["symbol"]: r for r in store.read_symbols().to_pylist()}
    assert names["삼성전자.KS"]["name"] == "한글 이름, \"quoted\"\nline" and names["삼성전자.KS"]["is_etf"] is True
    assert names["É"]["name"] == ""


def test_a_row_of_only_nulls_is_still_a_row(store):
    result = store.query("SELECT max(date) AS latest FROM bars")
    assert result.num_rows == 1 and result.column("latest")[0].as_py() is None


def test_bar_export_holds_exactly_what_read_bars_returns(store, tmp_path):
    """The Spark engine's snapshot: its chunks' staged rows are used only if the chunk's own read
    agrees, so the export must select the same bars, warm-up trimming included."""
    import pyarrow.parquet as pq

    start = dt.date(2024, 6, 3)
    store.write_bars(pa.concat_tables([
        bars_rows("LONG", dt.date(2021, 1, 1), 1300),  # 1,249 bars before start: the last 500 kept
        bars_rows("OLD", dt.date(2015, 1, 1), 300),  # nothing in the look-back window: not read
        bars_rows("HALTED", dt.date(2019, 1, 1), 600),
        bars_rows("HALTED", dt.date(2024, 2, 1), 150),  # 123 bars in the window: read in full
        bars_rows("NEW", dt.date(2024, 5, 20), 30),
    ]))
    symbols = ["HALTED", "LONG", "NEW", "OLD", "NONE"]
    columns = ["symbol", "date", "close", "volume"]
    for read_start, warmup in ((start, 500), (None, 0), (start, 0), (dt.date(2025, 6, 2), 500)):
        path = tmp_path / f"bars-{read_start}-{warmup}.parquet"
        count = store.export_bars(path, symbols, read_start, warmup)
        exported = pq.read_table(path).select(columns).sort_by([("symbol", "ascending"), ("date", "ascending")])
        expected = store.read_bars(symbols, start=read_start, warmup_bars=warmup).select(columns)
        assert count == expected.num_rows > 0
        assert exported.cast(expected.schema).equals(expected), (read_start, warmup)
        # What a chunk reads: only the columns the indicators use, the same rows.
        assert store.read_bars(symbols, start=read_start, warmup_bars=warmup, schema=BAR_SNAPSHOT).equals(expected)
    trimmed = store.read_bars(["LONG"], start=start, warmup_bars=500)
    assert pc.sum(pc.less(trimmed.column("date"), pa.scalar(start, pa.date32()))).as_py() == 500


def test_report_reads_aggregate_per_date_and_name_the_missing(store):
    store.replace_universe(symbols_rows("AAA", "BBB", "CCC"))
    day = dt.date(2025, 1, 10)
    store.write_bars(pa.concat_tables([bars_rows("AAA", dt.date(2025, 1, 1), 10), bars_rows("BBB", dt.date(2025, 1, 1), 9)]))
    indicators = indicator_rows(store.read_bars(["AAA"]))
    store.replace_indicators(["AAA"], dt.date(2025, 1, 1), indicators)
    counts = {r["date"]: r for r in store.session_counts(dt.date(2025, 1, 9), day).to_pylist()}
    assert counts[dt.date(2025, 1, 9)] == {"date": dt.date(2025, 1, 9), "bar_symbols": 2, "bar_rows": 2,
                                           "indicator_symbols": 1, "indicator_rows": 1}
    assert counts[day]["bar_symbols"] == 1 and set(counts) == {dt.date(2025, 1, 9), day}
    assert store.missing_on(day) == {"without_bars": ["BBB", "CCC"], "without_indicators": []}
    assert store.missing_on(dt.date(2025, 1, 9)) == {"without_bars": ["CCC"], "without_indicators": ["BBB"]}


def test_task_runs_of_a_day_and_newest_markers(store):
    rows = [("Daily", {"date": "2025-01-10"}), ("IngestDate", {"date": "2025-01-09"}),
            ("IndicatorChunk", {"chunk_id": "0", "date": "2025-01-03", "plan_id": "daily-2025-01-10"}),
            ("IndicatorChunk", {"chunk_id": "0", "date": "2025-01-10", "plan_id": "rebuild-2025-01-10"})]
    with store.session() as session:
        for i, (family, params) in enumerate(rows):
            session.execute(
                "INSERT INTO task_runs (task_id, task_family, params, status, attempt, started_at) "
                "VALUES (:i, :f, :p, 'DONE', 1, :t)",
                {"i": f"t{i}", "f": family, "p": json.dumps(params, sort_keys=True), "t": dt.datetime(2025, 1, 10, 1, i)})
    assert store.task_runs_of_day(dt.date(2025, 1, 10)).column("task_id").to_pylist() == ["t0", "t2"]
    store.touch(Marker("Report/2025-01-09", "Report", {}, {"path": "a.html"}))
    store.touch(Marker("Report/2025-01-10", "Report", {}, {"path": "b.html"}))
    store.touch(Marker("Replicate/2025-01-10", "Replicate", {}, {"path": "r.duckdb"}))
    newest = {m["task_family"]: m["stats"]["path"] for m in store.newest_markers()}
    assert newest == {"Report": "b.html", "Replicate": "r.duckdb"}


def test_run_tables_have_exactly_their_columns(store):
    store.ensure_schema()
    for table in RUN_TABLES:
        columns = store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t ORDER BY ordinal_position",
            {"t": table.name},
        ).column("column_name").to_pylist()
        assert columns == table.columns, table.name


def test_a_run_plan_is_written_once_and_never_replaced(store):
    created = dt.datetime(2025, 10, 10, 22, 0, 1, 123456)
    document = json.dumps({"chunk_size": 2, "chunks": [["AAA", "BBB"], ["삼성"]], "replaces": {"rows": 3}})
    assert store.read_run_plan("rebuild-2025-09-29") is None
    assert store.add_run_plan("rebuild-2025-09-29", "rebuild", dt.date(2025, 9, 29), document,
                              "/data/runs/rebuild-2025-09-29/backup.parquet", "host-a", created)
    # A second planner (another machine, a deliberate repeat without --run-id) changes nothing.
    assert not store.add_run_plan("rebuild-2025-09-29", "rebuild", dt.date(2025, 9, 30), "{}", None, "host-b",
                                  dt.datetime(2026, 1, 1))
    assert store.add_run_plan("daily-2025-10-10", "daily", dt.date(2025, 10, 3), "{}", None, "host-b", created)
    assert store.read_run_plan("rebuild-2025-09-29") == {
        "plan_id": "rebuild-2025-09-29", "kind": "rebuild", "start_date": dt.date(2025, 9, 29), "plan": document,
        "backup_path": "/data/runs/rebuild-2025-09-29/backup.parquet", "planned_on": "host-a", "created_at": created,
    }
    assert [row["plan_id"] for row in store.read_run_plans()] == ["daily-2025-10-10", "rebuild-2025-09-29"]


def test_chunk_failures_keep_each_chunks_last_error_apart_from_its_rolled_back_write(store):
    store.write_bars(bars_rows("AAA", dt.date(2025, 1, 1), 5))
    marker = Marker("IndicatorChunk/rebuild-2025-01-01/1", "IndicatorChunk")
    with pytest.raises(Exception):
        store.replace_indicators(["AAA"], dt.date(2025, 1, 1), pa.table({"symbol": ["AAA"]}), marker)  # no columns
    store.record_chunk_failure("rebuild-2025-01-01", 1, "first: 'quoted' error", "ValueError", "host-a")
    store.record_chunk_failure("rebuild-2025-01-01", 1, "second error", "OSError", "host-b")
    store.record_chunk_failure("rebuild-2025-01-01", 0, "chunk zero", "RuntimeError", "host-a")
    store.record_chunk_failure("rebuild-2025-02-02", 0, "another run", "RuntimeError", "host-a")
    found = store.read_chunk_failures("rebuild-2025-01-01")
    assert [(f["chunk_id"], f["error"], f["error_type"], f["host"]) for f in found] == [
        (0, "chunk zero", "RuntimeError", "host-a"), (1, "second error", "OSError", "host-b")]
    assert all(isinstance(f["failed_at"], dt.datetime) for f in found)
    assert store.read_marker(marker.marker_id) is None


def test_run_report_tracks_the_attempt_then_the_final_report_then_a_restore(store):
    plan_id = "rebuild-2025-01-01"
    first = store.start_run_attempt(plan_id, "host-a:100")
    assert store.start_run_attempt(plan_id, "host-a:100") == first  # the same command re-entering
    second = store.start_run_attempt(plan_id, "host-b:200")  # another command's attempt starts afresh
    assert second >= first
    row = store.read_run_reports(plan_id)[plan_id]
    assert row["attempt_owner"] == "host-b:200" and row["report"] is None and row["finished_at"] is None
    finished = dt.datetime(2025, 10, 10, 22, 5)
    store.finish_run(plan_id, json.dumps({"saved_rows": 3}), finished)
    row = store.read_run_reports(plan_id)[plan_id]
    assert (row["attempt_owner"], row["attempt_started_at"], row["finished_at"], row["restored_at"]) == (None, None, finished, None)
    assert json.loads(row["report"]) == {"saved_rows": 3}
    # A restore undoes the run in the same transaction as its rows; finishing it again clears that.
    store.write_bars(bars_rows("AAA", dt.date(2025, 1, 1), 5))
    store.restore_indicators(INDICATORS.schema.empty_table(), ["AAA"], dt.date(2025, 1, 1), undone_run=plan_id)
    assert store.read_run_reports(plan_id)[plan_id]["restored_at"] is not None
    store.finish_run(plan_id, json.dumps({"saved_rows": 4}), finished + dt.timedelta(hours=1))
    row = store.read_run_reports()[plan_id]
    assert row["restored_at"] is None and json.loads(row["report"]) == {"saved_rows": 4}


def test_a_final_report_commits_with_the_runs_marker_once(store):
    marker = Marker("RebuildFrom/rebuild-2025-01-01", "RebuildFrom", {"start_date": "2025-01-01"}, {"saved_rows": 3})
    finished = dt.datetime(2025, 10, 10, 22, 5)
    assert store.finish_run("rebuild-2025-01-01", json.dumps({"saved_rows": 3}), finished, marker)
    # A second worker finishing the same run meanwhile writes neither report nor marker.
    assert not store.finish_run("rebuild-2025-01-01", json.dumps({"saved_rows": 99}), finished, marker)
    assert json.loads(store.read_run_reports()["rebuild-2025-01-01"]["report"]) == {"saved_rows": 3}
    assert store.read_marker(marker.marker_id)["stats"] == {"saved_rows": 3}
def test_replica_export_copies_every_table_row_for_row(store, tmp_path):
    """The replica is the store's copy (README "replica"): every table, every row once, whatever the
    store's text order, with more symbols than one of PostgreSQL's export batches (100 symbols)."""
    import duckdb

    names = [f"{prefix}{i:03d}" for i in range(60) for prefix in ("a", "B", "É")] + ["005930.KS", "삼성전자", "Z-1", "z"]
    store.replace_universe(symbols_rows(*names), Marker("CollectSymbols/2025-01-10", "CollectSymbols"))
    store.write_bars(pa.concat_tables([bars_rows(s, dt.date(2024, 1, 1), 20 + i % 7) for i, s in enumerate(names)]))
    store.replace_indicators(names, dt.date(2024, 1, 1), indicator_rows(store.read_bars()))
    path = tmp_path / "replica.duckdb"
    counts = store.export_replica(path)
    replica = duckdb.connect(str(path), read_only=True)
    try:
        for table in store.replica_tables():
            expected = store.query(f"SELECT * FROM {table.name}")
            copied = replica.execute(f"SELECT * FROM {table.name}").to_arrow_table()
            assert counts[table.name] == copied.num_rows == expected.num_rows, table.name
            # Row for row, in the table's types (a store's ad-hoc read types an all-NULL column as null).
            order = [(c, "ascending") for c in (table.key or table.columns)]
            assert table.conform(copied).sort_by(order).equals(table.conform(expected).sort_by(order)), table.name
    finally:
        replica.close()
    assert counts["bars"] == sum(20 + i % 7 for i in range(len(names))) and counts["symbols"] == len(names) > 100


def test_first_runs_racing_on_an_empty_postgres_database_create_the_schema_once(postgres_url):
    """Workers of two first runs (separate connections, as separate processes have) all call
    ensure_schema at once: none fails on the other's CREATE, and the schema is there once."""
    import threading

    from stockpipe.store.postgres_store import PostgresStore

    starting = threading.Barrier(4)
    errors: list[BaseException] = []

    def first_run():
        store = PostgresStore(postgres_url)  # not the shared instance: a connection pool of its own
        try:
            starting.wait(30)
            store.ensure_schema()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            store.close()

    runs = [threading.Thread(target=first_run) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert errors == []
    store = open_store(postgres_url)
    assert store.query("SELECT version FROM schema_version").column("version").to_pylist() == [SCHEMA_VERSION]


def test_first_and_last_bar_dates_and_the_symbols_with_bars(store):
    store.write_bars(pa.concat_tables([bars_rows("AAA", dt.date(2025, 1, 1), 10), bars_rows("BBB", dt.date(2025, 1, 4), 2)]))
    assert store.last_bar_dates(["AAA", "BBB", "CCC"]) == {"AAA": dt.date(2025, 1, 10), "BBB": dt.date(2025, 1, 5)}
    assert store.first_bar_dates(["BBB", "CCC"]) == {"BBB": dt.date(2025, 1, 4)}
    assert store.bar_symbols() == ["AAA", "BBB"]  # whether listed in symbols or not
    assert store.last_bar_date() == dt.date(2025, 1, 10)


def test_the_symbols_with_bars_come_in_code_point_order_and_an_empty_store_has_no_last_bar(store):
    assert store.last_bar_date() is None and store.bar_symbols() == []
    # A language's collation puts BFAM before BF-B, or ignores case; Python (and every chunk) does not.
    names = ["BFAM", "BF-B", "bf", "AAA", "BF.A"]
    store.write_bars(pa.concat_tables([bars_rows(n, dt.date(2025, 1, 1 + i), 1) for i, n in enumerate(names)]))
    assert store.bar_symbols() == sorted(names)
    assert store.last_bar_date() == dt.date(2025, 1, 5)


def test_task_runs_count_each_tasks_attempts(store):
    def run(task_id: str, status: str) -> dict:
        return {"task_id": task_id, "task_family": "Daily", "params": "{}", "status": status,
                "started_at": dt.datetime(2025, 1, 10, 1), "finished_at": dt.datetime(2025, 1, 10, 2),
                "duration_seconds": 3600.0, "error": None if status == "DONE" else "boom", "host": "here"}

    assert store.record_task_run(run("a", "FAILED")) == 1
    assert store.record_task_run(run("b", "FAILED")) == 1
    assert store.record_task_run(run("a", "DONE"), with_attempt=False) is None
    assert store.record_task_run(run("a", "DONE")) == 3
    stored = store.query("SELECT task_id, status, attempt, error FROM task_runs ORDER BY task_id, attempt").to_pylist()
    assert [(r["task_id"], r["status"], r["attempt"], r["error"]) for r in stored] == [
        ("a", "FAILED", 1, "boom"), ("a", "DONE", 2, None), ("a", "DONE", 3, None), ("b", "FAILED", 1, "boom")]


def test_nulls_despite_history_count_bars_before_the_window(store):
    store.write_bars(pa.concat_tables([bars_rows("AAA", dt.date(2025, 1, 1), 10), bars_rows("BBB", dt.date(2025, 1, 1), 10)]))
    store.replace_indicators(["AAA"], dt.date(2025, 1, 1), indicator_rows(store.read_bars(["AAA"])))
    # 10 bars: sma_20 is NULL on each. With 2 bars before Jan 3, AAA's bar of Jan 6 is its 6th (position 5).
    found = store.nulls_despite_history(dt.date(2025, 1, 3), {"sma_20": 5, "rsi_14": 100})
    assert [(r["date"], int(r["symbols"]), int(r["sma_20"]), int(r["rsi_14"])) for r in found] == [
        (dt.date(2025, 1, d), 1, 1, 0) for d in range(6, 11)]
    assert store.nulls_despite_history(dt.date(2025, 1, 3), {"sma_20": 100}) == []


def test_latest_watchlist_date(store):
    assert store.latest_watchlist_date() is None
    for day in (dt.date(2025, 1, 9), dt.date(2025, 1, 10)):
        row = {c: pa.array([None], f.type) for c, f in zip(DAILY_WATCHLIST.columns, DAILY_WATCHLIST.schema)}
        row.update(scan_date=pa.array([day], pa.date32()), symbol=pa.array(["AAA"]))
        store.replace_watchlist(day, pa.table(row))
    store.replace_watchlist(dt.date(2025, 1, 11), pa.table({c: pa.array([], f.type) for c, f in zip(DAILY_WATCHLIST.columns, DAILY_WATCHLIST.schema)}))
    assert store.latest_watchlist_date() == dt.date(2025, 1, 10)  # a scan without hits has no rows


def test_backup_export_in_symbol_batches_holds_every_row(store, tmp_path):
    from stockpipe.services.rebuild import check_backup

    names = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    for offset, name in enumerate(names):
        store.write_bars(bars_rows(name, dt.date(2024, 1, 1), 60 + offset))
    store.replace_indicators(names, dt.date(2024, 1, 1), indicator_rows(store.read_bars()))
    expected = store.read_indicators(start=dt.date(2024, 2, 1), end=dt.date(2024, 2, 20))
    path = tmp_path / "backup.parquet"
    saved = store.export_indicators(path, list(reversed(names)), dt.date(2024, 2, 1), {"stockpipe": "{}"},
                                    end=dt.date(2024, 2, 20), batch_symbols=2)
    import pyarrow.parquet as pq

    assert saved == expected.num_rows == 5 * 20
    # One file; no order is promised within a batch (a restore needs none).
    written = pq.read_table(path).replace_schema_metadata(None).sort_by([("symbol", "ascending"), ("date", "ascending")])
    assert written.equals(expected)
    check_backup(path)  # count and checksum over the batches match a read of the whole file


def test_backup_export_writes_a_row_group_per_batch_of_symbols(store, tmp_path):
    """A batch of symbols is one row group, however the store's driver splits its rows (the CSV
    reader behind PostgreSQL's COPY parses ~1 MB blocks: a full rebuild's backup had 1,272 row
    groups instead of 25, and writing them cost more than the rows)."""
    import pyarrow.parquet as pq

    names = ["AAA", "BBB", "CCC"]
    for name in names:
        store.write_bars(bars_rows(name, dt.date(2000, 1, 1), 6_000))
    store.replace_indicators(names, dt.date(2000, 1, 1), indicator_rows(store.read_bars()))
    path = tmp_path / "backup.parquet"
    saved = store.export_indicators(path, names, dt.date(2000, 1, 1), {"stockpipe": "{}"}, batch_symbols=2)
    metadata = pq.ParquetFile(path).metadata
    assert saved == metadata.num_rows == 18_000
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [12_000, 6_000]


def test_repeated_replaces_reuse_the_space_they_free(store):
    """Each replace deletes every row and inserts it again: the database must not grow with every
    repeat once the replaced rows' space is reclaimed (PostgreSQL: VACUUM; autovacuum may be off)."""
    names = [f"S{i:03d}" for i in range(40)]
    for name in names:
        store.write_bars(bars_rows(name, dt.date(2020, 1, 1), 400))
    rows = indicator_rows(store.read_bars())
    sizes = []
    for _ in range(6):
        store.replace_indicators(names, dt.date(2020, 1, 1), rows)
        store.reclaim("indicators", rows.num_rows)
        sizes.append(_stored_size(store, "indicators"))
    assert store.read_indicators().num_rows == rows.num_rows
    assert sizes[-1] <= sizes[1], sizes  # steady after the first repeat, not one table more each time


def _stored_size(store, table: str) -> int:
    if store.dialect == "postgresql":
        return store.query(f"SELECT pg_total_relation_size('{table}') AS n").column("n")[0].as_py()
    store.query("CHECKPOINT")
    return store.query("SELECT total_blocks * block_size AS n FROM pragma_database_size()").column("n")[0].as_py()


def test_several_bar_reads_come_from_one_snapshot(store, store_url, store_kind, monkeypatch):
    """A chunk reading its symbols from several starts (healing ones from their gaps) replaces their
    rows up to one last date: a bar committed between two of its reads must be in all or none. On
    PostgreSQL another connection commits one between them; a DuckDB store's process holds its file's
    one connection for the whole read, so no write can come between."""
    store.write_bars(pa.concat_tables([bars_rows("AAA", dt.date(2025, 1, 1), 10), bars_rows("BBB", dt.date(2025, 1, 1), 10)]))
    writer = open_store(store_url) if store_kind == "postgres" else None
    reads = []
    original = type(store)._read_bar_range

    def read_then_someone_writes(self, session, *args):
        found = original(self, session, *args)
        reads.append(found)
        if len(reads) == 1 and writer is not None:
            writer.write_bars(pa.concat_tables([bars_rows("AAA", dt.date(2025, 1, 11), 1),
                                                bars_rows("BBB", dt.date(2025, 1, 11), 1)]))
        return found

    monkeypatch.setattr(type(store), "_read_bar_range", read_then_someone_writes)
    first, second = store.read_bars_many([(["AAA"], dt.date(2025, 1, 5), 0), (["BBB"], dt.date(2025, 1, 3), 0)])
    monkeypatch.undo()
    assert len(reads) == 2
    assert first.column("date").to_pylist() == [dt.date(2025, 1, d) for d in range(5, 11)]
    assert second.column("date").to_pylist() == [dt.date(2025, 1, d) for d in range(3, 11)]
    assert store.read_bars(["BBB"]).num_rows == (11 if writer is not None else 10)  # the write did land
    if writer is not None:
        writer.close()
