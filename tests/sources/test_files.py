"""CSV bar files and universe files (KRX): formats, Korean names, errors naming file and line."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from stockpipe.services.ingest import ingest_date
from stockpipe.sources.base import SourceError
from stockpipe.sources.csv_source import CsvSource
from stockpipe.sources.universe_file import read_universe
from stockpipe.store import open_store

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_csv_directory_with_case_insensitive_headers_and_any_column_order():
    source = CsvSource(str(SAMPLES / "csv_bars"))
    assert source.symbols(dt.date(2025, 10, 8)).column("name").to_pylist() == ["Apple Inc.", "Microsoft Corporation"]
    rows = source.bars(["AAPL", "MSFT"], dt.date(2025, 10, 7), dt.date(2025, 10, 8)).rows.to_pylist()
    assert [(r["symbol"], str(r["date"]), r["close"]) for r in rows] == [
        ("AAPL", "2025-10-07", 256.9), ("AAPL", "2025-10-08", 257.75), ("MSFT", "2025-10-07", 512.0), ("MSFT", "2025-10-08", 513.4)]
    assert rows[-1]["origin"] == "us_part2.csv:2"


def test_a_value_that_is_not_a_number_rejects_its_row_naming_file_line_and_column(tmp_path):
    shutil.copy(SAMPLES / "bad_number.csv", tmp_path / "bars.csv")
    fetched = CsvSource(str(tmp_path)).bars(["AAPL"], dt.date(2025, 10, 1), dt.date(2025, 10, 10))
    assert [r.describe() for r in fetched.rejected] == ["AAPL 2025-10-07: close '25O.90' is not a number (bars.csv:3)"]
    assert fetched.rows.column("date").to_pylist() == [dt.date(2025, 10, 6)]
    (tmp_path / "bars.csv").write_text("ticker,day,price\nAAPL,2025-10-06,1\n")
    with pytest.raises(SourceError, match=r"bars.csv line 1: missing column\(s\) symbol, date, open"):
        CsvSource(str(tmp_path)).bars(["AAPL"], dt.date(2025, 10, 1), dt.date(2025, 10, 10))


def test_bad_bars_are_rejected_with_file_and_line_and_nothing_stored_is_lost(tmp_path, duckdb_url, caplog):
    store = open_store(duckdb_url)
    good = CsvSource(str(SAMPLES / "csv_bars"))
    store.replace_universe(good.symbols(dt.date(2025, 10, 8)))
    ingest_date(store, good, dt.date(2025, 10, 8), days_back=5, backfill_sessions=10, marker=None)
    before = store.read_bars(["AAPL"])
    shutil.copy(SAMPLES / "bad_bar.csv", tmp_path / "bars.csv")
    with caplog.at_level("WARNING", logger="stockpipe"):
        stats = ingest_date(store, CsvSource(str(tmp_path)), dt.date(2025, 10, 8), days_back=5, backfill_sessions=10, marker=None)
    assert stats["bars_rejected"] == 2
    messages = [r["reason"] + " @ " + r["origin"] for r in stats["rejected"]]
    assert any("high 250 is below open 255.5 or close 256.9 @ bars.csv:3" in m for m in messages)
    assert any("volume -5 is negative @ bars.csv:4" in m for m in messages)
    assert "AAPL 2025-10-07: high 250 is below" in caplog.text
    after = store.read_bars(["AAPL"])
    # The rejected bars' dates keep what was stored; the good overlap bar (10-06) was re-written as is.
    assert after.equals(before)


def test_krx_universe_maps_markets_and_keeps_korean_names():
    table = read_universe(SAMPLES / "krx_universe.csv")
    assert table.column("symbol").to_pylist() == ["005930.KS", "000660.KS", "035720.KS", "247540.KQ"]
    assert table.column("name").to_pylist()[:2] == ["삼성전자", "SK하이닉스"]
    assert table.column("exchange").to_pylist()[3] == "KOSDAQ"


def test_universe_file_errors_name_the_line(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("code,name,market\n005930,삼성전자,KOSPI\n000660,SK하이닉스,NYSE\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"u.csv line 3: market 'NYSE' is not KOSPI or KOSDAQ"):
        read_universe(path)
