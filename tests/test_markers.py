"""Marker ids keep the spelling stores already hold (a changed id would redo finished work or lose
its stats), and every task's output is its marker as `stockpipe.markers` spells it."""

from __future__ import annotations

import datetime as dt

from stockpipe import markers, tasks

DAY = dt.date(2025, 10, 10)
SATURDAY = dt.date(2025, 10, 11)


def test_marker_ids_are_the_spellings_stores_already_hold():
    assert markers.ingest_date(DAY) == "IngestDate/2025-10-10"
    assert markers.backfill(dt.date(2025, 1, 2), DAY) == "Backfill/2025-01-02/2025-10-10"
    assert markers.redis_sync(SATURDAY, full=True) == "RedisSync/2025-10-11/full"
    assert markers.redis_sync(DAY, full=False) == "RedisSync/2025-10-10/incremental"
    assert markers.indicator_chunk("rebuild-2025-09-29-2nd", 3) == "IndicatorChunk/rebuild-2025-09-29-2nd/3"
    assert markers.chunks_of("daily-2025-10-10") == "IndicatorChunk/daily-2025-10-10/"
    assert markers.legacy_import("0123456789", "bars/A..C") == "ImportLegacy/0123456789/bars/A..C"
    assert markers.first_part("RedisSync/2025-10-11/full") == "2025-10-11"


def test_plan_ids_and_the_marker_that_finishes_each_plan():
    assert markers.rebuild_plan_id(dt.date(2025, 9, 29)) == "rebuild-2025-09-29"
    assert markers.rebuild_plan_id("2025-09-29", "2nd") == "rebuild-2025-09-29-2nd"
    assert markers.rebuild_run_id("rebuild-2025-09-29-2nd", "2025-09-29") == "2nd"
    assert markers.rebuild_run_id("rebuild-2025-09-29", dt.date(2025, 9, 29)) == ""
    assert markers.daily_plan_date(markers.daily_plan_id(DAY)) == "2025-10-10"
    assert markers.plan_final_marker("daily", "daily-2025-10-10") == "DailyIndicators/2025-10-10"
    assert markers.plan_final_marker("rebuild", "rebuild-2025-09-29-2nd") == "RebuildFrom/rebuild-2025-09-29-2nd"


def test_each_tasks_marker_is_named_after_its_family_and_parameters():
    made = [tasks.CollectSymbols(date=DAY), tasks.IngestDate(date=DAY), tasks.DailyIndicators(date=DAY),
            tasks.ScanWatchlist(date=DAY), tasks.Replicate(date=DAY), tasks.Report(date=DAY),
            tasks.CleanupOldFiles(date=DAY), tasks.RedisHealthCheck(date=DAY), tasks.RedisCleanup(date=DAY),
            tasks.Daily(date=DAY), tasks.RedisSync(date=SATURDAY),
            tasks.Backfill(start_date=dt.date(2025, 1, 2), end_date=DAY),
            tasks.IndicatorChunk(date=DAY, plan_id="daily-2025-10-10", chunk_id=3)]
    ids = {task.get_task_family(): task.output().marker_id for task in made}
    assert ids == {
        "CollectSymbols": "CollectSymbols/2025-10-10", "IngestDate": "IngestDate/2025-10-10",
        "DailyIndicators": "DailyIndicators/2025-10-10", "ScanWatchlist": "ScanWatchlist/2025-10-10",
        "Replicate": "Replicate/2025-10-10", "Report": "Report/2025-10-10",
        "CleanupOldFiles": "CleanupOldFiles/2025-10-10", "RedisHealthCheck": "RedisHealthCheck/2025-10-10",
        "RedisCleanup": "RedisCleanup/2025-10-10", "Daily": "Daily/2025-10-10",
        "RedisSync": "RedisSync/2025-10-11/full", "Backfill": "Backfill/2025-01-02/2025-10-10",
        "IndicatorChunk": "IndicatorChunk/daily-2025-10-10/3",
    }
    # DailyIndicators reads the ingest's stats through its input, the IngestDate marker.
    assert tasks.DailyIndicators(date=DAY).input().marker_id == markers.ingest_date(DAY)
