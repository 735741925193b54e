"""`stockpipe` command line: what operators used to check with hand-written SQL.

    stockpipe status [--since DATE]    per-date coverage of bars and indicators, gaps flagged,
                                       rebuilds in progress, the last ingests' data quality
    stockpipe watchlist [--date DATE]  a date's watchlist as a table (default: the latest)
    stockpipe restore BACKUP           put back the rows a rebuild replaced
    stockpipe init-db                  create or upgrade the schema
    stockpipe assist [--workers N]     lend this machine's workers to luigid until stopped
    stockpipe report [--date DATE]     write the day's HTML report (default: the latest watchlist)
    stockpipe cleanup [--dry-run]      apply [cleanup] retention; --dry-run lists what would go
    stockpipe import-legacy URL        copy the old system's database (DuckDB file or PostgreSQL URL)

The store and data_dir come from luigi.cfg (and STOCKPIPE_STORE_URL), like the tasks'.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from stockpipe import config, trading_calendar
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store import Store, StoreError, open_store


def coverage(store: Store, since: dt.date, calendar: str) -> list[dict[str, Any]]:
    """Per date since `since`: bar and indicator symbols and rows, with problems named."""
    table = store.session_counts(since).to_pylist()
    by_date = {row["date"]: row for row in table}
    last = max(by_date) if by_date else since
    active = len(store.active_symbols())
    rows = []
    for day in sorted(set(trading_calendar.sessions(calendar, since, last)) | set(by_date)):
        row = {k: (v or 0) for k, v in by_date.get(day, {"date": day}).items()}
        row["date"] = day
        problems = []
        if not row.get("bar_rows"):
            problems.append("no bars on a trading day")
        elif active and row["bar_symbols"] < 0.9 * active:
            problems.append(f"bars for {row['bar_symbols']}/{active} active symbols")
        if row.get("bar_rows") and row.get("indicator_symbols", 0) < row["bar_symbols"]:
            problems.append(f"{row['bar_symbols'] - row.get('indicator_symbols', 0)} symbols without indicators")
        if row.get("bar_rows", 0) > row.get("bar_symbols", 0) or row.get("indicator_rows", 0) > row.get("indicator_symbols", 0):
            problems.append("duplicate (symbol, date) rows")
        row["problems"] = "; ".join(problems)
        rows.append(row)
    return rows


def rebuilds(store: Store, data_dir: Path) -> list[dict[str, Any]]:
    found = []
    for plan_file in sorted((Path(data_dir) / "runs").glob(f"*/{rebuild_service.PLAN_FILE}")):
        directory = plan_file.parent
        plan = rebuild_service.load_plan(directory)
        report = rebuild_service.progress_report(store, plan, directory)
        finished = (directory / rebuild_service.REPORT_FILE).exists()
        found.append({
            "run": plan.plan_id,
            "from": plan.start_date,
            "state": "finished" if finished and not report["chunks_pending"] else "in progress",
            "chunks done": f"{report['chunks_done']}/{report['chunks']}",
            "pending": _abbreviate(report["chunks_pending"]),
            "failed": _abbreviate([f["chunk_id"] for f in report["failed_chunks"] if not f["redone"]]),
            "saved rows": report["saved_rows"],
        })
    return found


def ingests(store: Store, limit: int = 5) -> list[dict[str, Any]]:
    markers = [m for m in store.markers(prefix="IngestDate/")][-limit:]
    return [
        {
            "date": m["marker_id"].split("/", 1)[1],
            "requested": m["stats"].get("symbols_requested"),
            "stored": m["stats"].get("bars_stored"),
            "rejected": m["stats"].get("bars_rejected"),
            "reasons": ", ".join(f"{k} {v}" for k, v in m["stats"].get("rejected_by_reason", {}).items()),
            "failed fetches": m["stats"].get("failed_fetches"),
            "splits": ", ".join(m["stats"].get("splits_detected", [])),
        }
        for m in markers
    ]


def _abbreviate(values: Sequence[int], most: int = 12) -> str:
    shown = ", ".join(map(str, values[:most]))
    return shown + (f" (+{len(values) - most})" if len(values) > most else "")


def _print_table(title: str, rows: list[dict[str, Any]], out) -> None:
    print(f"\n{title}", file=out)
    if rows:
        print(tabulate(rows, headers="keys", tablefmt="simple", intfmt=","), file=out)
    else:
        print("  (none)", file=out)


def cmd_status(args, out) -> int:
    settings = config.stockpipe()
    store = open_store(config.store_url())
    _, last, count = store.bars_extent()
    since = args.since or (trading_calendar.sessions_back(settings.calendar, last, 9) if last else dt.date.today())
    print(f"store {store.redacted_url()}: {count:,} bars, latest {last or '-'}", file=out)
    rows = coverage(store, since, settings.calendar)
    _print_table(f"coverage since {since}", rows, out)
    _print_table("rebuild and daily runs", rebuilds(store, config.data_dir()), out)
    _print_table("recent ingests", ingests(store), out)
    return 1 if any(r["problems"] for r in rows) else 0


def cmd_watchlist(args, out) -> int:
    store = open_store(config.store_url())
    day = args.date
    if day is None:
        day = _latest_scan_date(store)
        if day is None:
            print("no watchlist yet: run `luigi --module stockpipe Daily --date ...`", file=out)
            return 1
    rows = store.read_watchlist(since=day, until=day).to_pylist()
    table = [
        {"#": i, "symbol": r["symbol"], "name": r["name"], "reason": r["scan_reason"], "pri": r["priority"],
         "tier": r["market_cap_tier"], "cap ($B)": round(r["market_cap"] / 1e9, 1) if r["market_cap"] else None,
         "close": r["close"], "volume": r["volume"],
         "rsi": None if r["rsi_14"] is None else round(r["rsi_14"], 1),
         "bb pos": None if r["bb_position"] is None else round(r["bb_position"], 2),
         "vol x": None if r["volume_ratio"] is None else round(r["volume_ratio"], 2)}
        for i, r in enumerate(rows, 1)
    ]
    _print_table(f"watchlist {day}: {len(rows)} symbols", table, out)
    return 0


def cmd_restore(args, out) -> int:
    store = open_store(config.store_url())
    result = rebuild_service.restore(store, Path(args.backup))
    print(tabulate([result], headers="keys", tablefmt="simple", intfmt=","), file=out)
    return 0


def cmd_init_db(args, out) -> int:
    store = open_store(config.store_url())
    found, now = store.upgrade_schema()
    if found is None:
        print(f"created stockpipe schema version {now} in {store.redacted_url()}", file=out)
    elif found == now:
        print(f"{store.redacted_url()} is already at schema version {now}", file=out)
    else:
        print(f"upgraded {store.redacted_url()} from schema version {found} to {now}", file=out)
    return 0


def cmd_assist(args, out) -> int:
    """Lend this machine's workers to luigid: run any pending stockpipe task (e.g. rebuild chunks
    another machine scheduled) until stopped."""
    import luigi

    import stockpipe  # noqa: F401 - registers every task so the scheduler's work can be instantiated

    settings = luigi.configuration.get_config()
    if not settings.has_section("worker"):
        settings.add_section("worker")
    settings.set("worker", "keep_alive", "true")  # an assistant waits for work instead of leaving
    # SIGTERM (kill, systemd) becomes Luigi's graceful stop: finish running tasks, take no new ones.
    import os
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))

    print(f"assisting luigid at {luigi.interface.core().scheduler_host}:{luigi.interface.core().scheduler_port} "
          f"with {args.workers} worker(s); Ctrl-C to stop", file=out, flush=True)
    ok = luigi.build([], workers=args.workers, assistant=True, local_scheduler=False)
    return 0 if ok else 1


def cmd_report(args, out) -> int:
    from stockpipe.services import report as report_service

    store = open_store(config.store_url())
    day = args.date or _latest_scan_date(store)
    if day is None:
        print("no watchlist yet: run `luigi --module stockpipe Daily --date ...`", file=out)
        return 1
    settings = config.report()
    stats = report_service.build_report(
        store, day, config.data_dir(), calendar=config.stockpipe().calendar, sessions=settings.sessions,
        chart_months=settings.chart_months, slowest_chunks=settings.slowest_chunks,
    )
    print(f"{stats['path']}: {stats['charts']} charts, {stats['bytes'] / 1e6:.1f} MB, {stats['seconds']} s", file=out)
    return 0


def cmd_cleanup(args, out) -> int:
    from stockpipe.services import cleanup as cleanup_service

    settings = config.cleanup()
    result = cleanup_service.clean(
        open_store(config.store_url()), data_dir=config.data_dir(), replica_path=config.replica_path(),
        log_dir=Path(settings.log_dir), days=settings.days(), dry_run=args.dry_run,
    )
    rows = [{"kind": i["kind"], "path": i["path"], "MB": round(i["bytes"] / 1e6, 2), "days old": round(i["age_days"], 1),
             "why": i["reason"]} for i in result["items"]]
    _print_table("would be removed (dry run)" if args.dry_run else "removed", rows, out)
    if args.verbose:
        kept = [{"kind": i["kind"], "path": i["path"], "MB": round(i["bytes"] / 1e6, 2), "days old": round(i["age_days"], 1),
                 "why": i["reason"]} for i in result["kept_items"]]
        _print_table("kept", kept, out)
    verb = "would free" if args.dry_run else "freed"
    print(f"\n{len(rows)} path(s), {verb} {result['bytes_freed'] / 1e6:,.1f} MB ({result['bytes_freed']:,} bytes)", file=out)
    return 0


def _latest_scan_date(store: Store) -> dt.date | None:
    return store.query("SELECT max(scan_date) AS d FROM daily_watchlist").column("d")[0].as_py()


def cmd_import_legacy(args, out) -> int:
    from stockpipe.services import legacy

    store = open_store(config.store_url())
    print(f"importing {legacy.redact(args.url)} into {store.redacted_url()}", file=out, flush=True)
    with _progress_bar() as progress:
        summary = legacy.import_legacy(store, args.url, batch_size=args.batch_size, progress=progress)
    rows = [{"symbols added": summary["symbols_added"], "bars added": summary["bars_added"],
             "bars kept (already stored)": summary["bars_kept"], "watchlist rows added": summary["watchlist_rows_added"],
             "rejected": summary["rejected_count"], "first date": summary["first_date"], "last date": summary["last_date"],
             "seconds": summary["seconds"]}]
    _print_table("import summary (all runs of this import)", rows, out)
    rejected = summary["rejected"]
    if rejected:
        _print_table(f"rejected rows (never stored): {summary['rejected_count']}", [{k: r[k] for k in ("table", "symbol", "date", "reason")} for r in rejected[: args.show_rejected]], out)
        if summary["rejected_count"] > args.show_rejected:
            print(f"  ... {summary['rejected_count'] - args.show_rejected} more"
                  + (f", listed in {args.rejected_csv}" if args.rejected_csv else "; --rejected-csv FILE lists them"), file=out)
        if args.rejected_csv:
            import csv

            with open(args.rejected_csv, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["table", "symbol", "date", "reason"])
                writer.writeheader()
                writer.writerows(rejected)
    if summary["first_date"]:
        print(f"\nIndicators are not imported: recompute them exactly from the first imported date with\n"
              f"  luigi --module stockpipe RebuildFrom --start-date {summary['first_date']} --local-scheduler\n"
              f"(add --run-id import if a RebuildFrom of that date ran on this store before).", file=out)
    return 0


class _progress_bar:
    """A tqdm bar on a terminal (log lines printed above it); elsewhere (cron, CI, a pipe) one line per
    batch on stderr."""

    def __enter__(self):
        self._bar = self._redirect = None
        if sys.stderr.isatty():
            import logging

            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=100, file=sys.stderr, bar_format="{percentage:3.0f}%|{bar:30}| {elapsed}<{remaining} {desc}")
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("stockpipe")])
            self._redirect.__enter__()
        return self

    def __call__(self, percent: float, message: str) -> None:
        if self._bar is None:
            print(message, file=sys.stderr, flush=True)
            return
        self._bar.set_description_str(message, refresh=False)
        self._bar.update(percent - self._bar.n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._redirect.__exit__(*exc)
            self._bar.close()


def main(argv: Sequence[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="stockpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="coverage, gaps, rebuild progress and ingest quality")
    status.add_argument("--since", type=dt.date.fromisoformat, help="first date shown (default: the last 10 sessions)")
    status.set_defaults(run=cmd_status)
    watch = commands.add_parser("watchlist", help="a date's watchlist as a table (default: the latest)")
    watch.add_argument("--date", type=dt.date.fromisoformat)
    watch.set_defaults(run=cmd_watchlist)
    restore = commands.add_parser("restore", help="put back the rows saved before a rebuild")
    restore.add_argument("backup", help="data/runs/<run>/backup.parquet")
    restore.set_defaults(run=cmd_restore)
    init_db = commands.add_parser("init-db", help="create or upgrade the schema")
    init_db.set_defaults(run=cmd_init_db)
    assist = commands.add_parser("assist", help="run pending tasks from luigid (another machine's rebuild chunks)")
    assist.add_argument("--workers", type=int, default=1)
    assist.set_defaults(run=cmd_assist)
    report = commands.add_parser("report", help="write a date's HTML report to <data_dir>/reports/")
    report.add_argument("--date", type=dt.date.fromisoformat, help="default: the latest watchlist date")
    report.set_defaults(run=cmd_report)
    cleanup = commands.add_parser("cleanup", help="delete old run directories, backups, reports, replica copies, logs")
    cleanup.add_argument("--dry-run", action="store_true", help="list what would go and the space freed; delete nothing")
    cleanup.add_argument("--verbose", action="store_true", help="also list what is kept, and why")
    cleanup.set_defaults(run=cmd_cleanup)
    importer = commands.add_parser("import-legacy", help="copy the old system's symbols, bars and watchlist into the store")
    importer.add_argument("url", help="the old database: a DuckDB file (path or duckdb:///path) or a PostgreSQL URL")
    importer.add_argument("--batch-size", type=int, default=100, help="tickers per committed batch of bars (100)")
    importer.add_argument("--rejected-csv", help="write every rejected row (table, symbol, date, reason) to this CSV")
    importer.add_argument("--show-rejected", type=int, default=20, help="rejected rows printed (20)")
    importer.set_defaults(run=cmd_import_legacy)
    args = parser.parse_args(argv)
    try:
        return args.run(args, out)
    except (StoreError, RuntimeError, OSError, ValueError) as exc:
        print(f"stockpipe {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
