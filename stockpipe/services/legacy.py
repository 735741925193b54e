"""Import the old system's database (its `nasdaq_symbols`, `stock_data` and `daily_watchlist`).

Symbols, daily bars and watchlist rows are copied into the store through its bulk write paths, bars
validated like any ingest (`validation.validate_bars`): a bad row is reported with its table, symbol,
date and reason and never stored. The work is cut into batches (symbols; bars of `batch_size`
tickers; watchlist rows of `watchlist_batch_dates` scan dates), each committed together with its
marker, so a killed import rerun with the same command skips the finished batches and redoes the rest,
and no row is ever stored twice. What the store already holds is kept: a symbol it lists, a bar it
has for that (symbol, date), a scan date it has a watchlist for. Indicators are not imported: they
are recomputed exactly by `RebuildFrom` from the first imported date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stockpipe import markers
from stockpipe.progress import Progress, silent
from stockpipe.store import Marker, Store
from stockpipe.store.base import utcnow
from stockpipe.store.legacy_reader import LegacyDatabase, LegacyImportError, open_legacy
from stockpipe.store.schema import BARS, DAILY_WATCHLIST, SYMBOLS
from stockpipe.validation import validate_bars

log = logging.getLogger("stockpipe.legacy")

FAMILY = markers.LEGACY_IMPORT
_KEPT_PER_BATCH = 1000  # rejected rows listed verbatim in a batch marker (all are counted)


@dataclass(frozen=True)
class Rejected:
    table: str
    symbol: str
    date: str
    reason: str

    def describe(self) -> str:
        return f"{self.table} {self.symbol} {self.date}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"table": self.table, "symbol": self.symbol, "date": self.date, "reason": self.reason}


def source_key(url: str) -> str:
    """A short stable name of the old database, for this import's markers."""
    if url.startswith(("postgresql:", "postgresql+psycopg2:", "postgres:")):
        head, _, rest = _split_credentials(url.replace("postgresql+psycopg2:", "postgresql:", 1))
        identity = head + rest  # who reads it (and with which password) does not change the data
    else:
        path = url[len("duckdb:///"):] if url.startswith("duckdb:///") else url
        identity = str(Path(path).resolve())
    return hashlib.sha1(identity.encode()).hexdigest()[:10]


def _dates(column: pa.ChunkedArray) -> pa.Array:
    """Text dates (YYYY-MM-DD, optionally with a time) as dates; anything else becomes NULL (rejected)."""
    text = pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(column.cast(pa.string())), 0, 10)
    parsed = pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.cast(parsed, pa.date32())


