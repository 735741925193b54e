"""Ingest daily bars: the overlap re-fetch of a day, and history backfills."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import Any, Sequence

import pyarrow as pa

from stockpipe import trading_calendar
from stockpipe.progress import Progress, silent
from stockpipe.sources.base import BarFetch, Source
from stockpipe.store import Marker, Store
from stockpipe.validation import RejectedBar, collapse_identical_duplicates, reject_non_sessions, validate_bars

log = logging.getLogger("stockpipe.ingest")

_MAX_LISTED = 50  # rejects / failures kept verbatim in a marker's stats


def _fetch_valid(source: Source, symbols: Sequence[str], start: dt.date, end: dt.date) -> tuple[pa.Table, BarFetch, list[RejectedBar]]:
    fetched = source.bars(symbols, start, end)
    origins = fetched.rows.column("origin").to_pylist() if "origin" in fetched.rows.column_names else None
    rows, origins, collapsed = collapse_identical_duplicates(fetched.rows, origins)
    if collapsed:
        fetched.skipped["identical_duplicate"] = fetched.skipped.get("identical_duplicate", 0) + collapsed
    rows, origins, off_days = reject_non_sessions(rows, origins, source.calendar)
    for reject in fetched.rejected:
        log.warning("rejected row %s", reject.describe())
    valid, rejected = validate_bars(rows, origins)
    rejected = fetched.rejected + off_days + rejected
    for failure in fetched.failures:
        log.warning("fetch failed %s %s..%s: %s", failure.symbol, failure.start, failure.end, failure.reason)
    # The caller keeps each fetch's account (failures, splits, skipped rows) for the run's stats, but
    # not its rows (an empty table shares no buffer): a Backfill of 20,000 symbols held every batch's
    # fetched bars until its end, 4.2 GB.
    return valid, dataclasses.replace(fetched, rows=fetched.rows.schema.empty_table()), rejected


def _stats(requested: int, stored: int, rejected: list[RejectedBar], fetches: list[BarFetch], **extra) -> dict[str, Any]:
    failures = [f for fetch in fetches for f in fetch.failures]
    # A source scanned once per group of symbols reports a row it cannot parse each time.
    rejected = list({(r.origin or id(r), r.reason): r for r in rejected}.values())
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r.category] = reasons.get(r.category, 0) + 1
    skipped: dict[str, int] = {}
    for fetch in fetches:
        for reason, count in fetch.skipped.items():
            skipped[reason] = (max if reason == "unknown_symbol" else int.__add__)(skipped.get(reason, 0), count)
    return {
        "symbols_requested": requested,
        "bars_stored": stored,
        "bars_rejected": len(rejected),
        "rejected": [r.as_dict() for r in rejected[:_MAX_LISTED]],
        "rejected_by_reason": reasons,
        "failed_fetches": len(failures),
        "failures": [f.as_dict() for f in failures[:_MAX_LISTED]],
        "splits_detected": sorted({s for fetch in fetches for s in fetch.refetch_history}),
        "rows_skipped": skipped,
        **extra,
    }


def ingest_date(
    store: Store,
    source: Source,
    day: dt.date,
    *,
    days_back: int,
    backfill_sessions: int,
    marker: Marker | None,
    progress: Progress = silent,
) -> dict[str, Any]:
    """Bars for every active symbol up to `day`, re-fetching `days_back` sessions so late corrections
    heal. A symbol with no stored bar gets `backfill_sessions` of history, and a store whose latest bar
    is older than the overlap is filled from there, so no hole is left."""
    started = time.monotonic()
    _refuse_unfinished(source, day)
    symbols = store.active_symbols()
    overlap_start = trading_calendar.sessions_back(source.calendar, day, days_back)
    history_start = trading_calendar.sessions_back(source.calendar, day, backfill_sessions - 1)
    latest = store.last_bar_dates(symbols)
    plans: dict[dt.date, list[str]] = {}
    for symbol in symbols:
        last = latest.get(symbol)
        if last is None:
            start = history_start
        else:
            start = min(overlap_start, last + dt.timedelta(days=1)) if last < day else overlap_start
        plans.setdefault(start, []).append(symbol)

    parts, rejected, fetches = [], [], []
    done = 0
    for start, group in sorted(plans.items()):
        progress(100.0 * done / max(len(symbols), 1), f"fetching {len(group)} symbols {start}..{day}")
        valid, fetched, bad = _fetch_valid(source, group, start, day)
        parts.append(valid)
        rejected += bad
        fetches.append(fetched)
        done += len(group)
        rescaled = fetched.refetch_history | rescaled_symbols(store, valid)
        if rescaled:
            # A split rescales the whole history the source returns: take all of it again.
            log.warning("history rescaled (split) for %s: re-ingesting their full history", ", ".join(sorted(rescaled)))
            first = store.first_bar_dates(sorted(rescaled))
            since = min([history_start, *first.values()])
            history, refetched, bad = _fetch_valid(source, sorted(rescaled), since, day)
            refetched.refetch_history |= rescaled
            parts.append(history)
            rejected += bad
            fetches.append(refetched)
    if parts:
        rows_table = pa.concat_tables(parts)
        # A symbol re-fetched for its history (a split) replaces the overlap rows fetched first.
        if len(parts) > 1:
            rows_table = _last_wins(rows_table)
    else:
        from stockpipe.sources.base import empty_bars

        rows_table = empty_bars()
    stats = _stats(
        len(symbols),
        rows_table.num_rows,
        rejected,
        fetches,
        date=str(day),
        from_dates={str(k): len(v) for k, v in sorted(plans.items())},
        source=source.name,
        seconds=round(time.monotonic() - started, 3),
    )
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    if not store.write_bars(rows_table, marker):
        progress(100, "done by another run meanwhile: nothing stored")
        return {**stats, "bars_stored": 0, "skipped": True}
    store.reclaim("bars", 0)  # statistics and space, once the days added up to a good part of the table
    progress(100, f"stored {rows_table.num_rows} bars for {len(symbols)} symbols, rejected {len(rejected)}")
    return stats


def _refuse_unfinished(source: Source, day: dt.date) -> None:
    """No source is asked for a session that has not closed: demo would invent it, a live source would
    return a bar still trading as if it were final (the tasks refuse it earlier; this guards callers)."""
    reason = trading_calendar.not_happened(source.calendar, day)
    if reason:
        raise ValueError(f"ingest up to {day} refused: {reason}")


def rescaled_symbols(store: Store, fetched: pa.Table, jump: float = 0.02, agreement: float = 0.005) -> set[str]:
    """Symbols whose fetched closes differ from the stored ones on every overlapping day by one
    constant ratio (a split or reverse split rescaled the source's history)."""
    import numpy as np
    import pyarrow.compute as pc

    if fetched.num_rows == 0:
        return set()
    dates = fetched.column("date")
    stored = store.read_bars(sorted(set(fetched.column("symbol").to_pylist())), start=pc.min(dates).as_py(), end=pc.max(dates).as_py())
    if stored.num_rows == 0:
        return set()
    # Inner: only days both have. (Arrow's default, a left outer join, gave the new session, never
    # stored yet, a NaN ratio, so a split was never detected on the day it was fetched with.)
    joined = fetched.select(["symbol", "date", "close"]).join(
        stored.select(["symbol", "date", "close"]).rename_columns(["symbol", "date", "stored_close"]), ["symbol", "date"],
        join_type="inner",
    )
    if joined.num_rows == 0:
        return set()
    # Per symbol at once (a pandas group-by loop over a universe's symbols took most of a Daily's
    # ingest): each symbol's median ratio exactly as np.median takes it (the middle value, or the
    # mean of the two middle ones; NaN if any ratio is NaN), then whether every ratio agrees with it.
    encoded = pc.dictionary_encode(joined.column("symbol")).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ratio = (joined.column("close").to_numpy() / joined.column("stored_close").to_numpy()).astype(float)
    groups = len(encoded.dictionary)
    order = np.lexsort((ratio, codes))
    counts = np.bincount(codes, minlength=groups)
    starts = np.cumsum(counts) - counts
    ordered = ratio[order]
    median = (ordered[starts + (counts - 1) // 2] + ordered[starts + counts // 2]) / 2
    median[np.bincount(codes, weights=np.isnan(ratio), minlength=groups) > 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        disagree = ~(np.abs(ratio / median[codes] - 1.0) < agreement)
        rescaled = (np.abs(median - 1.0) > jump) & (np.bincount(codes, weights=disagree, minlength=groups) == 0)
    return {str(s) for s in np.asarray(encoded.dictionary.to_pylist(), dtype=object)[rescaled]}


def _last_wins(rows: pa.Table) -> pa.Table:
    """Keep the last row of each (symbol, date): later fetches in a run supersede earlier ones."""
    import numpy as np

    n = rows.num_rows
    indexed = rows.append_column("_row", pa.array(np.arange(n)))
    last = indexed.group_by(["symbol", "date"]).aggregate([("_row", "max")]).column("_row_max")
    return rows.take(pa.array(np.sort(last.to_numpy())))


def backfill(
    store: Store,
    source: Source,
    start: dt.date,
    end: dt.date,
    *,
    batch_size: int,
    marker: Marker | None,
    progress: Progress = silent,
) -> dict[str, Any]:
    """History for every active symbol, fetched and written `batch_size` symbols at a time. Each
    batch is an idempotent upsert; the last one commits together with the marker."""
    started = time.monotonic()
    _refuse_unfinished(source, end)
    symbols = store.active_symbols()
    if not symbols:
        raise ValueError("Backfill found no active symbols: run CollectSymbols first")
    batches = [symbols[i : i + batch_size] for i in range(0, len(symbols), batch_size)]
    rejected: list[RejectedBar] = []
    fetches: list[BarFetch] = []
    stored = 0
    for number, batch in enumerate(batches, 1):
        valid, fetched, bad = _fetch_valid(source, batch, start, end)
        rejected += bad
        fetches.append(fetched)
        batch_marker = None
        if number == len(batches) and marker is not None:
            stats = _stats(len(symbols), stored + valid.num_rows, rejected, fetches, start=str(start), end=str(end),
                           source=source.name, seconds=round(time.monotonic() - started, 3))
            batch_marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
        store.write_bars(valid, batch_marker)
        stored += valid.num_rows
        progress(100.0 * number / len(batches), f"[{number}/{len(batches)}] {batch[0]}..{batch[-1]} saved {valid.num_rows} bars")
    # Without statistics of the loaded bars, PostgreSQL's planner read a chunk's bars by scanning
    # all of them (0.7 s a chunk of 50 symbols instead of an index range).
    store.reclaim("bars", 0)
    return {"symbols": len(symbols), "bars_stored": stored, "bars_rejected": len(rejected),
            "seconds": round(time.monotonic() - started, 3)}
