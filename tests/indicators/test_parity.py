"""Every indicator against the independent reference, to 1e-9 relative on every bar."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from stockpipe.indicators import INDICATOR_COLUMNS, bollinger, ema, indicator_rows, macd, rsi, sma
from tests.indicators import reference

RTOL = 1e-9
# Values that cross zero (MACD, histogram) are compared with an absolute floor far below a cent.
ATOL = 1e-10
FIRST_VALID = {"sma_20": 19, "sma_50": 49, "rsi_14": 14, "macd": 33, "macd_signal": 33, "macd_hist": 33,
               "bb_upper": 19, "bb_middle": 19, "bb_lower": 19, "bb_position": 19, "avg_volume_30": 29}


def random_walk(n=700, seed=1, start=100.0, vol=0.02):
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(rng.normal(0, vol, n)))


def series_cases():
    rng = np.random.default_rng(7)
    crash = np.r_[np.full(120, 1000.0) * np.exp(np.cumsum(rng.normal(0, 0.01, 120))),
                  np.linspace(900, 0.02, 30), 0.02 * np.exp(np.cumsum(rng.normal(0, 0.05, 200)))]
    return {
        "random_walk": random_walk(),
        "low_volatility": 250.0 + np.cumsum(np.random.default_rng(3).normal(0, 1e-4, 600)),
        "flat": np.full(300, 0.1),
        "flat_then_move": np.r_[np.full(80, 42.17), random_walk(200, seed=4, start=42.17)],
        "crash": crash,
        "cent_rounded": np.round(random_walk(800, seed=5, start=12.0), 2),
        "short": random_walk(25, seed=6),
    }


def assert_series_equal(actual: np.ndarray, expected: list[float], name: str, first_valid: int) -> None:
    expected_arr = np.array(expected, dtype=float)
    n = len(expected_arr)
    assert np.isnan(actual[: min(first_valid, n)]).all(), f"{name}: value before first valid bar {first_valid}"
    if n > first_valid:
        assert not np.isnan(expected_arr[first_valid]) or name == "bb_position"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected_arr), err_msg=f"{name}: NULL pattern differs")
    mask = ~np.isnan(expected_arr)
    np.testing.assert_allclose(actual[mask], expected_arr[mask], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("case", list(series_cases()))
def test_kernels_match_reference(case):
    x = series_cases()[case]
    xs = x.tolist()
    assert_series_equal(sma(x, 20), reference.sma(xs, 20), "sma_20", 19)
    assert_series_equal(sma(x, 50), reference.sma(xs, 50), "sma_50", 49)
    assert_series_equal(ema(x, 10), reference.ema(xs, 10), "ema_10", 9)
    assert_series_equal(rsi(x, 14), reference.rsi(xs, 14), "rsi_14", 14)
    line, signal, hist = macd(x)
    ref_line, ref_signal, ref_hist = reference.macd(xs)
    assert_series_equal(line, ref_line, "macd", 33)
    assert_series_equal(signal, ref_signal, "macd_signal", 33)
    assert_series_equal(hist, ref_hist, "macd_hist", 33)
    bands = bollinger(x)
    ref = reference.bollinger(xs)
    for got, want, name in zip(bands, ref, ("bb_upper", "bb_middle", "bb_lower", "bb_position")):
        assert_series_equal(got, want, name, 19)


def test_flat_series_has_zero_width_bands_and_zero_rsi():
    x = np.full(100, 0.1)
    bands = bollinger(x)
    assert (bands.upper[19:] == bands.lower[19:]).all()
    assert np.isnan(bands.position[19:]).all()
    assert (rsi(x)[14:] == 0.0).all()


def test_first_valid_bars_follow_talib():
    x = random_walk(60)
    assert np.isnan(rsi(x)[13]) and not np.isnan(rsi(x)[14])
    line, signal, hist = macd(x)
    for values in (line, signal, hist):
        assert np.isnan(values[32]) and not np.isnan(values[33])
    assert np.isnan(sma(x, 20)[18]) and not np.isnan(sma(x, 20)[19])


def test_macd_aligns_fast_ema_on_slow_seed_not_standalone():
    x = random_walk(80)
    standalone = np.array(reference.ema(x.tolist(), 12)) - np.array(reference.ema(x.tolist(), 26))
    line = macd(x).macd
    assert abs(line[33] - standalone[33]) > 1e-6, "MACD must not be EMA12 - EMA26 of standalone EMAs"


def test_engine_computes_many_symbols_like_one_at_a_time():
    rng = np.random.default_rng(11)
    frames, expected = [], {}
    start = dt.date(2020, 1, 1)
    for i, length in enumerate([700, 40, 10, 333, 52]):
        symbol = f"S{i}"
        close = np.round(random_walk(length, seed=20 + i), 2)
        volume = rng.integers(1_000, 5_000_000, length).astype(float)
        frames.append(pa.table({
            "symbol": [symbol] * length,
            "date": pa.array([start + dt.timedelta(days=d) for d in range(length)], pa.date32()),
            "close": close,
            "volume": pa.array(volume.astype(np.int64)),
        }))
        expected[symbol] = reference.all_indicators(close.tolist(), volume.tolist())
    out = indicator_rows(pa.concat_tables(frames))
    for symbol, columns in expected.items():
        rows = out.filter(pa.compute.equal(out.column("symbol"), symbol))
        for name in INDICATOR_COLUMNS:
            actual = rows.column(name).to_numpy(zero_copy_only=False).astype(float)
            assert_series_equal(actual, columns[name], f"{symbol}.{name}", FIRST_VALID[name])


def test_engine_keeps_rows_from_each_symbols_from_date():
    close = random_walk(100)
    table = pa.table({
        "symbol": ["A"] * 100 + ["B"] * 100,
        "date": pa.array([dt.date(2021, 1, 1) + dt.timedelta(days=d) for d in range(100)] * 2, pa.date32()),
        "close": np.r_[close, close],
        "volume": pa.array([1000] * 200, pa.int64()),
    })
    out = indicator_rows(table, {"A": dt.date(2021, 3, 1)})
    a_dates = out.filter(pa.compute.equal(out.column("symbol"), "A")).column("date").to_pylist()
    assert min(a_dates) == dt.date(2021, 3, 1)
    assert out.filter(pa.compute.equal(out.column("symbol"), "B")).num_rows == 100


def test_engine_rejects_unsorted_symbols():
    table = pa.table({"symbol": ["A", "B", "A"], "date": pa.array([dt.date(2021, 1, d) for d in (1, 1, 2)]),
                      "close": [1.0, 2.0, 3.0], "volume": pa.array([1, 1, 1], pa.int64())})
    with pytest.raises(ValueError, match="sorted by symbol"):
        indicator_rows(table)


def test_the_indicator_set_states_talib_first_valid_bars():
    from stockpipe.indicators.spec import FIRST_VALID as SPEC_FIRST_VALID

    assert tuple(SPEC_FIRST_VALID) == INDICATOR_COLUMNS
    assert dict(SPEC_FIRST_VALID) == FIRST_VALID
    x = random_walk(80)
    rows = indicator_rows(pa.table({"symbol": ["A"] * 80, "date": pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=d) for d in range(80)], pa.date32()),
                                    "close": x, "volume": pa.array([1000] * 80, pa.int64())}))
    for name, first in SPEC_FIRST_VALID.items():
        column = rows.column(name)
        assert column[first - 1].as_py() is None and column[first].as_py() is not None, name


def test_numpy_engine_is_the_pure_computation_labelled():
    from stockpipe.engines import computed_by, open_engine

    table = pa.table({"symbol": ["A"] * 60, "date": pa.array([dt.date(2021, 1, 1) + dt.timedelta(days=d) for d in range(60)], pa.date32()),
                      "close": random_walk(60), "volume": pa.array([1000] * 60, pa.int64())})
    engine = open_engine("numpy")
    rows = engine.compute(table, {"A": dt.date(2021, 2, 1)})
    assert computed_by(rows) == "numpy"
    assert rows.equals(indicator_rows(table, {"A": dt.date(2021, 2, 1)}))
    assert "created_at" not in rows.column_names  # stamped by the store when written


def test_unknown_engine_is_named():
    from stockpipe.engines import EngineError, open_engine

    with pytest.raises(EngineError, match="unknown indicator engine 'pandas'"):
        open_engine("pandas")


def test_rows_kept_from_a_date_are_those_of_the_whole_computation_to_the_bit():
    """`indicator_rows` with `from_dates` computes windowed indicators only over the rows their
    windows reach (see `spec.evaluate`) and gathers only the kept rows: every kept value must be
    the one computing everything gives, bit for bit, whatever mix of histories a chunk holds."""
    lengths = {"AAA": 700, "BBB": 520, "CCC": 60, "DDD": 300, "EEE": 700, "FFF": 45}
    day0 = dt.date(2020, 1, 1)
    symbols, dates, close, volume = [], [], [], []
    for i, (symbol, n) in enumerate(lengths.items()):
        symbols += [symbol] * n
        dates += [day0 + dt.timedelta(days=700 - n + k) for k in range(n)]
        close.append(random_walk(n, seed=10 + i))
        volume.append(np.random.default_rng(20 + i).uniform(1e5, 1e6, n).round())
    bars = pa.table({"symbol": symbols, "date": pa.array(dates, pa.date32()), "close": np.concatenate(close),
                     "volume": np.concatenate(volume)})
    whole = indicator_rows(bars)
    last = day0 + dt.timedelta(days=699)
    cases = {
        "the same late date": {s: last - dt.timedelta(days=12) for s in lengths},
        "one symbol healed from its start": {**{s: last - dt.timedelta(days=12) for s in lengths}, "DDD": dt.date.min},
        "one symbol missing (keeps all)": {s: last - dt.timedelta(days=5) for s in lengths if s != "EEE"},
        "dates spread, one after the last bar": {"AAA": last - dt.timedelta(days=300), "BBB": last - dt.timedelta(days=30),
                                                 "CCC": last - dt.timedelta(days=50), "DDD": last,
                                                 "EEE": last + dt.timedelta(days=3), "FFF": last - dt.timedelta(days=44)},
    }
    for name, from_dates in cases.items():
        keep_from = pa.array([from_dates.get(s, dt.date.min) for s in whole.column("symbol").to_pylist()], pa.date32())
        expected = whole.filter(pa.compute.greater_equal(whole.column("date"), keep_from))
        actual = indicator_rows(bars, from_dates)
        assert actual.num_rows == expected.num_rows > 0, name
        assert actual.column("symbol").equals(expected.column("symbol")), name
        assert actual.column("date").equals(expected.column("date")), name
        for column in INDICATOR_COLUMNS:
            a = actual.column(column).to_numpy(zero_copy_only=False)
            e = expected.column(column).to_numpy(zero_copy_only=False)
            np.testing.assert_array_equal(a, e, err_msg=f"{name}: {column}")
