"""Daily bars from Yahoo Finance through yfinance 1.x, and the universe from NASDAQ or a file.

Design notes (yfinance 1.7):
- `yf.download` returns (Price, Ticker) columns in no guaranteed order, a tz-naive exchange-local
  index and an exclusive `end`; the date is used as it is, never shifted through UTC, so a Korean
  bar keeps its Seoul date.
- `auto_adjust=False`: `Close` is split-adjusted but not dividend-adjusted (dividends would rescale
  the whole history at every ex-date); `Adj Close` is ignored. A split still rescales history, so it
  is detected (the `Stock Splits` action, or stored and fetched prices disagreeing on the overlap by a
  constant ratio, checked by the ingest service) and that symbol's whole history is re-ingested.
- A delisted/unknown ticker does not raise: its columns are NaN and the reason only reaches the
  `yfinance` logger (`yf.shared._ERRORS` is empty since 1.4). Those log records are captured per
  batch and become per-ticker failures (symbol, range, reason).
- Rate limiting (HTTP 429, YFRateLimitError) also surfaces only per ticker: those tickers are
  retried with exponential backoff and jitter (tenacity) and, past the bound, the fetch fails.
"""

from __future__ import annotations

import ast
import datetime as dt
import logging
import re
import time
import warnings
from typing import Sequence

import numpy as np
import pyarrow as pa

from stockpipe.sources.base import BarFetch, FetchFailure, Source, SourceError, empty_bars

log = logging.getLogger("stockpipe.yahoo")

_ERROR_LINE = re.compile(r"^\s*(\[.*?\]):\s*(.*)$", re.S)
_RATE_LIMITED = ("Too Many Requests", "Rate limited", "YFRateLimitError", "429")


class RateLimitedError(SourceError):
    def __init__(self, symbols: Sequence[str], attempts: int):
        self.symbols = list(symbols)
        super().__init__(
            f"Yahoo still rate-limits {len(self.symbols)} ticker(s) after {attempts} attempts: "
            f"{', '.join(self.symbols[:20])}{' ...' if len(self.symbols) > 20 else ''}; try again later"
        )


class _Capture(logging.Handler):
    """Collects the per-ticker errors yf.download logs at the end of a call."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.errors: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _ERROR_LINE.match(record.getMessage())
        if not match:
            return
        try:
            symbols = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return
        for symbol in symbols:
            self.errors[str(symbol).upper()] = match.group(2).strip()


def _rate_limited(reason: str) -> bool:
    return any(marker in reason for marker in _RATE_LIMITED)


def frame_to_bars(frame, requested: Sequence[str]) -> tuple[pa.Table, set[str], set[str]]:
    """Long bars from yf.download's wide frame; returns (bars, symbols with data, symbols with a split)."""
    import pandas as pd

    if frame is None or frame.empty:
        return empty_bars(), set(), set()
    columns = frame.columns
    if not isinstance(columns, pd.MultiIndex):
        raise SourceError("yf.download returned single-level columns; expected (Price, Ticker)")
    price_level = next((i for i in range(columns.nlevels) if "Close" in set(columns.get_level_values(i))), None)
    if price_level is None:
        raise SourceError(f"yf.download returned no Close column: {list(columns)[:6]}")
    ticker_level = 1 - price_level
    parts, found, splits = [], set(), set()
    wanted = {s.upper(): s for s in requested}
    for ticker in sorted(set(columns.get_level_values(ticker_level))):
        sub = frame.xs(ticker, axis=1, level=ticker_level)
        prices = sub[["Open", "High", "Low", "Close"]]
        traded = ~prices.isna().all(axis=1)
        if not traded.any():
            continue
        symbol = wanted.get(str(ticker).upper(), str(ticker))
        found.add(symbol)
        if "Stock Splits" in sub.columns and (sub["Stock Splits"].fillna(0) != 0).any():
            splits.add(symbol)
        rows = sub[traded]
        dates = [ts.date() for ts in pd.DatetimeIndex(rows.index)]  # exchange-local, tz-naive
        parts.append(pa.table({
            "symbol": pa.array([symbol] * len(rows), pa.string()),
            "date": pa.array(dates, pa.date32()),
            "open": pa.array(rows["Open"].to_numpy(dtype=float), from_pandas=True),
            "high": pa.array(rows["High"].to_numpy(dtype=float), from_pandas=True),
            "low": pa.array(rows["Low"].to_numpy(dtype=float), from_pandas=True),
            "close": pa.array(rows["Close"].to_numpy(dtype=float), from_pandas=True),
            "volume": pa.array(rows["Volume"].to_numpy(dtype=float), from_pandas=True),
        }))
    if not parts:
        return empty_bars(), found, splits
    return pa.concat_tables(parts), found, splits


