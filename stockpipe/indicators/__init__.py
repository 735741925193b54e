"""Pure indicator kernels (no I/O) and the engine that applies them to many symbols at once.

Every kernel works along axis 0 of a float array: a 1-D series, or a 2-D array whose columns are
symbols (bar position x symbol, NaN-padded after each symbol's last bar). Values follow TA-Lib's
conventions exactly; see each module for the definition it implements.
"""

from stockpipe.indicators.bollinger import BollingerBands, bollinger
from stockpipe.indicators.ema import ema
from stockpipe.indicators.macd import MACD, macd
from stockpipe.indicators.rsi import rsi
from stockpipe.indicators.sma import sma
from stockpipe.indicators.engine import INDICATOR_COLUMNS, compute_indicators

__all__ = [
    "BollingerBands",
    "INDICATOR_COLUMNS",
    "MACD",
    "bollinger",
    "compute_indicators",
    "ema",
    "macd",
    "rsi",
    "sma",
]
