"""Charts of the daily report as PNG bytes: pure drawing, no store and no files.

Drawn with Pillow straight into pixels: a chart is a few hundred rectangles, lines and a dozen short
labels, and nothing more general is needed. matplotlib and mplfinance drew the same panels in 65-90
ms a chart (axes, tick and text layout redone on every draw, however much was reused) and took 0.7 s
to import, so the report's 40-odd charts were the largest part of a Daily (over 4 s of about 11);
here a chart takes a few milliseconds. Everything is drawn at twice the size and halved, which
smooths the lines (Pillow draws them without antialiasing).
"""

from __future__ import annotations

import datetime as dt
import io
import math
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    import pandas as pd

UP, DOWN = "#26a69a", "#ef5350"
OHLCV = ["Open", "High", "Low", "Close", "Volume"]
# (indicator column, colour, width, label) drawn over the candles
PRICE_OVERLAYS = (
    ("bb_upper", "#9e9e9e", 0.7, "BB upper"),
    ("bb_lower", "#9e9e9e", 0.7, "BB lower"),
    ("sma_20", "#1f77b4", 0.9, "SMA 20"),
    ("sma_50", "#ff7f0e", 0.9, "SMA 50"),
)
RSI_COLOUR, MACD_COLOUR, SIGNAL_COLOUR = "#7b1fa2", "#1f77b4", "#ff7f0e"
GRID, FRAME, TEXT = "#e6e6e6", "#9e9e9e", "#424242"
_SCALE = 2  # drawn at twice the size, then halved: antialiased lines and text


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size * _SCALE)


def encode(image: Image.Image) -> bytes:
    """A drawn chart as PNG bytes. Pillow releases the GIL while it quantizes and compresses."""
    buffer = io.BytesIO()
    # A chart has a few flat colours and their antialiased edges: 64 palette colours look the same,
    # and the file is half the size and quicker to encode than RGB. zlib level 3: a third of level
    # 6's time for files a few percent larger.
    image.quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(buffer, format="png", compress_level=3)
    return buffer.getvalue()


def _nice_ticks(low: float, high: float, count: int) -> list[float]:
    """At most about `count` round values (1, 2, 2.5, 5 x 10^n steps) between low and high."""
    span = high - low
    if not math.isfinite(span) or span <= 0:
        return []
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}" if value == round(value, 2) else f"{value:.2f}"


def _shares(value: float) -> str:
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


