"""The indicator set as data: every stored column, the kernel and parameters that compute it, the
first bar at which it is valid, and the warm-up that makes a window of history exact.

Pure (numpy only): the store's schema takes its column names from here, every engine evaluates the
same set through `evaluate`, and a Spark executor importing it pays for numpy and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from stockpipe.indicators.bollinger import bollinger
from stockpipe.indicators.macd import macd
from stockpipe.indicators.rsi import rsi
from stockpipe.indicators.sma import sma

# Bars of history read before the first recomputed date. After 500 bars the EMA/Wilder seeds'
# influence is below 1e-16 of the value, so the result equals a full-history computation (README).
WARMUP_BARS = 500

KERNELS: Mapping[str, Callable] = {"sma": sma, "rsi": rsi, "macd": macd, "bollinger": bollinger}


@dataclass(frozen=True)
class Indicator:
    column: str  # the stored column
    kernel: str  # a key of KERNELS
    source: str  # input series: "close" or "volume"
    params: tuple[tuple[str, float], ...]  # keyword arguments of the kernel
    output: str | None  # field of a kernel returning several lines (MACD, Bollinger)
    first_valid: int  # index of the first non-NULL bar (TA-Lib's lookback)
    window: int | None = None  # bars each value is computed from; None: all history (recursive)


def _bands(output: str) -> Indicator:
    return Indicator(f"bb_{output}", "bollinger", "close", (("period", 20), ("width", 2.0)), output, 19, window=20)


def _macd(column: str, output: str) -> Indicator:
    return Indicator(column, "macd", "close", (("fast", 12), ("slow", 26), ("signal", 9)), output, 33)


INDICATORS: tuple[Indicator, ...] = (
    Indicator("sma_20", "sma", "close", (("period", 20),), None, 19, window=20),
    Indicator("sma_50", "sma", "close", (("period", 50),), None, 49, window=50),
    Indicator("rsi_14", "rsi", "close", (("period", 14),), None, 14),
    _macd("macd", "macd"),
    _macd("macd_signal", "signal"),
    _macd("macd_hist", "hist"),
    _bands("upper"),
    _bands("middle"),
    _bands("lower"),
    _bands("position"),
    Indicator("avg_volume_30", "sma", "volume", (("period", 30),), None, 29, window=30),
)

INDICATOR_COLUMNS: tuple[str, ...] = tuple(i.column for i in INDICATORS)
FIRST_VALID: Mapping[str, int] = {i.column: i.first_valid for i in INDICATORS}


def evaluate(inputs: Mapping[str, np.ndarray], from_row: int = 0) -> dict[str, np.ndarray]:
    """Every indicator column for input series laid out along axis 0 (1-D series, or a position x
    symbol matrix). A kernel returning several lines runs once for all of its columns.

    Rows before `from_row` are wanted only as history: a windowed indicator is computed from the
    first row its windows ending at `from_row` or later reach (the same values: each depends on
    its window alone) and is NaN above; a recursive one over every row. A 13-session rebuild reads
    500 bars of history a symbol, of which the windows need 49.
    """
    results: dict[tuple, object] = {}
    columns: dict[str, np.ndarray] = {}
    for indicator in INDICATORS:
        key = (indicator.kernel, indicator.source, indicator.params)
        if key not in results:
            series = inputs[indicator.source]
            skip = max(from_row - indicator.window + 1, 0) if indicator.window else 0
            results[key] = KERNELS[indicator.kernel](series[skip:], **dict(indicator.params))
            if skip:
                results[key] = _padded(results[key], skip)
        value = results[key]
        columns[indicator.column] = getattr(value, indicator.output) if indicator.output else value
    return columns


def _padded(value, rows: int):
    """`value` (an array, or a kernel's named tuple of them) with `rows` NaN rows put on top."""
    if isinstance(value, tuple):
        return type(value)(*(_padded(v, rows) for v in value))
    out = np.full((rows + value.shape[0],) + value.shape[1:], np.nan)
    out[rows:] = value
    return out


__all__ = ["FIRST_VALID", "INDICATORS", "INDICATOR_COLUMNS", "Indicator", "KERNELS", "WARMUP_BARS", "evaluate"]
