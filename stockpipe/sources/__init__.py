"""Sources: one interface (symbols, bars) with demo, CSV, NASDAQ directory and yfinance implementations."""

from __future__ import annotations

from stockpipe.sources.base import BarFetch, FetchFailure, Source, SourceError


# Sources whose calls only compute (no network, no files that could hang): a task reading one needs no
# child process to be stoppable at its timeout (see StockpipeTask.isolated).
COMPUTING_SOURCES = frozenset({"demo"})


def waits_on_outside(name: str) -> bool:
    """Whether source `name` may wait on the outside world (a server, a file on a network mount)."""
    return name not in COMPUTING_SOURCES


def open_source(name: str) -> Source:
    """The source named in `[stockpipe] source` (or STOCKPIPE_SOURCE), configured from its section."""
    from stockpipe import config

    calendar = config.stockpipe().calendar
    if name == "demo":
        from stockpipe.sources.demo import DemoSource

        cfg = config.demo()
        # Worker processes share the synthetic paths' year-end states through this directory.
        return DemoSource(tickers=cfg.tickers, seed=cfg.seed, calendar=calendar, cache_dir=config.data_dir() / "cache")
    if name == "csv":
        from stockpipe.sources.csv_source import CsvSource

        return CsvSource(config.csv().path, calendar=calendar)
    if name == "yahoo":
        from stockpipe.sources.yahoo import YahooSource

        return YahooSource.from_config()
    raise SourceError(f"unknown source {name!r}: choose demo, csv or yahoo in [stockpipe] source")


__all__ = ["BarFetch", "FetchFailure", "Source", "SourceError", "open_source", "waits_on_outside"]
