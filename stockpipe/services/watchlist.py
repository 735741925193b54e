"""Scan one date's watchlist with the configured rules."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Sequence

import pyarrow as pa

from stockpipe.store import Marker, Store
from stockpipe.store.schema import DAILY_WATCHLIST
from stockpipe.watchlist.rules import Rule, scan

log = logging.getLogger("stockpipe.watchlist")


def scan_watchlist(store: Store, day: dt.date, rules: Sequence[Rule], marker: Marker | None) -> dict[str, Any]:
    """Hits for `day` (the run's date, never the wall clock), replacing that date's rows."""
    frame = store.scan_frame(day).to_pandas()
    hits = scan(frame, rules, day)
    table = pa.Table.from_pandas(hits, schema=DAILY_WATCHLIST.schema, preserve_index=False)
    by_rule = hits["scan_reason"].value_counts().to_dict() if len(hits) else {}
    stats = {"date": str(day), "symbols_scanned": len(frame), "hits": len(hits),
             "by_rule": {r.name: int(by_rule.get(r.name, 0)) for r in rules}}
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    store.replace_watchlist(day, table, marker)
    log.info("watchlist %s: %d hits from %d symbols (%s)", day, len(hits), len(frame),
             ", ".join(f"{k} {v}" for k, v in stats["by_rule"].items()))
    return stats