class _Panel:
    """One panel's pixel box (in the drawing's doubled pixels) and its value range."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], low: float, high: float, n: int):
        self.draw, self.box, self.low, self.high, self.n = draw, box, low, high, n
        left, top, right, bottom = box
        self.step = (right - left) / (n + 1)  # x from -1 to n, as the candles' axis had

    def x(self, i: np.ndarray | float) -> np.ndarray | float:
        return self.box[0] + (i + 1) * self.step

    def y(self, value: np.ndarray | float) -> np.ndarray | float:
        _, top, _, bottom = self.box
        return bottom - (np.asarray(value, dtype=float) - self.low) / (self.high - self.low) * (bottom - top)

    def grid(self, values: Sequence[float], labels: Sequence[str]) -> None:
        left, top, right, bottom = self.box
        for value, text in zip(values, labels):
            y = float(self.y(value))
            if top <= y <= bottom:
                self.draw.line([(left, y), (right, y)], fill=GRID, width=_SCALE)
                self.draw.text((right + 4 * _SCALE, y), text, fill=TEXT, font=_font(9), anchor="lm")

    def verticals(self, positions: Sequence[int]) -> None:
        left, top, right, bottom = self.box
        for i in positions:
            x = float(self.x(float(i)))
            self.draw.line([(x, top), (x, bottom)], fill=GRID, width=_SCALE)

    def frame(self, title: str) -> None:
        left, top, right, bottom = self.box
        self.draw.rectangle(self.box, outline=FRAME, width=_SCALE)
        self.draw.text((left + 4 * _SCALE, top + 2 * _SCALE), title, fill=TEXT, font=_font(9), anchor="la")

    def polyline(self, values: np.ndarray, colour: str, width: float) -> None:
        """A line through the finite values; a NaN (an indicator not yet valid) breaks it."""
        xs, ys = self.x(np.arange(len(values), dtype=float)), self.y(values)
        finite = np.isfinite(ys)
        pixels = max(1, round(width * _SCALE * 1.4))
        edges = np.flatnonzero(np.diff(np.r_[False, finite, False].astype(np.int8)))
        for start, stop in zip(edges[::2], edges[1::2]):
            if stop - start >= 2:
                self.draw.line(list(zip(xs[start:stop].tolist(), ys[start:stop].tolist())), fill=colour,
                               width=pixels, joint="curve")

    def hline(self, value: float, colour: str, dashed: bool = False) -> None:
        left, _, right, _ = self.box
        y = float(self.y(value))
        if not dashed:
            self.draw.line([(left, y), (right, y)], fill=colour, width=_SCALE)
            return
        dash = 6 * _SCALE
        for x in range(left, right, 2 * dash):
            self.draw.line([(x, y), (min(x + dash, right), y)], fill=colour, width=_SCALE)

    def bars(self, values: np.ndarray, colours: Sequence[str], base: float = 0.0) -> None:
        """Vertical bars from `base` (volume, MACD histogram)."""
        half = max(self.step * 0.35, _SCALE / 2)
        zero = float(self.y(base))
        xs, ys = self.x(np.arange(len(values), dtype=float)), self.y(np.nan_to_num(values))
        for x, y, colour in zip(xs.tolist(), ys.tolist(), colours):
            self.draw.rectangle((x - half, min(y, zero), x + half, max(y, zero)), fill=colour)


class SymbolChart:
    """Candlesticks with SMA 20/50 and Bollinger bands, volume, RSI(14) with its 30/70 lines, and
    MACD with its signal and histogram, for one symbol at a time."""

    def __init__(self, width: int = 720, height: int = 475):
        self.width, self.height = width, height

    def close(self) -> None:
        """Nothing is held between charts (kept for callers written against a figure to close)."""

    def _boxes(self) -> list[tuple[int, int, int, int]]:
        s = _SCALE
        left, right = round(0.07 * self.width) * s, round(0.90 * self.width) * s
        top, bottom = round(0.04 * self.height) * s, round(0.93 * self.height) * s
        gap = 4 * s
        ratios = (4, 1, 1.3, 1.3)
        usable = bottom - top - gap * (len(ratios) - 1)
        boxes, y = [], top
        for ratio in ratios:
            height = round(usable * ratio / sum(ratios))
            boxes.append((left, y, right, y + height))
            y += height + gap
        return boxes

    def render(self, frame: pd.DataFrame) -> bytes:
        """`frame`: one row per session (DatetimeIndex) with Open, High, Low, Close, Volume and the
        indicator columns (NaN where an indicator is not yet valid). Title and legend belong to the
        page (HTML text)."""
        return encode(self.draw(frame))

    def draw(self, frame: pd.DataFrame) -> Image.Image:
        """The chart of `frame` (see `render`) as an image, before `encode` makes it a PNG: a caller
        may encode one chart in a thread while it draws the next."""
        image = Image.new("RGB", (self.width * _SCALE, self.height * _SCALE), "white")
        draw = ImageDraw.Draw(image)
        n = len(frame)
        column = {name: frame[name].to_numpy(dtype=float) for name in frame.columns}
        price_box, volume_box, rsi_box, macd_box = self._boxes()

        price_range = _padded(frame[["Low", "High", "bb_lower", "bb_upper"]].to_numpy(dtype=float))
        price = _Panel(draw, price_box, *price_range, n)
        volume = _Panel(draw, volume_box, 0.0, max(float(np.nanmax(column["Volume"], initial=0.0)), 1.0) * 1.05, n)
        rsi = _Panel(draw, rsi_box, 0.0, 100.0, n)
        macd = _Panel(draw, macd_box, *_padded(frame[["macd", "macd_signal", "macd_hist"]].to_numpy(dtype=float),
                                               include_zero=True), n)

        # Month starts as the date ticks, with a gridline through the price and MACD panels.
        months = frame.index.to_period("M")
        starts = np.flatnonzero(np.r_[True, months[1:] != months[:-1]]) if n else np.empty(0, int)
        for panel in (price, macd):
            panel.verticals(starts.tolist())
        for number, i in enumerate(starts.tolist()):
            day: dt.date = frame.index[i]
            text = f"{day:%b %Y}" if day.month == 1 or number == 0 else f"{day:%b}"
            draw.text((float(macd.x(float(i))), macd_box[3] + 3 * _SCALE), text, fill=TEXT, font=_font(9), anchor="ma")

        ticks = _nice_ticks(price.low, price.high, 5)
        price.grid(ticks, [_label(t) for t in ticks])
        ticks = _nice_ticks(0.0, volume.high, 3)
        volume.grid(ticks[1:], [_shares(t) for t in ticks[1:]])
        rsi.grid([30, 70], ["30", "70"])
        ticks = _nice_ticks(macd.low, macd.high, 3)
        macd.grid(ticks, [_label(t) for t in ticks])

        rising = column["Close"] >= column["Open"]
        colours = np.where(rising, UP, DOWN).tolist()
        self._candles(price, column, colours)
        for name, colour, width, _ in PRICE_OVERLAYS:
            price.polyline(column[name], colour, width)

        volume.bars(column["Volume"], colours)

        rsi.hline(70, DOWN, dashed=True)
        rsi.hline(30, UP, dashed=True)
        rsi.polyline(column["rsi_14"], RSI_COLOUR, 0.9)

        histogram = column["macd_hist"]
        macd.hline(0.0, "#616161")
        macd.bars(histogram, np.where(np.nan_to_num(histogram) >= 0, UP, DOWN).tolist())
        macd.polyline(column["macd"], MACD_COLOUR, 0.9)
        macd.polyline(column["macd_signal"], SIGNAL_COLOUR, 0.9)

        for panel, title in ((price, "Price"), (volume, "Volume"), (rsi, "RSI 14"), (macd, "MACD")):
            panel.frame(title)
        return image.reduce(_SCALE)

    @staticmethod
    def _candles(panel: _Panel, column: dict[str, np.ndarray], colours: list[str]) -> None:
        draw = panel.draw
        half = max(panel.step * 0.3, _SCALE / 2)
        xs = panel.x(np.arange(len(colours), dtype=float)).tolist()
        high, low = panel.y(column["High"]).tolist(), panel.y(column["Low"]).tolist()
        opens, closes = panel.y(column["Open"]).tolist(), panel.y(column["Close"]).tolist()
        for x, top, bottom, o, c, colour in zip(xs, high, low, opens, closes, colours):
            if not (math.isfinite(top) and math.isfinite(bottom)):
                continue
            draw.line([(x, top), (x, bottom)], fill=colour, width=_SCALE)
            if math.isfinite(o) and math.isfinite(c):
                draw.rectangle((x - half, min(o, c), x + half, max(max(o, c), min(o, c) + _SCALE)), fill=colour)


def health_chart(dates: Sequence, bars: Sequence[int], symbols: Sequence[int], width: int = 720,
                 height: int = 173) -> bytes:
    """Bars stored per session (columns) and symbols with a bar (line), for the last sessions."""
    s = _SCALE
    image = Image.new("RGB", (width * s, height * s), "white")
    draw = ImageDraw.Draw(image)
    box = (round(0.07 * width) * s, round(0.16 * height) * s, round(0.90 * width) * s, round(0.84 * height) * s)
    n = len(dates)
    bar_values = np.asarray(bars, dtype=float)
    symbol_values = np.asarray(symbols, dtype=float)
    columns = _Panel(draw, box, 0.0, max(float(bar_values.max(initial=0.0)) * 1.1, 1.0), max(n, 1))
    line = _Panel(draw, box, 0.0, max(float(symbol_values.max(initial=0.0)) * 1.15, 1.0), max(n, 1))
    ticks = _nice_ticks(0.0, columns.high, 3)
    columns.grid(ticks, [_shares(t) for t in ticks])
    columns.bars(bar_values, ["#90caf9"] * n)
    line.polyline(symbol_values, "#e65100", 1.0)
    for x, y in zip(line.x(np.arange(n, dtype=float)).tolist(), line.y(symbol_values).tolist()):
        draw.ellipse((x - 3 * s, y - 3 * s, x + 3 * s, y + 3 * s), fill="#e65100")
    step = max(1, n // 10)
    for i in range(0, n, step):
        draw.text((float(columns.x(float(i))), box[3] + 3 * s), f"{dates[i]:%m-%d}", fill=TEXT, font=_font(9),
                  anchor="ma")
    draw.rectangle(box, outline=FRAME, width=s)
    draw.text((box[0], 2 * s), "bars and symbols per session", fill=TEXT, font=_font(10), anchor="la")
    draw.text((box[2], 2 * s), "symbols", fill="#e65100", font=_font(9), anchor="ra")
    draw.text((box[2] - 50 * s, 2 * s), "bars", fill="#1e88e5", font=_font(9), anchor="ra")
    top = int(symbol_values.max(initial=0.0))
    draw.text((box[2] + 4 * s, float(line.y(top))), f"{top:,} sym.", fill="#e65100", font=_font(9), anchor="lm")
    return encode(image.reduce(s))
