"""Windowed sums shared by the kernels."""

from __future__ import annotations

import numpy as np


def empty_like_float(values: np.ndarray) -> np.ndarray:
    return np.full(values.shape, np.nan, dtype=np.float64)


def window_mean(values: np.ndarray, period: int) -> np.ndarray:
    """Mean of each full window, for windows ending at rows period-1 .. n-1.

    Sums deviations from the window's first value and adds that value back: nearby prices subtract
    exactly, so the mean is good to about one ulp. A plain sum of 20 prices near 250 carries ~1e-12
    of rounding, which is 1e-9 of a low-volatility Bollinger band's width.
    """
    n = values.shape[0]
    count = n - period + 1
    anchor = values[0:count]
    total = np.zeros(anchor.shape, dtype=np.float64)
    deviation = np.empty(anchor.shape, dtype=np.float64)
    for offset in range(1, period):
        np.subtract(values[offset : offset + count], anchor, out=deviation)
        total += deviation
    return anchor + total / period


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
