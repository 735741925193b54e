"""Recompute one chunk of symbols' indicators from a date and replace them atomically."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from stockpipe.engines import ChunkRef, IndicatorEngine, computed_by
from stockpipe.indicators.spec import WARMUP_BARS
from stockpipe.indicators.table import symbol_runs
from stockpipe.progress import Progress, silent
from stockpipe.store import BAR_SNAPSHOT, Marker, Store

log = logging.getLogger("stockpipe.indicators")

LOG_BATCH = 10  # tickers per progress line, like the old system's "[12/50] 005930 ... saved 13"
MIN_EXACT_WARMUP = WARMUP_BARS  # bars after which EMA/Wilder seeds no longer change a double (see README)


@dataclass(frozen=True)
class ChunkRead:
    """What a chunk reads: from which date each symbol's rows are replaced, and which bars."""

    from_dates: dict[str, dt.date]  # dt.date.min = the symbol's whole history
    read_start: dt.date | None  # of the symbols recomputed from the chunk's start; None = every bar
    rescaled: frozenset[str]
    # Symbols recomputed from earlier (healing, new, rescaled), each read from its own start (None =
    # every bar): one such symbol must not make the whole chunk read years of bars.
    apart: dict[str, dt.date | None] = field(default_factory=dict)

    def read_start_of(self, symbol: str) -> dt.date | None:
        return self.apart[symbol] if symbol in self.apart else self.read_start


def plan_read(
    symbols: Sequence[str], start: dt.date, warmup_bars: int, latest: Mapping[str, dt.date], full_history: Sequence[str]
) -> ChunkRead:
    """A symbol whose stored indicators stop before `start` (new listing, earlier hole) is recomputed
    from the day after its last stored row, so a chunk also heals gaps; one rescaled by a split
    (`full_history`) from its first bar. History before a symbol's recomputed date is read only to
    warm up the recursive indicators: `warmup_bars` bars of its own (0 = all)."""
    rescaled = frozenset(full_history) & frozenset(symbols)
    from_dates = {s: (min(start, latest[s] + dt.timedelta(days=1)) if s in latest and s not in rescaled else dt.date.min)
                  for s in symbols}
    if warmup_bars == 0 or start == dt.date.min:
        return ChunkRead(from_dates, None, rescaled)
    apart = {s: (None if d == dt.date.min else d) for s, d in from_dates.items() if d < start}
    return ChunkRead(from_dates, start, rescaled, apart)


def check_warmup(warmup_bars: int) -> None:
    if 0 < warmup_bars < MIN_EXACT_WARMUP:
        raise ValueError(
            f"warmup_bars={warmup_bars} would change EMA/RSI values (needs >= {MIN_EXACT_WARMUP}, or 0 for full history)"
        )


