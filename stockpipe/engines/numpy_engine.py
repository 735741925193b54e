"""The in-process engine: the numpy kernels over the chunk's bars, in the chunk task itself."""

from __future__ import annotations

from stockpipe.engines.base import IndicatorEngine, label
from stockpipe.indicators.table import indicator_rows


class NumpyEngine(IndicatorEngine):
    name = "numpy"

    def compute(self, bars, from_dates=None, *, chunk=None):
        return label(indicator_rows(bars, from_dates), self.name)
