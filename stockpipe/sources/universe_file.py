"""A universe from a CSV file: a market the NASDAQ directory does not list (KRX), or a hand-kept list.

Columns (header names case-insensitive): `symbol` or `code`, `name`, and optionally `market`
(KOSPI -> `.KS`, KOSDAQ -> `.KQ`, added to a bare six-digit KRX code), `exchange`, `sector`,
`industry`, `market_cap`, `is_etf`. Names are read as UTF-8 and kept intact (삼성전자 stays 삼성전자).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa

from stockpipe.sources.base import SourceError, symbols_table

KRX_SUFFIX = {"KOSPI": ".KS", "KOSDAQ": ".KQ"}


def read_universe(path: str | Path) -> pa.Table:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SourceError(f"cannot read universe file {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    key = fields.get("symbol") or fields.get("code")
    if key is None or "name" not in fields:
        raise SourceError(f"{path} line 1: needs a symbol (or code) and a name column, found {reader.fieldnames}")
    columns: dict[str, list] = {k: [] for k in ("symbol", "name", "exchange", "sector", "industry", "market_cap", "is_etf")}
    for number, row in enumerate(reader, start=2):
        code = (row.get(key) or "").strip()
        if not code:
            raise SourceError(f"{path} line {number}: empty {key}")
        market = (row.get(fields.get("market", ""), "") or "").strip().upper()
        if market and market not in KRX_SUFFIX and "." not in code:
            raise SourceError(f"{path} line {number}: market {market!r} is not KOSPI or KOSDAQ")
        symbol = code + KRX_SUFFIX[market] if market in KRX_SUFFIX and "." not in code else code
        cap = (row.get(fields.get("market_cap", ""), "") or "").replace(",", "").strip()
        try:
            columns["market_cap"].append(float(cap) if cap else None)
        except ValueError as exc:
            raise SourceError(f"{path} line {number}: market_cap {cap!r} is not a number") from exc
        columns["symbol"].append(symbol)
        columns["name"].append((row.get(fields["name"]) or "").strip())
        columns["exchange"].append((row.get(fields.get("exchange", ""), "") or market or None))
        columns["sector"].append((row.get(fields.get("sector", ""), "") or None))
        columns["industry"].append((row.get(fields.get("industry", ""), "") or None))
        columns["is_etf"].append((row.get(fields.get("is_etf", ""), "") or "").strip().lower() in ("1", "true", "y", "yes"))
    if not columns["symbol"]:
        raise SourceError(f"{path}: no symbols")
    return symbols_table(columns)
