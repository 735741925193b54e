"""A deterministic synthetic market for offline runs, tests and benchmarks. Not real data.

Every symbol's path starts at a fixed epoch and each calendar year of it is drawn from its own seed
(seed, symbol, year), so a given (symbol, date) always yields the same bar whatever range is asked
for. Log returns follow a random walk whose volatility clusters (an AR(1) log-volatility), with
occasional news shocks that move the price several percent on a volume spike. Prices are in cents
and OHLC is consistent (low <= open, close <= high). Trading days come from the exchange calendar.
"""

from __future__ import annotations

import datetime as dt
import zlib
from functools import lru_cache
from typing import Sequence

import numpy as np
import pyarrow as pa

from stockpipe import trading_calendar
from stockpipe.sources.base import BarFetch, Source, symbols_table

EPOCH = dt.date(2005, 1, 3)
SYNTHETIC_LABEL = "[synthetic]"
_PER_YEAR = 262  # more sessions than any exchange year has
_BATCH = 200  # symbols generated together
_SELL_OFF = 6  # sessions a bad-news sell-off lasts
_FLOOR_LOG = float(np.log(2.0))

_FIRST = ["Aurora", "Summit", "Cobalt", "Harbor", "Granite", "Vertex", "Nimbus", "Sable", "Orchid", "Beacon",
          "Cedar", "Falcon", "Helix", "Juniper", "Keystone", "Lumen", "Meridian", "Northwind", "Onyx", "Pioneer",
          "Quarry", "Redwood", "Sterling", "Tidewater", "Union", "Vanguard", "Willow", "Zenith", "Atlas", "Bluewater"]
_SECOND = ["Dynamics", "Holdings", "Labs", "Systems", "Energy", "Therapeutics", "Financial", "Networks",
           "Industries", "Foods", "Semiconductor", "Logistics", "Retail", "Materials", "Media", "Robotics"]
