"""Bar validation at ingest: the indicator engine never sees a bad price.

A rejected bar is logged with its symbol, date and reason, counted in the ingest marker's stats and
never stored; everything already in the store stays as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stockpipe.store.schema import BARS

log = logging.getLogger("stockpipe.validation")


@dataclass(frozen=True)
class RejectedBar:
    symbol: str
    date: str
    reason: str
    origin: str = ""  # file:line when the source knows it

    def describe(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.symbol} {self.date}: {self.reason}{where}"

    def as_dict(self) -> dict[str, str]:
        return {"symbol": self.symbol, "date": self.date, "reason": self.reason, **({"origin": self.origin} if self.origin else {})}


def _as_float(table: pa.Table, name: str) -> np.ndarray:
    return pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def validate_bars(rows: pa.Table, origins: list[str] | None = None) -> tuple[pa.Table, list[RejectedBar]]:
    """Split bars into the valid ones (conformed to the `bars` table) and the rejected ones.

    Rules: every price present, finite and > 0; volume present and >= 0; low <= open, close <= high;
    one bar per (symbol, date) (duplicates are all rejected: there is no telling which one is right);
    a symbol and a date present.
    """
    n = rows.num_rows
    if n == 0:
        return BARS.schema.empty_table(), []
    checks: list[tuple[np.ndarray, object]] = []

    def flag(mask: np.ndarray, message) -> None:
        checks.append((np.asarray(mask, dtype=bool), message))

    flag(pc.fill_null(pc.equal(pc.utf8_length(rows.column("symbol")), 0), True).to_numpy(zero_copy_only=False), "missing symbol")
    flag(pc.is_null(rows.column("date")).to_numpy(zero_copy_only=False), "missing date")
    prices = {name: _as_float(rows, name) for name in ("open", "high", "low", "close")}
    for name, values in prices.items():
        flag(~np.isfinite(values), f"{name} is missing or not a number")
        with np.errstate(invalid="ignore"):
            flag(values <= 0, lambda i, name=name, values=values: f"{name} {values[i]:g} is not positive")
    volume = _as_float(rows, "volume")
    flag(~np.isfinite(volume), "volume is missing or not a number")
    with np.errstate(invalid="ignore"):
        o, h, lo, c = prices["open"], prices["high"], prices["low"], prices["close"]
        flag(volume < 0, lambda i: f"volume {volume[i]:g} is negative")
        flag(volume != np.round(volume), lambda i: f"volume {volume[i]:g} is not a whole number")
        flag(lo > np.minimum(o, c), lambda i: f"low {lo[i]:g} is above open {o[i]:g} or close {c[i]:g}")
        flag(h < np.maximum(o, c), lambda i: f"high {h[i]:g} is below open {o[i]:g} or close {c[i]:g}")

    keyed = pa.table({"symbol": rows.column("symbol"), "date": rows.column("date"), "row": pa.array(np.arange(n))})
    counts = keyed.group_by(["symbol", "date"]).aggregate([("row", "count")])
    doubled = counts.filter(pc.greater(counts.column("row_count"), 1))
    if doubled.num_rows:
        copies = {(r["symbol"], r["date"]): r["row_count"] for r in doubled.to_pylist()}
        in_doubled = keyed.join(doubled, ["symbol", "date"], join_type="inner").column("row").to_numpy()
        mask = np.zeros(n, dtype=bool)
        mask[in_doubled] = True
        flag(mask, "duplicate bar ({} rows for this symbol and date)".format(max(copies.values())) if len(set(copies.values())) == 1 else "duplicate bar")

    bad = np.zeros(n, dtype=bool)
    for mask, _ in checks:
        bad |= mask
    rejected = []
    for i in np.flatnonzero(bad):
        why = [m(i) if callable(m) else m for mask, m in checks if mask[i]]
        symbol, date = rows.column("symbol")[int(i)].as_py(), rows.column("date")[int(i)].as_py()
        rejected.append(RejectedBar(symbol or "?", str(date) if date is not None else "?", "; ".join(why), origins[i] if origins else ""))
    for reject in rejected:
        log.warning("rejected bar %s", reject.describe())
    good = rows.filter(pa.array(~bad))
    good = good.set_column(good.schema.get_field_index("volume"), "volume", pc.cast(good.column("volume"), pa.float64()))
    return BARS.conform(good), rejected
