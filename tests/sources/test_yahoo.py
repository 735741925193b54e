"""yfinance bars and the NASDAQ universe, offline: Yahoo's recorded response format is served at
requests' transport layer, so the real yf.download and its parsing run."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.compute as pc
import pytest

from stockpipe import tasks
from stockpipe.indicators import indicator_rows
from stockpipe.sources.yahoo import RateLimitedError, YahooSource
from tests.sources.fake_yahoo import FakeYahoo, Listing

DAY = dt.date(2025, 10, 10)
SEOUL = dict(calendar="XKRX", timezone="Asia/Seoul", currency="KRW", open_time=dt.time(9, 0), base=60000.0)


@pytest.fixture(autouse=True)
def _yfinance_cache(tmp_path):
    import yfinance as yf

    yf.set_tz_cache_location(str(tmp_path / "yf-cache"))


def quick_source(**options) -> YahooSource:
    return YahooSource(pause_seconds=0, backoff_seconds=0.01, threads=False, **options)


def test_batches_failures_rate_limits_splits_and_exchange_local_dates():
    listings = [Listing("AAPL"), Listing("MSFT", base=400.0, rate_limited_calls=2),
                Listing("NVDA", split_on=dt.date(2025, 10, 8)), Listing("005930.KS", **SEOUL)]
    with FakeYahoo(listings) as fake:
        fetch = quick_source(batch_size=3).bars(["AAPL", "MSFT", "NVDA", "GONE", "005930.KS"], dt.date(2025, 9, 29), DAY)
    rows = fetch.rows.to_pandas()
    counts = rows.groupby("symbol").size().to_dict()
    assert counts == {"AAPL": 10, "MSFT": 10, "NVDA": 10, "005930.KS": 5}
    # Seoul's sessions, dated in Seoul: Oct 3 and Oct 6-9 2025 are KRX holidays.
    assert sorted(str(d) for d in rows[rows.symbol == "005930.KS"].date) == [
        "2025-09-29", "2025-09-30", "2025-10-01", "2025-10-02", "2025-10-10"]
    assert [(f.symbol, str(f.start), str(f.end)) for f in fetch.failures] == [("GONE", "2025-09-29", "2025-10-10")]
    assert "delisted" in fetch.failures[0].reason or "not found" in fetch.failures[0].reason.lower()
    assert fetch.refetch_history == {"NVDA"}
    assert fake.calls["MSFT"] >= 3  # two 429s, then data
    nvda = rows[rows.symbol == "NVDA"].set_index("date")
    assert nvda.loc[dt.date(2025, 10, 7), "close"] == FakeYahoo.price(listings[2], dt.date(2025, 10, 7)) / 4


def test_rate_limiting_past_the_bound_fails_clearly():
    with FakeYahoo([Listing("AAPL"), Listing("MSFT", rate_limited_calls=99)]):
        with pytest.raises(RateLimitedError, match=r"still rate-limits 1 ticker\(s\) after 3 attempts: MSFT"):
            quick_source(max_attempts=3).bars(["AAPL", "MSFT"], dt.date(2025, 10, 6), DAY)


def test_nasdaq_universe_through_the_source():
    with FakeYahoo([]):
        table = quick_source().symbols(DAY)
    assert table.column("symbol").to_pylist() == ["AAPL", "MSFT", "QQQ", "BRK-B", "SPY"]


@pytest.fixture
def yahoo_pipeline(pipeline, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_SOURCE", "yahoo")
    pipeline.configure("yahoo", pause_seconds=0, backoff_seconds=0.01, max_attempts=3, batch_size=2)
    pipeline.configure("stockpipe", min_symbols=5, backfill_sessions=120)
    return pipeline


def universe_listings(split_on=None):
    return [Listing("AAPL"), Listing("MSFT", base=400.0), Listing("QQQ", base=450.0),
            Listing("BRK-B", base=480.0, split_on=split_on), Listing("SPY", base=600.0, rate_limited_calls=1)]


def test_source_yahoo_runs_daily_and_rebuild_end_to_end(yahoo_pipeline):
    with FakeYahoo(universe_listings()):
        assert yahoo_pipeline.build(tasks.Daily(date=DAY))
        assert yahoo_pipeline.build(tasks.RebuildFrom(start_date=dt.date(2025, 9, 29)))
    store = yahoo_pipeline.store
    assert store.active_symbols() == ["AAPL", "BRK-B", "MSFT", "QQQ", "SPY"]
    assert store.bars_extent()[1] == DAY and store.bars_extent()[2] == 5 * 120
    stats = store.read_marker(f"IngestDate/{DAY}")["stats"]
    assert stats["source"] == "yahoo" and stats["failed_fetches"] == 0 and stats["bars_stored"] == 600
    assert store.read_indicators(start=DAY).num_rows == 5


def test_a_split_reingests_history_and_recomputes_indicators(yahoo_pipeline):
    split_day = dt.date(2025, 10, 8)
    with FakeYahoo(universe_listings(split_on=split_day)):
        assert yahoo_pipeline.build(tasks.Daily(date=dt.date(2025, 10, 7)))
        store = yahoo_pipeline.store
        before = store.read_bars(["BRK-B"]).to_pandas().set_index("date")["close"]
        assert yahoo_pipeline.build(tasks.Daily(date=DAY))
    stats = store.read_marker(f"IngestDate/{DAY}")["stats"]
    assert stats["splits_detected"] == ["BRK-B"]
    after = store.read_bars(["BRK-B"]).to_pandas().set_index("date")["close"]
    first = before.index[0]
    assert after.loc[first] == pytest.approx(before.loc[first] / 4)  # the whole history was rescaled
    expected = indicator_rows(store.read_bars(["BRK-B"])).to_pandas().set_index("date")
    stored = store.read_indicators(["BRK-B"]).to_pandas().set_index("date")
    np.testing.assert_allclose(stored["sma_50"].dropna(), expected["sma_50"].dropna(), rtol=1e-9)
    assert len(stored) == len(expected)
    chunk_stats = [m["stats"] for m in store.markers(prefix=f"IndicatorChunk/daily-{DAY}/")]
    assert any(s["full_history_symbols"] == ["BRK-B"] for s in chunk_stats)


def test_a_null_bar_before_the_seoul_open_is_healed_by_the_next_overlap(yahoo_pipeline, tmp_path):
    universe = tmp_path / "krx.csv"
    universe.write_text("code,name,market\n005930,삼성전자,KOSPI\n000660,SK하이닉스,KOSPI\n", encoding="utf-8")
    yahoo_pipeline.configure("yahoo", universe=str(universe))
    yahoo_pipeline.configure("stockpipe", calendar="XKRX", min_symbols=2)
    first, second = dt.date(2025, 10, 1), dt.date(2025, 10, 2)
    listings = [Listing("005930.KS", nan_on=first, **SEOUL), Listing("000660.KS", **{**SEOUL, "base": 250000.0})]
    with FakeYahoo(listings):
        assert yahoo_pipeline.build(tasks.IngestDate(date=first))
    store = yahoo_pipeline.store
    assert store.read_bars(["005930.KS"], start=first, end=first).num_rows == 0
    assert store.read_symbols().column("name").to_pylist() == ["SK하이닉스", "삼성전자"]
    listings[0].nan_on = None  # Yahoo has the bar now
    with FakeYahoo(listings):
        assert yahoo_pipeline.build(tasks.IngestDate(date=second))
    healed = store.read_bars(["005930.KS"], start=first, end=second)
    assert [str(d) for d in healed.column("date").to_pylist()] == ["2025-10-01", "2025-10-02"]
    assert pc.all(pc.is_valid(healed.column("close"))).as_py()