class YahooSource(Source):
    name = "yahoo"

    def __init__(
        self,
        universe: str = "nasdaq",
        calendar: str = "XNYS",
        batch_size: int = 100,
        pause_seconds: float = 1.0,
        max_attempts: int = 5,
        backoff_seconds: float = 2.0,
        min_market_cap: float = 100e6,
        threads: bool = True,
        nasdaq_urls: tuple[str, str, str] | None = None,
        timeout_seconds: float = 20.0,
    ):
        if batch_size < 1:
            raise SourceError(f"[yahoo] batch_size must be >= 1, got {batch_size}")
        self.universe = universe
        self.calendar = calendar
        self.batch_size = batch_size
        self.pause_seconds = pause_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.min_market_cap = min_market_cap
        self.threads = threads
        self.timeout_seconds = timeout_seconds
        from stockpipe.sources import nasdaq

        self.nasdaq_urls = nasdaq_urls or (nasdaq.NASDAQ_LISTED_URL, nasdaq.OTHER_LISTED_URL, nasdaq.SCREENER_URL)

    @classmethod
    def from_config(cls) -> "YahooSource":
        from stockpipe import config

        settings = config.yahoo()
        return cls(
            universe=settings.universe,
            calendar=config.stockpipe().calendar,
            batch_size=settings.batch_size,
            pause_seconds=settings.pause_seconds,
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.backoff_seconds,
            min_market_cap=settings.min_market_cap,
            nasdaq_urls=(settings.nasdaq_listed_url, settings.other_listed_url, settings.screener_url),
            timeout_seconds=settings.timeout_seconds,
        )

    # -- universe --------------------------------------------------------------------------------
    def symbols(self, as_of: dt.date) -> pa.Table:
        if self.universe != "nasdaq":
            from stockpipe.sources.universe_file import read_universe

            return read_universe(self.universe)
        from stockpipe.sources import nasdaq

        listed_url, other_url, screener_url = self.nasdaq_urls
        listings = nasdaq.parse_directory(_http_get(listed_url), "nasdaqlisted.txt")
        listings += nasdaq.parse_directory(_http_get(other_url), "otherlisted.txt")
        screener = nasdaq.parse_screener(_http_get(screener_url, headers=_BROWSER_HEADERS), "NASDAQ screener") if screener_url else None
        return nasdaq.universe(listings, screener, self.min_market_cap if screener else None)

    # -- bars ------------------------------------------------------------------------------------
    def bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarFetch:
        ordered = sorted(set(symbols))
        parts, failures, splits = [], [], set()
        batches = [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        for number, batch in enumerate(batches, 1):
            table, batch_failures, batch_splits = self._batch_with_retries(batch, start, end)
            parts.append(table)
            failures += batch_failures
            splits |= batch_splits
            log.info("yahoo [%d/%d] %s..%s: %d bars, %d failed", number, len(batches), batch[0], batch[-1],
                     table.num_rows, len(batch_failures))
            if number < len(batches) and self.pause_seconds:
                time.sleep(self.pause_seconds)
        rows = pa.concat_tables(parts) if parts else empty_bars()
        return BarFetch(rows, failures, splits)

    def _batch_with_retries(self, batch: list[str], start: dt.date, end: dt.date):
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_attempt, wait_random_exponential

        collected, failures, splits = [], {}, set()
        pending = list(batch)

        def attempt() -> list[str]:
            nonlocal pending
            table, errors, found, split = self._download(pending, start, end)
            collected.append(table)
            splits.update(split)
            limited = [s for s in pending if s not in found and _rate_limited(errors.get(s.upper(), ""))]
            for symbol in pending:
                if symbol not in found and symbol not in limited:
                    failures[symbol] = errors.get(symbol.upper(), "no data returned")
            pending = limited
            if limited:
                log.warning("yahoo rate-limited %d ticker(s), retrying with backoff: %s", len(limited), ", ".join(limited[:10]))
            return limited

        retrying = Retrying(
            retry=retry_if_result(bool),
            wait=wait_random_exponential(multiplier=self.backoff_seconds, max=60 * self.backoff_seconds),
            stop=stop_after_attempt(self.max_attempts),
        )
        try:
            retrying(attempt)
        except RetryError:
            raise RateLimitedError(pending, self.max_attempts) from None
        table = pa.concat_tables(collected) if collected else empty_bars()
        return table, [FetchFailure(s, start, end, r) for s, r in sorted(failures.items())], splits

    def _download(self, tickers: list[str], start: dt.date, end: dt.date):
        import yfinance as yf

        capture = _Capture()
        yf_logger = logging.getLogger("yfinance")
        yf_logger.addHandler(capture)
        with warnings.catch_warnings():
            # yfinance's own pandas deprecation warnings are not the user's to act on.
            warnings.filterwarnings("ignore", module=r"yfinance(\.|$)")
            try:
                frame = yf.download(
                    tickers, start=start.isoformat(), end=(end + dt.timedelta(days=1)).isoformat(),  # end is exclusive
                    interval="1d", auto_adjust=False, actions=True, group_by="column", progress=False,
                    threads=self.threads, multi_level_index=True, timeout=self.timeout_seconds,
                )
            finally:
                yf_logger.removeHandler(capture)
        table, found, splits = frame_to_bars(frame, tickers)
        if table.num_rows:
            in_range = np.array([start <= d <= end for d in table.column("date").to_pylist()])
            table = table.filter(pa.array(in_range))
        return table, capture.errors, found, splits


_BROWSER_HEADERS = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) stockpipe", "Accept": "application/json, text/plain, */*"}


def _http_get(url: str, headers: dict | None = None) -> str:
    """GET with retries for transient failures (tenacity), as text; errors name the URL."""
    import requests
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

    @retry(retry=retry_if_exception_type((requests.ConnectionError, requests.Timeout)),
           wait=wait_random_exponential(multiplier=1, max=20), stop=stop_after_attempt(4), reraise=True)
    def get() -> str:
        response = requests.get(url, headers=headers or {}, timeout=(10, 30))  # (connect, read) seconds
        response.raise_for_status()
        response.encoding = response.encoding or "utf-8"
        return response.text

    try:
        return get()
    except requests.RequestException as exc:
        raise SourceError(f"cannot fetch {url}: {exc}") from exc
