"""A deterministic synthetic market for offline runs, tests and benchmarks. Not real data.

Every symbol's path starts at a fixed epoch and each calendar year of it is drawn from its own seed
(seed, symbol, year), so a given (symbol, date) always yields the same bar whatever range is asked
for. Log returns follow a random walk whose volatility clusters (an AR(1) log-volatility), with
occasional news shocks that move the price several percent on a volume spike. Prices are in cents
and OHLC is consistent (low <= open, close <= high). Trading days come from the exchange calendar.

A path is a recursion from the epoch (volatility state, cumulative log return, last close, recent
bad news), so answering "the last five days" used to mean regenerating twenty years per symbol.
The recursion's state at the end of every completed year is therefore kept (in memory, and in
`cache_dir` when given, shared by the worker processes), and a request starts from the state before
its first year: the same floating-point operations in the same order, so the same values, in time
proportional to the years asked for.
"""

from __future__ import annotations

import datetime as dt
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
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


@lru_cache(maxsize=64)
def _npy_layout(header: bytes) -> tuple[tuple[int, ...], np.dtype]:
    import ast

    fields = ast.literal_eval(header.decode("latin1"))
    if fields["fortran_order"]:
        raise ValueError("a Fortran-ordered array is not a year-end table")
    return tuple(fields["shape"]), np.dtype(fields["descr"])


def _load_npy(path: Path) -> np.ndarray:
    """np.load of the (version 1) .npy files `_remember` writes, parsing each distinct header once:
    np.load's header parsing was most of the time to read a universe's 2,500 small files."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x93NUMPY\x01\x00":
        return np.load(path)
    size = int.from_bytes(data[8:10], "little")
    shape, dtype = _npy_layout(data[10 : 10 + size])
    return np.frombuffer(data, dtype=dtype, offset=10 + size, count=int(np.prod(shape))).reshape(shape)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@dataclass
class _State:
    """The recursion's state after a session, for a batch of symbols (one value per symbol)."""

    log_vol: np.ndarray  # AR(1) log-volatility
    cum_return: np.ndarray  # running sum of log returns since the epoch
    close: np.ndarray  # last unrounded close
    bad_tail: np.ndarray  # (_SELL_OFF x symbols) bad-news flags of the last sessions, oldest first

    @staticmethod
    def at_epoch(start_price: np.ndarray) -> "_State":
        width = len(start_price)
        return _State(np.zeros(width), np.zeros(width), start_price.copy(), np.zeros((_SELL_OFF, width), dtype=bool))

    def pack(self, column: int) -> np.ndarray:
        return np.r_[self.log_vol[column], self.cum_return[column], self.close[column], self.bad_tail[:, column]]

    @staticmethod
    def unpack(rows: list[np.ndarray]) -> "_State":
        stacked = np.stack(rows, axis=1)
        return _State(stacked[0].copy(), stacked[1].copy(), stacked[2].copy(), stacked[3:].astype(bool))


