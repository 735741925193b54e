"""stockpipe: Luigi tasks for a resumable stock-market data pipeline.

`luigi --module stockpipe <Task>` finds every task here.
"""

from stockpipe.tasks import (  # noqa: F401 - re-exported so `luigi --module stockpipe` sees every task
    Backfill,
    CleanupOldFiles,
    CollectSymbols,
    Daily,
    DailyIndicators,
    IndicatorChunk,
    IngestDate,
    PlanRebuild,
    RebuildFrom,
    RedisCleanup,
    RedisHealthCheck,
    RedisSync,
    Replicate,
    Report,
    ScanWatchlist,
)
from stockpipe import events as _events  # noqa: F401,E402 - registers the metrics and alert handlers
from stockpipe import lifecycle as _lifecycle  # noqa: F401,E402 - forked helpers die with the run

from stockpipe.logs import configure as _configure_logging

_configure_logging()

__version__ = "0.1.0"
