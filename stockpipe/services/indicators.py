"""Recompute one chunk of symbols' indicators from a date and replace them atomically."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, Sequence


from stockpipe.indicators import compute_indicators
from stockpipe.progress import Progress, silent
from stockpipe.store import Marker, Store

log = logging.getLogger("stockpipe.indicators")

LOG_BATCH = 10  # tickers per progress line, like the old system's "[12/50] 005930 ... saved 13"
MIN_EXACT_WARMUP = 500  # bars after which EMA/Wilder seeds no longer change a double (see README)


def compute_chunk(
    store: Store,
    symbols: Sequence[str],
    start: dt.date,
    *,
    warmup_bars: int,
    marker: Marker | None,
    label: str = "",
    progress: Progress = silent,
    full_history: Sequence[str] = (),
) -> dict[str, Any]:
    """Indicators of `symbols` from `start` to their latest bar, replacing the stored rows and
    touching `marker` in one transaction.

    A symbol whose stored indicators stop before `start` (new listing, earlier hole) is recomputed
    from the day after its last stored row, so a chunk also heals gaps. History before the first
    recomputed date is read only to warm up the recursive indicators: `warmup_bars` bars (0 = all).
    """
    if 0 < warmup_bars < MIN_EXACT_WARMUP:
        raise ValueError(
            f"warmup_bars={warmup_bars} would change EMA/RSI values (needs >= {MIN_EXACT_WARMUP}, or 0 for full history)"
        )
    started = time.monotonic()
    symbols = sorted(symbols)
    if marker is not None and store.completed([marker.marker_id]):
        # Scheduled again on a briefly stale "missing" (see targets.py): the work is already stored.
        log.info("%s already completed by another worker: nothing to do", label)
        return {"symbols": len(symbols), "skipped": True}
    progress(5, f"{label} reading bars of {len(symbols)} symbols")
    latest = store.latest_indicator_dates(symbols, before=start)
    rescaled = set(full_history) & set(symbols)  # e.g. a split: every stored value is stale
    from_dates = {s: (min(start, latest[s] + dt.timedelta(days=1)) if s in latest and s not in rescaled else dt.date.min)
                  for s in symbols}
    needs_all = warmup_bars == 0 or any(d == dt.date.min for d in from_dates.values())
    earliest = min(from_dates.values()) if symbols else start
    bars = store.read_bars(symbols, start=None if needs_all else earliest, warmup_bars=0 if needs_all else warmup_bars)
    read_seconds = time.monotonic() - started
    progress(30, f"{label} computing {bars.num_rows} bars")
    rows = compute_indicators(bars, from_dates)
    progress(60, f"{label} writing {rows.num_rows} rows")
    stats = {
        "symbols": len(symbols),
        "bars_read": bars.num_rows,
        "rows_saved": rows.num_rows,
        "from_date": str(start),
        "healed_symbols": sorted(s for s in symbols if from_dates[s] < start and s not in rescaled)[:50],
        "full_history_symbols": sorted(rescaled),
        "read_seconds": round(read_seconds, 3),
    }
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    wrote = store.replace_indicators(symbols, start, rows, marker, whole_symbols=sorted(rescaled))
    if not wrote:
        log.info("%s already completed by another worker: nothing written", label)
        stats["skipped"] = True
        return stats
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


def symbols_with_bars(store: Store) -> list[str]:
    with store.session(write=False) as session:
        return [r[0] for r in session.fetch("SELECT DISTINCT symbol FROM bars ORDER BY symbol")]


def chunk(symbols: Sequence[str], size: int) -> list[list[str]]:
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    ordered = sorted(symbols)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


__all__ = ["chunk", "compute_chunk", "symbols_with_bars"]