def compute_chunk(
    store: Store,
    symbols: Sequence[str],
    start: dt.date,
    *,
    engine: IndicatorEngine,
    warmup_bars: int,
    marker: Marker | None,
    label: str = "",
    progress: Progress = silent,
    full_history: Sequence[str] = (),
    chunk: ChunkRef | None = None,
    upcoming: Sequence[Upcoming] = (),
    into: str | None = None,
) -> dict[str, Any]:
    """Indicators of `symbols` from `start` to their latest bar (see `plan_read`), computed by
    `engine` (which may use what it prepared for `chunk`), replacing the stored rows (in the run's
    build table `into`, if it has one) and touching `marker` in one transaction. `upcoming` are the
    plan's later chunks, whose inputs this one may read along with its own (see `_read_inputs`).
    """
    check_warmup(warmup_bars)
    started = time.monotonic()
    symbols = sorted(symbols)
    # A chunk done meanwhile by another worker (scheduled again on a briefly stale "missing", see
    # targets.py) is found by the task before it calls this, under the marker's run lock, and by the
    # write's own claim below: asking here too cost a query per chunk.
    progress(5, f"{label} reading bars of {len(symbols)} symbols")
    key = _inputs_key(store, start, warmup_bars, full_history)
    prepared = _prepared_ahead(store, key, symbols)
    if prepared is None:
        read, bars, read_ahead, _ = _read_inputs(store, symbols, start, warmup_bars, full_history, upcoming)
        rows = None
    else:
        read, bars, read_ahead, rows = prepared
    if upcoming:
        _prepare_next(store, engine, key, upcoming)  # while this chunk computes and writes
    from_dates, rescaled = read.from_dates, read.rescaled
    read_seconds = time.monotonic() - started
    computed_ahead = rows is not None
    if rows is None:
        progress(30, f"{label} computing {bars.num_rows} bars")
        rows = engine.compute(bars, from_dates, chunk=chunk)
    progress(60, f"{label} writing {rows.num_rows} rows")
    stats = {
        "symbols": len(symbols),
        "bars_read": bars.num_rows,
        "rows_saved": rows.num_rows,
        "from_date": str(start),
        "healed_symbols": sorted(s for s in symbols if from_dates[s] < start and s not in rescaled)[:50],
        "full_history_symbols": sorted(rescaled),
        "read_seconds": round(read_seconds, 3),
        "read_ahead": read_ahead,  # its inputs came with an earlier chunk's read
        "computed_ahead": computed_ahead,  # its rows were computed while the chunk before it wrote
        "computed_by": computed_by(rows),
    }
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    # Replace only up to the last bar read: a Daily that committed a newer session meanwhile keeps
    # its rows (they were computed from bars this chunk never saw).
    end = pc.max(bars.column("date")).as_py() if bars.num_rows else None
    wrote = store.replace_indicators(symbols, start, rows, marker, whole_symbols=sorted(rescaled), end=end, into=into)
    if not wrote:
        log.info("%s already completed by another worker: nothing written", label)
        stats["skipped"] = True
        return stats
    if chunk is not None:
        engine.release(chunk)
    if into is None:
        store.reclaim_during_run("indicators")
    _log_batches(rows, symbols, label, progress)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return stats



def _inputs_key(store: Store, start: dt.date, warmup_bars: int, full_history: Sequence[str]) -> tuple:
    """What inputs read or computed ahead must have been read with to serve a chunk: the same store,
    start, warm-up and whole-history symbols (`_prepare_next` unpacks it in this order)."""
    return store.url, start, warmup_bars, tuple(sorted(full_history))


@dataclass(frozen=True)
class Upcoming:
    """A later chunk of the plan: its marker, its symbols, and its ref for the engine."""

    marker_id: str
    symbols: Sequence[str]
    chunk: ChunkRef | None = None


# -- the next chunk, computed on a thread while this one writes -------------------------------------
# A chunk's work is read, compute, write: numpy computes while the store waits, then the store
# writes (DuckDB inserts and commits, PostgreSQL's server) while numpy waits. Chunks run one after
# another in the worker's process, so a chunk reads the inputs of the plan's next unfinished chunk
# and a thread computes its rows while this chunk writes. The next chunk uses those rows only if no
# write logged since their read touched its symbols (as for read-ahead inputs), else it reads and
# computes again. Only the main thread uses the store. A fork waits for the thread first: a child
# must not inherit a lock it holds.


@dataclass
class _Job:
    key: tuple
    future: Future  # -> (symbols, mark, ChunkRead, bars, read_ahead, rows) | None


_job: _Job | None = None
_job_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="stockpipe-next-chunk")
    return _pool


