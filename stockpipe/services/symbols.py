"""Collect the symbol universe from the source into `symbols`."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stockpipe.sources.base import Source, SourceError
from stockpipe.store import Marker, Store
from stockpipe.store.base import utcnow

log = logging.getLogger("stockpipe.symbols")


class TooFewSymbolsError(SourceError):
    pass


def collect_symbols(store: Store, source: Source, as_of: dt.date, min_count: int, marker: Marker | None) -> dict[str, Any]:
    universe = source.symbols(as_of)
    symbols = universe.column("symbol")
    if pc.any(pc.is_null(symbols)).as_py():
        raise SourceError(f"source {source.name!r} returned a symbol row without a symbol")
    if universe.num_rows != len(pc.unique(symbols)):
        counts = universe.group_by("symbol").aggregate([("symbol", "count")])
        dupes = counts.filter(pc.greater(counts.column("symbol_count"), 1)).column("symbol").to_pylist()
        raise SourceError(f"source {source.name!r} lists symbol(s) twice: {', '.join(dupes[:10])}")
    if universe.num_rows < min_count:
        # A guard against a truncated download; a complete small universe (the repository's CSV
        # sample has 2 symbols) needs a lower minimum, which the message says.
        active = len(store.active_symbols())
        consequence = (f"refusing to deactivate the rest of the {active} active symbols" if active else
                       "refusing it as a possibly truncated universe")
        raise TooFewSymbolsError(
            f"source {source.name!r} returned {universe.num_rows} symbols for {as_of}, fewer than the minimum "
            f"{min_count} ([stockpipe] min_symbols): {consequence}; if the universe really is this small, "
            f"set min_symbols = {universe.num_rows} or lower"
        )
    now = pa.array([utcnow()] * universe.num_rows, pa.timestamp("us"))
    universe = universe.set_column(universe.schema.get_field_index("updated_at"), "updated_at", now)
    stats = {
        "symbols": universe.num_rows,
        "etfs": int(pc.sum(pc.cast(universe.column("is_etf"), pa.int64())).as_py() or 0),
        "source": source.name,
        "synthetic": source.synthetic,
    }
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, stats)
    store.replace_universe(universe, marker)
    label = " (synthetic demo data)" if source.synthetic else ""
    log.info("collected %d symbols from %s%s for %s", universe.num_rows, source.name, label, as_of)
    return stats
