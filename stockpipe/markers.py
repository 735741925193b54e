"""Completion-marker ids, spelled in this one place.

A marker id is its task family and the task's identifying parameters, joined by "/":
`IngestDate/2025-10-10`, `IndicatorChunk/rebuild-2025-09-29/3`. Tasks write them (their output),
services and the command line read them (a day's ingest stats, a plan's chunks), so every reader and
writer builds them through these functions. A plan id (`daily-<date>`, `rebuild-<start>[-<run id>]`)
names an indicator plan, its run directory and its chunks' markers.

Pure: no Luigi, no store.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

SEPARATOR = "/"


def marker_id(family: str, *parts: object) -> str:
    return SEPARATOR.join([family, *map(str, parts)])


def prefix(family: str, *parts: object) -> str:
    """What every marker id of `family` (under `parts`) starts with."""
    return marker_id(family, *parts) + SEPARATOR


def first_part(marker: str) -> str:
    """The first parameter of a marker id: the date of `ScanWatchlist/2025-10-10`."""
    return marker.split(SEPARATOR, 2)[1]


def first_parts(found: Iterable[dict]) -> list[str]:
    """`first_part` of each of `store.markers(...)`'s answers."""
    return [first_part(m["marker_id"]) for m in found]


# -- per task ------------------------------------------------------------------------------------
def collect_symbols(day: dt.date) -> str:
    return marker_id("CollectSymbols", day)


def ingest_date(day: dt.date) -> str:
    return marker_id("IngestDate", day)


INGEST_DATES = prefix("IngestDate")


def backfill(start: dt.date, end: dt.date) -> str:
    return marker_id("Backfill", start, end)


def indicator_chunk(plan_id: str, chunk_id: int) -> str:
    return marker_id("IndicatorChunk", plan_id, chunk_id)


def chunks_of(plan_id: str) -> str:
    """The prefix of every chunk marker of plan `plan_id`."""
    return prefix("IndicatorChunk", plan_id)


def rebuild_from(plan_id: str) -> str:
    return marker_id("RebuildFrom", plan_id)


def daily_indicators(day: dt.date | str) -> str:
    return marker_id("DailyIndicators", day)


def scan_watchlist(day: dt.date) -> str:
    return marker_id("ScanWatchlist", day)


SCANS = prefix("ScanWatchlist")


def replicate(day: dt.date) -> str:
    return marker_id("Replicate", day)


def report(day: dt.date) -> str:
    return marker_id("Report", day)


def cleanup_old_files(day: dt.date) -> str:
    return marker_id("CleanupOldFiles", day)


def redis_sync(day: dt.date, full: bool) -> str:
    return marker_id("RedisSync", day, "full" if full else "incremental")


def redis_health_check(day: dt.date) -> str:
    return marker_id("RedisHealthCheck", day)


def redis_cleanup(day: dt.date) -> str:
    return marker_id("RedisCleanup", day)


def daily(day: dt.date) -> str:
    return marker_id("Daily", day)


LEGACY_IMPORT = "ImportLegacy"  # `stockpipe import-legacy`: a command, not a task


def legacy_import(source_key: str, part: str) -> str:
    """One committed part of an import of the old database `source_key` (`symbols`, `bars/A..C`)."""
    return marker_id(LEGACY_IMPORT, source_key, part)


def legacy_imports(source_key: str) -> str:
    return prefix(LEGACY_IMPORT, source_key)


# -- plans ---------------------------------------------------------------------------------------
DAILY_PLAN = "daily-"
REBUILD_PLAN = "rebuild-"


def daily_plan_id(day: dt.date) -> str:
    return f"{DAILY_PLAN}{day}"


def rebuild_plan_id(start: dt.date | str, run_id: str = "") -> str:
    return f"{REBUILD_PLAN}{start}" + (f"-{run_id}" if run_id else "")


def daily_plan_date(plan_id: str) -> str:
    """The date of a daily plan's id (`daily-2025-10-10` -> `2025-10-10`)."""
    return plan_id[len(DAILY_PLAN):]


def rebuild_run_id(plan_id: str, start: dt.date | str) -> str:
    """The run id of a rebuild's plan id (`rebuild-2025-09-29-again` -> `again`)."""
    return plan_id[len(rebuild_plan_id(start)):].lstrip("-")


def plan_final_marker(kind: str, plan_id: str) -> str:
    """The marker of the task that finishes plan `plan_id`: its DailyIndicators or its RebuildFrom."""
    if kind == "daily" and plan_id.startswith(DAILY_PLAN):
        return daily_indicators(daily_plan_date(plan_id))
    return rebuild_from(plan_id)