def _prepare_next(store: Store, engine: IndicatorEngine, key: tuple, upcoming: Sequence[Upcoming]) -> None:
    """Take the inputs of the plan's next unfinished chunk here (read ahead, else from the store), and
    compute its rows on the thread. The store is used here, on the calling thread, only: the thread
    computes (numpy, or reads a file an engine staged), nothing else."""
    global _job
    ahead = _read_ahead
    if ahead is not None and ahead.key == key and tuple(sorted(upcoming[0].symbols)) in ahead.inputs:
        index = 0  # read ahead because it was unfinished: no need to ask again
    else:
        candidates = list(upcoming[:16])
        done = store.completed([u.marker_id for u in candidates])
        pending = [i for i, u in enumerate(candidates) if u.marker_id not in done]
        if not pending:
            return
        index = pending[0]
    target = upcoming[index]
    symbols = tuple(sorted(target.symbols))
    _, start, warmup_bars, full_history = key
    read, bars, read_ahead, mark = _read_inputs(store, list(symbols), start, warmup_bars, full_history,
                                                list(upcoming[index + 1:]), for_later=True)

    def compute():
        try:
            return symbols, mark, read, bars, read_ahead, engine.compute(bars, read.from_dates, chunk=target.chunk)
        except Exception as exc:  # noqa: BLE001 - the chunk then computes for itself
            log.info("computing %s..%s ahead failed (%s): the chunk computes them itself", symbols[0], symbols[-1], exc)
            return None

    with _job_lock:
        _job = _Job(key, _executor().submit(compute))


def _prepared_ahead(store: Store, key: tuple, symbols: Sequence[str]):
    """What the thread prepared for the chunk of `symbols` (read, bars, read_ahead, rows), if it was
    for this chunk and no logged write touched its symbols since; None otherwise. Waits for the
    thread: it also holds the read-ahead inputs."""
    job = _wait_for_job()
    if job is None or job[0] is None or job[1] != key:
        return None
    found_symbols, mark, read, bars, read_ahead, rows = job[0]
    if found_symbols != tuple(symbols):
        return None
    if not _untouched_since(store, mark, symbols):
        log.info("%s..%s changed since they were computed ahead: computing them again", symbols[0], symbols[-1])
        return None
    return read, bars, read_ahead, rows


def _wait_for_job():
    """The finished job's (result, key), or None; no job is under way when this returns (a wait cut
    short by the task's timeout leaves it registered, for the fork hook and the run's end)."""
    global _job
    with _job_lock:
        job = _job
    if job is None:
        return None
    try:
        result = job.future.result()
    except BaseException:  # noqa: BLE001 - the job's own errors are caught in it; this is the wait's
        if not job.future.done():
            raise
        result = None
    with _job_lock:
        if _job is job:
            _job = None
    return result, job.key


@dataclass
class _ReadAhead:
    """Inputs read for chunks that have not run yet, with the change log's newest entry before they
    were read: a chunk uses its inputs only if no write logged since touched its symbols."""

    key: tuple
    mark: Any  # changes.Change | None
    inputs: dict[tuple[str, ...], tuple[ChunkRead, pa.Table]]


_read_ahead: _ReadAhead | None = None  # this process's; one plan's chunks run one after another


def forget_read_ahead() -> None:
    """Drop what was read or computed ahead (a worker's run ended: its memory is not kept for the
    next), after the thread computing ahead has finished."""
    global _read_ahead
    _wait_for_job()
    _read_ahead = None


def _wait_for_job_quietly() -> None:
    """Wait for the thread's job, if any, leaving its outcome to the chunk that wants it."""
    with _job_lock:
        job = _job
    if job is not None:
        wait([job.future])


# A child forked while the thread computes could inherit a lock it holds at that moment (the
# allocator's, Arrow's, a log handler's) and block on it for ever: the fork waits for the thread.
os.register_at_fork(before=_wait_for_job_quietly)


