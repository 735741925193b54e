"""An independent reference for the indicator definitions: plain Python, one bar at a time, written
from the definitions in the issue (TA-Lib's conventions), sharing no code with stockpipe.indicators.
Means use math.fsum (exactly rounded) so the reference is at least as accurate as the kernels."""

from __future__ import annotations

import math

NAN = float("nan")


def sma(x: list[float], n: int) -> list[float]:
    return [NAN if i < n - 1 else math.fsum(x[i - n + 1 : i + 1]) / n for i in range(len(x))]


def ema(x: list[float], n: int, start: int = 0) -> list[float]:
    out = [NAN] * len(x)
    seed = start + n - 1
    if len(x) <= seed:
        return out
    k = 2.0 / (n + 1)
    value = math.fsum(x[start : seed + 1]) / n
    out[seed] = value
    for i in range(seed + 1, len(x)):
        value = (x[i] - value) * k + value
        out[i] = value
    return out


def rsi(x: list[float], n: int = 14) -> list[float]:
    out = [NAN] * len(x)
    if len(x) <= n:
        return out
    gains = [max(x[i] - x[i - 1], 0.0) for i in range(1, len(x))]
    losses = [max(x[i - 1] - x[i], 0.0) for i in range(1, len(x))]
    g = math.fsum(gains[:n]) / n
    l_ = math.fsum(losses[:n]) / n
    for i in range(n, len(x)):
        if i > n:
            g = (g * (n - 1) + gains[i - 1]) / n
            l_ = (l_ * (n - 1) + losses[i - 1]) / n
        out[i] = 0.0 if g + l_ == 0 else 100.0 * (g / (g + l_))
    return out


def macd(x: list[float]) -> tuple[list[float], list[float], list[float]]:
    fast = ema(x, 12, start=14)
    slow = ema(x, 26, start=0)
    line = [f - s for f, s in zip(fast, slow)]
    signal = ema(line, 9, start=25)
    line = [NAN if i < 33 else v for i, v in enumerate(line)]
    hist = [a - b for a, b in zip(line, signal)]
    return line, signal, hist


def bollinger(x: list[float], n: int = 20, width: float = 2.0):
    upper, middle, lower, position = [], [], [], []
    for i in range(len(x)):
        if i < n - 1:
            for column in (upper, middle, lower, position):
                column.append(NAN)
            continue
        window = x[i - n + 1 : i + 1]
        mean = math.fsum(window) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in window) / n)
        if max(window) == min(window):
            std = 0.0
        up, low = mean + width * std, mean - width * std
        upper.append(up)
        middle.append(mean)
        lower.append(low)
        position.append(NAN if up - low == 0 else (x[i] - low) / (up - low))
    return upper, middle, lower, position


def all_indicators(close: list[float], volume: list[float]) -> dict[str, list[float]]:
    up, mid, low, pos = bollinger(close)
    line, signal, hist = macd(close)
    return {
        "sma_20": sma(close, 20),
        "sma_50": sma(close, 50),
        "rsi_14": rsi(close),
        "macd": line,
        "macd_signal": signal,
        "macd_hist": hist,
        "bb_upper": up,
        "bb_middle": mid,
        "bb_lower": low,
        "bb_position": pos,
        "avg_volume_30": sma(volume, 30),
    }
