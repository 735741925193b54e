"""The synthetic market: deterministic per (symbol, date), consistent OHLC, real trading days."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc

from stockpipe.sources.demo import DemoSource


def test_a_bar_does_not_depend_on_the_range_requested():
    source = DemoSource(tickers=20)
    symbols = source.symbols(dt.date(2025, 10, 10)).column("symbol").to_pylist()
    long = source.bars(symbols, dt.date(2024, 1, 1), dt.date(2025, 10, 10)).rows.to_pandas()
    short = DemoSource(tickers=20).bars(symbols[:5], dt.date(2025, 9, 30), dt.date(2025, 10, 3)).rows.to_pandas()
    merged = short.merge(long, on=["symbol", "date"], suffixes=("_short", "_long"))
    assert len(merged) == len(short) > 0
    for column in ("open", "high", "low", "close", "volume"):
        assert (merged[f"{column}_short"] == merged[f"{column}_long"]).all(), column


def test_ohlc_is_consistent_in_cents_on_exchange_sessions_and_labelled_synthetic():
    source = DemoSource(tickers=30)
    universe = source.symbols(dt.date(2025, 10, 10))
    assert all(name.endswith("[synthetic]") for name in universe.column("name").to_pylist())
    assert set(universe.column("exchange").to_pylist()) == {"DEMO"}
    bars = source.bars(universe.column("symbol").to_pylist(), dt.date(2025, 6, 1), dt.date(2025, 7, 31)).rows
    frame = bars.to_pandas()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame["low"] > 0).all() and (frame["volume"] > 0).all()
    assert ((frame["close"] * 100).round(6) % 1 == 0).all()
    dates = set(pc.unique(bars.column("date")).to_pylist())
    assert dt.date(2025, 7, 4) not in dates and dt.date(2025, 6, 19) not in dates  # NYSE holidays
    assert dt.date(2025, 7, 3) in dates


def test_volatility_clusters_and_news_moves_come_with_volume():
    frame = DemoSource(tickers=40).bars(DemoSource(tickers=40).symbols(None).column("symbol").to_pylist(),
                                        dt.date(2020, 1, 1), dt.date(2025, 10, 10)).rows.to_pandas()
    frame["ret"] = frame.groupby("symbol")["close"].pct_change()
    frame["abs"] = frame["ret"].abs()
    # Clustering: today's size of move predicts tomorrow's (positive autocorrelation of |returns|).
    lagged = frame.groupby("symbol")["abs"].shift(1)
    assert frame["abs"].corr(lagged) > 0.1
    big = frame["abs"] > 0.05
    ratio = frame["volume"] / frame.groupby("symbol")["volume"].transform("median")
    assert ratio[big].median() > 1.3 * ratio[~big].median()
    breakouts = (frame["ret"] > 0.04) & (ratio > 3)
    assert breakouts.mean() > 0.005  # news days: the watchlist's breakout rule has cases


def test_a_recent_request_starts_from_cached_year_end_states_with_identical_values(tmp_path, monkeypatch):
    symbols = DemoSource(tickers=25).symbols(None).column("symbol").to_pylist()
    # Reference: a source with no cache computes every path from the epoch.
    reference = DemoSource(tickers=25).bars(symbols, dt.date(2024, 12, 20), dt.date(2025, 10, 10)).rows
    DemoSource(tickers=25, cache_dir=tmp_path).bars(symbols, dt.date(2025, 1, 2), dt.date(2025, 1, 10))  # fills the cache
    assert len(list((tmp_path / "demo-20240101-XNYS").glob("*.npy"))) == len(symbols)

    drawn_years: list[int] = []
    original = DemoSource._draws

    def counting(self, symbol, years, counts):
        drawn_years.extend(years)
        return original(self, symbol, years, counts)

    monkeypatch.setattr(DemoSource, "_draws", counting)
    # Another process (a fresh instance) reading the cache: only the years asked for are generated.
    answer = DemoSource(tickers=25, cache_dir=tmp_path).bars(symbols, dt.date(2024, 12, 20), dt.date(2025, 10, 10)).rows
    assert set(drawn_years) == {2024, 2025}
    assert answer.equals(reference)