def _read_inputs(
    store: Store, symbols: Sequence[str], start: dt.date, warmup_bars: int, full_history: Sequence[str],
    upcoming: Sequence[Upcoming], *, for_later: bool = False,
) -> tuple[ChunkRead, pa.Table, bool, Any]:
    """What the chunk of `symbols` reads (`plan_read`, then its bars), as if read now: from what an
    earlier chunk of the plan read ahead for it when no logged write has touched its symbols since,
    else from the store. When nothing is left read ahead, also reads ahead for the next unfinished
    chunks of `upcoming`. Returns the inputs, True when they were read ahead, and the change-log mark
    they are valid from (None unless `for_later`).

    `for_later`: the inputs are used later (rows computed ahead), so the change log is not asked
    now; they come with the mark of their read (the read-ahead's, or one taken before reading them
    now), and whoever uses them checks `_untouched_since` then."""
    global _read_ahead
    key = _inputs_key(store, start, warmup_bars, full_history)
    ahead, _read_ahead = _read_ahead, None
    if ahead is not None and ahead.key == key and tuple(symbols) in ahead.inputs:
        read, bars = ahead.inputs.pop(tuple(symbols))
        if for_later or _untouched_since(store, ahead.mark, symbols):
            _read_ahead = ahead if ahead.inputs else _read_next(store, key, read, bars, symbols, upcoming)
            return read, bars, True, ahead.mark if for_later else None
        log.info("%s..%s changed since their bars were read ahead: reading them again", symbols[0], symbols[-1])
    # Taken before the read: a write committed after it shows in the log as later than the mark.
    mark = store.change_mark() if for_later else None
    read, bars = _read_chunks(store, [symbols], start, warmup_bars, full_history)[tuple(symbols)]
    _read_ahead = _read_next(store, key, read, bars, symbols, upcoming)
    return read, bars, False, mark


def _read_next(store: Store, key: tuple, read: ChunkRead, bars: pa.Table, symbols: Sequence[str],
               upcoming: Sequence[Upcoming]) -> _ReadAhead | None:
    """The inputs of the unfinished chunks of `upcoming` that fit in the store's `read_ahead_bars`
    (judged by the bars a symbol of this chunk took). Nothing when every chunk reads every bar
    (`warmup_bars` 0)."""
    if read.read_start is None:
        return None
    _, start, warmup_bars, full_history = key
    per_symbol = max(bars.num_rows / max(len(symbols), 1), 1.0)
    room = int(store.read_ahead_bars / per_symbol) - len(symbols)
    candidates: list[Upcoming] = []
    for later in upcoming:
        if room < len(later.symbols):
            break
        candidates.append(later)
        room -= len(later.symbols)
    done = store.completed([c.marker_id for c in candidates]) if candidates else set()
    pending = [sorted(c.symbols) for c in candidates if c.marker_id not in done]
    if not pending:
        return None
    # Taken before these reads: a write committed after it shows in the log as later than the mark.
    mark = store.change_mark()
    inputs = _read_chunks(store, pending, start, warmup_bars, full_history)
    return _ReadAhead(key, mark, inputs) if inputs else None


def _read_chunks(
    store: Store, chunks: Sequence[Sequence[str]], start: dt.date, warmup_bars: int, full_history: Sequence[str],
) -> dict[tuple[str, ...], tuple[ChunkRead, pa.Table]]:
    """Each chunk's `plan_read` and bars, from one query of the latest rows and one of bars per
    distinct read start (`ChunkRead.read_start_of`)."""
    wanted = sorted({s for c in chunks for s in c})
    latest = store.latest_indicator_dates(wanted, before=start)
    reads = {tuple(c): plan_read(c, start, warmup_bars, latest, full_history) for c in chunks}
    by_start: dict[dt.date | None, list[str]] = {}
    for c, read in reads.items():
        for symbol in c:
            by_start.setdefault(read.read_start_of(symbol), []).append(symbol)
    parts = store.read_bars_many([(sorted(symbols), read_start, 0 if read_start is None else warmup_bars)
                                  for read_start, symbols in by_start.items()], schema=BAR_SNAPSHOT)
    bars = pa.concat_tables(parts) if parts else BAR_SNAPSHOT.empty_table()
    groups = list(reads)
    return {c: (reads[c], part) for c, part in zip(groups, _split_by_symbols(bars, groups))}


