"""MACD(fast, slow, signal), TA-Lib MACD.

TA-Lib aligns both EMAs on the slow one's first bar: the slow EMA is seeded on bars 0..slow-1 and the
fast EMA on bars slow-fast..slow-1, so both start at bar slow-1 (this is not EMA12 - EMA26 of two
standalone EMAs). The signal is the EMA of the MACD line seeded with its mean over its first `signal`
values; all three outputs are first valid at slow + signal - 2 (33 for 12/26/9).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stockpipe.indicators.ema import ema


class MACD(NamedTuple):
    macd: np.ndarray
    signal: np.ndarray
    hist: np.ndarray


def macd(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> MACD:
    if not 1 <= fast < slow:
        raise ValueError(f"MACD needs 1 <= fast < slow, got fast={fast} slow={slow}")
    first_line = slow - 1
    line = ema(close, fast, start=slow - fast) - ema(close, slow, start=0)
    signal_line = ema(line, signal, start=first_line)
    first_valid = first_line + signal - 1
    line[: min(first_valid, line.shape[0])] = np.nan
    return MACD(line, signal_line, line - signal_line)
