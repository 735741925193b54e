"""Windowed sums shared by the kernels."""

from __future__ import annotations

import numpy as np


def empty_like_float(values: np.ndarray) -> np.ndarray:
    return np.full(values.shape, np.nan, dtype=np.float64)


def window_sum(values: np.ndarray, period: int) -> np.ndarray:
    """Sum of each full window of `period` rows, for windows ending at rows period-1 .. n-1.

    Adds the `period` shifted slices instead of differencing a running cumulative sum: a cumulative
    sum carries an absolute error proportional to the whole history's total, which after a crash
    (1000 -> 0.01) is larger than 1e-9 of the small values that follow.
    """
    n = values.shape[0]
    count = n - period + 1
    total = values[0:count].astype(np.float64, copy=True)
    for offset in range(1, period):
        total += values[offset : offset + count]
    return total


def flat_windows(values: np.ndarray, period: int) -> np.ndarray:
    """True where all `period` values of the window ending at that row are identical."""
    n = values.shape[0]
    changes = np.zeros(values.shape, dtype=np.int64)
    changes[1:] = values[1:] != values[:-1]
    running = np.cumsum(changes, axis=0)
    # Changes inside a window ending at row t are those at rows t-period+2 .. t.
    inside = running[period - 1 :].copy()
    inside[1:] -= running[: n - period]
    return inside == 0
