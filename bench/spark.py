"""Numpy and Spark indicator engines side by side, through the real `luigi` command.

Builds (or reuses, with --keep) a demo DuckDB store of N symbols x Y years with Backfill, then runs a
13-session and a full-history RebuildFrom with each engine (`--run-id` per engine, so both replace
the same rows), each as its own `luigi` process: wall seconds include process and Spark start-up.
For Spark it also prints where the time went (bar export, session start, the job itself, then the
chunk tasks storing the staged rows), from the engine's log line.

    python bench/spark.py                              # 2,500 symbols x 10 years, master local[2]
    python bench/spark.py --tickers 20000 --master local[2]
    python bench/spark.py --tickers 300 --years 3      # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchmark import run_report, runs_dir  # noqa: E402 - run reports from the store, run directories on disk


def luigi_cfg(directory: Path, store_url: str, tickers: int, engine: str, master: str) -> None:
    (directory / "luigi.cfg").write_text(
        "[core]\nautoload_range = false\n[worker]\ncache_task_completion = true\n"
        f"[stockpipe]\nstore_url = {store_url}\nsource = demo\ndata_dir = {directory / 'data'}\n"
        f"chunk_size = 50\nmin_symbols = 100\nbackfill_batch = 250\nengine = {engine}\n[demo]\ntickers = {tickers}\n"
        f"[spark]\nmaster = {master}\ndriver_memory = 2g\nconf = spark.sql.shuffle.partitions=4\n"
        "[timeouts]\nrebuild = 3600\n"
    )


def run(directory: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
    env["LUIGI_CONFIG_PATH"] = str(directory / "luigi.cfg")
    command = [sys.executable, str(HERE / "measure.py"), "--grep", "spark: staged", "luigi", "--module", "stockpipe",
               *args, "--local-scheduler", "--workers", "1"]
    result = json.loads(subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, check=True).stdout)
    if result["returncode"] != 0:
        raise SystemExit(f"luigi {' '.join(args)} failed:\n{result['stderr_tail']}")
    figures = {"seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"]}
    for line in result["matched"]:
        found = re.search(r"in ([\d.]+) s \(export ([\d.]+) s, session ([\d.]+) s, job ([\d.]+) s\)", line)
        if found:
            prepare, export, session, job = map(float, found.groups())
            figures["spark"] = {"prepare": prepare, "export_bars": export, "session_start": session, "job": job,
                                "chunks_and_luigi": round(result["seconds"] - prepare, 3)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--end", default="2025-10-10", help="last backfilled session")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--only", choices=["13", "full"], help="just one of the two rebuilds")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) bench/out/spark-N-Y")
    options = parser.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from stockpipe import trading_calendar

    end = dt.date.fromisoformat(options.end)
    start = trading_calendar.sessions_back("XNYS", end, 252 * options.years - 1)
    rebuild_13 = trading_calendar.sessions_back("XNYS", end, 12)
    directory = HERE / "out" / f"spark-{options.tickers}-{options.years}"
    store_url = f"duckdb:///{directory / 'bench.duckdb'}"
    figures: dict = {"symbols": options.tickers, "sessions": 252 * options.years, "master": options.master,
                     "cpus": os.cpu_count(), "store": "duckdb", "workers": 1}
    if not (options.keep and (directory / "bench.duckdb").exists()):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        luigi_cfg(directory, store_url, options.tickers, "numpy", options.master)
        figures["backfill"] = run(directory, "Backfill", "--start-date", str(start), "--end-date", str(end))
    shutil.rmtree(runs_dir(directory, store_url), ignore_errors=True)
    # Full history first: after a Backfill no indicator is stored, so a 13-session rebuild run first
    # would heal every symbol from its first bar, i.e. be a full rebuild too.
    rebuilds = {"rebuild_full": start, "rebuild_13_days": rebuild_13}
    if options.only:
        rebuilds = {k: v for k, v in rebuilds.items() if ("13" in k) == (options.only == "13")}
    for name, first in rebuilds.items():
        for engine in ("numpy", "spark"):
            luigi_cfg(directory, store_url, options.tickers, engine, options.master)
            # A new run id per measurement: each engine replaces the same rows from scratch.
            run_id = f"{engine}-{dt.datetime.now():%H%M%S}"
            figures.setdefault(name, {})[engine] = run(directory, "RebuildFrom", "--start-date", str(first), "--run-id", run_id)
            report = run_report(store_url, f"rebuild-{first}-{run_id}")
            figures[name][engine]["rows_saved"] = report["saved_rows"]
        figures[name]["spark_over_numpy"] = round(figures[name]["spark"]["seconds"] / figures[name]["numpy"]["seconds"], 2)
    print(json.dumps(figures, indent=2))
    if not options.keep:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