def _split_by_symbols(bars: pa.Table, groups: Sequence[Sequence[str]]) -> list[pa.Table]:
    """`bars` (each symbol's rows together and sorted by date: the concatenation of reads sorted by
    symbol and date) cut into the rows of each group of symbols, sorted by symbol and date."""
    names, starts, ends = symbol_runs(bars.column("symbol"))
    position = {name: i for i, name in enumerate(names)}
    parts = []
    for group in groups:
        runs_of = [position[s] for s in sorted(group) if s in position]
        if not runs_of:
            parts.append(bars.slice(0, 0))
        elif runs_of == list(range(runs_of[0], runs_of[0] + len(runs_of))):  # the usual case: a contiguous range
            parts.append(bars.slice(int(starts[runs_of[0]]), int(ends[runs_of[-1]] - starts[runs_of[0]])))
        else:
            parts.append(pa.concat_tables([bars.slice(int(starts[i]), int(ends[i] - starts[i])) for i in runs_of]))
    return parts


def _untouched_since(store: Store, mark: Any, symbols: Sequence[str]) -> bool:
    """No write logged after `mark` touched `symbols`' rows (by their code-point range)."""
    since = store.changes_since(mark)
    if since is None:
        return False
    low, high = min(symbols), max(symbols)
    return all(c.symbol_from is not None and (c.symbol_to < low or c.symbol_from > high) for c in since)


def _log_batches(rows, symbols: Sequence[str], label: str, progress: Progress) -> None:
    if rows.num_rows:
        per_symbol = rows.group_by("symbol").aggregate([("date", "count")])
        saved = dict(zip(per_symbol.column("symbol").to_pylist(), per_symbol.column("date_count").to_pylist()))
    else:
        saved = {}
    total = len(symbols)
    for end in range(LOG_BATCH, total + LOG_BATCH, LOG_BATCH):
        batch = symbols[end - LOG_BATCH : min(end, total)]
        count = sum(saved.get(s, 0) for s in batch)
        progress(60 + 40.0 * min(end, total) / total, f"{label} [{min(end, total)}/{total}] {batch[0]}..{batch[-1]} saved {count}")


def prepare_chunks(
    store: Store,
    engine: IndicatorEngine,
    chunks: Sequence[Sequence[str]],
    pending: Sequence[int],
    start: dt.date,
    *,
    warmup_bars: int,
    staging: Path,
    full_history: Sequence[str] = (),
    progress: Progress = silent,
) -> dict[str, Any]:
    """Let `engine` compute the `pending` chunks of a plan ahead of their tasks, reading exactly what
    each chunk task will read (`plan_read`). A no-op for engines that compute in the task."""
    check_warmup(warmup_bars)
    refs = [ChunkRef(Path(staging), i) for i in pending]

    def requests() -> pa.Table:
        wanted = sorted({s for i in pending for s in chunks[i]})
        latest = store.latest_indicator_dates(wanted, before=start) if wanted else {}
        columns: dict[str, list] = {"chunk_id": [], "symbol": [], "read_start": [], "warmup_bars": [], "keep_from": []}
        for i in pending:
            read = plan_read(chunks[i], start, warmup_bars, latest, full_history)
            for symbol in sorted(chunks[i]):
                keep = read.from_dates[symbol]
                columns["chunk_id"].append(i)
                columns["symbol"].append(symbol)
                read_start = read.read_start_of(symbol)
                columns["read_start"].append(read_start)
                columns["warmup_bars"].append(0 if read_start is None else warmup_bars)
                columns["keep_from"].append(None if keep == dt.date.min else keep)
        return pa.table({
            "chunk_id": pa.array(columns["chunk_id"], pa.int32()),
            "symbol": pa.array(columns["symbol"], pa.string()),
            "read_start": pa.array(columns["read_start"], pa.date32()),
            "warmup_bars": pa.array(columns["warmup_bars"], pa.int32()),
            "keep_from": pa.array(columns["keep_from"], pa.date32()),
        })

    return engine.prepare(store, refs, requests, progress) if refs else {}


def chunk(symbols: Sequence[str], size: int) -> list[list[str]]:
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    ordered = sorted(symbols)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


__all__ = ["chunk", "compute_chunk", "plan_read", "prepare_chunks"]
