"""An old-system database (the Airflow pipeline's schema) built by the tests, in DuckDB or PostgreSQL,
with known good rows and planted bad ones."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

OLD_SCHEMA = (
    "CREATE TABLE nasdaq_symbols (symbol VARCHAR(16) PRIMARY KEY, name VARCHAR, sector VARCHAR, industry VARCHAR, "
    "market_cap DOUBLE PRECISION, is_etf BOOLEAN, avg_volume_30 DOUBLE PRECISION, updated_at TIMESTAMP)",
    "CREATE TABLE stock_data (ticker VARCHAR(16), date DATE, open DOUBLE PRECISION, high DOUBLE PRECISION, "
    "low DOUBLE PRECISION, close DOUBLE PRECISION, volume BIGINT, created_at TIMESTAMP)",
    "CREATE TABLE technical_indicators (ticker VARCHAR(16), date DATE, rsi_14 DOUBLE PRECISION, "
    "bb_lower DOUBLE PRECISION, created_at TIMESTAMP)",
    "CREATE TABLE daily_watchlist (scan_date DATE, symbol VARCHAR(16), name VARCHAR, sector VARCHAR, "
    "market_cap DOUBLE PRECISION, market_cap_tier INTEGER, scan_reason VARCHAR, priority INTEGER, "
    "close DOUBLE PRECISION, volume BIGINT, rsi_14 DOUBLE PRECISION, created_at TIMESTAMP)",
)

START = dt.date(2024, 1, 2)


@dataclass
class OldData:
    symbols: list[tuple] = field(default_factory=list)
    bars: list[tuple] = field(default_factory=list)
    watchlist: list[tuple] = field(default_factory=list)
    good_bars: dict[tuple, tuple] = field(default_factory=dict)  # (symbol, date) -> (o, h, l, c, v)
    good_symbols: set[str] = field(default_factory=set)
    bad: list[tuple[str, str, str, str]] = field(default_factory=list)  # (table, symbol, date, reason part)


def old_data(tickers: int = 12, days: int = 40, seed: int = 7) -> OldData:
    rng = np.random.default_rng(seed)
    data = OldData()
    now = dt.datetime(2024, 6, 1, 12, 0)
    names = [f"T{i:03d}" for i in range(tickers)]
    for i, symbol in enumerate(names):
        data.symbols.append((symbol, f"{symbol} Inc", "Tech", None, float(1e9 * (i + 1)), i == 0, 12345.0, now))
        data.good_symbols.add(symbol)
        price = 20.0 + i
        for d in range(days):
            day = START + dt.timedelta(days=d)
            price = round(price * (1 + rng.normal(0, 0.02)), 4)
            o = round(price * (1 + rng.normal(0, 0.005)), 4)
            h, lo = round(max(o, price) * 1.01, 4), round(min(o, price) * 0.99, 4)
            v = int(rng.integers(1000, 100000))
            data.bars.append((symbol, day, o, h, lo, price, v, now))
            data.good_bars[(symbol, day)] = (o, h, lo, price, v)
    # Planted bad rows: each must be reported with table, symbol, date and reason, and never stored.
    bad_day = START + dt.timedelta(days=5)
    for symbol, change, reason in (("T001", {"close": -3.0}, "close -3 is not positive"),
                                   ("T002", {"low": 999.0}, "low 999 is above"),
                                   ("T003", {"volume": None}, "volume is missing")):
        index = next(k for k, b in enumerate(data.bars) if b[0] == symbol and b[1] == bad_day)
        row = list(data.bars[index])
        for column, value in change.items():
            row[{"open": 2, "high": 3, "low": 4, "close": 5, "volume": 6}[column]] = value
        data.bars[index] = tuple(row)
        del data.good_bars[(symbol, bad_day)]
        data.bad.append(("stock_data", symbol, str(bad_day), reason))
    dup_day = START + dt.timedelta(days=7)
    original = next(b for b in data.bars if b[0] == "T004" and b[1] == dup_day)
    data.bars.append((*original[:5], original[5] * 1.01, *original[6:]))
    del data.good_bars[("T004", dup_day)]
    data.bad.append(("stock_data", "T004", str(dup_day), "duplicate bar"))
    data.bars.append(("GHOST", START, 1.0, 1.0, 1.0, 1.0, 10, now))
    data.bad.append(("stock_data", "GHOST", f"{START}..{START}", "not in nasdaq_symbols"))
    data.symbols.append(("NEGCAP", "Bad Cap", "Tech", None, -5.0, False, None, now))
    data.bad.append(("nasdaq_symbols", "NEGCAP", "-", "market_cap -5"))
    # The old watchlist: two scan dates, one planted duplicate.
    for k, day in enumerate((START + dt.timedelta(days=days - 2), START + dt.timedelta(days=days - 1))):
        for j, symbol in enumerate(names[:3]):
            data.watchlist.append((day, symbol, f"{symbol} Inc", "Tech", float(1e9 * (j + 1)) * 20, None,
                                   "rsi_oversold", 1, 10.0 + j, 5000 + k, 25.0, now))
    data.watchlist.append(data.watchlist[0])  # the same row twice is kept once
    conflicting = list(data.watchlist[1])
    conflicting[8] = 99.0
    data.watchlist.append(tuple(conflicting))
    data.bad.append(("daily_watchlist", "T001", str(conflicting[0]), "conflicting rows"))
    return data


def build_duckdb(path, data: OldData) -> str:
    import duckdb

    connection = duckdb.connect(str(path))
    try:
        for statement in OLD_SCHEMA:
            connection.execute(statement)
        connection.executemany("INSERT INTO nasdaq_symbols VALUES (?, ?, ?, ?, ?, ?, ?, ?)", data.symbols)
        _bulk_duckdb(connection, "stock_data", data.bars)
        connection.executemany("INSERT INTO daily_watchlist VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", data.watchlist)
    finally:
        connection.close()
    return str(path)


def _bulk_duckdb(connection, table: str, rows: list[tuple]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["ticker", "date", "open", "high", "low", "close", "volume", "created_at"])
    frame["volume"] = frame["volume"].astype("Int64")
    connection.register("_rows", frame)
    connection.execute(f"INSERT INTO {table} SELECT * FROM _rows")
    connection.unregister("_rows")


def build_postgres(url: str, data: OldData) -> str:
    import psycopg2
    from psycopg2.extras import execute_values

    connection = psycopg2.connect(url.replace("postgresql+psycopg2:", "postgresql:", 1))
    try:
        with connection, connection.cursor() as cursor:
            for statement in OLD_SCHEMA:
                cursor.execute(statement)
            execute_values(cursor, "INSERT INTO nasdaq_symbols VALUES %s", data.symbols)
            execute_values(cursor, "INSERT INTO stock_data VALUES %s", data.bars, page_size=5000)
            execute_values(cursor, "INSERT INTO daily_watchlist VALUES %s", data.watchlist)
    finally:
        connection.close()
    return url
