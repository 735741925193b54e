"""Benchmark the daily report: 2,500 demo symbols and a 50-row watchlist (target: under 10 s).

Builds a demo store through the real `luigi ... Daily` (history of `--sessions` sessions per symbol;
the watchlist rules are replaced by one rule that always takes `--watchlist` symbols), then prints
as JSON: the wall seconds and peak RSS of `stockpipe report --date D` as its own process (Python
start and imports included), and the seconds of each phase of `build_report` in this process.

    python bench/report.py                      # DuckDB in bench/out/report/
    python bench/report.py --store postgres     # a fresh PostgreSQL database
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_SECONDS = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--watchlist", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=300, help="history per symbol (6 months of charts need ~130)")
    parser.add_argument("--date", default="2025-10-10")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/report afterwards (DuckDB)")
    parser.add_argument("--reuse", action="store_true", help="time the report again on a store kept by --keep")
    options = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from common import luigi_cfg, measure

    directory = HERE / "out" / "report"
    if options.reuse and options.store != "duckdb":
        raise SystemExit("--reuse works with the DuckDB store only")
    if not options.reuse:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    database = None
    if options.store == "duckdb":
        store_url = f"duckdb:///{directory / 'store.duckdb'}"
    else:
        import psycopg2

        database = f"stockpipe_bench_report_{os.getpid()}"
        admin = psycopg2.connect(options.pg_admin, connect_timeout=5)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{database}"')
        admin.close()
        store_url = options.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{database}"
    try:
        cfg = directory / "luigi.cfg"
        daily, build_seconds = None, None
        if not options.reuse:
            luigi_cfg(directory, store_url, options.tickers)
            rule = [{"name": "bench_top_volume", "priority": 1, "conditions": ["close > 0"],
                     "order_by": "volume desc", "limit": options.watchlist}]
            with cfg.open("a") as handle:
                handle.write(f"backfill_sessions = {options.sessions}\n[watchlist]\nrules = {json.dumps(rule)}\n")
            started = time.perf_counter()
            daily = measure(directory, "Daily", "--date", options.date)
            build_seconds = round(time.perf_counter() - started, 1)

        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
        env.update(LUIGI_CONFIG_PATH=str(cfg), PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]))
        command = [sys.executable, str(HERE / "measure.py"), sys.executable, "-m", "stockpipe.cli", "report",
                   "--date", options.date]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli = json.loads(subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, check=True).stdout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cli.pop("returncode") != 0:
            raise SystemExit(f"stockpipe report failed:\n{cli['stderr_tail']}")
        cli.pop("stderr_tail")
        # CPU seconds do not grow when other processes share the cores (wall seconds do).
        cli["cpu_seconds"] = round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 3)
        cli["load_average_1m"] = os.getloadavg()[0]

        phases = in_process(store_url, dt.date.fromisoformat(options.date), directory / "data")
        report = directory / "data" / "reports" / f"{options.date}.html"
        print(json.dumps({
            "store": options.store, "tickers": options.tickers, "watchlist_rows": phases.pop("watchlist_rows"),
            "store_built_seconds": build_seconds, "daily_with_report": daily,
            "stockpipe_report_command": cli, "build_report_phases_seconds": phases,
            "report_mb": round(report.stat().st_size / 1e6, 2), "target_seconds": TARGET_SECONDS,
            "met": cli["seconds"] < TARGET_SECONDS,
        }, indent=2))
    finally:
        if not (options.keep or options.reuse):
            shutil.rmtree(directory, ignore_errors=True)
            if database:
                import psycopg2

                admin = psycopg2.connect(options.pg_admin, connect_timeout=5)
                admin.autocommit = True
                admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                admin.close()


class _Phase:
    """Wall and CPU seconds of a block, stored under `name`."""

    def __init__(self, phases: dict, name: str):
        self.phases, self.name = phases, name

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *_):
        self.phases[self.name] = {"wall": round(time.perf_counter() - self.wall, 3),
                                  "cpu": round(time.process_time() - self.cpu, 3)}


def in_process(store_url: str, day: dt.date, data_dir: Path) -> dict:
    """Seconds of each phase of the report, measured by timing the service's own steps."""
    phases: dict = {}
    with _Phase(phases, "imports"):
        from stockpipe import charts
        from stockpipe.services import report
        from stockpipe.store import open_store
    store = open_store(store_url)
    with _Phase(phases, "read_chart_data"):
        watchlist = store.read_watchlist(since=day, until=day).to_pylist()
        frames = report.chart_frames(store, [r["symbol"] for r in watchlist], day, 6)
    with _Phase(phases, "draw_charts"):
        chart = charts.SymbolChart()
        for frame in frames.values():
            chart.render(frame)
        chart.close()
    with _Phase(phases, "health"):
        report.health(store, day, "XNYS", 30)
    with _Phase(phases, "run_summary"):
        report.run_summary(store, day, data_dir, 10)
    with _Phase(phases, "whole_build_report"):
        stats = report.build_report(store, day, data_dir, calendar="XNYS")
    phases["watchlist_rows"] = stats["watchlist"]
    return phases


if __name__ == "__main__":
    main()
