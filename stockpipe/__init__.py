"""stockpipe: Luigi tasks for a resumable stock-market data pipeline.

`luigi --module stockpipe <Task>` finds every task here.

Importing the package itself is light: the pure parts (`stockpipe.indicators`, `stockpipe.engines`,
`stockpipe.watchlist`, ...) do not pull in Luigi, the tasks, the event handlers or the log handler,
so a Spark executor importing a kernel pays for the kernel only. The tasks (and with them the metrics
and alert handlers, the fork lifecycle and stockpipe's log handler, see `stockpipe.tasks`) are
loaded when Luigi imports the package (`luigi --module stockpipe`: Luigi is already imported then),
when a task is named (`from stockpipe import Daily`), or by importing `stockpipe.tasks`.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

TASKS = (
    "Backfill",
    "CleanupOldFiles",
    "CollectSymbols",
    "Daily",
    "DailyIndicators",
    "IndicatorChunk",
    "IngestDate",
    "PlanRebuild",
    "RebuildFrom",
    "RedisCleanup",
    "RedisHealthCheck",
    "RedisSync",
    "Replicate",
    "Report",
    "ScanWatchlist",
)

__all__ = [*TASKS, "load_tasks"]


def load_tasks():
    """Import every task (registering them with Luigi, with the event handlers and log handler that
    come with them) and make them attributes of the package; returns `stockpipe.tasks`."""
    tasks = importlib.import_module("stockpipe.tasks")
    globals().update({name: getattr(tasks, name) for name in TASKS})
    return tasks


def __getattr__(name: str):
    if name in TASKS:
        return getattr(load_tasks(), name)
    raise AttributeError(f"module 'stockpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *TASKS})


# Luigi finds a `--module`'s tasks by importing it, never by asking it for names, so under Luigi
# (its command line, a worker loading a task's module, a script that imported luigi first) the tasks
# are defined now. A process without Luigi (an executor importing a kernel) never pays for them.
if "luigi" in sys.modules:
    load_tasks()
