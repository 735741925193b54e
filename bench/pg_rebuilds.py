"""PostgreSQL rebuilds, repeated: time, peak memory and database size after each (issue 12).

Builds (once, `--backfill`) or clones a template database holding a demo backfill, then runs, each
as its own `luigi` process: N full-history RebuildFrom runs (each a new --run-id, so each replaces
every indicator row the previous one wrote), then 13-session RebuildFrom runs with --workers 1 and 2.
After each full rebuild it records pg_database_size and the bulk tables' pg_total_relation_size.

    python bench/pg_rebuilds.py --template pgreb_tpl --backfill        # build the template (minutes)
    python bench/pg_rebuilds.py --template pgreb_tpl --database pgreb_x --full 5 --short 3

Which stockpipe runs is whatever the `luigi` subprocesses import: set PYTHONPATH to compare trees.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import luigi_cfg, measure  # noqa: E402


def admin_connection(url: str):
    import psycopg2

    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection


def sizes(admin_url: str, database: str) -> dict:
    import psycopg2

    connection = psycopg2.connect(admin_url.rsplit("/", 1)[0] + f"/{database}")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database()), pg_total_relation_size('bars'), "
                           "pg_total_relation_size('indicators'), pg_relation_size('indicators'), "
                           "(SELECT count(*) FROM indicators)")
            db, bars, indicators, indicators_heap, rows = cursor.fetchone()
    finally:
        connection.close()
    mb = 1024 * 1024
    return {"database_mb": round(db / mb), "bars_total_mb": round(bars / mb), "indicators_total_mb": round(indicators / mb),
            "indicators_heap_mb": round(indicators_heap / mb), "indicator_rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="database holding a backfill (built by --backfill)")
    parser.add_argument("--database", help="throwaway database cloned from the template")
    parser.add_argument("--backfill", action="store_true", help="build the template and stop")
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--end", default="2025-10-10")
    parser.add_argument("--full", type=int, default=3, help="full-history rebuilds in a row")
    parser.add_argument("--short", type=int, default=3, help="13-session rebuilds per --workers value")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", default=str(HERE / "out"))
    options = parser.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from stockpipe import trading_calendar

    end = dt.date.fromisoformat(options.end)
    start = trading_calendar.sessions_back("XNYS", end, 252 * options.years - 1)
    rebuild_13 = trading_calendar.sessions_back("XNYS", end, 12)
    database = options.template if options.backfill else options.database
    directory = Path(options.out) / database
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    admin = admin_connection(options.pg_admin)
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if options.backfill:
            cursor.execute(f'CREATE DATABASE "{database}"')
        else:
            cursor.execute(f'CREATE DATABASE "{database}" TEMPLATE "{options.template}"')
    store_url = options.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + f"/{database}"
    luigi_cfg(directory, store_url, options.tickers)
    figures: dict = {"database": database, "pythonpath": os.environ.get("PYTHONPATH"), "loadavg_start": os.getloadavg()}
    if options.backfill:
        figures["backfill"] = measure(directory, "Backfill", "--start-date", str(start), "--end-date", str(end))
        with admin.cursor() as cursor:
            cursor.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s', (database,))
        print(json.dumps(figures, indent=2))
        return
    figures["before"] = sizes(options.pg_admin, database)
    figures["full"] = []
    for attempt in range(1, options.full + 1):
        result = measure(directory, "RebuildFrom", "--start-date", str(start), "--run-id", f"full{attempt}")
        result.update(sizes(options.pg_admin, database), loadavg=os.getloadavg()[0])
        figures["full"].append(result)
        print(json.dumps(result), file=sys.stderr)
    for workers in (1, 2):
        runs = []
        for attempt in range(1, options.short + 1):
            result = measure(directory, "RebuildFrom", "--start-date", str(rebuild_13), "--run-id", f"w{workers}-{attempt}",
                             workers=workers)
            result["loadavg"] = os.getloadavg()[0]
            runs.append(result)
            print(json.dumps(result), file=sys.stderr)
        figures[f"rebuild_13_days_workers_{workers}"] = runs
    figures["after"] = sizes(options.pg_admin, database)
    figures["loadavg_end"] = os.getloadavg()
    print(json.dumps(figures, indent=2))
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
