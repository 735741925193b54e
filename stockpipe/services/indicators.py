"""Recompute one chunk of symbols' indicators from a date and replace them atomically."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from stockpipe.engines import ChunkRef, IndicatorEngine, computed_by
from stockpipe.indicators.spec import WARMUP_BARS
from stockpipe.progress import Progress, silent
from stockpipe.store import Marker, Store

log = logging.getLogger("stockpipe.indicators")

LOG_BATCH = 10  # tickers per progress line, like the old system's "[12/50] 005930 ... saved 13"
MIN_EXACT_WARMUP = WARMUP_BARS  # bars after which EMA/Wilder seeds no longer change a double (see README)


@dataclass(frozen=True)
class ChunkRead:
    """What a chunk reads: from which date each symbol's rows are replaced, and which bars."""

    from_dates: dict[str, dt.date]  # dt.date.min = the symbol's whole history
    read_start: dt.date | None  # None = every bar
    rescaled: frozenset[str]


def plan_read(
    symbols: Sequence[str], start: dt.date, warmup_bars: int, latest: Mapping[str, dt.date], full_history: Sequence[str]
) -> ChunkRead:
    """A symbol whose stored indicators stop before `start` (new listing, earlier hole) is recomputed
    from the day after its last stored row, so a chunk also heals gaps; one rescaled by a split
    (`full_history`) from its first bar. History before the earliest recomputed date is read only to
    warm up the recursive indicators: `warmup_bars` bars (0 = all)."""
    rescaled = frozenset(full_history) & frozenset(symbols)
    from_dates = {s: (min(start, latest[s] + dt.timedelta(days=1)) if s in latest and s not in rescaled else dt.date.min)
                  for s in symbols}
    needs_all = warmup_bars == 0 or any(d == dt.date.min for d in from_dates.values())
    earliest = min(from_dates.values()) if symbols else start
    return ChunkRead(from_dates, None if needs_all else earliest, rescaled)


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
) -> dict[str, Any]:
    """Indicators of `symbols` from `start` to their latest bar (see `plan_read`), computed by
    `engine` (which may use what it prepared for `chunk`), replacing the stored rows and touching
    `marker` in one transaction.
    """
    check_warmup(warmup_bars)
    started = time.monotonic()
    symbols = sorted(symbols)
    if marker is not None and store.completed([marker.marker_id]):
        # Scheduled again on a briefly stale "missing" (see targets.py): the work is already stored.
        log.info("%s already completed by another worker: nothing to do", label)
        return {"symbols": len(symbols), "skipped": True}
    progress(5, f"{label} reading bars of {len(symbols)} symbols")
    latest = store.latest_indicator_dates(symbols, before=start)
    read = plan_read(symbols, start, warmup_bars, latest, full_history)
    from_dates, rescaled = read.from_dates, read.rescaled
    bars = store.read_bars(symbols, start=read.read_start, warmup_bars=0 if read.read_start is None else warmup_bars)
    read_seconds = time.monotonic() - started
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
        "computed_by": computed_by(rows),
    }
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    # Replace only up to the last bar read: a Daily that committed a newer session meanwhile keeps
    # its rows (they were computed from bars this chunk never saw).
    end = pc.max(bars.column("date")).as_py() if bars.num_rows else None
    wrote = store.replace_indicators(symbols, start, rows, marker, whole_symbols=sorted(rescaled), end=end)
    if not wrote:
        log.info("%s already completed by another worker: nothing written", label)
        stats["skipped"] = True
        return stats
    if chunk is not None:
        engine.release(chunk)
    store.reclaim_during_run("indicators")
    _log_batches(rows, symbols, label, progress)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return stats


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
                columns["read_start"].append(read.read_start)
                columns["warmup_bars"].append(0 if read.read_start is None else warmup_bars)
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
