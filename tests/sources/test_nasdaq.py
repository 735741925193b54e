"""NASDAQ directory and screener parsers on committed samples in the real formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockpipe.sources.base import SourceError
from stockpipe.sources.nasdaq import parse_directory, parse_screener, universe, yahoo_symbol

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _raw(path: Path) -> str:
    """The file's text with its CRLF line ends kept."""
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def test_directory_files_parse_with_crlf_and_lf_and_drop_test_issues():
    assert "\r\n" in _raw(SAMPLES / "nasdaqlisted.txt") and "\r\n" not in _raw(SAMPLES / "otherlisted.txt")
    listed = parse_directory(_raw(SAMPLES / "nasdaqlisted.txt"), "nasdaqlisted.txt")
    other = parse_directory((SAMPLES / "otherlisted.txt").read_text(), "otherlisted.txt")
    assert [l.symbol for l in listed] == ["AAPL", "MSFT", "QQQ", "TINY"]
    assert [l.symbol for l in other] == ["BRK-B", "PBR-PA", "SPY", "JPM"]
    assert {l.symbol: l.exchange for l in other}["SPY"] == "NYSE Arca"
    assert [l.symbol for l in listed + other if l.is_etf] == ["QQQ", "SPY"]


@pytest.mark.parametrize("cqs, yahoo", [("BRK.B", "BRK-B"), ("PBR$A", "PBR-PA"), ("ABC$", "ABC-P"),
                                        ("XYZ.WS", "XYZ-WT"), ("XYZ.U", "XYZ-UN"), ("XYZ.RT", "XYZ-RI")])
def test_cqs_suffixes_map_to_yahoo(cqs, yahoo):
    assert yahoo_symbol(cqs) == yahoo


def test_truncated_and_foreign_files_are_refused_with_the_file_named():
    text = _raw(SAMPLES / "nasdaqlisted.txt")
    truncated = "".join(text.splitlines(keepends=True)[:3])
    with pytest.raises(SourceError, match=r"nasdaqlisted.txt: truncated"):
        parse_directory(truncated, "nasdaqlisted.txt")
    with pytest.raises(SourceError, match=r"otherlisted.txt line 1: not a Nasdaq Trader symbol directory header"):
        parse_directory("symbol,name\nAAPL,Apple\n", "otherlisted.txt")
    short_row = text.replace("MSFT|Microsoft Corporation - Common Stock|Q|N|N|100|N|N", "MSFT|Microsoft")
    with pytest.raises(SourceError, match=r"nasdaqlisted.txt line 3: 2 fields, expected 8"):
        parse_directory(short_row, "nasdaqlisted.txt")


def test_screener_market_caps_in_both_notations():
    download = parse_screener((SAMPLES / "screener.json").read_text())
    assert download["AAPL"]["market_cap"] == 3770198472000.0
    assert download["BRK-B"]["sector"] == "Finance"
    assert download["PBR-PA"]["market_cap"] is None and download["JPM"]["market_cap"] is None
    display = parse_screener((SAMPLES / "screener_display.json").read_text())
    assert display["AAPL"]["market_cap"] == 2541133923800.0
    with pytest.raises(SourceError, match="not JSON"):
        parse_screener((SAMPLES / "screener.json").read_text()[:500])
    with pytest.raises(SourceError, match=r"AAPL: marketCap '3.7T' is not a number"):
        parse_screener('{"data":{"rows":[{"symbol":"AAPL","marketCap":"3.7T"}]}}')


def test_universe_keeps_etfs_and_filters_small_or_unknown_caps():
    listings = parse_directory((SAMPLES / "nasdaqlisted.txt").read_text(), "nasdaqlisted.txt")
    listings += parse_directory((SAMPLES / "otherlisted.txt").read_text(), "otherlisted.txt")
    table = universe(listings, parse_screener((SAMPLES / "screener.json").read_text()), 100e6)
    assert table.column("symbol").to_pylist() == ["AAPL", "MSFT", "QQQ", "BRK-B", "SPY"]
    assert table.column("market_cap").to_pylist()[0] == 3770198472000.0
