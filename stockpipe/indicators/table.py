"""Indicator rows for many symbols' bars at once: the indicator set applied to an Arrow table.

Bars arrive long (one row per symbol and date, sorted by symbol then date). They are laid out as a
(bar position x symbol) matrix so each recursive kernel (EMA, Wilder RSI) loops over positions once
for all symbols instead of once per symbol; results are gathered back to the long rows.

Pure computation (numpy, pyarrow): every indicator engine runs this, in its own process or on a
Spark executor.
"""

from __future__ import annotations

import datetime as dt
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stockpipe.indicators.spec import INDICATOR_COLUMNS, evaluate


def symbol_runs(symbols: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The runs of equal values in a symbol column (rows sorted by symbol): each run's symbol, and
    the row where it starts and the row after its end. One pass in Arrow, no per-row Python."""
    if isinstance(symbols, pa.ChunkedArray):
        symbols = symbols.combine_chunks()
    if len(symbols) == 0:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
    runs = pc.run_end_encode(symbols)
    ends = runs.run_ends.to_numpy().astype(np.int64)
    return runs.values.to_pylist(), np.r_[0, ends[:-1]], ends


def _layout(symbols: pa.Array) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Flat (position x symbol) matrix index of each row, plus run lengths, names and depth.

    Rows must be sorted by symbol. Works on Arrow's run-end encoding so no per-row Python string
    comparison happens.
    """
    if len(symbols) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), [], 0
    names, starts, ends = symbol_runs(symbols)
    if len(set(names)) != len(names):
        raise ValueError("bars must be sorted by symbol then date (a symbol appears in two runs)")
    lengths = ends - starts
    column = np.repeat(np.arange(len(names)), lengths)
    position = np.arange(ends[-1]) - np.repeat(starts, lengths)
    depth = int(lengths.max())
    return position * len(names) + column, column, names, depth


def indicator_rows(bars: pa.Table, from_dates: Mapping[str, dt.date] | None = None) -> pa.Table:
    """Indicator rows (symbol, date, every indicator column) for `bars` (columns symbol, date,
    close, volume; sorted by symbol, date).

    `from_dates` keeps, per symbol, only rows on or after that date (the earlier rows are warm-up
    history); symbols missing from it keep every row. NULL marks a bar before an indicator's first
    valid bar.
    """
    symbol_column = bars.column("symbol").combine_chunks()
    close = bars.column("close").to_numpy().astype(np.float64, copy=False)
    volume = bars.column("volume").to_numpy().astype(np.float64, copy=False)
    flat_index, column, names, depth = _layout(symbol_column)
    width = len(names)

    dates = bars.column("date")
    if from_dates:
        keep_from = pa.array([from_dates.get(s, dt.date.min) for s in names], pa.date32())
        keep = pc.greater_equal(dates, pc.take(keep_from, pa.array(column))).to_numpy(zero_copy_only=False)
    else:
        keep = np.ones(len(column), dtype=bool)
    # The first matrix row any symbol keeps: rows above it are history only (see `evaluate`).
    kept_positions = flat_index[keep] // max(width, 1)
    from_row = int(kept_positions.min()) if len(kept_positions) else depth

    close_matrix = np.full(depth * width, np.nan)
    volume_matrix = np.full(depth * width, np.nan)
    close_matrix[flat_index] = close
    volume_matrix[flat_index] = volume
    values = evaluate({"close": close_matrix.reshape(depth, width), "volume": volume_matrix.reshape(depth, width)},
                      from_row=from_row)

    everything = bool(keep.all())
    kept_index = flat_index if everything else flat_index[keep]
    mask = None if everything else pa.array(keep)
    arrays = {"symbol": symbol_column if everything else symbol_column.filter(mask),
              "date": dates if everything else dates.filter(mask)}
    for name in INDICATOR_COLUMNS:
        gathered = np.take(values[name].reshape(-1), kept_index)
        arrays[name] = pa.array(gathered, type=pa.float64(), from_pandas=True)
    return pa.table(arrays)
