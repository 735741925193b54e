"""`stockpipe import-legacy`: an old-system database built here (DuckDB and PostgreSQL) imported into
both stores: validated, idempotent, resumable after a SIGKILL, reporting every bad row."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pytest

from stockpipe import cli
from stockpipe.services import legacy
from stockpipe.store import open_store
from stockpipe.store.schema import BARS, DAILY_WATCHLIST, SYMBOLS
from tests.conftest import _pg_admin, pg_url_for
from tests.services.legacy_db import START, build_duckdb, build_postgres, old_data


@pytest.fixture
def old_postgres_url():
    """A PostgreSQL database of this test's own for the old system's schema, dropped afterwards."""
    admin = _pg_admin()
    name = f"stockpipe_old_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield pg_url_for(name)
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["old-duckdb", pytest.param("old-postgres", marks=pytest.mark.postgres)])
def old_source(request, tmp_path):
    def build(data):
        if request.param == "old-duckdb":
            return build_duckdb(tmp_path / "old.duckdb", data)
        return build_postgres(request.getfixturevalue("old_postgres_url"), data)

    return build


def run_import(store_url, monkeypatch, *args) -> tuple[int, str]:
    monkeypatch.setenv("STOCKPIPE_STORE_URL", store_url)
    out = io.StringIO()
    return cli.main(["import-legacy", *args], out=out), out.getvalue()


def stored_bars(store) -> dict[tuple, tuple]:
    rows = store.read_bars().to_pylist()
    return {(r["symbol"], r["date"]): (r["open"], r["high"], r["low"], r["close"], r["volume"]) for r in rows}


def assert_no_duplicates(store) -> None:
    for table, key in (("bars", "symbol, date"), ("daily_watchlist", "scan_date, symbol"), ("symbols", "symbol")):
        total, distinct = store.query(f"SELECT count(*) AS n, count(DISTINCT ({key})) AS d FROM {table}").to_pylist()[0].values()
        assert total == distinct, table


def test_import_copies_good_rows_reports_bad_ones_and_reruns_as_a_no_op(old_source, store_url, monkeypatch):
    data = old_data()
    source = old_source(data)
    code, output = run_import(store_url, monkeypatch, source, "--batch-size", "5")
    assert code == 0, output
    store = open_store(store_url)
    assert stored_bars(store) == data.good_bars
    symbols = {r["symbol"]: r for r in store.read_symbols(active_only=False).to_pylist()}
    assert set(symbols) == data.good_symbols
    assert symbols["T000"]["is_etf"] is True and symbols["T005"]["market_cap"] == 6e9
    assert all(r["is_active"] for r in symbols.values())  # RebuildFrom computes active symbols
    watch = store.read_watchlist().to_pylist()
    # 2 dates x 3 symbols; an identical copy kept once; T001's two different rows both refused.
    assert sorted((r["scan_date"], r["symbol"]) for r in watch) == sorted(
        (START + dt.timedelta(days=d), s) for d in (38, 39) for s in ("T000", "T001", "T002") if (d, s) != (38, "T001"))
    assert {r["symbol"]: r["market_cap_tier"] for r in watch} == {"T000": 2, "T001": 2, "T002": 1}
    for table, symbol, date, reason in data.bad:
        assert any(table in line and symbol in line and date in line and reason in line for line in output.splitlines()), \
            (table, symbol, date, reason, output)
    assert "RebuildFrom --start-date 2024-01-02" in output
    assert_no_duplicates(store)

    again, output = run_import(store_url, monkeypatch, source, "--batch-size", "5")
    assert again == 0 and stored_bars(store) == data.good_bars and len(store.read_watchlist()) == len(watch)
    assert_no_duplicates(store)


def test_import_keeps_what_the_store_already_has(tmp_path, duckdb_url, monkeypatch):
    data = old_data(tickers=6, days=10)
    source = build_duckdb(tmp_path / "old.duckdb", data)
    store = open_store(duckdb_url)
    store.replace_universe(pa.table({
        "symbol": ["T000"], "name": ["Newer Name"], "exchange": ["NASDAQ"], "sector": ["Tech"], "industry": [None],
        "market_cap": [5.0], "is_etf": [False], "is_active": [True], "avg_volume_30": [None],
        "updated_at": pa.array([dt.datetime(2025, 1, 1)], pa.timestamp("us"))}, schema=SYMBOLS.schema))
    store.write_bars(pa.table({"symbol": ["T000"], "date": pa.array([START], pa.date32()), "open": [1.0], "high": [2.0],
                               "low": [0.5], "close": [1.5], "volume": pa.array([7], pa.int64())}, schema=BARS.schema))
    scanned = START + dt.timedelta(days=9)
    store.replace_watchlist(scanned, pa.table({c: pa.array([None], f.type) for c, f in zip(DAILY_WATCHLIST.columns, DAILY_WATCHLIST.schema)})
                            .set_column(0, "scan_date", pa.array([scanned], pa.date32()))
                            .set_column(1, "symbol", pa.array(["MINE"])))
    code, output = run_import(duckdb_url, monkeypatch, source)
    assert code == 0, output
    assert store.read_symbols().to_pylist()[0]["name"] == "Newer Name"
    bars = stored_bars(store)
    assert bars[("T000", START)] == (1.0, 2.0, 0.5, 1.5, 7)
    assert {k: v for k, v in bars.items() if k != ("T000", START)} == {k: v for k, v in data.good_bars.items() if k != ("T000", START)}
    assert {r["symbol"] for r in store.read_watchlist(since=scanned, until=scanned).to_pylist()} == {"MINE"}
    # The other old scan date: T000 and T002 (T001 has two conflicting rows).
    assert len(store.read_watchlist(until=scanned - dt.timedelta(days=1))) == 2


@pytest.mark.both_stores  # PostgreSQL's marker lock (an advisory lock) is its own path
def test_killed_import_reruns_to_the_same_result_without_duplicates(tmp_path, store_url):
    """SIGKILL while the import is blocked inside a batch (PostgreSQL: on the 5th batch's marker lock,
    mid-transaction; DuckDB: waiting for the writer lock this test holds), then the same command again."""
    data = old_data(tickers=60, days=120, seed=3)
    source = build_duckdb(tmp_path / "old.duckdb", data)
    key = legacy.source_key(source)
    tickers = sorted({b[0] for b in data.bars})
    environment = {**os.environ, "STOCKPIPE_STORE_URL": store_url}
    command = [sys.executable, "-m", "stockpipe.cli", "import-legacy", source, "--batch-size", "2"]
    store = open_store(store_url)
    store.ensure_schema()
    blocker = None
    if store.dialect == "postgresql":
        import psycopg2

        blocker = psycopg2.connect(store_url.replace("postgresql+psycopg2:", "postgresql:", 1))
        blocker.autocommit = True
        fifth = f"{legacy.FAMILY}/{key}/bars/{tickers[8]}..{tickers[9]}"
        blocker.cursor().execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (fifth,))
    store.close()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("[3/"):
            break
    if blocker is not None:
        time.sleep(1.0)  # the 4th batch commits, the 5th waits on the lock inside its transaction
        process.send_signal(signal.SIGKILL)
        blocker.close()
    else:
        with store.session(write=True):  # the import waits for the writer lock from its next batch on
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    done = len(store.markers(prefix=f"{legacy.FAMILY}/{key}/bars/"))
    if blocker is not None:
        assert done == 4
    assert 3 <= done < 31, done  # killed part-way: 31 bar batches (61 tickers by 2)
    assert len(stored_bars(store)) < len(data.good_bars)
    assert_no_duplicates(store)
    store.close()

    rerun = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr.count("imported by an earlier run") == done
    assert stored_bars(store) == data.good_bars
    assert_no_duplicates(store)


def test_a_database_without_the_old_tables_is_named(tmp_path, duckdb_url, monkeypatch, capsys):
    import duckdb

    path = tmp_path / "other.duckdb"
    duckdb.connect(str(path)).execute("CREATE TABLE nasdaq_symbols (symbol VARCHAR)").close()
    code, _ = run_import(duckdb_url, monkeypatch, str(path))
    assert code == 2 and "the old database has no table stock_data" in capsys.readouterr().err
    duckdb.connect(str(path)).execute("CREATE TABLE stock_data (ticker VARCHAR, date DATE)").close()
    code, _ = run_import(duckdb_url, monkeypatch, str(path))
    assert code == 2 and "old table stock_data lacks column(s) open" in capsys.readouterr().err
    code, _ = run_import(duckdb_url, monkeypatch, str(tmp_path / "missing.duckdb"))
    assert code == 2 and "missing.duckdb: no such DuckDB file" in capsys.readouterr().err


def test_text_dates_are_read_and_unreadable_values_are_named(tmp_path, duckdb_url, monkeypatch, capsys):
    import duckdb

    path = tmp_path / "text.duckdb"
    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE nasdaq_symbols (symbol VARCHAR, market_cap DOUBLE)")
    connection.execute("INSERT INTO nasdaq_symbols VALUES ('AAA', 1e9)")
    connection.execute("CREATE TABLE stock_data (ticker VARCHAR, date VARCHAR, open DOUBLE, high DOUBLE, low DOUBLE, "
                       "close VARCHAR, volume BIGINT)")
    connection.execute("INSERT INTO stock_data VALUES ('AAA', '2024-01-02', 1, 2, 0.5, '1.5', 10), "
                       "('AAA', '2024-01-03 00:00:00', 1, 2, 0.5, '1.5', 10), ('AAA', 'someday', 1, 2, 0.5, '1.5', 10)")
    connection.close()
    code, output = run_import(duckdb_url, monkeypatch, str(path))
    assert code == 0, output
    assert sorted(stored_bars(open_store(duckdb_url))) == [("AAA", dt.date(2024, 1, 2)), ("AAA", dt.date(2024, 1, 3))]
    assert any("stock_data" in line and "AAA" in line and "someday" in line and "is not YYYY-MM-DD" in line for line in output.splitlines())

    connection = duckdb.connect(str(path))
    connection.execute("INSERT INTO stock_data VALUES ('AAA', '2024-01-04', 1, 2, 0.5, 'n/a', 10)")
    connection.close()
    code, _ = run_import(f"duckdb:///{tmp_path / 'second.duckdb'}", monkeypatch, str(path))
    assert code == 2 and "reading the old table stock_data failed" in capsys.readouterr().err


def test_a_stockpipe_store_is_not_taken_for_the_old_database(tmp_path, duckdb_url, monkeypatch, capsys):
    other = f"duckdb:///{tmp_path / 'other.duckdb'}"
    open_store(other).ensure_schema()
    open_store(other).close()
    code, _ = run_import(duckdb_url, monkeypatch, other)
    assert code == 2 and "this is a stockpipe store, not the old system's database" in capsys.readouterr().err


def test_source_urls_are_shown_without_passwords_and_named_without_credentials():
    assert legacy.redact("postgresql://old:p@ss@oldhost:5432/stocks") == "postgresql://old:***@oldhost:5432/stocks"
    assert legacy.redact("postgresql://reader@oldhost/stocks") == "postgresql://reader@oldhost/stocks"
    assert legacy.redact("/srv/old.duckdb") == "/srv/old.duckdb"
    same = {legacy.source_key(u) for u in ("postgresql://a:x@oldhost/stocks", "postgresql+psycopg2://b@oldhost/stocks")}
    assert len(same) == 1 and legacy.source_key("postgresql://a@oldhost/other") not in same
