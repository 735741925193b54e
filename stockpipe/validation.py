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
    kind: str = ""  # the reason's category in the marker's counts (default: its first word)

    def describe(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.symbol} {self.date}: {self.reason}{where}"

    def as_dict(self) -> dict[str, str]:
        return {"symbol": self.symbol, "date": self.date, "reason": self.reason, **({"origin": self.origin} if self.origin else {})}

    @property
    def category(self) -> str:
        return self.kind or ("duplicate" if "duplicate" in self.reason else self.reason.split(" ")[0])


_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


def collapse_identical_duplicates(rows: pa.Table, origins: list[str] | None) -> tuple[pa.Table, list[str] | None, int]:
    """Copies of a bar identical in every value (a file listed twice, a row pasted twice) become one;
    returns the rows, their origins and how many copies were dropped. Conflicting copies stay, for
    `validate_bars` to reject."""
    n = rows.num_rows
    if n < 2:
        return rows, origins, 0
    keyed = rows.select(["symbol", "date", *_PRICE_COLUMNS]).append_column("_row", pa.array(np.arange(n)))
    groups = keyed.group_by(["symbol", "date", *_PRICE_COLUMNS], use_threads=False).aggregate([("_row", "min"), ("_row", "count")])
    if groups.num_rows == n:
        return rows, origins, 0
    keep = np.sort(groups.column("_row_min").to_numpy())
    dropped = n - len(keep)
    log.info("collapsed %d identical duplicate bar(s)", dropped)
    kept = rows.take(pa.array(keep))
    return kept, ([origins[i] for i in keep] if origins else origins), dropped


def reject_non_sessions(rows: pa.Table, origins: list[str] | None, calendar: str) -> tuple[pa.Table, list[str] | None, list[RejectedBar]]:
    """Bars dated on a day the exchange did not trade (a Saturday row would feed every windowed
    indicator), or after the calendar's last known session, are rejected by name."""
    from stockpipe import trading_calendar

    dates = rows.column("date")
    if rows.num_rows == 0 or dates.null_count == rows.num_rows:
        return rows, origins, []
    first, last = pc.min(dates).as_py(), pc.max(dates).as_py()
    calendar_first, calendar_last = trading_calendar.bounds(calendar)
    sessions = trading_calendar.sessions(calendar, max(first, calendar_first), min(last, calendar_last))
    known = pc.or_(pc.is_in(dates, pa.array(sessions, pa.date32())), pc.less(dates, pa.scalar(calendar_first, pa.date32())))
    bad = pc.invert(pc.fill_null(known, True)).to_numpy(zero_copy_only=False)
    if not bad.any():
        return rows, origins, []
    rejected = []
    for i in np.flatnonzero(bad):
        day = dates[int(i)].as_py()
        why = (f"{day} is after the last session {calendar_last} of the {calendar} calendar" if day > calendar_last
               else f"{day} is not a {calendar} trading day")
        rejected.append(RejectedBar(rows.column("symbol")[int(i)].as_py() or "?", str(day), why,
                                    origins[i] if origins else "", kind="non_trading_day"))
    for reject in rejected:
        log.warning("rejected bar %s", reject.describe())
    keep = np.flatnonzero(~bad)
    return rows.take(pa.array(keep)), ([origins[i] for i in keep] if origins else origins), rejected


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
        in_doubled = keyed.join(doubled, ["symbol", "date"], join_type="inner").column("row").to_numpy()
        mask = np.zeros(n, dtype=bool)
        mask[in_doubled] = True
        copies: dict[tuple, list[int]] = {}
        for i in np.sort(in_doubled):
            copies.setdefault((rows.column("symbol")[int(i)].as_py(), rows.column("date")[int(i)].as_py()), []).append(int(i))
        where = {i: group for group in copies.values() for i in group}

        def conflicting(i, where=where):
            group = where[i]
            if origins:
                return "conflicting duplicate bars at " + ", ".join(origins[j] for j in group)
            return f"conflicting duplicate bars ({len(group)} rows for this symbol and date)"

        flag(mask, conflicting)

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
