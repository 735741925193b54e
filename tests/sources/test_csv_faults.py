"""Bad CSV input (issue 17 items 7, 13, 18): each bad row is named by file, line and value, counted
in the ingest marker, and never blocks the good rows."""

from __future__ import annotations

import datetime as dt

import pytest

from stockpipe.services.ingest import ingest_date
from stockpipe.sources.base import SourceError
from stockpipe.sources.csv_source import CsvSource
from stockpipe.store import Marker, open_store

DAY = dt.date(2025, 10, 8)
HEADER = "symbol,date,open,high,low,close,volume\n"
GOOD = {
    "AAPL": ["AAPL,2025-10-06,254,256.1,253,255.5,41000000", "AAPL,2025-10-07,255.5,257,254.2,256.9,39000000",
             "AAPL,2025-10-08,256.9,258.4,255.1,257.75,38000000"],
    "MSFT": ["MSFT,2025-10-06,510,514,509,512,16000000", "MSFT,2025-10-07,512,515,511,513,16500000",
             "MSFT,2025-10-08,512,515,511,513.4,16800000"],
}


def ingest(tmp_path, duckdb_url, files: dict[str, str], symbols_csv: str | None = None):
    source_dir = tmp_path / "bars"
    source_dir.mkdir()
    for name, text in files.items():
        (source_dir / name).write_text(text) if isinstance(text, str) else (source_dir / name).write_bytes(text)
    if symbols_csv is not None:
        (source_dir / "symbols.csv").write_text(symbols_csv)
    store = open_store(duckdb_url)
    source = CsvSource(str(source_dir))
    from stockpipe.sources.base import symbols_table

    store.replace_universe(symbols_table({"symbol": ["AAPL", "MSFT"]}))
    stats = ingest_date(store, source, DAY, days_back=5, backfill_sessions=10, marker=Marker(f"IngestDate/{DAY}", "IngestDate"))
    return store, stats


def stored(store):
    return [(r["symbol"], str(r["date"])) for r in store.read_bars().to_pylist()]


def test_a_bar_on_a_non_trading_day_is_rejected_with_a_warning_and_counted(tmp_path, duckdb_url, caplog):
    saturday = "AAPL,2025-10-04,250,252,249,251,1000"
    with caplog.at_level("WARNING", logger="stockpipe"):
        store, stats = ingest(tmp_path, duckdb_url, {"a.csv": HEADER + "\n".join([saturday, *GOOD["AAPL"]]) + "\n"})
    assert ("AAPL", "2025-10-04") not in stored(store)
    assert stats["rejected_by_reason"] == {"non_trading_day": 1}
    assert stats["rejected"][0]["origin"] == "a.csv:2" and "not a XNYS trading day" in stats["rejected"][0]["reason"]
    assert "2025-10-04 is not a XNYS trading day (a.csv:2)" in caplog.text


def test_one_malformed_cell_rejects_its_row_only_and_the_rest_is_ingested(tmp_path, duckdb_url):
    bad = GOOD["AAPL"][1].replace("256.9,39000000", "25O.9,39000000")
    store, stats = ingest(tmp_path, duckdb_url, {"a.csv": HEADER + "\n".join([GOOD["AAPL"][0], bad, GOOD["AAPL"][2]]) + "\n",
                                                 "m.csv": HEADER + "\n".join(GOOD["MSFT"]) + "\n"})
    assert stored(store) == [("AAPL", "2025-10-06"), ("AAPL", "2025-10-08"), ("MSFT", "2025-10-06"),
                             ("MSFT", "2025-10-07"), ("MSFT", "2025-10-08")]
    assert stats["rejected"] == [{"symbol": "AAPL", "date": "2025-10-07", "reason": "close '25O.9' is not a number",
                                  "origin": "a.csv:3"}]
    assert stats["rejected_by_reason"] == {"malformed": 1}


def test_a_compact_date_and_a_short_row_are_named_with_line_and_value(tmp_path, duckdb_url):
    compact = "AAPL,20251007,255.5,257,254.2,256.9,39000000"
    short = "AAPL,2025-10-08,256.9"
    store, stats = ingest(tmp_path, duckdb_url, {"a.csv": HEADER + "\n".join([GOOD["AAPL"][0], compact, short]) + "\n"})
    reasons = {r["origin"]: r["reason"] for r in stats["rejected"]}
    assert reasons == {"a.csv:3": "date '20251007' is not a YYYY-MM-DD date",
                       "a.csv:4": "row has 3 fields, the header 7"}
    assert stored(store) == [("AAPL", "2025-10-06")]


def test_a_binary_file_is_refused_cleanly_without_its_bytes(tmp_path):
    (tmp_path / "dump.csv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb8\xff\xfe\x00" * 200)
    with pytest.raises(SourceError) as caught:
        CsvSource(str(tmp_path)).bars(["AAPL"], dt.date(2025, 10, 1), DAY)
    message = str(caught.value)
    assert message == f"{tmp_path / 'dump.csv'}: not a text CSV file (binary content); remove it from the [csv] path directory"
    assert "\\x" not in message and "PK" not in message


def test_identical_duplicates_collapse_and_conflicting_ones_name_both_lines(tmp_path, duckdb_url):
    conflicting = GOOD["MSFT"][1].replace("513,16500000", "514,16500000")
    store, stats = ingest(tmp_path, duckdb_url, {
        "a.csv": HEADER + "\n".join([*GOOD["AAPL"], GOOD["AAPL"][1]]) + "\n",
        "m.csv": HEADER + "\n".join([*GOOD["MSFT"], conflicting]) + "\n",
    })
    assert ("AAPL", "2025-10-07") in stored(store), "an exact duplicate left a hole"
    assert stats["rows_skipped"] == {"identical_duplicate": 1}
    assert ("MSFT", "2025-10-07") not in stored(store)
    assert sorted(r["origin"] for r in stats["rejected"]) == ["m.csv:3", "m.csv:5"]
    assert all("conflicting duplicate bars at m.csv:3, m.csv:5" == r["reason"] for r in stats["rejected"])


def test_rows_of_symbols_the_universe_does_not_list_are_counted(tmp_path, duckdb_url):
    stranger = "ZZZZ,2025-10-07,1,1,1,1,1"
    store, stats = ingest(tmp_path, duckdb_url, {"a.csv": HEADER + "\n".join([*GOOD["AAPL"], stranger]) + "\n"},
                          symbols_csv="symbol,name\nAAPL,Apple\nMSFT,Microsoft\n")
    assert stats["rows_skipped"] == {"unknown_symbol": 1}
    assert [s for s, _ in stored(store)] == ["AAPL"] * 3
