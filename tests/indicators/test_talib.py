"""Every stored indicator column against TA-Lib itself (the `ta-lib` package, the C library the
definitions come from), not only against the in-house reference: on the demo market's bars and on
edge cases (histories shorter than each look-back, halted symbols with missing sessions, flat prices,
a crash to cents, several symbols of different lengths computed in one matrix).

Tolerance: 1e-9 of each value's scale. For a column in price units (averages, bands, MACD and its
signal and histogram) that is the larger of the value and the bar's close, so a MACD crossing zero is
held to 1e-9 of the price it is a difference of; RSI's scale is its range, 100; the average volume is
relative. `bb_position` is a ratio over the band's width: TA-Lib's bands (one-pass variance) carry
~1e-13 of the price, which a narrow band magnifies, so its bound is the position error that band
errors of 1e-9 of the close would make at that bar.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import talib
import talib.abstract

from stockpipe.indicators import INDICATOR_COLUMNS, indicator_rows
from stockpipe.indicators.spec import FIRST_VALID
from stockpipe.sources.demo import DemoSource
from tests.indicators.test_parity import random_walk, series_cases

SCALED = 1e-9
PRICE_COLUMNS = ("sma_20", "sma_50", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower")


def talib_columns(close: np.ndarray, volume: np.ndarray) -> dict[str, np.ndarray]:
    """The project's columns as TA-Lib computes them (README "Indicators": SMA, Wilder RSI, MACD
    12/26/9, Bollinger 20/2 on a simple average, position = (close - lower) / (upper - lower))."""
    upper, middle, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0, matype=talib.MA_Type.SMA)
    line, signal, hist = talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(upper - lower != 0, (close - lower) / (upper - lower), np.nan)
    return {
        "sma_20": talib.SMA(close, timeperiod=20),
        "sma_50": talib.SMA(close, timeperiod=50),
        "rsi_14": talib.RSI(close, timeperiod=14),
        "macd": line,
        "macd_signal": signal,
        "macd_hist": hist,
        "bb_upper": upper,
        "bb_middle": middle,
        "bb_lower": lower,
        "bb_position": position,
        "avg_volume_30": talib.SMA(volume, timeperiod=30),
    }


def assert_matches_talib(rows: pa.Table, close: np.ndarray, volume: np.ndarray, label: str) -> None:
    expected = talib_columns(close, volume)
    assert rows.num_rows == len(close), label
    for name in INDICATOR_COLUMNS:
        actual = rows.column(name).to_numpy(zero_copy_only=False).astype(float)
        want = expected[name]
        where = f"{label}.{name}"
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(want), err_msg=f"{where}: NULL bars differ from TA-Lib")
        valid = ~np.isnan(want)
        if not valid.any():
            continue
        if name == "bb_position":
            width = (expected["bb_upper"] - expected["bb_lower"])[valid]
            bound = 4 * SCALED * np.abs(close[valid]) / width  # both bands off by up to 1e-9 of the close
        elif name in PRICE_COLUMNS:
            bound = SCALED * np.maximum(np.abs(want[valid]), np.abs(close[valid]))
        elif name == "rsi_14":
            bound = np.full(valid.sum(), SCALED * 100)
        else:
            bound = SCALED * np.abs(want[valid])
        error = np.abs(actual[valid] - want[valid])
        worst = int(np.argmax(error - bound))
        assert (error <= bound).all(), f"{where}: {actual[valid][worst]!r} vs TA-Lib {want[valid][worst]!r}"


def one_symbol(close: np.ndarray, volume: np.ndarray | None = None, symbol: str = "A") -> pa.Table:
    n = len(close)
    volume = np.arange(1_000, 1_000 + n, dtype=np.int64) * 7 % 50_000 + 100 if volume is None else volume
    return pa.table({
        "symbol": [symbol] * n,
        "date": pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=d) for d in range(n)], pa.date32()),
        "close": np.asarray(close, dtype=float),
        "volume": pa.array(np.asarray(volume, dtype=np.int64)),
    })


def per_symbol(bars: pa.Table, rows: pa.Table, symbol: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    mine = bars.filter(pc.equal(bars.column("symbol"), symbol))
    return (rows.filter(pc.equal(rows.column("symbol"), symbol)),
            mine.column("close").to_numpy().astype(float), mine.column("volume").to_numpy().astype(float))


def test_the_demo_markets_indicators_equal_talib_for_every_symbol():
    source = DemoSource(tickers=25, seed=20240101)
    symbols = source.symbols(dt.date(2025, 10, 10)).column("symbol").to_pylist()
    bars = source.bars(symbols, dt.date(2022, 6, 1), dt.date(2025, 10, 10)).rows
    bars = bars.sort_by([("symbol", "ascending"), ("date", "ascending")])
    rows = indicator_rows(bars)
    lengths = set()
    for symbol in symbols:
        mine, close, volume = per_symbol(bars, rows, symbol)
        lengths.add(len(close))
        assert_matches_talib(mine, close, volume, symbol)
    assert max(lengths) > 500, "the comparison must cover histories longer than the warm-up"


@pytest.mark.parametrize("length", [1, 2, 14, 15, 19, 20, 26, 33, 34, 49, 50, 51])
def test_short_histories_are_null_exactly_where_talib_has_no_value(length):
    close = random_walk(length, seed=length)
    bars = one_symbol(close)
    assert_matches_talib(indicator_rows(bars), close, bars.column("volume").to_numpy().astype(float), f"{length} bars")


def test_first_valid_bars_are_talibs_lookbacks():
    def lookback(name, **params):
        function = talib.abstract.Function(name)
        function.parameters = params
        return function.lookback

    bands = lookback("BBANDS", timeperiod=20, nbdevup=2.0, nbdevdn=2.0, matype=talib.MA_Type.SMA)
    macd = lookback("MACD", fastperiod=12, slowperiod=26, signalperiod=9)
    assert dict(FIRST_VALID) == {
        "sma_20": lookback("SMA", timeperiod=20), "sma_50": lookback("SMA", timeperiod=50),
        "rsi_14": lookback("RSI", timeperiod=14), "macd": macd, "macd_signal": macd, "macd_hist": macd,
        "bb_upper": bands, "bb_middle": bands, "bb_lower": bands, "bb_position": bands,
        "avg_volume_30": lookback("SMA", timeperiod=30),
    }


@pytest.mark.parametrize("case", list(series_cases()))
def test_edge_series_equal_talib(case):
    """Flat prices (zero-width bands, RSI of a series that never moves), flat then moving, a crash to
    cents, cent-rounded prices, low volatility and a history shorter than MACD's look-back."""
    close = series_cases()[case]
    bars = one_symbol(close)
    assert_matches_talib(indicator_rows(bars), close, bars.column("volume").to_numpy().astype(float), case)


