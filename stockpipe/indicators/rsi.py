"""Relative strength index, TA-Lib RSI (Wilder).

Gains and losses are the positive and negative parts of close-to-close changes. The averages are
seeded with the plain mean of the first `period` changes, then smoothed as
avg = (avg_prev * (period - 1) + x) / period. RSI = 100 * (g / (g + l)), 0 when g + l == 0.
First valid at index `period`.
"""

from __future__ import annotations

import numpy as np

from stockpipe.indicators._recurrence import linear_recurrence
from stockpipe.indicators._window import empty_like_float


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    if period < 1:
        raise ValueError(f"RSI period must be >= 1, got {period}")
    out = empty_like_float(close)
    n = close.shape[0]
    if n <= period:
        return out
    change = close[1:] - close[:-1]
    gains = np.where(change > 0, change, 0.0)
    losses = np.where(change < 0, -change, 0.0)
    # Wilder: avg = (prev * (period - 1) + x) / period, seeded with the plain mean of `period` changes.
    decay, weight = (period - 1) / period, 1.0 / period
    seed_gain = gains[:period].sum(axis=0) / period
    seed_loss = losses[:period].sum(axis=0) / period
    avg_gain = np.concatenate([seed_gain[None], linear_recurrence(gains[period:], decay, weight, seed_gain)])
    avg_loss = np.concatenate([seed_loss[None], linear_recurrence(losses[period:], decay, weight, seed_loss)])
    out[period:] = _rsi_value(avg_gain, avg_loss)
    return out


def _rsi_value(avg_gain: np.ndarray, avg_loss: np.ndarray) -> np.ndarray:
    total = avg_gain + avg_loss
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total != 0, 100.0 * (avg_gain / total), 0.0)
