"""Bars from the user's own CSV files (another vendor, a Korean market export).

`[csv] path` is a directory of long-format files `symbol,date,open,high,low,close,volume` (header
names case-insensitive, any column order, one or many files), plus an optional `symbols.csv` (see
universe_file). Every bar keeps its file and line, so a rejected bar or a bad value names both.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stockpipe.sources.base import BarFetch, Source, SourceError, empty_bars
from stockpipe.sources.universe_file import read_universe

COLUMNS = ("symbol", "date", "open", "high", "low", "close", "volume")


def _locate_bad(values: pa.ChunkedArray, convert) -> int:
    for index, value in enumerate(values.to_pylist()):
        if value is None or value == "":
            continue
        try:
            convert(value)
        except ValueError:
            return index
    return -1


# What vendors write for a missing value. Only prices and volumes read them as missing: `NA`,
# `NULL` or `NAN` in the symbol column are tickers (Nano Labs trades as NA).
_MISSING = pa.array(pacsv.ConvertOptions().null_values, pa.string())


def read_bar_file(path: Path) -> pa.Table:
    """One file's bars with an `origin` column (`file:line`); bad values raise naming file and line."""
    try:
        raw = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True,
                                                                         null_values=[""], auto_dict_encode=False),
                             read_options=pacsv.ReadOptions(autogenerate_column_names=False))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read as CSV: {exc}") from exc
    names = {n.strip().lower(): n for n in raw.column_names}
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise SourceError(f"{path} line 1: missing column(s) {', '.join(missing)} (found {', '.join(raw.column_names)})")
    lines = np.arange(2, raw.num_rows + 2)
    columns = {}
    for name in COLUMNS:
        column = pc.cast(raw.column(names[name]), pa.string())
        if name == "symbol":
            columns[name] = pc.utf8_trim_whitespace(column)
            continue
        column = pc.if_else(pc.is_in(pc.utf8_trim_whitespace(column), value_set=_MISSING), pa.scalar(None, pa.string()), column)
        target, convert = (pa.date32(), dt.date.fromisoformat) if name == "date" else (pa.float64(), float)
        try:
            columns[name] = pc.cast(pc.utf8_trim_whitespace(column), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _locate_bad(column, convert)
            value = column[bad].as_py() if bad >= 0 else "?"
            raise SourceError(f"{path} line {lines[bad] if bad >= 0 else '?'}: {name} {value!r} is not a "
                              f"{'YYYY-MM-DD date' if name == 'date' else 'number'}") from None
    columns["origin"] = pa.array([f"{path.name}:{n}" for n in lines], pa.string())
    return pa.table(columns)


class CsvSource(Source):
    name = "csv"

    def __init__(self, path: str, calendar: str = "XNYS"):
        if not path:
            raise SourceError("source = csv needs [csv] path = a directory of bar files")
        self.directory = Path(path)
        if not self.directory.is_dir():
            raise SourceError(f"[csv] path {self.directory} is not a directory")
        self.calendar = calendar

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.csv") if p.name.lower() != "symbols.csv")

    @lru_cache(maxsize=1)
    def _all_bars(self) -> pa.Table:
        tables = [read_bar_file(p) for p in self.files()]
        if not tables:
            raise SourceError(f"{self.directory}: no *.csv bar files")
        return pa.concat_tables(tables)

    def symbols(self, as_of: dt.date) -> pa.Table:
        listed = self.directory / "symbols.csv"
        if listed.exists():
            return read_universe(listed)
        from stockpipe.sources.base import symbols_table

        names = sorted(set(self._all_bars().column("symbol").to_pylist()) - {None, ""})
        return symbols_table({"symbol": names})

    def bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarFetch:
        bars = self._all_bars()
        wanted = pa.array(sorted(set(symbols)), pa.string())
        mask = pc.and_(pc.is_in(bars.column("symbol"), wanted),
                       pc.and_(pc.greater_equal(bars.column("date"), pa.scalar(start, pa.date32())),
                               pc.less_equal(bars.column("date"), pa.scalar(end, pa.date32()))))
        chosen = bars.filter(pc.fill_null(mask, True))
        if chosen.num_rows == 0:
            empty = empty_bars()
            return BarFetch(empty.append_column("origin", pa.array([], pa.string())))
        return BarFetch(chosen.sort_by([("symbol", "ascending"), ("date", "ascending")]))
