"""NASDAQ symbol sources: the Nasdaq Trader symbol directory and the NASDAQ stock screener.

Directory files are pipe-delimited with a header and a last line `File Creation Time: ...`:
  nasdaqlisted.txt  Symbol|Security Name|Market Category|Test Issue|Financial Status|Round Lot Size|ETF|NextShares
  otherlisted.txt   ACT Symbol|Security Name|Exchange|CQS Symbol|ETF|Round Lot Size|Test Issue|NASDAQ Symbol
The screener JSON has data.rows[] with symbol, name, marketCap, sector, industry, country; marketCap
is a plain decimal string ("2541133923800"), "" or "NA" when unknown, or "2,541,133,923,800".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from stockpipe.sources.base import SourceError, symbols_table

NASDAQ_LISTED_URL = "https://www.nasdaqtrader.com/dynamic/SymDir/nasdaqlisted.txt"
OTHER_LISTED_URL = "https://www.nasdaqtrader.com/dynamic/SymDir/otherlisted.txt"
SCREENER_URL = "https://api.nasdaq.com/api/screener/stocks?tableonly=true&limit=25&offset=0&download=true"

NASDAQ_HEADER = ["Symbol", "Security Name", "Market Category", "Test Issue", "Financial Status", "Round Lot Size", "ETF", "NextShares"]
OTHER_HEADER = ["ACT Symbol", "Security Name", "Exchange", "CQS Symbol", "ETF", "Round Lot Size", "Test Issue", "NASDAQ Symbol"]
_EXCHANGES = {"A": "NYSE American", "N": "NYSE", "P": "NYSE Arca", "Z": "Cboe BZX", "V": "IEX"}


@dataclass(frozen=True)
class Listing:
    symbol: str  # Yahoo's form
    name: str
    exchange: str
    is_etf: bool


def yahoo_symbol(symbol: str, notation: str = "cqs") -> str:
    """A listing's symbol in Yahoo's form.

    Directory files use CQS notation: class `BRK.B` -> `BRK-B`, preferred `PBR$A` -> `PBR-PA` (`ABC$`
    -> `ABC-P`), warrants `XYZ.WS` -> `XYZ-WT`, units `XYZ.U` -> `XYZ-UN`, rights `XYZ.RT` -> `XYZ-RI`.
    The screener uses NASDAQ notation: class `BRK/B` -> `BRK-B`, preferred `PBR^A` -> `PBR-PA`.
    """
    s = symbol.strip().upper()
    if notation == "screener":
        if "^" in s:
            base, _, series = s.partition("^")
            return f"{base}-P{series}"
        return s.replace("/", "-")
    if "$" in s:
        base, _, series = s.partition("$")
        return f"{base}-P{series}"
    for suffix, yahoo in ((".WS", "-WT"), (".U", "-UN"), (".RT", "-RI"), (".R", "-RI")):
        if s.endswith(suffix):
            return s[: -len(suffix)].replace(".", "-") + yahoo
    return s.replace(".", "-")


def parse_directory(text: str, name: str) -> list[Listing]:
    """Parse nasdaqlisted.txt or otherlisted.txt; test issues are dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SourceError(f"{name}: empty file")
    header = lines[0].split("|")
    if header not in (NASDAQ_HEADER, OTHER_HEADER):
        raise SourceError(f"{name} line 1: not a Nasdaq Trader symbol directory header: {lines[0][:120]!r}")
    if not lines[-1].startswith("File Creation Time:"):
        raise SourceError(f"{name}: truncated (no 'File Creation Time' line at the end; last line {len(lines)}: {lines[-1][:80]!r})")
    nasdaq = header == NASDAQ_HEADER
    listings = []
    for number, line in enumerate(lines[1:-1], start=2):
        fields = line.split("|")
        if len(fields) != len(header):
            raise SourceError(f"{name} line {number}: {len(fields)} fields, expected {len(header)}: {line[:120]!r}")
        row = dict(zip(header, fields))
        if row["Test Issue"] == "Y":
            continue
        symbol = row["Symbol"] if nasdaq else row["ACT Symbol"]
        if not symbol:
            raise SourceError(f"{name} line {number}: empty symbol")
        exchange = "NASDAQ" if nasdaq else _EXCHANGES.get(row["Exchange"], row["Exchange"])
        listings.append(Listing(yahoo_symbol(symbol), row["Security Name"], exchange, row["ETF"] == "Y"))
    return listings


def _market_cap(raw: Any, name: str, symbol: str) -> float | None:
    if raw is None:
        return None
    text = str(raw).strip().replace(",", "").replace("$", "")
    if text in ("", "NA", "N/A"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise SourceError(f"{name}: {symbol}: marketCap {raw!r} is not a number") from exc


def parse_screener(text: str, name: str = "screener") -> dict[str, dict[str, Any]]:
    """{yahoo symbol: {name, market_cap, sector, industry, country}} from the screener JSON."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{name}: not JSON (truncated?) at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    rows = ((payload or {}).get("data") or {}).get("rows")
    if rows is None:
        rows = (((payload or {}).get("data") or {}).get("table") or {}).get("rows")
    if not isinstance(rows, list):
        raise SourceError(f"{name}: no data.rows list in the screener response")
    found = {}
    for index, row in enumerate(rows):
        symbol = str(row.get("symbol") or "").strip()
        if not symbol:
            raise SourceError(f"{name}: data.rows[{index}] has no symbol")
        found[yahoo_symbol(symbol, "screener")] = {
            "name": row.get("name"),
            "market_cap": _market_cap(row.get("marketCap"), name, symbol),
            "sector": row.get("sector") or None,
            "industry": row.get("industry") or None,
            "country": row.get("country") or None,
        }
    return found


def universe(listings: list[Listing], screener: dict[str, dict[str, Any]] | None, min_market_cap: float | None) -> pa.Table:
    """The symbols table: directory listings enriched by the screener, filtered by market cap
    (ETFs have no market cap in the screener and are kept)."""
    seen: set[str] = set()
    columns: dict[str, list] = {k: [] for k in ("symbol", "name", "exchange", "sector", "industry", "market_cap", "is_etf")}
    for listing in listings:
        if listing.symbol in seen:
            continue
        seen.add(listing.symbol)
        facts = (screener or {}).get(listing.symbol, {})
        cap = facts.get("market_cap")
        if min_market_cap and not listing.is_etf and (cap is None or cap < min_market_cap):
            continue
        columns["symbol"].append(listing.symbol)
        columns["name"].append(listing.name)
        columns["exchange"].append(listing.exchange)
        columns["sector"].append(facts.get("sector"))
        columns["industry"].append(facts.get("industry"))
        columns["market_cap"].append(cap)
        columns["is_etf"].append(listing.is_etf)
    return symbols_table(columns)