def test_halted_symbols_and_different_lengths_in_one_matrix_equal_talib_per_symbol():
    """Sessions missing in the middle of a history (a halt) leave a shorter bar sequence: the
    indicators run over the bars that exist, as TA-Lib over the same series. Symbols of different
    lengths share one matrix (NaN-padded): none may leak into another."""
    rng = np.random.default_rng(17)
    tables, series = [], {}
    for i, length in enumerate([650, 45, 12, 300, 120]):
        close = np.round(random_walk(length, seed=40 + i, start=5.0 + 90 * i), 2)
        volume = rng.integers(0, 3_000_000, length)
        keep = np.ones(length, bool)
        if length > 100:  # a halt: 30 sessions without bars, and a few single missing days
            keep[length // 3 : length // 3 + 30] = False
            keep[rng.choice(length, 5, replace=False)] = False
        table = one_symbol(close, volume, symbol=f"S{i}").filter(pa.array(keep))
        tables.append(table)
        series[f"S{i}"] = (close[keep], volume[keep].astype(float))
    bars = pa.concat_tables(tables)
    rows = indicator_rows(bars)
    for symbol, (close, volume) in series.items():
        mine, _, _ = per_symbol(bars, rows, symbol)
        assert_matches_talib(mine, close, volume, symbol)


def test_the_comparison_catches_a_wrong_definition():
    """The check is not vacuous: a band 1e-8 too wide, or an RSI one bar late, is outside it."""
    close = random_walk(200, seed=9)
    bars = one_symbol(close)
    rows = indicator_rows(bars)
    volume = bars.column("volume").to_numpy().astype(float)
    wrong_bands = rows.set_column(rows.schema.get_field_index("bb_upper"), "bb_upper",
                                  pc.multiply(rows.column("bb_upper"), 1 + 1e-8))
    with pytest.raises(AssertionError, match="bb_upper"):
        assert_matches_talib(wrong_bands, close, volume, "scaled")
    shifted = np.r_[np.nan, rows.column("rsi_14").to_numpy(zero_copy_only=False)[:-1]]
    with pytest.raises(AssertionError, match="rsi_14"):
        assert_matches_talib(rows.set_column(rows.schema.get_field_index("rsi_14"), "rsi_14", pa.array(shifted, from_pandas=True)),
                             close, volume, "shifted")