class DemoSource(Source):
    name = "demo"
    synthetic = True

    def __init__(self, tickers: int = 100, seed: int = 20240101, calendar: str = "XNYS", cache_dir: Path | None = None):
        if tickers < 1:
            raise ValueError(f"[demo] tickers must be >= 1, got {tickers}")
        self.tickers = tickers
        self.seed = seed
        self.calendar = calendar
        self.cache_dir = Path(cache_dir) / f"demo-{seed}-{calendar}" if cache_dir else None
        self._year_end: dict[str, dict[int, np.ndarray]] = {}

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

    def _start_prices(self, symbols: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        params = np.array([np.random.default_rng([self.seed, _stable_hash(s), 2]).uniform(size=3) for s in symbols])
        base_sigma = 0.008 + 0.022 * params[:, 0]
        start_price = np.exp(np.log(8.0) + (np.log(400.0) - np.log(8.0)) * params[:, 1])
        base_volume = np.exp(np.log(2e5) + (np.log(3e7) - np.log(2e5)) * params[:, 2])
        return base_sigma, start_price, base_volume

    def _paths(self, symbols: list[str], years: list[int], counts: list[int], state: _State | None = None
               ) -> tuple[dict[str, np.ndarray], list[_State]]:
        """(session x symbol) OHLCV paths over `years` for a batch of symbols, continuing from
        `state` (the state after the session before the first year; None = the epoch), and the
        state after each year."""
        draws = [self._draws(s, years, counts) for s in symbols]
        d = {k: np.stack([x[k] for x in draws], axis=1) for k in draws[0]}
        base_sigma, start_price, base_volume = self._start_prices(symbols)
        state = state or _State.at_epoch(start_price)
        ends = np.cumsum(counts) - 1
        # AR(1) log-volatility: calm and turbulent stretches (volatility clustering).
        n = d["z"].shape[0]
        log_vol = np.empty_like(d["z"])
        current = state.log_vol
        for t in range(n):
            current = 0.97 * current + 0.08 * d["vol_noise"][t]
            log_vol[t] = current
        sigma = base_sigma * np.exp(log_vol)
        # About 4% of sessions carry news. Good news gaps the price up 4-9% on a 3.5-5.5x volume spike
        # (breakouts); bad news starts a six-session sell-off on heavy volume (oversold RSI, lower-band
        # touches), so every watchlist rule finds cases on most days of a 100-symbol market.
        shocked = d["shock_on"] > 1.75
        good = shocked & (d["shock_sign"] > 0)
        bad = shocked & ~good
        # A sell-off runs while a bad-news day lies in the last _SELL_OFF sessions, this one included.
        bad_history = np.vstack([state.bad_tail, bad])
        started = np.cumsum(bad_history, axis=0)
        selling = (started[_SELL_OFF:] - started[:-_SELL_OFF]) > 0
        shock = np.where(good, 0.065 + 0.012 * d["shock_size"], np.where(bad, -0.035 - 0.01 * np.abs(d["shock_size"]), 0.0))
        returns = 0.0003 + sigma * d["z"] + shock - 0.012 * (selling & ~bad)
        # A collapsing stock bounces off a $2 floor (log-price reflected) instead of flatlining at a
        # clamp, which would give zero-width bands and an RSI of 0 forever. The running sum continues
        # the previous years' (numpy accumulates strictly in order, so the values are the same).
        cum_return = np.cumsum(np.vstack([state.cum_return[None, :], returns]), axis=0)[1:]
        log_price = np.log(start_price) + cum_return
        close = np.exp(_FLOOR_LOG + np.abs(log_price - _FLOOR_LOG))
        previous = np.vstack([state.close[None, :], close[:-1]])
        gap = np.where(good, 0.0, 0.3 * sigma * d["gap"])
        open_ = previous * np.exp(gap)
        high = np.maximum(open_, close) * (1.0 + 0.5 * sigma * np.abs(d["wick_hi"]))
        low = np.minimum(open_, close) * (1.0 - 0.5 * sigma * np.abs(d["wick_lo"]))
        spike = np.where(good, 3.5 + 2.0 * np.abs(d["volume"]) / 3, np.where(selling, 2.2, 1.0))
        volume = base_volume * np.exp(0.2 * d["volume"]) * (1.0 + 4.0 * np.abs(returns)) * spike
        open_c, close_c = np.round(open_, 2), np.round(close, 2)
        states = [
            _State(log_vol[end], cum_return[end], close[end], bad_history[end + 1 : end + 1 + _SELL_OFF])
            for end in ends
        ]
        return {
            "open": open_c,
            "high": np.maximum(np.round(high, 2), np.maximum(open_c, close_c)),
            "low": np.minimum(np.round(low, 2), np.minimum(open_c, close_c)),
            "close": close_c,
            "volume": np.round(volume).astype(np.int64),
        }, states

    # -- year-end states -------------------------------------------------------------------------
    def _cached_state(self, symbols: list[str], year: int) -> _State | None:
        """The state after `year` for every symbol of the batch, or None if one is unknown."""
        rows = []
        for symbol in symbols:
            known = self._year_end.get(symbol)
            if known is None and self.cache_dir is not None:
                known = self._load_year_ends(symbol)
            row = (known or {}).get(year)
            if row is None:
                return None
            rows.append(row)
        return _State.unpack(rows)

    def _load_year_ends(self, symbol: str) -> dict[int, np.ndarray]:
        path = self.cache_dir / f"{symbol}.npy"
        try:
            table = _load_npy(path)
        except (OSError, ValueError):
            return {}
        found = {int(row[0]): row[1:] for row in table}
        self._year_end[symbol] = found
        return found

    def _remember(self, symbols: list[str], years: list[int], states: list[_State]) -> None:
        for column, symbol in enumerate(symbols):
            known = self._year_end.setdefault(symbol, {})
            for year, state in zip(years, states):
                known[year] = state.pack(column)
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for symbol in symbols:
            table = np.array([np.r_[y, r] for y, r in sorted(self._year_end[symbol].items())])
            # Written whole and renamed: a reader in another worker never sees half a file.
            temporary = self.cache_dir / f".{symbol}.{os.getpid()}.npy"
            np.save(temporary, table)
            os.replace(temporary, self.cache_dir / f"{symbol}.npy")

    def bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarFetch:
        all_sessions = trading_calendar.sessions(self.calendar, EPOCH, end)
        session_dates = np.array(all_sessions, dtype="datetime64[D]")
        years = sorted({d.year for d in all_sessions})
        counts = [sum(1 for d in all_sessions if d.year == y) for y in years]
        # Only years that ended before `end` have their final state (a later request may add sessions).
        complete_years = [y for y in years if y < end.year]
        wanted = session_dates >= np.datetime64(max(start, EPOCH))
        first_year = max(start, EPOCH).year
        columns: dict[str, list[np.ndarray]] = {k: [] for k in ("symbol", "date", "open", "high", "low", "close", "volume")}
        ordered = sorted(set(symbols))
        for batch_start in range(0, len(ordered), _BATCH):
            batch = ordered[batch_start : batch_start + _BATCH]
            state = self._cached_state(batch, first_year - 1) if first_year > years[0] else None
            skip_years = years.index(first_year) if state is not None and first_year in years else 0
            offset = sum(counts[:skip_years])
            paths, states = self._paths(batch, years[skip_years:], counts[skip_years:], state)
            done = [(y, st) for y, st in zip(years[skip_years:], states) if y in complete_years]
            if self.cache_dir is not None and batch[0] not in self._year_end:
                self._load_year_ends(batch[0])
            if any(y not in self._year_end.get(batch[0], {}) for y, _ in done):
                self._remember(batch, [y for y, _ in done], [st for _, st in done])
            for column, symbol in enumerate(batch):
                keep = wanted.copy()
                keep[: self._listing_index(symbol, len(all_sessions))] = False
                keep = keep[offset:]
                count = int(keep.sum())
                if not count:
                    continue
                columns["symbol"].append(np.full(count, symbol, dtype=object))
                columns["date"].append(session_dates[offset:][keep])
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
