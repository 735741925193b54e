"""The source interface: a universe of symbols and daily bars for a date range."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

from stockpipe.store.schema import BARS, SYMBOLS
from stockpipe.validation import RejectedBar


class SourceError(RuntimeError):
    """A source's data could not be read; the message names the file, line, symbol or date."""


@dataclass(frozen=True)
class FetchFailure:
    symbol: str
    start: dt.date
    end: dt.date
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"symbol": self.symbol, "start": str(self.start), "end": str(self.end), "reason": self.reason}


@dataclass
class BarFetch:
    """Bars a source returned, and the symbols it could not deliver (with why)."""

    rows: pa.Table
    failures: list[FetchFailure] = field(default_factory=list)
    # Symbols whose whole history must be re-fetched (e.g. a split rescaled Yahoo's prices).
    refetch_history: set[str] = field(default_factory=set)
    # Rows the source could not even parse (a malformed cell, a short row), with file and line.
    rejected: list[RejectedBar] = field(default_factory=list)
    # Rows deliberately left out, counted by reason (e.g. symbols the universe does not list).
    skipped: dict[str, int] = field(default_factory=dict)


class Source(ABC):
    name: str = ""
    synthetic: bool = False
    calendar: str = "XNYS"

    @abstractmethod
    def symbols(self, as_of: dt.date) -> pa.Table:
        """The universe in the `symbols` table's columns (updated_at may be left null)."""

    @abstractmethod
    def bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarFetch:
        """Daily bars for start..end inclusive, exchange-local dates."""


def empty_bars() -> pa.Table:
    return BARS.schema.empty_table()


def symbols_table(columns: dict[str, list]) -> pa.Table:
    """A symbols table from whatever columns a source knows; the rest are null."""
    length = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for field_ in SYMBOLS.schema:
        values = columns.get(field_.name)
        if values is None:
            values = [True] * length if field_.name == "is_active" else [None] * length
        arrays.append(pa.array(values, type=field_.type, from_pandas=True))
    return pa.table(arrays, schema=SYMBOLS.schema)
