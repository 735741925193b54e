"""Benchmark stockpipe through its real tasks and the real `luigi` command, on both stores.

For each store (DuckDB, PostgreSQL) it loads a demo universe (2,500 symbols x 10 years) with
Backfill, then measures, with each engine and with `--workers 1` and `2`:

- a full-history RebuildFrom on a freshly loaded store, and again when it replaces the rows of
  earlier rebuilds (each fresh run on its own copy of the loaded store);
- the raw floor of a full rebuild: the numpy kernels and the store's bulk write, no Luigi;
- a 13-session RebuildFrom;
- Daily for the sessions after the history (the first on a store separately: it writes the whole
  replica), with the Replicate step's seconds;
- what the store takes on disk after the first and after the last full rebuild.

Every figure is the median of `--repeats` runs: wall seconds (process start included) and the peak
memory of the whole process tree (Luigi's forked workers, a Spark JVM; see bench/measure.py). It
prints one table (Markdown: it is the README's figures table) with issue 12's goal beside each
figure, or JSON with `--json`. Progress goes to stderr.

    python bench/benchmark.py                                   # everything, ~30 min on 2 quiet cores
    python bench/benchmark.py --tickers 200 --years 2 --repeats 1   # a quick check
    python bench/benchmark.py --stores duckdb --workers 2 --only rebuild_13,daily
    python bench/benchmark.py --engines numpy,spark --json > figures.json

Each run works under its own `--name` (a directory bench/out/NAME/ and PostgreSQL databases
stockpipe_NAME_*), so several people can run it at once; `--keep` keeps them, and reuses the
loaded store of a run with the same --name, size and end date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path above
    DEFAULT_PG_ADMIN, HERE, Bench, Dates, backfilled, check_postgres, luigi_cfg, measure, row, run_report, runs_dir,
)

# Other bench scripts import these from here.
__all__ = ["luigi_cfg", "measure", "run_report", "runs_dir"]

STORES = ("duckdb", "postgres")
ENGINES = ("numpy", "spark")
JOBS = ("floor", "full", "rebuild_13", "daily")
ORDER = ("backfill", "floor", "full_fresh", "full_replacing", "size", "rebuild_13", "daily_first", "daily")


def bench_store(kind: str, options: argparse.Namespace, dates: Dates) -> list[dict[str, Any]]:
    from daily import dailies
    from rebuild import full_rebuilds, last_13_sessions, raw_floor, rebuild

    bench = Bench(options.out / kind, options.tickers, options.years, dates, options.repeats,
                  options.spark_master, options.keep)
    bench.directory.mkdir(parents=True, exist_ok=True)
    base, backfill = backfilled(bench, kind, options.pg_admin, options.pg_prefix)
    rows = [row("backfill", base, "numpy", 1, [backfill], label="Backfill (loads the store)")] if backfill else []
    try:
        if "floor" in options.only:
            rows.append(raw_floor(bench, base, options.floor_batch))
        on_rebuilt_store = {"full", "rebuild_13", "daily"} & set(options.only)
        for engine in options.engines if on_rebuilt_store else []:
            for workers in options.workers:
                if "full" in options.only:
                    found, work = full_rebuilds(bench, base, engine, workers)
                    rows += found
                else:  # the other figures need a store whose indicators are complete
                    work = bench.copy(base, f"{engine}_w{workers}")
                    rebuild(bench, work, engine, workers, dates.start, "unmeasured")
                try:
                    if "rebuild_13" in options.only:
                        rows.append(last_13_sessions(bench, work, engine, workers))
                    if "daily" in options.only:
                        rows += dailies(bench, work, engine, workers)
                finally:
                    bench.discard(work)
    finally:
        bench.discard_all()
        if not options.keep:
            bench.discard(base)
            shutil.rmtree(bench.directory, ignore_errors=True)
    return rows


def figure(r: dict[str, Any]) -> str:
    if r["job"] == "size":
        text = " → ".join(_mb(mb) for mb in (r["sizes_mb"][0], r["sizes_mb"][-1]))
        backup = (r.get("backup_mb") or [0])[-1]
        return text + (f" (of which the backup table {_mb(backup)})" if backup else "")
    text = f"{r['seconds']:.2f} s, {_mb(r['peak_mb'])}"
    if r.get("replicate_seconds") is not None:
        text += f" (Replicate {r['replicate_seconds']:.2f} s)"
    if r.get("spark"):
        text += f" (Spark: session {r['spark']['session_start']:.1f} s, job {r['spark']['job']:.1f} s)"
    return text


def _mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def table(document: dict[str, Any]) -> str:
    machine = document["machine"]
    lines = [
        f"{document['symbols']:,} demo symbols × {document['sessions']:,} sessions, median of {document['repeats']} "
        f"(wall seconds with process start; peak memory of the process tree), {machine['cpus']} cores, "
        f"load average {machine['load_average_before']:.1f} before / {machine['load_average_after']:.1f} after, "
        f"{document['date']}",
        "",
        "| job | store | engine | workers | figure | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    verdict = {True: "yes", False: "**no**", None: "—"}
    for r in document["rows"]:
        lines.append(f"| {r['label']} | {r['store']} | {r['engine']} | {r['workers'] or '—'} | {figure(r)} | "
                     f"{r['goal'] or '—'} | {verdict[r['met']]} |")
    if not document["reference_size"]:
        lines += ["", "Absolute goals are for 2,500 symbols × 10 years: at this size only the relative ones are "
                  "judged."]
    return "\n".join(lines)


def _list(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        wrong = [item for item in items if item not in choices]
        if wrong or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(choices)}")
        return items
    return parse


def _workers(text: str) -> list[int]:
    try:
        counts = sorted({int(item) for item in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts such as 1,2")
    return counts


def options_of(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", "--store", type=_list(STORES), default=list(STORES), help="duckdb,postgres (both)")
    parser.add_argument("--engines", type=_list(ENGINES), default=["numpy"],
                        help="numpy (default), spark, or numpy,spark")
    parser.add_argument("--workers", type=_workers, default=[1, 2], help="luigi --workers counts to measure (1,2)")
    parser.add_argument("--only", type=_list(JOBS), default=list(JOBS), help=f"some of {','.join(JOBS)} (all)")
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2025, 10, 10), help="last loaded session")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported (3)")
    parser.add_argument("--floor-batch", type=int, default=500, help="symbols a transaction in the raw floor (500)")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--name", default=f"bench{os.getpid()}", help="names this run's directory and databases")
    parser.add_argument("--out", type=Path, help="working directory (bench/out/NAME)")
    parser.add_argument("--pg-admin", default=DEFAULT_PG_ADMIN, help="a PostgreSQL URL allowed to create databases")
    parser.add_argument("--pg-prefix", help="prefix of this run's database names (stockpipe_NAME)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and files; reuse a matching loaded store")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    options = parser.parse_args(argv)
    if options.repeats < 1 or options.tickers < 100 or options.years < 1:
        parser.error("--repeats and --years must be at least 1, --tickers at least 100 (min_symbols)")
    options.out = (options.out or HERE / "out" / options.name).resolve()
    options.pg_prefix = (options.pg_prefix or f"stockpipe_{options.name}").lower().replace("-", "_")
    return options


def main(argv: list[str] | None = None) -> None:
    options = options_of(argv)
    if "postgres" in options.stores:
        check_postgres(options.pg_admin)
    dates = Dates.of(options.end, options.years, dailies=options.repeats + 1)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    try:
        for kind in options.stores:
            rows += bench_store(kind, options, dates)
    finally:
        if not options.keep:
            shutil.rmtree(options.out, ignore_errors=True)

    from goals import judge

    rows.sort(key=lambda r: (STORES.index(r["store"]), ENGINES.index(r["engine"]), ORDER.index(r["job"]),
                             r["workers"] or 0))
    judge(rows, options.tickers, options.years)
    document = {
        "symbols": options.tickers, "sessions": 252 * options.years, "from": str(dates.start), "to": str(dates.end),
        "repeats": options.repeats, "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "reference_size": (options.tickers, options.years) == (2500, 10),
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()[0]},
        "rows": rows,
    }
    if options.json:
        print(json.dumps(document, indent=2))
    else:
        print(table(document))


if __name__ == "__main__":
    main()
