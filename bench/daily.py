"""Daily figures: the cron job (`luigi ... Daily`: symbols, bars of the last sessions from the demo
source, indicators, watchlist, replica, report, cleanup) for the sessions after the store's last,
one after another as cron would run them, with the seconds of each step from the store's task_runs."""

from __future__ import annotations

import statistics
from typing import Any

from common import Bench, BenchStore, measure, row, task_seconds
from spark import SPARK_LINE, spark_phases


def daily(bench: Bench, store: BenchStore, engine: str, workers: int, day) -> dict[str, Any]:
    result = measure(bench.directory, "Daily", "--date", str(day), workers=workers, cfg=bench.cfg(store, engine),
                     grep=SPARK_LINE if engine == "spark" else None)
    phases = spark_phases(result.pop("matched", []), result["seconds"])
    if phases:
        result["spark"] = phases
    result["date"] = str(day)
    # Task seconds overlap when workers run tasks side by side; chunks are added up.
    result["task_seconds"] = task_seconds(store, day)
    return result


def dailies(bench: Bench, store: BenchStore, engine: str, workers: int) -> list[dict[str, Any]]:
    """The first Daily on the store (it writes the first replica whole), then `repeats` more, each
    for the next session."""
    days = bench.dates.following
    if len(days) < bench.repeats + 1:
        raise SystemExit(f"only {len(days)} sessions after {bench.dates.end} are known to the calendar")
    runs = []
    for day in days[: bench.repeats + 1]:
        runs.append(daily(bench, store, engine, workers, day))
        bench.measured(store, engine, workers, f"Daily {day} (Replicate {runs[-1]['task_seconds'].get('Replicate')} s)",
                       runs[-1])
    return [row("daily_first", store, engine, workers, runs[:1], label="Daily, first on the store (whole replica)",
                replicate_seconds=_replicate(runs[:1])),
            row("daily", store, engine, workers, runs[1:], label="Daily, the sessions after",
                replicate_seconds=_replicate(runs[1:]))]


def _replicate(runs: list[dict[str, Any]]) -> float | None:
    seconds = [r["task_seconds"]["Replicate"] for r in runs if "Replicate" in r["task_seconds"]]
    return round(statistics.median(seconds), 3) if seconds else None
