"""The ingest service called directly (no Luigi, no Daily) on a real DuckDB store: gap healing,
late corrections, new listings and split re-ingest, with the demo source and CSV files."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from stockpipe import markers, trading_calendar
from stockpipe.engines import open_engine
from stockpipe.indicators import indicator_rows
from stockpipe.services.indicators import compute_chunk
from stockpipe.services.ingest import ingest_date, rescaled_symbols
from stockpipe.services.symbols import collect_symbols
from stockpipe.sources.csv_source import CsvSource
from stockpipe.sources.demo import DemoSource
from stockpipe.store import Marker, open_store
from tests.test_pipeline import assert_same_indicators

DAY = dt.date(2025, 10, 10)
EARLIER = dt.date(2025, 9, 12)  # 20 sessions before DAY


def sessions(start: dt.date, end: dt.date) -> list[dt.date]:
    return trading_calendar.sessions("XNYS", start, end)


def dates_of(store, symbol: str, start=None, end=None) -> list[dt.date]:
    return store.read_bars([symbol], start=start, end=end).column("date").to_pylist()


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}")
    opened.ensure_schema()
    yield opened
    opened.close()


@pytest.fixture
def demo(store):
    source = DemoSource(tickers=8, seed=7)
    collect_symbols(store, source, DAY, 5, None)
    return source


class CsvMarket:
    """A directory of CSV bars the test edits between ingests, as a vendor's export changes."""

    def __init__(self, directory: Path, closes: dict[str, dict[dt.date, float]]):
        self.directory = directory
        self.closes = closes
        directory.mkdir()
        with open(directory / "symbols.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["symbol", "name"])
            writer.writerows([s, f"{s} Corp"] for s in closes)
        self.write()

    def write(self) -> None:
        with open(self.directory / "bars.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["symbol", "date", "open", "high", "low", "close", "volume"])
            for symbol, series in self.closes.items():
                for day, close in sorted(series.items()):
                    writer.writerow([symbol, day, close, close * 1.01, close * 0.99, close, 1_000_000])

    def source(self) -> CsvSource:
        return CsvSource(str(self.directory))


def walk(days: list[dt.date], start: float, seed: int) -> dict[dt.date, float]:
    rng = np.random.default_rng(seed)
    values = start * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
    return {d: round(float(v), 2) for d, v in zip(days, values)}


# -- gaps -------------------------------------------------------------------------------------------
def test_a_new_store_gets_backfill_sessions_of_history_for_every_symbol(store, demo):
    stats = ingest_date(store, demo, EARLIER, days_back=5, backfill_sessions=60, marker=None)
    expected = sessions(trading_calendar.sessions_back("XNYS", EARLIER, 59), EARLIER)
    assert len(expected) == 60
    for symbol in store.active_symbols():
        assert dates_of(store, symbol) == expected, symbol
    assert stats["from_dates"] == {str(expected[0]): 8} and stats["bars_stored"] == 8 * 60


def test_a_store_behind_by_weeks_is_filled_from_its_latest_bar_without_a_hole(store, demo):
    ingest_date(store, demo, EARLIER, days_back=5, backfill_sessions=60, marker=None)
    stats = ingest_date(store, demo, DAY, days_back=5, backfill_sessions=60, marker=None)
    # Not just the 5-session overlap: everything since the latest stored bar.
    assert stats["from_dates"] == {str(EARLIER + dt.timedelta(days=1)): 8}
    for symbol in store.active_symbols():
        stored = dates_of(store, symbol)
        assert stored == sessions(stored[0], DAY), f"{symbol} has a hole"
    assert stats["bars_stored"] == 8 * len(sessions(EARLIER + dt.timedelta(days=1), DAY))


def test_a_bar_missing_from_the_source_is_healed_by_the_next_overlap(store, tmp_path):
    days = sessions(dt.date(2025, 7, 1), DAY)
    market = CsvMarket(tmp_path / "csv", {"AAA": walk(days, 50.0, 1), "BBB": walk(days, 80.0, 2)})
    late = days[-2]  # the vendor has not published BBB's bar for the day before yet
    published = market.closes["BBB"].pop(late)
    market.write()
    collect_symbols(store, market.source(), late, 2, None)
    ingest_date(store, market.source(), late, days_back=5, backfill_sessions=40, marker=None)
    assert late not in dates_of(store, "BBB") and late in dates_of(store, "AAA")

    market.closes["BBB"][late] = published
    market.write()
    ingest_date(store, market.source(), DAY, days_back=5, backfill_sessions=40, marker=None)
    healed = store.read_bars(["BBB"], start=late, end=late)
    assert healed.column("close").to_pylist() == [published]


def test_a_late_correction_inside_the_overlap_replaces_the_stored_bar_and_older_ones_stay(store, tmp_path):
    days = sessions(dt.date(2025, 7, 1), DAY)
    market = CsvMarket(tmp_path / "csv", {"AAA": walk(days[:-1], 50.0, 1)})
    collect_symbols(store, market.source(), days[-2], 1, None)
    ingest_date(store, market.source(), days[-2], days_back=5, backfill_sessions=40, marker=None)
    corrected, outside = days[-4], days[-12]
    market.closes["AAA"][corrected] = 99.5  # the vendor corrected a bar 3 sessions back
    market.closes["AAA"][outside] = 11.5  # ... and one older than the overlap re-fetches
    market.closes["AAA"][DAY] = 51.0
    kept = store.read_bars(["AAA"], start=outside, end=outside).column("close").to_pylist()
    market.write()
    ingest_date(store, market.source(), DAY, days_back=5, backfill_sessions=40, marker=None)
    assert store.read_bars(["AAA"], start=corrected, end=corrected).column("close").to_pylist() == [99.5]
    assert store.read_bars(["AAA"], start=outside, end=outside).column("close").to_pylist() == kept
    counts = store.query("SELECT count(*) AS n, count(DISTINCT date) AS d FROM bars").to_pylist()[0]
    assert counts["n"] == counts["d"] == 40 + 1


def test_a_symbol_listed_later_gets_its_own_history_while_the_others_only_their_overlap(store, tmp_path):
    days = sessions(dt.date(2025, 6, 2), DAY)
    market = CsvMarket(tmp_path / "csv", {"AAA": walk(days, 50.0, 1)})
    collect_symbols(store, market.source(), EARLIER, 1, None)
    ingest_date(store, market.source(), EARLIER, days_back=5, backfill_sessions=30, marker=None)
    market = CsvMarket(tmp_path / "csv2", {"AAA": market.closes["AAA"], "NEW": walk(days, 20.0, 3)})
    collect_symbols(store, market.source(), DAY, 2, None)
    stats = ingest_date(store, market.source(), DAY, days_back=5, backfill_sessions=30, marker=None)
    assert stats["from_dates"] == {str(trading_calendar.sessions_back("XNYS", DAY, 29)): 1,
                                   str(EARLIER + dt.timedelta(days=1)): 1}
    assert dates_of(store, "NEW") == sessions(trading_calendar.sessions_back("XNYS", DAY, 29), DAY)


def test_indicators_stopping_before_the_start_are_recomputed_from_the_day_after_their_last_row(store, demo):
    ingest_date(store, demo, DAY, days_back=5, backfill_sessions=120, marker=None)
    symbols = store.active_symbols()
    engine = open_engine("numpy")
    first = compute_chunk(store, symbols, dt.date.min, engine=engine, warmup_bars=500, marker=None)
    assert first["rows_saved"] == 8 * 120
    expected = store.read_indicators().drop(["created_at"])
    # A hole: one symbol's indicators for the last 10 sessions are gone (a chunk that failed then).
    hole_from = trading_calendar.sessions_back("XNYS", DAY, 9)
    with store.session() as session:
        session.execute("DELETE FROM indicators WHERE symbol = :s AND date >= :d", {"s": symbols[3], "d": hole_from})
    start = trading_calendar.sessions_back("XNYS", DAY, 2)
    stats = compute_chunk(store, symbols, start, engine=engine, warmup_bars=500,
                          marker=Marker(markers.indicator_chunk("daily-x", 0), "IndicatorChunk"))
    assert stats["healed_symbols"] == [symbols[3]]
    assert stats["rows_saved"] == 7 * 3 + 10
    assert store.read_indicators().drop(["created_at"]).equals(expected)
    assert store.completed([markers.indicator_chunk("daily-x", 0)]) == {markers.indicator_chunk("daily-x", 0)}


# -- splits -----------------------------------------------------------------------------------------
def test_a_split_rescales_the_whole_stored_history_and_a_full_history_chunk_recomputes_it(store, tmp_path):
    days = sessions(dt.date(2025, 3, 3), DAY)
    market = CsvMarket(tmp_path / "csv", {"AAA": walk(days[:-1], 400.0, 1), "BBB": walk(days[:-1], 80.0, 2)})
    collect_symbols(store, market.source(), days[-2], 2, None)
    ingest_date(store, market.source(), days[-2], days_back=5, backfill_sessions=120, marker=None)
    engine = open_engine("numpy")
    compute_chunk(store, ["AAA", "BBB"], dt.date.min, engine=engine, warmup_bars=500, marker=None)
    before = {s: store.read_bars([s]) for s in ("AAA", "BBB")}

    # A 4:1 split of AAA: the vendor's whole history is divided by 4 (to the cent), and the new day follows.
    market.closes["AAA"] = {d: round(c / 4, 2) for d, c in market.closes["AAA"].items()}
    market.closes["AAA"][DAY] = 101.0
    market.closes["BBB"][DAY] = 81.0
    market.write()
    stats = ingest_date(store, market.source(), DAY, days_back=5, backfill_sessions=120, marker=None)
    assert stats["splits_detected"] == ["AAA"]
    after = store.read_bars(["AAA"])
    assert after.num_rows == before["AAA"].num_rows + 1
    assert after.column("close").to_pylist()[:-1] == [round(c / 4, 2) for c in before["AAA"].column("close").to_pylist()]
    assert store.read_bars(["BBB"], end=days[-2]).equals(before["BBB"]), "an unsplit symbol keeps its history"

    chunk = compute_chunk(store, ["AAA", "BBB"], DAY, engine=engine, warmup_bars=500, marker=None, full_history=["AAA"])
    assert chunk["full_history_symbols"] == ["AAA"]
    stored = store.read_indicators(["AAA"]).drop(["created_at"])
    assert_same_indicators(stored, indicator_rows(store.read_bars(["AAA"])))  # every row, from the first bar


def test_rescaled_symbols_needs_one_constant_ratio_on_every_overlapping_day(store, tmp_path):
    days = sessions(dt.date(2025, 8, 1), DAY)
    market = CsvMarket(tmp_path / "csv", {"AAA": walk(days, 400.0, 1), "BBB": walk(days, 80.0, 2), "CCC": walk(days, 9.0, 3)})
    collect_symbols(store, market.source(), DAY, 3, None)
    ingest_date(store, market.source(), DAY, days_back=5, backfill_sessions=40, marker=None)
    fetched = store.read_bars(start=days[-5])
    close = fetched.column("close").to_numpy().copy()
    symbol = np.array(fetched.column("symbol").to_pylist())
    close[symbol == "AAA"] /= 4  # a split
    one_day = np.flatnonzero(symbol == "BBB")[-1]
    close[one_day] *= 1.5  # one bad print is a correction, not a split
    close[symbol == "CCC"] *= 1.01  # a 1% shift is below the split threshold
    changed = fetched.set_column(fetched.schema.get_field_index("close"), "close", pc.cast(close, fetched.schema.field("close").type))
    assert rescaled_symbols(store, changed) == {"AAA"}


class _Watched(DemoSource):
    """The demo source, noting at each request how many of the tables of bars it handed out
    earlier are still held by someone."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.handed_out = []
        self.still_held = []

    def bars(self, symbols, start, end):
        import gc
        import weakref

        gc.collect()
        self.still_held.append(sum(ref() is not None for ref in self.handed_out))
        fetched = super().bars(symbols, start, end)
        self.handed_out.append(weakref.ref(fetched.rows))
        return fetched


def test_backfill_lets_go_of_each_batch_of_fetched_bars(store):
    """Memory is bounded by a batch, not by the universe: once a batch is stored nothing keeps its
    fetched bars (a Backfill of 20,000 symbols held them all until its end, 4.2 GB)."""
    from stockpipe.services.ingest import backfill

    source = _Watched(tickers=12, seed=7)
    collect_symbols(store, source, DAY, 5, None)
    stats = backfill(store, source, dt.date(2025, 6, 2), DAY, batch_size=4, marker=None)
    assert stats["bars_stored"] == store.read_bars().num_rows > 0
    assert source.still_held == [0, 0, 0]  # at each batch's request, the batches before it are gone
