"""Exponential moving average, TA-Lib EMA.

Seeded with the SMA of the first `period` values (counted from `start`), then
ema[t] = (x[t] - ema[t-1]) * k + ema[t-1] with k = 2 / (period + 1). First valid at start+period-1.
"""

from __future__ import annotations

import numpy as np

from stockpipe.indicators._recurrence import linear_recurrence
from stockpipe.indicators._window import empty_like_float


def ema(values: np.ndarray, period: int, start: int = 0) -> np.ndarray:
    if period < 1:
        raise ValueError(f"EMA period must be >= 1, got {period}")
    out = empty_like_float(values)
    seed_at = start + period - 1
    n = values.shape[0]
    if n <= seed_at:
        return out
    k = 2.0 / (period + 1)
    seed = values[start : seed_at + 1].sum(axis=0) / period
    out[seed_at] = seed
    out[seed_at + 1 :] = linear_recurrence(values[seed_at + 1 :], 1.0 - k, k, seed)
    return out
