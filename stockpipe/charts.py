"""Charts of the daily report as PNG bytes: pure drawing, no store and no files.

mplfinance draws the candlesticks and the price overlays; the volume, RSI and MACD panels are plain
matplotlib line collections on the same integer x positions (mplfinance's bar panels add one
Rectangle patch per bar, which made a chart twice as slow). One figure is drawn again for every
symbol: creating a figure's axes and tick objects costs more than drawing the data into it.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: reports are built by cron and Luigi workers

import matplotlib.pyplot as plt  # noqa: E402
import mplfinance as mpf  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, MaxNLocator  # noqa: E402

UP, DOWN = "#26a69a", "#ef5350"
OHLCV = ["Open", "High", "Low", "Close", "Volume"]
# (indicator column, colour, width, label) drawn over the candles
PRICE_OVERLAYS = (
    ("bb_upper", "#9e9e9e", 0.7, "BB upper"),
    ("bb_lower", "#9e9e9e", 0.7, "BB lower"),
    ("sma_20", "#1f77b4", 0.9, "SMA 20"),
    ("sma_50", "#ff7f0e", 0.9, "SMA 50"),
)
_STYLE = mpf.make_mpf_style(base_mpf_style="yahoo", rc={"font.size": 8, "axes.titlesize": 10})


def _png(figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    # zlib level 3: a third of level 6's time for files a few percent larger.
    figure.savefig(buffer, format="png", dpi=dpi, pil_kwargs={"compress_level": 3})
    return buffer.getvalue()


class SymbolChart:
    """Candlesticks with SMA 20/50 and Bollinger bands, volume, RSI(14) with its 30/70 lines, and
    MACD with its signal and histogram, for one symbol at a time."""

    def __init__(self, width: float = 10.0, height: float = 6.6, dpi: int = 72):
        self.dpi = dpi
        self.figure = mpf.figure(figsize=(width, height), style=_STYLE)
        grid = self.figure.add_gridspec(4, 1, height_ratios=(4, 1, 1.3, 1.3), hspace=0.06,
                                        left=0.07, right=0.92, top=0.94, bottom=0.06)
        self.price = self.figure.add_subplot(grid[0])
        self.volume = self.figure.add_subplot(grid[1], sharex=self.price)
        self.rsi = self.figure.add_subplot(grid[2], sharex=self.price)
        self.macd = self.figure.add_subplot(grid[3], sharex=self.price)
        self.panels = (self.price, self.volume, self.rsi, self.macd)
        for axis, label in zip(self.panels, ("Price", "Volume", "RSI 14", "MACD")):
            axis.set_ylabel(label)
            # A fixed place: matplotlib otherwise measures every tick label of the sibling axes to
            # place a label, on every draw.
            axis.yaxis.set_label_coords(1.07, 0.5)
        # Every tick is a gridline, a mark and a label on each draw: a few of them are enough.
        self.price.yaxis.set_major_locator(MaxNLocator(nbins=5))
        for axis in self.panels[1:]:
            axis.yaxis.set_major_locator(MaxNLocator(nbins=3))
        for axis in self.panels[:-1]:
            axis.tick_params(axis="x", labelbottom=False, length=0)
        for axis in (self.volume, self.rsi):  # their date gridlines add little and cost a third of the ticks
            axis.xaxis.set_visible(False)
        for axis in self.panels:  # fixed, so no draw measures the tick labels to place them
            axis.xaxis.set_label_coords(0.5, -0.1)
        self.volume.yaxis.set_major_formatter(FuncFormatter(_shares))

    def close(self) -> None:
        plt.close(self.figure)

    def _clear(self) -> None:
        # Remove the previous symbol's artists but keep the axes (and their tick objects).
        for axis in self.panels:
            for artist in [*axis.lines, *axis.collections, *axis.patches, *axis.texts]:
                artist.remove()

    def render(self, frame: pd.DataFrame) -> bytes:
        """`frame`: one row per session (DatetimeIndex) with Open, High, Low, Close, Volume and the
        indicator columns (NaN where an indicator is not yet valid). Title and legend belong to the
        page (HTML text costs nothing; matplotlib's text layout was a third of a chart's time)."""
        self._clear()
        x = np.arange(len(frame))
        overlays = [
            mpf.make_addplot(frame[column], ax=self.price, color=colour, width=width)
            for column, colour, width, _ in PRICE_OVERLAYS
            if frame[column].notna().any()
        ]
        mpf.plot(frame[OHLCV], ax=self.price, type="candle", addplot=overlays,
                 datetime_format="%b %d", xrotation=0, warn_too_much_data=10_000)

        rising = (frame["Close"] >= frame["Open"]).to_numpy()
        colours = np.where(rising, UP, DOWN)
        self.volume.vlines(x, 0, frame["Volume"].to_numpy(dtype=float), colors=colours, linewidth=2.2)

        self.rsi.plot(x, frame["rsi_14"].to_numpy(dtype=float), color="#7b1fa2", linewidth=0.9)
        self.rsi.axhline(70, color=DOWN, linestyle="--", linewidth=0.7)
        self.rsi.axhline(30, color=UP, linestyle="--", linewidth=0.7)
        self.rsi.set_ylim(0, 100)
        self.rsi.set_yticks([30, 70])

        histogram = frame["macd_hist"].to_numpy(dtype=float)
        self.macd.vlines(x, 0, np.nan_to_num(histogram), colors=np.where(histogram >= 0, UP, DOWN), linewidth=2.2)
        self.macd.plot(x, frame["macd"].to_numpy(dtype=float), color="#1f77b4", linewidth=0.9, label="MACD")
        self.macd.plot(x, frame["macd_signal"].to_numpy(dtype=float), color="#ff7f0e", linewidth=0.9, label="signal")
        self.macd.axhline(0, color="#616161", linewidth=0.5)

        # Limits from the data: relim() ignores collections (candles, volume and histogram), and the
        # previous symbol's limits would stay.
        self.price.set_ylim(*_padded(frame[["Low", "High", "bb_lower", "bb_upper"]].to_numpy(dtype=float)))
        self.volume.set_ylim(0, max(float(frame["Volume"].max()), 1.0) * 1.05)
        self.macd.set_ylim(*_padded(frame[["macd", "macd_signal", "macd_hist"]].to_numpy(dtype=float), include_zero=True))
        # Month starts as the date ticks (mplfinance's own locator puts up to a dozen).
        months = frame.index.to_period("M")
        starts = np.flatnonzero(np.r_[True, months[1:] != months[:-1]])
        self.macd.xaxis.set_major_locator(FixedLocator(starts))
        self.macd.xaxis.set_major_formatter(FixedFormatter([f"{d:%b %Y}" if d.month == 1 or i == 0 else f"{d:%b}"
                                                            for i, d in enumerate(frame.index[starts])]))
        self.price.set_xlim(-1, len(frame))
        for axis in self.panels[:-1]:
            axis.tick_params(axis="x", labelbottom=False)
        self.macd.tick_params(axis="x", labelbottom=True, labelrotation=0)
        return _png(self.figure, self.dpi)


def _shares(value: float, _position=None) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _padded(values: np.ndarray, include_zero: bool = False) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (-1.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    if include_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    pad = (high - low) * 0.04 or abs(high) * 0.04 or 1.0
    return low - pad, high + pad


def health_chart(dates: Sequence, bars: Sequence[int], symbols: Sequence[int], dpi: int = 72) -> bytes:
    """Bars stored per session (columns) and symbols with a bar (line), for the last sessions."""
    figure, axis = plt.subplots(figsize=(10, 2.4))
    figure.subplots_adjust(left=0.07, right=0.93, top=0.86, bottom=0.14)  # tight_layout took a second
    try:
        x = np.arange(len(dates))
        axis.bar(x, bars, color="#90caf9", label="bars")
        axis.set_ylabel("bars")
        twin = axis.twinx()
        twin.plot(x, symbols, color="#e65100", marker="o", markersize=3, linewidth=1, label="symbols")
        twin.set_ylabel("symbols")
        twin.set_ylim(0, max(max(symbols, default=0) * 1.15, 1))
        labels = [f"{d:%m-%d}" for d in dates]
        step = max(1, len(dates) // 10)
        axis.set_xticks(x[::step], labels[::step])
        axis.set_xlim(-0.6, len(dates) - 0.4)
        axis.set_title("bars and symbols per session", loc="left", fontsize=10)
        figure.legend(loc="upper right", fontsize=7, frameon=False, ncols=2)
        return _png(figure, dpi)
    finally:
        plt.close(figure)
