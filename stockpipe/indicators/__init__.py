"""Pure indicator kernels (no I/O), the indicator set as data, and their application to a table.

Every kernel works along axis 0 of a float array: a 1-D series, or a 2-D array whose columns are
symbols (bar position x symbol, NaN-padded after each symbol's last bar). Values follow TA-Lib's
conventions exactly; see each module for the definition it implements. Engines that run them over a
store's symbols live in `stockpipe.engines`.
"""

from stockpipe.indicators.bollinger import BollingerBands, bollinger
from stockpipe.indicators.ema import ema
from stockpipe.indicators.macd import MACD, macd
from stockpipe.indicators.rsi import rsi
from stockpipe.indicators.sma import sma
from stockpipe.indicators.spec import FIRST_VALID, INDICATOR_COLUMNS, INDICATORS, WARMUP_BARS
from stockpipe.indicators.table import indicator_rows

__all__ = [
    "BollingerBands",
    "FIRST_VALID",
    "INDICATORS",
    "INDICATOR_COLUMNS",
    "MACD",
    "WARMUP_BARS",
    "bollinger",
    "ema",
    "indicator_rows",
    "macd",
    "rsi",
    "sma",
]
