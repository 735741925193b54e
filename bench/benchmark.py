"""Benchmark stockpipe through its real tasks and the real `luigi` command.

Builds a demo store of 2,500 symbols x 10 years (Backfill), then times a full-history RebuildFrom, a
13-session RebuildFrom and one Daily for the next session, each as its own `luigi` process
(wall seconds include process start), and prints the figures as JSON.

    python bench/benchmark.py                      # DuckDB in bench/out/
    python bench/benchmark.py --store postgres     # a fresh PostgreSQL database (see --pg-admin)
    python bench/benchmark.py --tickers 500 --years 3   # a quicker, smaller run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {
    "duckdb": {"rebuild_13_days": 3.0, "rebuild_full": 8.0, "daily_indicators": 2.0},
    "postgres": {"rebuild_13_days": 4.0, "rebuild_full": 22.0},
}


def luigi_cfg(directory: Path, store_url: str, tickers: int) -> Path:
    path = directory / "luigi.cfg"
    path.write_text(
        "[core]\nautoload_range = false\n[worker]\ncache_task_completion = true\n"
        "[retcode]\ntask_failed = 30\nscheduling_error = 35\nunhandled_exception = 40\nmissing_data = 20\n"
        f"[stockpipe]\nstore_url = {store_url}\nsource = demo\ndata_dir = {directory / 'data'}\n"
        f"chunk_size = 50\nmin_symbols = 100\nbackfill_batch = 250\n[demo]\ntickers = {tickers}\n"
    )
    return path


WORKERS = ["--workers", "1"]


def runs_dir(directory: Path, store_url: str) -> Path:
    """Where a store's run directories (backups, Spark's staged rows) live: its own directory under data_dir."""
    sys.path.insert(0, str(HERE.parent))
    from stockpipe.config import store_slug

    return directory / "data" / store_slug(store_url) / "runs"


def run_report(store_url: str, plan_id: str) -> dict | None:
    """A run's final report as the pipeline stored it (None while unfinished)."""
    sys.path.insert(0, str(HERE.parent))
    from stockpipe.services.rebuild import final_report
    from stockpipe.store import open_store

    store = open_store(store_url)
    try:
        return final_report(store, plan_id)
    finally:
        store.close()  # a DuckDB file is the next luigi command's to open


def measure(directory: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
    env["LUIGI_CONFIG_PATH"] = str(directory / "luigi.cfg")
    command = [sys.executable, str(HERE / "measure.py"), "luigi", "--module", "stockpipe", *args, "--local-scheduler", *WORKERS]
    result = json.loads(subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, check=True).stdout)
    if result["returncode"] != 0:
        raise SystemExit(f"luigi {' '.join(args)} failed:\n{result['stderr_tail']}")
    result.pop("stderr_tail")
    result.pop("returncode")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--end", default="2025-10-10", help="last backfilled session")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep bench/out and the database afterwards")
    parser.add_argument("--workers", type=int, default=1, help="luigi --workers for the rebuilds and Daily")
    options = parser.parse_args()
    WORKERS[1] = str(options.workers)

    sys.path.insert(0, str(HERE.parent))
    from stockpipe import trading_calendar

    end = dt.date.fromisoformat(options.end)
    start = trading_calendar.sessions_back("XNYS", end, 252 * options.years - 1)
    rebuild_13 = trading_calendar.sessions_back("XNYS", end, 12)
    next_day = trading_calendar.sessions("XNYS", end + dt.timedelta(days=1), end + dt.timedelta(days=10))[0]

    directory = HERE / "out" / options.store
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    database = None
    if options.store == "duckdb":
        store_url = f"duckdb:///{directory / 'bench.duckdb'}"
    else:
        import psycopg2

        database = "stockpipe_bench"
        admin = psycopg2.connect(options.pg_admin)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{database}"')
        store_url = options.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + f"/{database}"
    luigi_cfg(directory, store_url, options.tickers)

    figures: dict = {"store": options.store, "workers": options.workers, "symbols": options.tickers, "sessions": 252 * options.years,
                     "from": str(start), "to": str(end), "cpus": os.cpu_count()}
    figures["backfill"] = measure(directory, "Backfill", "--start-date", str(start), "--end-date", str(end))
    figures["rebuild_full"] = measure(directory, "RebuildFrom", "--start-date", str(start))
    figures["rebuild_13_days"] = measure(directory, "RebuildFrom", "--start-date", str(rebuild_13))
    figures["rebuild_13_days_again"] = measure(directory, "RebuildFrom", "--start-date", str(rebuild_13), "--run-id", "again")
    figures["daily"] = measure(directory, "Daily", "--date", str(next_day))
    report = run_report(store_url, f"daily-{next_day}")
    figures["daily_indicators"] = {"seconds": report["seconds"], "note": "plan to last chunk, inside the Daily run"}
    for name in ("rebuild_full", "rebuild_13_days"):
        plan_id = f"rebuild-{start}" if name == "rebuild_full" else f"rebuild-{rebuild_13}"
        finished = run_report(store_url, plan_id)
        figures[name]["rows_saved"] = finished["saved_rows"]
        figures[name]["chunks"] = finished["chunks"]
    figures["targets_seconds"] = TARGETS[options.store]
    print(json.dumps(figures, indent=2))
    if not options.keep:
        shutil.rmtree(directory, ignore_errors=True)
        if database:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
