"""Simple moving average, TA-Lib SMA: mean of the last `period` values, first valid at period-1."""

from __future__ import annotations

import numpy as np

from stockpipe.indicators._window import empty_like_float, window_mean


def sma(values: np.ndarray, period: int) -> np.ndarray:
    if period < 1:
        raise ValueError(f"SMA period must be >= 1, got {period}")
    out = empty_like_float(values)
    if values.shape[0] >= period:
        out[period - 1 :] = window_mean(values, period)
    return out
