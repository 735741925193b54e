"""The indicator-engine interface: how a chunk's indicator rows get computed.

An engine turns bars into indicator rows (`compute`). Engines that compute elsewhere (Spark) do the
work of a whole plan ahead of its chunk tasks in `prepare`, once per rebuild or daily run, and stage
each chunk's rows where its task finds them; the chunk task still reads its bars, writes its rows and
its marker in one transaction, so a chunk is only ever marked done with its rows. Tasks and services
hold an `IndicatorEngine` and never ask which one.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa

COMPUTED_BY = b"stockpipe.computed_by"  # schema metadata of compute()'s rows: who produced them


class EngineError(RuntimeError):
    """An engine could not start or run; the message says which setting or service and why."""


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a plan, and the directory where an engine that prepares stages its results."""

    staging: Path
    chunk_id: int


class IndicatorEngine(ABC):
    name: str = ""

    def prepare(
        self,
        store,
        chunks: Sequence[ChunkRef],
        requests: Callable[[], pa.Table],
        progress: Callable[[float, str], None],
    ) -> dict[str, Any]:
        """Compute `chunks` ahead of their tasks (a no-op for engines that compute in the task).

        `requests()` builds what each chunk will read, one row per symbol: chunk_id, symbol,
        read_start (NULL = every bar), warmup_bars, keep_from (NULL = every row) (see
        `Store.export_bars`). Returns stats for the log."""
        return {}

    @abstractmethod
    def compute(
        self, bars: pa.Table, from_dates: Mapping[str, dt.date] | None = None, *, chunk: ChunkRef | None = None
    ) -> pa.Table:
        """Indicator rows (symbol, date, indicator columns) of `bars` (sorted by symbol, date),
        keeping each symbol's rows from its `from_dates` entry. `chunk` names the chunk whose
        prepared results may be used if they were computed from exactly these bars."""

    def release(self, chunk: ChunkRef) -> None:
        """The chunk's rows are stored: drop whatever was staged for it."""

    def close(self) -> None:
        """Release the engine's resources (a session, a cluster connection)."""


def computed_by(rows: pa.Table) -> str:
    return ((rows.schema.metadata or {}).get(COMPUTED_BY) or b"unknown").decode()


def label(rows: pa.Table, by: str) -> pa.Table:
    return rows.replace_schema_metadata({**(rows.schema.metadata or {}), COMPUTED_BY: by.encode()})