_SECTORS = {
    "Technology": ["Semiconductors", "Software", "Hardware"],
    "Health Care": ["Biotechnology", "Medical Devices", "Pharmaceuticals"],
    "Finance": ["Banks", "Insurance", "Asset Management"],
    "Energy": ["Oil & Gas", "Renewables"],
    "Consumer Discretionary": ["Retail", "Automotive", "Leisure"],
    "Industrials": ["Aerospace", "Machinery", "Transportation"],
    "Consumer Staples": ["Food Products", "Household Products"],
    "Utilities": ["Electric Utilities"],
    "Real Estate": ["REITs"],
    "Basic Materials": ["Chemicals", "Metals & Mining"],
    "Telecommunications": ["Telecom Services"],
}


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class DemoSource(Source):
    name = "demo"
    synthetic = True

    def __init__(self, tickers: int = 100, seed: int = 20240101, calendar: str = "XNYS"):
        if tickers < 1:
            raise ValueError(f"[demo] tickers must be >= 1, got {tickers}")
        self.tickers = tickers
        self.seed = seed
        self.calendar = calendar

    # -- universe --------------------------------------------------------------------------------
    @lru_cache(maxsize=1)
    def _universe(self) -> dict[str, list]:
        rng = np.random.default_rng([self.seed, 0])
        letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        seen: set[str] = set()
        codes: list[str] = []
        while len(codes) < self.tickers:
            code = "".join(rng.choice(letters, size=int(rng.integers(3, 5))))
            if code not in seen:
                seen.add(code)
                codes.append(code)
        codes.sort()
        sectors = list(_SECTORS)
        columns: dict[str, list] = {k: [] for k in ("symbol", "name", "exchange", "sector", "industry", "market_cap", "is_etf")}
        for code in codes:
            local = np.random.default_rng([self.seed, _stable_hash(code)])
            is_etf = bool(local.random() < 0.05)
            sector = sectors[int(local.integers(len(sectors)))]
            industries = _SECTORS[sector]
            first, second = _FIRST[int(local.integers(len(_FIRST)))], _SECOND[int(local.integers(len(_SECOND)))]
            name = f"{first} {'Sector ETF' if is_etf else second} {SYNTHETIC_LABEL}"
            columns["symbol"].append(code)
            columns["name"].append(name)
            columns["exchange"].append("DEMO")
            columns["sector"].append(None if is_etf else sector)
            columns["industry"].append(None if is_etf else industries[int(local.integers(len(industries)))])
            # Log-uniform from 150M to 2T: small caps, mid caps and a few mega caps.
            columns["market_cap"].append(round(float(np.exp(local.uniform(np.log(1.5e8), np.log(2e12)))), -5))
            columns["is_etf"].append(is_etf)
        return columns

    def symbols(self, as_of: dt.date) -> pa.Table:
        return symbols_table(self._universe())

    # -- bars ------------------------------------------------------------------------------------
    def _listing_index(self, symbol: str, total_sessions: int) -> int:
        """Most symbols trade from the epoch; about one in ten lists later (an IPO)."""
        local = np.random.default_rng([self.seed, _stable_hash(symbol), 1])
        if local.random() < 0.9:
            return 0
        return int(local.integers(250, 5300))

    def _draws(self, symbol: str, years: list[int], counts: list[int]) -> dict[str, np.ndarray]:
        """Each year draws a fixed _PER_YEAR values per series from its own seed, then keeps the
        sessions it has, so no draw depends on how much of the year was requested."""
        names = ("z", "vol_noise", "shock_on", "shock_size", "shock_sign", "gap", "wick_hi", "wick_lo", "volume")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for year, count in zip(years, counts):
            rng = np.random.default_rng([self.seed, _stable_hash(symbol), year])
            block = rng.standard_normal((len(names), _PER_YEAR))
            for row, key in enumerate(names):
                parts[key].append(block[row, :count])
        return {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}

    def _paths(self, symbols: list[str], years: list[int], counts: list[int]) -> dict[str, np.ndarray]:
        """(session x symbol) OHLCV paths from the epoch for a batch of symbols."""
        draws = [self._draws(s, years, counts) for s in symbols]
        d = {k: np.stack([x[k] for x in draws], axis=1) for k in draws[0]}
        params = np.array([np.random.default_rng([self.seed, _stable_hash(s), 2]).uniform(size=3) for s in symbols])
        base_sigma = 0.008 + 0.022 * params[:, 0]
        start_price = np.exp(np.log(8.0) + (np.log(400.0) - np.log(8.0)) * params[:, 1])
        base_volume = np.exp(np.log(2e5) + (np.log(3e7) - np.log(2e5)) * params[:, 2])
        # AR(1) log-volatility: calm and turbulent stretches (volatility clustering).
        n = d["z"].shape[0]
        log_vol = np.empty_like(d["z"])
        state = np.zeros(len(symbols))
        for t in range(n):
            state = 0.97 * state + 0.08 * d["vol_noise"][t]
            log_vol[t] = state
        sigma = base_sigma * np.exp(log_vol)
        # About 4% of sessions carry news. Good news gaps the price up 4-9% on a 3.5-5.5x volume spike
        # (breakouts); bad news starts a six-session sell-off on heavy volume (oversold RSI, lower-band
        # touches), so every watchlist rule finds cases on most days of a 100-symbol market.
        shocked = d["shock_on"] > 1.75
        good = shocked & (d["shock_sign"] > 0)
        bad = shocked & ~good
        started = np.cumsum(bad, axis=0)
        selling = (started - np.vstack([np.zeros((_SELL_OFF, len(symbols))), started[:-_SELL_OFF]])) > 0
        shock = np.where(good, 0.065 + 0.012 * d["shock_size"], np.where(bad, -0.035 - 0.01 * np.abs(d["shock_size"]), 0.0))
        returns = 0.0003 + sigma * d["z"] + shock - 0.012 * (selling & ~bad)
        # A collapsing stock bounces off a $2 floor (log-price reflected) instead of flatlining at a
        # clamp, which would give zero-width bands and an RSI of 0 forever.
        log_price = np.log(start_price) + np.cumsum(returns, axis=0)
        close = np.exp(_FLOOR_LOG + np.abs(log_price - _FLOOR_LOG))
        previous = np.vstack([start_price[None, :], close[:-1]])
        gap = np.where(good, 0.0, 0.3 * sigma * d["gap"])
        open_ = previous * np.exp(gap)
        high = np.maximum(open_, close) * (1.0 + 0.5 * sigma * np.abs(d["wick_hi"]))
        low = np.minimum(open_, close) * (1.0 - 0.5 * sigma * np.abs(d["wick_lo"]))
        spike = np.where(good, 3.5 + 2.0 * np.abs(d["volume"]) / 3, np.where(selling, 2.2, 1.0))
        volume = base_volume * np.exp(0.2 * d["volume"]) * (1.0 + 4.0 * np.abs(returns)) * spike
        open_c, close_c = np.round(open_, 2), np.round(close, 2)
        return {
            "open": open_c,
            "high": np.maximum(np.round(high, 2), np.maximum(open_c, close_c)),
            "low": np.minimum(np.round(low, 2), np.minimum(open_c, close_c)),
            "close": close_c,
            "volume": np.round(volume).astype(np.int64),
        }

    def bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarFetch:
        all_sessions = trading_calendar.sessions(self.calendar, EPOCH, end)
        session_dates = np.array(all_sessions, dtype="datetime64[D]")
        years = sorted({d.year for d in all_sessions})
        counts = [sum(1 for d in all_sessions if d.year == y) for y in years]
        wanted = session_dates >= np.datetime64(max(start, EPOCH))
        columns: dict[str, list[np.ndarray]] = {k: [] for k in ("symbol", "date", "open", "high", "low", "close", "volume")}
        ordered = sorted(set(symbols))
        for batch_start in range(0, len(ordered), _BATCH):
            batch = ordered[batch_start : batch_start + _BATCH]
            paths = self._paths(batch, years, counts)
            for column, symbol in enumerate(batch):
                keep = wanted.copy()
                keep[: self._listing_index(symbol, len(all_sessions))] = False
                count = int(keep.sum())
                if not count:
                    continue
                columns["symbol"].append(np.full(count, symbol, dtype=object))
                columns["date"].append(session_dates[keep])
                for key in ("open", "high", "low", "close", "volume"):
                    columns[key].append(paths[key][keep, column])
        if not columns["symbol"]:
            from stockpipe.sources.base import empty_bars

            return BarFetch(empty_bars())
        table = pa.table(
            {
                "symbol": pa.array(np.concatenate(columns["symbol"]), pa.string()),
                "date": pa.array(np.concatenate(columns["date"]), pa.date32()),
                **{k: pa.array(np.concatenate(columns[k])) for k in ("open", "high", "low", "close")},
                "volume": pa.array(np.concatenate(columns["volume"]), pa.int64()),
            }
        )
        return BarFetch(table)
