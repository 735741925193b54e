"""Reading the old system's database (its `nasdaq_symbols`, `stock_data` and `daily_watchlist`), for
`stockpipe import-legacy`: which of its tables and columns exist, and their rows as Arrow tables in
stockpipe's column names and types. Nothing is ever written to it.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import pyarrow as pa

from stockpipe.store import Session, read_foreign
from stockpipe.store.schema import DAILY_WATCHLIST


class LegacyImportError(RuntimeError):
    """The old database cannot be imported; the message names the table or column at fault."""


# Old column -> accepted spellings, first found wins. Optional columns missing in the old table are NULL.
_SYMBOL_COLUMNS = {"symbol": ("symbol", "ticker"), "name": ("name", "security_name", "company_name"),
                   "exchange": ("exchange",), "sector": ("sector",), "industry": ("industry",),
                   "market_cap": ("market_cap", "marketcap"), "is_etf": ("is_etf", "etf"),
                   "is_active": ("is_active", "active")}
_BAR_COLUMNS = {"symbol": ("ticker", "symbol"), "date": ("date", "trade_date"), "open": ("open",),
                "high": ("high",), "low": ("low",), "close": ("close",), "volume": ("volume",)}
_WATCHLIST_COLUMNS = {"scan_date": ("scan_date", "date"), "symbol": ("symbol", "ticker"),
                      **{c: (c,) for c in DAILY_WATCHLIST.columns if c not in ("scan_date", "symbol")},
                      "scan_reason": ("scan_reason", "reason")}
_REQUIRED = {"nasdaq_symbols": ("symbol",), "stock_data": tuple(_BAR_COLUMNS), "daily_watchlist": ("scan_date", "symbol")}


class LegacySchema:
    """Which of the old tables and columns the source has, and how to read them."""

    def __init__(self, session: Session):
        rows = session.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name IN "
            "('nasdaq_symbols', 'stock_data', 'daily_watchlist', 'schema_version', 'task_markers')"
        )
        self.types: dict[str, dict[str, str]] = {}
        for table, column, data_type in rows:
            self.types.setdefault(table, {})[column.lower()] = str(data_type).lower()
        if "schema_version" in self.types and "task_markers" in self.types:
            raise LegacyImportError("this is a stockpipe store, not the old system's database")
        for table in ("nasdaq_symbols", "stock_data"):
            if table not in self.types:
                raise LegacyImportError(f"the old database has no table {table}")
        self.columns = {"nasdaq_symbols": self._map("nasdaq_symbols", _SYMBOL_COLUMNS),
                        "stock_data": self._map("stock_data", _BAR_COLUMNS)}
        if "daily_watchlist" in self.types:
            self.columns["daily_watchlist"] = self._map("daily_watchlist", _WATCHLIST_COLUMNS)

    def _map(self, table: str, wanted: dict[str, Sequence[str]]) -> dict[str, str | None]:
        found = {ours: next((c for c in spellings if c in self.types[table]), None) for ours, spellings in wanted.items()}
        missing = [ours for ours in _REQUIRED[table] if found[ours] is None]
        if missing:
            raise LegacyImportError(
                f"old table {table} lacks column(s) {', '.join(' or '.join(wanted[m]) for m in missing)}"
            )
        return found

    def select(self, table: str, ours: str, kind: str) -> str:
        """The old column as `ours`, cast to what stockpipe stores (NULL when the old table lacks it)."""
        old = self.columns[table][ours]
        if old is None:
            return f"CAST(NULL AS {kind}) AS {ours}"
        if kind == "DATE" and not self.types[table][old].startswith(("date", "timestamp")):
            return f"{old} AS {ours}"  # text dates are parsed row by row, bad ones rejected
        return f"CAST({old} AS {kind}) AS {ours}"

    def text_dates(self, table: str, ours: str = "date") -> bool:
        old = self.columns[table][ours]
        return not self.types[table][old].startswith(("date", "timestamp"))


def _read(old: Session, table: str, sql: str, params: dict[str, Any] | None = None,
          schema: pa.Schema | None = None) -> Any:
    """Rows of the old `table` (a list of tuples, or Arrow with `schema`); a failure names the table."""
    try:
        return old.fetch(sql, params) if schema is None else old.fetch_arrow(sql, params, schema=schema)
    except Exception as exc:  # noqa: BLE001 - any driver or conversion error, re-raised naming the table
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LegacyImportError(f"reading the old table {table} failed: {first}") from exc


class LegacyDatabase:
    """The old database, open read-only (see `open_legacy`)."""

    def __init__(self, session: Session):
        self._session = session
        self.schema = LegacySchema(session)

    @property
    def has_watchlist(self) -> bool:
        return "daily_watchlist" in self.schema.columns

    def tickers(self) -> list[str]:
        """Every ticker with bars, sorted."""
        column = self.schema.columns["stock_data"]["symbol"]
        return sorted(r[0] for r in _read(self._session, "stock_data",
                                          f"SELECT DISTINCT {column} FROM stock_data WHERE {column} IS NOT NULL"))

    def scan_dates(self) -> list[Any]:
        """Every distinct watchlist scan date as stored (a date, a timestamp or text)."""
        column = self.schema.columns["daily_watchlist"]["scan_date"]
        return [r[0] for r in _read(self._session, "daily_watchlist",
                                    f"SELECT DISTINCT {column} FROM daily_watchlist WHERE {column} IS NOT NULL")]

    def symbols(self) -> pa.Table:
        """`nasdaq_symbols` as stockpipe's symbol columns (NULL where the old table lacks one)."""
        kinds = {"symbol": "VARCHAR", "name": "VARCHAR", "exchange": "VARCHAR", "sector": "VARCHAR",
                 "industry": "VARCHAR", "market_cap": "DOUBLE PRECISION", "is_etf": "BOOLEAN", "is_active": "BOOLEAN"}
        types = {"symbol": pa.string(), "name": pa.string(), "exchange": pa.string(), "sector": pa.string(),
                 "industry": pa.string(), "market_cap": pa.float64(), "is_etf": pa.bool_(), "is_active": pa.bool_()}
        return _read(
            self._session, "nasdaq_symbols",
            "SELECT " + ", ".join(self.schema.select("nasdaq_symbols", c, kinds[c]) for c in kinds) + " FROM nasdaq_symbols",
            schema=pa.schema(list(types.items())),
        )

    @property
    def bar_dates_are_text(self) -> bool:
        return self.schema.text_dates("stock_data")

    def bars(self, tickers: Sequence[str]) -> pa.Table:
        """The tickers' `stock_data` rows as (symbol, date, open, high, low, close, volume); `date` is
        the old text when `bar_dates_are_text` (parsed, and bad ones rejected, by the caller)."""
        schema = self.schema
        ticker = schema.columns["stock_data"]["symbol"]
        columns = [schema.select("stock_data", "symbol", "VARCHAR"), schema.select("stock_data", "date", "DATE")]
        columns += [schema.select("stock_data", c, "DOUBLE PRECISION") for c in ("open", "high", "low", "close", "volume")]
        read_schema = pa.schema([("symbol", pa.string()), ("date", pa.string() if self.bar_dates_are_text else pa.date32())]
                                + [(c, pa.float64()) for c in ("open", "high", "low", "close", "volume")])
        return _read(self._session, "stock_data", f"SELECT {', '.join(columns)} FROM stock_data WHERE {ticker} = ANY(:s)",
                     {"s": list(tickers)}, schema=read_schema)

    @property
    def scan_dates_are_text(self) -> bool:
        return self.schema.text_dates("daily_watchlist", "scan_date")

    def watchlist(self, dates: Sequence[dt.date]) -> pa.Table:
        """`daily_watchlist` rows of `dates` in stockpipe's columns. With `scan_dates_are_text`, every row,
        `scan_date` as the old text: each spelling of a date matches only once parsed (by the caller)."""
        schema = self.schema
        mapping = schema.columns["daily_watchlist"]
        kinds = {f.name: {pa.string(): "VARCHAR", pa.date32(): "DATE", pa.float64(): "DOUBLE PRECISION",
                          pa.int64(): "BIGINT", pa.int32(): "INTEGER"}[f.type] for f in DAILY_WATCHLIST.schema}
        text_dates = self.scan_dates_are_text
        read_schema = pa.schema([pa.field("scan_date", pa.string()) if (f.name == "scan_date" and text_dates) else f
                                 for f in DAILY_WATCHLIST.schema])
        select = ", ".join(schema.select("daily_watchlist", c, kinds[c]) for c in DAILY_WATCHLIST.columns)
        if text_dates:
            return _read(self._session, "daily_watchlist", f"SELECT {select} FROM daily_watchlist", schema=read_schema)
        return _read(self._session, "daily_watchlist",
                     f"SELECT {select} FROM daily_watchlist WHERE CAST({mapping['scan_date']} AS DATE) = ANY(:d)",
                     {"d": list(dates)}, schema=read_schema)


@contextmanager
def open_legacy(url: str) -> Iterator[LegacyDatabase]:
    """The old database at `url` (a PostgreSQL URL, a duckdb:/// URL or a DuckDB file's path), read-only."""
    with read_foreign(url) as session:
        yield LegacyDatabase(session)
