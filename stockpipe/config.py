"""Configuration: one luigi.Config class per luigi.cfg section.

Class names are the section names (Luigi's own convention, as in its `core` and `retcode` sections).
Secrets never live in luigi.cfg: use ${ENV} interpolation there, or the STOCKPIPE_* variables read here.
"""

from __future__ import annotations

import os
from pathlib import Path

import luigi

# Environment variables that win over luigi.cfg, so a DSN with a password never needs to be written down.
ENV_STORE_URL = "STOCKPIPE_STORE_URL"
ENV_SOURCE = "STOCKPIPE_SOURCE"
ENV_REDIS_URL = "STOCKPIPE_REDIS_URL"


class stockpipe(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section
    store_url = luigi.Parameter(
        default="duckdb:///data/stockpipe.duckdb",
        description="duckdb:///relative.duckdb, duckdb:////absolute.duckdb or postgresql+psycopg2://user@host/db",
    )
    source = luigi.ChoiceParameter(choices=["demo", "csv", "yahoo"], default="demo")
    data_dir = luigi.Parameter(default="data", description="plans, backups, reports and the replica")
    chunk_size = luigi.IntParameter(default=50, description="symbols per IndicatorChunk task")
    calendar = luigi.Parameter(default="XNYS", description="exchange-calendars code of the market's sessions")
    min_symbols = luigi.IntParameter(default=10, description="CollectSymbols fails below this many symbols")
    days_back = luigi.IntParameter(default=5, description="sessions re-fetched before each ingest date")
    backfill_sessions = luigi.IntParameter(default=500, description="history fetched on an empty store")
    backfill_batch = luigi.IntParameter(default=250, description="symbols fetched and written per batch")
    warmup_bars = luigi.IntParameter(
        default=500,
        description="bars of history read before a rebuild's first date; 0 reads the whole history",
    )


class demo(luigi.Config):  # noqa: N801
    tickers = luigi.IntParameter(default=100, description="size of the synthetic universe")
    seed = luigi.IntParameter(default=20240101, description="changes every synthetic price")


class csv(luigi.Config):  # noqa: N801
    path = luigi.Parameter(default="", description="directory of long-format bar files (+ optional symbols.csv)")


def store_url() -> str:
    return os.environ.get(ENV_STORE_URL) or stockpipe().store_url


def source_name() -> str:
    return os.environ.get(ENV_SOURCE) or stockpipe().source


def data_dir() -> Path:
    return Path(stockpipe().data_dir)
