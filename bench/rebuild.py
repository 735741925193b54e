"""Rebuild figures: a full-history RebuildFrom on a freshly loaded store and again when it replaces
rows of earlier rebuilds, a 13-session RebuildFrom, the raw floor of a full rebuild (no Luigi), and
what the store takes on disk as rebuilds repeat. Each through the real `luigi` command (wall seconds
include process start) and measured with bench/measure.py."""

from __future__ import annotations

import json
import sys
from typing import Any

from common import HERE, Bench, BenchStore, luigi_env, measure, measure_command, row, run_report
from floor import FLOOR_LINE
from spark import SPARK_LINE, spark_phases


def rebuild(bench: Bench, store: BenchStore, engine: str, workers: int, start, run_id: str) -> dict[str, Any]:
    """One RebuildFrom from `start` under a new run id, with its report's row and chunk counts."""
    result = measure(bench.directory, "RebuildFrom", "--start-date", str(start), "--run-id", run_id, workers=workers,
                     cfg=bench.cfg(store, engine), grep=SPARK_LINE if engine == "spark" else None)
    report = run_report(store.url, f"rebuild-{start}-{run_id}")
    result.update(rows_saved=report["saved_rows"], chunks=report["chunks"])
    phases = spark_phases(result.pop("matched", []), result["seconds"])
    if phases:
        result["spark"] = phases
    return result


def full_rebuilds(bench: Bench, base: BenchStore, engine: str, workers: int) -> tuple[list[dict[str, Any]], BenchStore]:
    """Full-history rebuilds, first on fresh copies of the backfilled store (no indicator yet), then
    again and again on the last copy (each replacing the rows of the one before), with the store's
    size after each. Returns the rows and that copy, for the figures that need indicators."""
    years = f"{bench.years}-year"
    fresh = []
    for attempt in range(bench.repeats):
        store = bench.copy(base, f"{engine}_w{workers}_{attempt}")
        fresh.append(rebuild(bench, store, engine, workers, bench.dates.start, f"fresh{attempt}"))
        bench.measured(store, engine, workers, "full rebuild on a fresh store", fresh[-1])
        if attempt < bench.repeats - 1:
            bench.discard(store)
    sizes, backups = [store.size_bytes()], [store.backup_bytes()]
    replacing = []
    for attempt in range(bench.repeats):
        replacing.append(rebuild(bench, store, engine, workers, bench.dates.start, f"again{attempt}"))
        sizes.append(store.size_bytes())
        backups.append(store.backup_bytes())
        bench.measured(store, engine, workers, "full rebuild replacing rows", replacing[-1])
    rows = [
        row("full_fresh", store, engine, workers, fresh, label=f"full {years} RebuildFrom, fresh store"),
        row("full_replacing", store, engine, workers, replacing,
            label=f"full {years} RebuildFrom replacing rows ({_rebuilds(bench.repeats)})"),
        {"job": "size", "store": store.kind, "engine": engine, "workers": workers,
         "label": f"store size after 1 and {len(sizes)} full rebuilds",
         "sizes_mb": [round(size / 2**20, 1) for size in sizes],
         # The backup table a rebuild built aside keeps (one per store, by design): counted in the
         # sizes, left out of the bloat goal, which is about growth from rebuild to rebuild.
         "backup_mb": [round(size / 2**20, 1) for size in backups]},
    ]
    return rows, store


def last_13_sessions(bench: Bench, store: BenchStore, engine: str, workers: int) -> dict[str, Any]:
    """13-session RebuildFroms on a store whose indicators are complete (new run id each)."""
    runs = []
    for attempt in range(bench.repeats):
        runs.append(rebuild(bench, store, engine, workers, bench.dates.rebuild_13, f"last13-{attempt}"))
        bench.measured(store, engine, workers, "13-session rebuild", runs[-1])
    return row("rebuild_13", store, engine, workers, runs, label="13-session RebuildFrom")


def raw_floor(bench: Bench, base: BenchStore, batch: int) -> dict[str, Any]:
    """bench/floor.py on fresh copies of the backfilled store: computation and bulk write only."""
    runs = []
    for attempt in range(bench.repeats):
        store = bench.copy(base, f"floor_{attempt}")
        command = [sys.executable, str(HERE / "floor.py"), store.url, str(bench.dates.start), "--batch", str(batch)]
        result = measure_command(command, bench.directory, luigi_env(bench.cfg(store)), grep=FLOOR_LINE)
        result.update(json.loads(result.pop("matched")[-1][len(FLOOR_LINE):]))
        runs.append(result)
        bench.say(f"{store.kind}: raw floor {result['seconds']} s, {result['peak_mb']} MB")
        bench.discard(store)
    return row("floor", store, "numpy", None, runs,
               label=f"raw floor of a full rebuild (numpy kernels + bulk write of {batch} symbols, no Luigi)")


def _rebuilds(repeats: int) -> str:
    return "the 2nd rebuild" if repeats == 1 else f"rebuilds 2 to {repeats + 1}"
