"""Bollinger bands, TA-Lib BBANDS with a simple moving average.

middle = SMA(period); std = population standard deviation (ddof=0) of the same window, computed
two-pass (sum of squared deviations from the window mean) because the running E[x^2] - mean^2 form
loses ~5e-6 on low-volatility series; upper/lower = middle +/- width * std.
position = (close - lower) / (upper - lower), NaN when the band has zero width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stockpipe.indicators._window import empty_like_float, flat_windows
from stockpipe.indicators.sma import sma


class BollingerBands(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray
    position: np.ndarray


def bollinger(close: np.ndarray, period: int = 20, width: float = 2.0) -> BollingerBands:
    middle = sma(close, period)
    std = empty_like_float(close)
    n = close.shape[0]
    if n >= period:
        count = n - period + 1
        window_mean = middle[period - 1 :]
        squares = np.zeros(window_mean.shape, dtype=np.float64)
        deviation = np.empty(window_mean.shape, dtype=np.float64)
        for offset in range(period):
            np.subtract(close[offset : offset + count], window_mean, out=deviation)
            np.multiply(deviation, deviation, out=deviation)
            squares += deviation
        spread = np.sqrt(squares / period)
        # An unchanged window has exactly zero spread; rounding in its mean must not invent one.
        spread[flat_windows(close, period)] = 0.0
        std[period - 1 :] = spread
    upper = middle + width * std
    lower = middle - width * std
    band = upper - lower
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(band != 0, (close - lower) / band, np.nan)
    return BollingerBands(upper, middle, lower, position)
