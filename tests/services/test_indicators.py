"""Chunks of a plan run one after another in the worker's process read the next chunks' inputs along
with their own (services/indicators.py `_read_inputs`), and a thread computes the next chunk's rows
while one writes (`_prepare_next`): the rows stored must be exactly those of chunks reading and
computing alone, and a chunk whose bars were written after they were read or computed ahead reads
and computes again."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pyarrow as pa
import pytest

from stockpipe import markers
from stockpipe.engines import open_engine
from stockpipe.indicators import INDICATOR_COLUMNS
from stockpipe.indicators.table import indicator_rows
from stockpipe.services import indicators
from stockpipe.services.indicators import compute_chunk
from stockpipe.services.ingest import ingest_date
from stockpipe.services.symbols import collect_symbols
from stockpipe.sources.demo import DemoSource
from stockpipe.store import Marker

pytestmark = pytest.mark.both_stores

DAY = dt.date(2025, 10, 10)
START = dt.date(2025, 9, 29)
WARMUP = 500
PLAN = "rebuild-readahead"


@pytest.fixture
def loaded(store):
    """12 demo symbols with 600 sessions of bars and their indicators, in 3 chunks of 4, the store
    reading ahead as DuckDB's does (PostgreSQL's reads each chunk alone by default: the logic that
    decides what read-ahead input may be used is the same on both)."""
    source = DemoSource(tickers=12, seed=5)
    collect_symbols(store, source, DAY, 5, None)
    ingest_date(store, source, DAY, days_back=5, backfill_sessions=600, marker=None)
    compute_chunk(store, store.active_symbols(), dt.date.min, engine=open_engine("numpy"), warmup_bars=WARMUP, marker=None)
    indicators.forget_read_ahead()
    store.read_ahead_bars = 250_000
    yield store, [store.active_symbols()[i:i + 4] for i in (0, 4, 8)]
    indicators.forget_read_ahead()


def run_chunk(store, chunks, i, *, ahead=True):
    upcoming = [indicators.Upcoming(markers.indicator_chunk(PLAN, j), chunks[j]) for j in range(i + 1, len(chunks))]
    return compute_chunk(store, chunks[i], START, engine=open_engine("numpy"), warmup_bars=WARMUP,
                         marker=Marker(markers.indicator_chunk(PLAN, i), "IndicatorChunk"),
                         upcoming=upcoming if ahead else ())


def stored(store, symbols=None):
    rows = store.read_indicators(symbols, start=START)
    return rows.drop_columns([c for c in rows.column_names if c == "created_at"])


def expected(store, symbols):
    """The chunk's rows computed now from the store's bars, by the kernels directly."""
    bars = store.read_bars(symbols, start=START, warmup_bars=WARMUP)
    rows = indicator_rows(bars, {s: START for s in symbols})
    return rows.select([c for c in stored(store).column_names if c in rows.column_names])


def test_chunks_reading_ahead_store_exactly_what_chunks_reading_alone_store(loaded):
    store, chunks = loaded
    assert [run_chunk(store, chunks, i, ahead=False)["read_ahead"] for i in range(3)] == [False] * 3
    alone = stored(store)
    with store.session() as session:  # forget that round's markers
        session.execute("DELETE FROM task_markers WHERE marker_id LIKE :m", {"m": f"%{PLAN}%"})
    stats = [run_chunk(store, chunks, i) for i in range(3)]
    assert [s["read_ahead"] for s in stats] == [False, True, True]
    assert [s["rows_saved"] for s in stats] == [4 * 10] * 3
    assert stored(store).equals(alone)


def test_a_chunk_whose_bars_changed_after_being_read_ahead_reads_them_again(loaded):
    store, chunks = loaded
    assert run_chunk(store, chunks, 0)["read_ahead"] is False
    # A late correction of one of chunk 2's bars lands before chunk 1 and 2 run.
    symbol = chunks[2][1]
    bar = store.read_bars([symbol], start=dt.date(2025, 10, 1), end=dt.date(2025, 10, 1))
    corrected = bar.set_column(bar.schema.get_field_index("close"), "close",
                               pa.array([bar.column("close")[0].as_py() * 1.5], pa.float64()))
    store.write_bars(corrected)

    assert run_chunk(store, chunks, 1)["read_ahead"] is True, "chunk 1 was not touched"
    assert run_chunk(store, chunks, 2)["read_ahead"] is False, "chunk 2 used bars read before the correction"
    for chunk in chunks[1:]:
        assert stored(store, chunk).select(expected(store, chunk).column_names).equals(expected(store, chunk))


def test_a_forked_chunk_or_a_chunk_alone_reads_nothing_ahead(loaded):
    store, chunks = loaded
    run_chunk(store, chunks, 0, ahead=False)
    assert indicators._read_ahead is None
    assert run_chunk(store, chunks, 1)["read_ahead"] is False


def test_chunks_already_done_elsewhere_are_not_read_or_computed_ahead(loaded):
    store, chunks = loaded
    with store.session() as session:
        store._touch(session, Marker(markers.indicator_chunk(PLAN, 1), "IndicatorChunk"))
    run_chunk(store, chunks, 0)
    prepared, _ = indicators._wait_for_job()
    assert prepared[0] == tuple(chunks[2]), "the thread computed a chunk done elsewhere"
    assert indicators._read_ahead is None, "chunk 2's read-ahead inputs were not the ones it computed from"


def test_chunks_computed_ahead_store_exactly_what_chunks_computing_alone_store(loaded):
    store, chunks = loaded
    for i in range(3):
        run_chunk(store, chunks, i, ahead=False)
    alone = stored(store)
    with store.session() as session:
        session.execute("DELETE FROM task_markers WHERE marker_id LIKE :m", {"m": f"%{PLAN}%"})
    stats = [run_chunk(store, chunks, i) for i in range(3)]
    assert [s["computed_ahead"] for s in stats] == [False, True, True]
    assert stored(store).equals(alone)


def test_a_chunk_whose_bars_changed_after_being_computed_ahead_computes_again(loaded):
    store, chunks = loaded
    assert run_chunk(store, chunks, 0)["computed_ahead"] is False
    indicators._wait_for_job_quietly()  # chunk 1's rows are computed: the correction comes after
    symbol = chunks[1][2]
    bar = store.read_bars([symbol], start=dt.date(2025, 10, 2), end=dt.date(2025, 10, 2))
    corrected = bar.set_column(bar.schema.get_field_index("close"), "close",
                               pa.array([bar.column("close")[0].as_py() * 0.7], pa.float64()))
    store.write_bars(corrected)

    stats = run_chunk(store, chunks, 1)
    assert stats["computed_ahead"] is False, "chunk 1 stored rows computed from bars since corrected"
    assert stored(store, chunks[1]).select(expected(store, chunks[1]).column_names).equals(expected(store, chunks[1]))
    assert run_chunk(store, chunks, 2)["computed_ahead"] is True, "chunk 2 was not touched"


def test_a_fork_waits_for_the_chunk_being_computed_ahead(loaded):
    """A child forked while the thread works could inherit a lock it holds: the fork waits."""
    import os
    import time

    store, chunks = loaded
    release = threading.Event()
    slow = indicators._executor().submit(release.wait)
    run_chunk(store, chunks, 0)  # queues chunk 1 behind `slow` on the one thread
    job = indicators._job
    assert job is not None and not job.future.done()
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if job.future.done() else 1)  # what the child saw: the job had finished
    _, status = os.waitpid(pid, 0)
    assert time.monotonic() - started >= 0.4 and os.waitstatus_to_exitcode(status) == 0
    assert slow.done()


def test_a_chunk_healing_a_symbol_reads_that_symbols_history_only_and_still_reads_ahead(loaded):
    """A symbol whose indicators stop long before the start (a hole left by a failed chunk, a
    listing that stopped trading) is read from its own gap; the other symbols of its chunk and of
    the chunks after still read their last `warmup_bars` bars, read ahead as usual, and the rows are
    those of the whole history (to the parity tests' tolerance: a chunk's kernels run on a matrix as
    deep as its longest window, which moves the last bits)."""
    store, chunks = loaded
    whole = store.read_indicators()
    healed = chunks[1][2]
    hole = sorted(store.read_bars([healed]).column("date").to_pylist())[-60]
    with store.session() as session:
        session.execute("DELETE FROM indicators WHERE symbol = :s AND date >= :d", {"s": healed, "d": hole})

    stats = [run_chunk(store, chunks, i) for i in range(3)]

    assert [s["read_ahead"] for s in stats] == [False, True, True]
    assert healed in stats[1]["healed_symbols"]
    own = sum(store.read_bars([s], start=START, warmup_bars=WARMUP).num_rows for s in chunks[1] if s != healed)
    own += store.read_bars([healed], start=hole, warmup_bars=WARMUP).num_rows
    assert stats[1]["bars_read"] == own
    assert own < store.read_bars(chunks[1], start=hole, warmup_bars=WARMUP).num_rows
    assert stats[1]["rows_saved"] == 3 * 10 + 60
    after = store.read_indicators()
    assert after.select(["symbol", "date"]).equals(whole.select(["symbol", "date"]))
    for column in INDICATOR_COLUMNS:
        np.testing.assert_allclose(after.column(column).to_numpy(zero_copy_only=False),
                                   whole.column(column).to_numpy(zero_copy_only=False), rtol=1e-9, atol=1e-10,
                                   err_msg=column)
