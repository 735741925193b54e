"""Numpy and Spark indicator engines side by side, through the real `luigi` command.

Builds (or reuses, with --keep) a demo store of N symbols x Y years with Backfill, then runs a
full-history and a 13-session RebuildFrom with each engine (`--run-id` per engine, so both replace
the same rows), each as its own `luigi` process: wall seconds include process and Spark start-up.
For Spark it also prints where the time went (bar export, session start, the job itself, then the
chunk tasks storing the staged rows), from the engine's log line.

    python bench/spark.py                              # 2,500 symbols x 10 years, DuckDB, master local[2]
    python bench/spark.py --tickers 20000 --master local[2]
    python bench/spark.py --tickers 300 --years 3      # a quick look
    python bench/spark.py --store postgres
    python bench/spark.py --keep --out /tmp/my-bench   # a store of your own, kept for the next run

`python bench/benchmark.py --engines numpy,spark` measures the Spark engine in the whole table
(both stores, 1 and 2 workers, medians) with the same logic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPARK_LINE = "spark: staged"  # the engine's log line saying where a run's preparation went
_PHASES = re.compile(r"in ([\d.]+) s \(export ([\d.]+) s, session ([\d.]+) s, job ([\d.]+) s")
_JOBS = re.compile(r"(\d+) jobs, writing staged rows ([\d.]+) s, driver peak RSS (\d+) MB")


def spark_phases(matched: list[str], seconds: float) -> dict | None:
    """Where a Spark run's time went, from the engine's `spark: staged ...` line (None without one)."""
    for line in matched:
        found = _PHASES.search(line)
        if found:
            prepare, export, session, job = map(float, found.groups())
            phases = {"prepare": prepare, "export_bars": export, "session_start": session, "job": job,
                      "chunks_and_luigi": round(seconds - prepare, 3)}
            more = _JOBS.search(line)
            if more:
                phases.update(jobs=int(more.group(1)), write_staged=float(more.group(2)),
                              driver_peak_rss_mb=int(more.group(3)))
            return phases
    return None


def main() -> None:
    from common import DEFAULT_PG_ADMIN, HERE, Bench, Dates, backfilled, check_postgres
    from rebuild import rebuild

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--end", default="2025-10-10", help="last backfilled session")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--only", choices=["13", "full"], help="just one of the two rebuilds")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) bench/out/spark-N-Y and its database")
    parser.add_argument("--pg-admin", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--out", type=Path, help="the store's directory (default bench/out/spark-N-Y/STORE); another "
                        "one lets two copies of the project measure side by side without sharing a store")
    options = parser.parse_args()

    name = f"spark-{options.tickers}-{options.years}"
    bench = Bench((options.out or HERE / "out" / name / options.store).resolve(), options.tickers, options.years,
                  Dates.of(dt.date.fromisoformat(options.end), options.years), repeats=1,
                  spark_master=options.master, keep=options.keep)
    bench.directory.mkdir(parents=True, exist_ok=True)
    if options.store == "postgres":
        check_postgres(options.pg_admin)
    base, backfill = backfilled(bench, options.store, options.pg_admin, f"stockpipe_{name}".replace("-", "_"))
    figures: dict = {"symbols": options.tickers, "sessions": 252 * options.years, "master": options.master,
                     "cpus": os.cpu_count(), "store": options.store, "workers": 1,
                     "load_average_1m": os.getloadavg()[0]}
    if backfill:
        figures["backfill"] = backfill
    # Each engine on its own copy of the backfilled store, so both rebuilds start from the same state:
    # on one shared store the second engine's full rebuild also backed up and deleted the first one's
    # 6.1M rows (~10 s more under load), which was counted against Spark.
    stores = {engine: bench.copy(base, f"engines-{engine}") for engine in ("numpy", "spark")}
    # Full history first: after a Backfill no indicator is stored, so a 13-session rebuild run first
    # would heal every symbol from its first bar, i.e. be a full rebuild too.
    rebuilds = {"rebuild_full": bench.dates.start, "rebuild_13_days": bench.dates.rebuild_13}
    if options.only:
        rebuilds = {k: v for k, v in rebuilds.items() if ("13" in k) == (options.only == "13")}
    try:
        for job, first in rebuilds.items():
            for engine, store in stores.items():
                # A new run id per measurement: each engine replaces the same rows from scratch.
                run_id = f"{engine}-{dt.datetime.now():%H%M%S}"
                figures.setdefault(job, {})[engine] = rebuild(bench, store, engine, 1, first, run_id)
                figures[job][engine]["load_average_1m"] = round(os.getloadavg()[0], 2)
            ratio = figures[job]["spark"]["seconds"] / figures[job]["numpy"]["seconds"]
            figures[job]["spark_over_numpy"] = round(ratio, 2)
    finally:
        for store in stores.values():
            bench.discard(store)
        if not options.keep:
            bench.discard(base)
            # bench/out/spark-N-Y holds the store kinds' directories; an --out directory is all ours.
            shutil.rmtree(bench.directory if options.out else bench.directory.parent, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