def _batches(values: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


def _marker(key: str, part: str, source: str, stats: dict[str, Any]) -> Marker:
    return Marker(markers.legacy_import(key, part), FAMILY, {"source": source}, stats)


def import_legacy(
    store: Store,
    url: str,
    *,
    batch_size: int = 100,
    watchlist_batch_dates: int = 250,
    progress: Progress = silent,
) -> dict[str, Any]:
    """Copy the old database at `url` into `store` (module docstring); returns the import's summary,
    counting the batches of earlier, interrupted runs too."""
    if batch_size < 1 or watchlist_batch_dates < 1:
        raise LegacyImportError("batch sizes must be >= 1")
    started = time.monotonic()
    key = source_key(url)
    shown = redact(url)
    _refuse_same_database(store, url)
    with open_legacy(url) as old:
        done = {m["marker_id"] for m in store.markers(prefix=markers.legacy_imports(key))}
        known = _import_symbols(store, old, key, shown, done)
        bar_batches = _batches(old.tickers(), batch_size)
        scan_dates: list[dt.date] = []
        if old.has_watchlist:
            scan_dates = sorted({d for d in map(_as_date, old.scan_dates()) if d is not None})
        watch_batches = _batches(scan_dates, watchlist_batch_dates)
        total = len(bar_batches) + len(watch_batches)
        step = 0
        for batch in bar_batches:
            step += 1
            part = f"bars/{batch[0]}..{batch[-1]}"
            if markers.legacy_import(key, part) in done:
                progress(100.0 * step / total, f"[{step}/{total}] {batch[0]}..{batch[-1]} imported by an earlier run")
                continue
            stats = _import_bar_batch(store, old, batch, known, _marker(key, part, shown, {}))
            progress(100.0 * step / total, f"[{step}/{total}] {batch[0]}..{batch[-1]}: {stats['rows_added']} bars "
                     f"stored, {stats['rows_kept']} already in the store, {stats['rejected_count']} rejected")
        for batch in watch_batches:
            step += 1
            part = f"watchlist/{batch[0]}..{batch[-1]}"
            if markers.legacy_import(key, part) in done:
                progress(100.0 * step / total, f"[{step}/{total}] watchlist {batch[0]}..{batch[-1]} imported by an earlier run")
                continue
            stats = _import_watchlist_batch(store, old, batch, _marker(key, part, shown, {}))
            progress(100.0 * step / total, f"[{step}/{total}] watchlist {batch[0]}..{batch[-1]}: "
                     f"{stats['rows_added']} rows stored, {stats['rejected_count']} rejected")
    summary = summarize(store, key)
    summary["source"] = shown
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


def _split_credentials(url: str) -> tuple[str, str | None, str]:
    """(scheme://, user[:password] or None, host/path...). The last '@' before the path ends the
    credentials, so a password with an unencoded '@' never leaks into the host part."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, ""
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return f"{scheme}://", None, rest
    userinfo, _, host = netloc.rpartition("@")
    return f"{scheme}://", userinfo, f"{host}{slash}{path}"


def redact(url: str) -> str:
    """The URL as it may be printed and stored: the password replaced by ***."""
    head, userinfo, rest = _split_credentials(url)
    if userinfo is None:
        return url
    user, has_password, _ = userinfo.partition(":")
    return f"{head}{user}{':***' if has_password else ''}@{rest}"


def _refuse_same_database(store: Store, url: str) -> None:
    path = getattr(store, "path", None)
    if path is not None and not url.startswith(("postgresql:", "postgresql+psycopg2:", "postgres:")):
        source = Path(url[len("duckdb:///"):] if url.startswith("duckdb:///") else url)
        if source.exists() and Path(path).exists() and source.resolve() == Path(path).resolve():
            raise LegacyImportError(f"{source} is the store itself: import from the old system's own database file")


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        return None


def _import_symbols(store: Store, old: LegacyDatabase, key: str, shown: str, done: set[str]) -> set[str]:
    """New symbols into `symbols` (one transaction with its marker); returns every symbol bars may use."""
    marker_id = markers.legacy_import(key, "symbols")
    if marker_id not in done:
        rows = old.symbols()
        valid, rejected = validate_symbols(rows)
        valid = valid.set_column(valid.schema.get_field_index("is_active"), "is_active",
                                 pc.fill_null(valid.column("is_active"), True))
        valid = valid.append_column("avg_volume_30", pa.nulls(valid.num_rows, pa.float64()))
        valid = valid.append_column("updated_at", pa.array([utcnow()] * valid.num_rows, pa.timestamp("us")))
        stats = {"table": "nasdaq_symbols", "rows_read": rows.num_rows, "rejected_count": len(rejected),
                 "rejected": [r.as_dict() for r in rejected[:_KEPT_PER_BATCH]]}
        added = store.add_rows(SYMBOLS, valid, _marker(key, "symbols", shown, stats))
        if added is not None:
            log.info("symbols: %d imported, %d already in the store, %d rejected", added, valid.num_rows - added, len(rejected))
    return set(store.read_symbols(active_only=False).column("symbol").to_pylist())


def validate_symbols(rows: pa.Table) -> tuple[pa.Table, list[Rejected]]:
    """Symbols with a name of their own, listed once, with a market cap that is a number >= 0 or NULL."""
    symbols = rows.column("symbol").to_pylist()
    caps = rows.column("market_cap").to_numpy(zero_copy_only=False).astype(np.float64)
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    keep, rejected = np.ones(rows.num_rows, dtype=bool), []
    for i, symbol in enumerate(symbols):
        why = []
        if symbol is None or not symbol.strip():
            why.append("missing symbol")
        elif counts[symbol] > 1:
            why.append(f"duplicate symbol ({counts[symbol]} rows)")
        if not np.isnan(caps[i]) and (not np.isfinite(caps[i]) or caps[i] < 0):
            why.append(f"market_cap {caps[i]:g} is not a number >= 0")
        if why:
            keep[i] = False
            rejected.append(Rejected("nasdaq_symbols", symbol or "?", "-", "; ".join(why)))
    for r in rejected:
        log.warning("rejected %s", r.describe())
    return rows.filter(pa.array(keep)), rejected


def _import_bar_batch(store: Store, old: LegacyDatabase, tickers: list[str], known: set[str],
                      marker: Marker) -> dict[str, Any]:
    rows = old.bars(tickers)
    read = rows.num_rows
    rejected: list[Rejected] = []  # one line per bad row, or per unknown ticker
    if old.bar_dates_are_text:
        raw = rows.column("date")
        parsed = _dates(raw)
        unreadable = pc.and_(pc.is_null(parsed), pc.is_valid(raw))
        for row in rows.filter(unreadable).select(["symbol", "date"]).to_pylist():
            rejected.append(Rejected("stock_data", row["symbol"] or "?", row["date"], f"date {row['date']!r} is not YYYY-MM-DD"))
            log.warning("rejected %s", rejected[-1].describe())
        rows = rows.set_column(1, "date", parsed).filter(pc.invert(unreadable))
    unknown = sorted(set(tickers) - known)
    if unknown:
        # Bars of a ticker with no symbol row could never get indicators or a watchlist entry:
        # one report line per ticker rather than one per bar.
        is_unknown = pc.is_in(rows.column("symbol"), pa.array(unknown, pa.string()))
        for symbol in unknown:
            dates = rows.filter(pc.equal(rows.column("symbol"), symbol)).column("date")
            if not len(dates):
                continue  # every row of it already rejected for its date
            rejected.append(Rejected("stock_data", symbol, f"{pc.min(dates).as_py()}..{pc.max(dates).as_py()}",
                                     f"{len(dates)} bars of a ticker not in nasdaq_symbols"))
            log.warning("rejected %s", rejected[-1].describe())
        rows = rows.filter(pc.invert(is_unknown))
    valid, bad = validate_bars(rows)
    rejected += [Rejected("stock_data", b.symbol, b.date, b.reason) for b in bad]
    dates = valid.column("date")
    # Every row read is stored or rejected: what validation passed, less what it did not.
    stats = {"table": "stock_data", "tickers": len(tickers), "rows_read": read,
             "first_date": str(pc.min(dates).as_py()) if valid.num_rows else None,
             "last_date": str(pc.max(dates).as_py()) if valid.num_rows else None,
             "rejected_count": read - valid.num_rows,
             "rejected": [r.as_dict() for r in rejected[:_KEPT_PER_BATCH]]}
    marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    added = store.add_rows(BARS, valid, marker)
    return {**stats, "rows_added": added or 0, "rows_kept": valid.num_rows - (added or 0)}


def _import_watchlist_batch(store: Store, old: LegacyDatabase, dates: list[dt.date], marker: Marker) -> dict[str, Any]:
    rows = old.watchlist(dates)
    if old.scan_dates_are_text:
        # Text dates are matched once parsed: every spelling of the batch's dates was read.
        rows = rows.set_column(0, "scan_date", _dates(rows.column("scan_date")))
        rows = rows.filter(pc.fill_null(pc.is_in(rows.column("scan_date"), pa.array(dates, pa.date32())), False))
    valid, rejected = validate_watchlist(rows)
    stats = {"table": "daily_watchlist", "rows_read": rows.num_rows, "rejected_count": len(rejected),
             "rejected": [r.as_dict() for r in rejected[:_KEPT_PER_BATCH]]}
    marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    # A scan date the store already has a watchlist for keeps stockpipe's own rows.
    added = store.add_rows(DAILY_WATCHLIST, valid, marker, key=("scan_date",))
    return {**stats, "rows_added": added or 0, "rows_kept": valid.num_rows - (added or 0)}


def validate_watchlist(rows: pa.Table) -> tuple[pa.Table, list[Rejected]]:
    """Watchlist rows need a symbol and a scan date, once each; a missing tier is derived from the cap."""
    from stockpipe.watchlist.rules import market_cap_tier

    if rows.num_rows:
        # The same row twice is one row; two different rows for one (symbol, date) are rejected.
        frame = rows.to_pandas(date_as_object=True)
        rows = pa.Table.from_pandas(frame.drop_duplicates(), schema=rows.schema, preserve_index=False)
    symbols = rows.column("symbol").to_pylist()
    days = rows.column("scan_date").to_pylist()
    seen: dict[tuple, int] = {}
    for pair in zip(symbols, days):
        seen[pair] = seen.get(pair, 0) + 1
    keep, rejected = np.ones(rows.num_rows, dtype=bool), []
    for i, (symbol, day) in enumerate(zip(symbols, days)):
        why = [text for bad, text in ((not symbol or not str(symbol).strip(), "missing symbol"),
                                      (day is None, "missing or unreadable scan_date"),
                                      (seen[(symbol, day)] > 1, f"conflicting rows ({seen[(symbol, day)]} different rows for this symbol and date)"))
               if bad]
        if why:
            keep[i] = False
            rejected.append(Rejected("daily_watchlist", symbol or "?", str(day) if day else "?", "; ".join(why)))
            log.warning("rejected %s", rejected[-1].describe())
    valid = rows.filter(pa.array(keep))
    if valid.num_rows and valid.column("market_cap_tier").null_count:
        tiers = market_cap_tier(valid.column("market_cap").to_pandas()).to_numpy()
        filled = pc.coalesce(valid.column("market_cap_tier"), pa.array(tiers, pa.int32()))
        valid = valid.set_column(valid.schema.get_field_index("market_cap_tier"), "market_cap_tier", filled)
    return valid, rejected


def summarize(store: Store, key: str) -> dict[str, Any]:
    """The import's totals over every batch committed so far (this run's and earlier runs')."""
    found = store.markers(prefix=markers.legacy_imports(key))
    summary: dict[str, Any] = {"symbols_added": 0, "bars_added": 0, "bars_kept": 0, "watchlist_rows_added": 0,
                               "watchlist_rows_kept": 0, "rejected_count": 0, "rejected": [],
                               "first_date": None, "last_date": None, "batches": len(found)}
    for m in found:
        stats = m["stats"]
        table = stats.get("table")
        if table == "nasdaq_symbols":
            summary["symbols_added"] += stats.get("rows_added", 0)
        elif table == "stock_data":
            summary["bars_added"] += stats.get("rows_added", 0)
            summary["bars_kept"] += stats.get("rows_kept", 0)
            for bound, pick in (("first_date", min), ("last_date", max)):
                if stats.get(bound):
                    summary[bound] = pick(filter(None, (summary[bound], stats[bound])))
        elif table == "daily_watchlist":
            summary["watchlist_rows_added"] += stats.get("rows_added", 0)
            summary["watchlist_rows_kept"] += stats.get("rows_kept", 0)
        summary["rejected_count"] += stats.get("rejected_count", 0)
        summary["rejected"] += stats.get("rejected", [])
    return summary
