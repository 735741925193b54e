"""`stockpipe` command line: what operators used to check with hand-written SQL.

    stockpipe status [--since DATE]    per-date coverage of bars and indicators, gaps flagged,
                                       rebuilds in progress, the last ingests' data quality
    stockpipe watchlist [--date DATE]  a date's watchlist as a table (default: the latest)
    stockpipe restore BACKUP           put back the rows a rebuild replaced
    stockpipe restore REPLICA.duckdb   fill an empty store (a damaged one moved aside) from the replica
    stockpipe init-db                  create or upgrade the schema
    stockpipe check [STORE]            read every table back; on failure, say what failed and how to recover
    stockpipe assist [--workers N]     lend this machine's workers to luigid until stopped
    stockpipe daily [--date DATE]      the Daily job for the session that has just closed (for cron)
    stockpipe report [--date DATE]     write the day's HTML report (default: the latest watchlist)
    stockpipe cleanup [--dry-run]      apply [cleanup] retention; --dry-run lists what would go
    stockpipe import-legacy URL        copy the old system's database (DuckDB file or PostgreSQL URL)

The store and data_dir come from luigi.cfg (and STOCKPIPE_STORE_URL), like the tasks'. Exit codes:
0 fine, 1 `status` found a problem or `watchlist` has no scan for the date, 2 a mistake named in
one line on stderr (a setting, a file, a date); `daily` exits as `luigi` does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from stockpipe import config, logs, markers, preflight, trading_calendar
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store import Store, StoreError, open_store


def coverage(store: Store, since: dt.date, calendar: str) -> list[dict[str, Any]]:
    """Per date since `since`: bar and indicator symbols and rows, with problems named."""
    table = store.session_counts(since).to_pylist()
    missing = _null_despite_history(store, since)
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
        if day in missing:
            symbols, columns = missing[day]
            problems.append(f"{symbols} symbols with NULL indicators despite enough history ({columns})")
        if row.get("bar_rows", 0) > row.get("bar_symbols", 0) or row.get("indicator_rows", 0) > row.get("indicator_symbols", 0):
            problems.append("duplicate (symbol, date) rows")
        row["problems"] = "; ".join(problems)
        rows.append(row)
    return rows


def first_valid_positions() -> dict[str, int]:
    """Per indicator, the bar position (0-based) of its first value, from the indicator set itself.
    bb_position is left out: a zero-width band makes it NULL at any position."""
    from stockpipe.indicators.spec import FIRST_VALID

    return {name: first for name, first in FIRST_VALID.items() if name != "bb_position"}


def _null_despite_history(store: Store, since: dt.date) -> dict[dt.date, tuple[int, str]]:
    """Per date: symbols with an indicator NULL although the symbol had enough bars for it (an
    indicator computed without its history), and which indicators."""
    firsts = first_valid_positions()
    return {row["date"]: (int(row["symbols"]), ", ".join(f"{name} {int(row[name])}" for name in sorted(firsts) if row[name]))
            for row in store.nulls_despite_history(since, firsts)}


def rebuilds(store: Store) -> list[dict[str, Any]]:
    """Every run planned in the store, with its progress (read from the store: any machine sees the same)."""
    found = []
    reports = store.read_run_reports()
    for row in store.read_run_plans():
        try:
            plan = rebuild_service.read_plan(row, store)
        except rebuild_service.RebuildError as exc:
            # One damaged run is shown as such; the other runs and sections still are.
            found.append({"run": row["plan_id"], "from": str(row["start_date"]), "state": f"unreadable: {exc}"})
            continue
        report = rebuild_service.progress_report(store, plan)
        finish = reports.get(plan.plan_id) or {}
        # `stockpipe restore` marks the report restored and forgets the chunks: undone, not in progress.
        if finish.get("restored_at") is not None and not report["chunks_done"]:
            state = "restored (undone)"
        elif finish.get("finished_at") is not None and finish.get("restored_at") is None and not report["chunks_pending"]:
            state = "finished"
        else:
            state = "in progress"
            building = rebuild_service.build_target(store, plan)
            if building:  # it holds the run's rows until the run finishes (and takes room meanwhile)
                state += f", its rows in {building} until it finishes"
        found.append({
            "run": plan.plan_id,
            "from": plan.start_date,
            "state": state,
            "chunks done": f"{report['chunks_done']}/{report['chunks']}",
            "pending": _abbreviate(report["chunks_pending"]),
            "failed": _abbreviate([f["chunk_id"] for f in report["failed_chunks"] if not f["redone"]]),
            "saved rows": report["saved_rows"],
            **({"problems": "unreadable marker stats: " + _abbreviate(report["unreadable_markers"], 3)}
               if report["unreadable_markers"] else {}),
        })
    return found


def ingests(store: Store, limit: int = 5) -> list[dict[str, Any]]:
    found = store.markers(prefix=markers.INGEST_DATES)[-limit:]
    return [
        {
            "date": markers.first_part(m["marker_id"]),
            "requested": m["stats"].get("symbols_requested"),
            "stored": m["stats"].get("bars_stored"),
            "rejected": m["stats"].get("bars_rejected"),
            "reasons": ", ".join(f"{k} {v}" for k, v in m["stats"].get("rejected_by_reason", {}).items()),
            "failed fetches": m["stats"].get("failed_fetches"),
            "splits": ", ".join(m["stats"].get("splits_detected", [])),
        }
        for m in found
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
    """Exit 1 when a date shows a problem (a gap, missing or NULL indicators, duplicates), else 0."""
    settings = config.stockpipe()
    store = open_store(config.store_url())
    _, last, count = store.bars_extent()
    since = args.since or (trading_calendar.sessions_back(settings.calendar, last, 9) if last else dt.date.today())
    print(f"store {store.redacted_url()}: {count:,} bars, latest {last or '-'}; its runs and replica in {config.store_dir()}",
          file=out)
    legacy = config.data_dir() / "runs"
    if legacy.is_dir():
        print(f"note: {legacy} holds runs from before each store had its own directory; move those of this store "
              f"with `mv {legacy} {config.store_dir()}/`", file=out)
    rows = coverage(store, since, settings.calendar)
    _print_table(f"coverage since {since}", rows, out)
    _print_table("rebuild and daily runs", rebuilds(store), out)
    _print_table("recent ingests", ingests(store), out)
    return 1 if any(r["problems"] for r in rows) else 0


def cmd_watchlist(args, out) -> int:
    store = open_store(config.store_url())
    day = args.date
    if day is None:
        scans = markers.first_parts(store.markers(prefix=markers.SCANS))
        if not scans:
            print("no watchlist yet: run `luigi --module stockpipe Daily --date ...`", file=out)
            return 1
        day = dt.date.fromisoformat(max(scans))
    scan = store.read_marker(markers.scan_watchlist(day))
    if scan is None:
        print(f"no watchlist scan for {day}: run `luigi --module stockpipe Daily --date {day}`", file=out)
        return 1
    rows = store.read_watchlist(since=day, until=day).to_pylist()
    if not rows:
        scanned = scan["stats"].get("symbols_scanned", "?")
        print(f"watchlist {day}: no symbol matched the rules ({scanned} symbols scanned)", file=out)
        return 0
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
    if Path(args.backup).suffix == ".duckdb":
        from stockpipe.services.replica import restore_from_replica

        counts = restore_from_replica(store, Path(args.backup))
        print(f"restored {store.redacted_url()} from {args.backup}: "
              + ", ".join(f"{table} {rows:,}" for table, rows in counts.items()), file=out)
        return 0
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


def cmd_check(args, out) -> int:
    from stockpipe.services.check import check_store

    url = args.store or config.store_url()
    if "://" not in url:
        url = f"duckdb:///{Path(url).resolve()}"  # a plain path is a DuckDB file (a copy, a replica)
    result = check_store(open_store(url), config.store_dir(), config.replica_path())
    if args.json:
        report = result.report
        print(json.dumps({"ok": result.ok, "lines": result.lines, "seconds": round(result.seconds, 3),
                          "tables": report.tables if report else None, "storage": report.storage if report else None}),
              file=out, flush=True)
    else:
        for line in result.lines:
            print(f"stockpipe check: {line}", file=out, flush=True)
    return 0 if result.ok else 1


def cmd_assist(args, out) -> int:
    """Lend this machine's workers to luigid: run any pending stockpipe task (e.g. rebuild chunks
    another machine scheduled) until stopped."""
    import luigi

    import stockpipe

    stockpipe.load_tasks()  # every task registered, so the scheduler's work can be instantiated here
    preflight.check_config()
    url = scheduler_url()
    problem = luigid_problem(url)
    if problem:
        raise preflight.UserError(
            f"no luigid answers at {url} ({problem}; [core] scheduler_host and scheduler_port, {preflight.where()}): "
            "start it on that machine with `luigid --background --logdir <dir>`, or point [core] scheduler_host at "
            "the machine running it")
    settings = luigi.configuration.get_config()
    if not settings.has_section("worker"):
        settings.add_section("worker")
    settings.set("worker", "keep_alive", "true")  # an assistant waits for work instead of leaving
    # SIGTERM (kill, systemd) becomes Luigi's graceful stop: finish running tasks, take no new ones.
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))

    print(f"assisting luigid at {luigi.interface.core().scheduler_host}:{luigi.interface.core().scheduler_port} "
          f"with {args.workers} worker(s); Ctrl-C to stop", file=out, flush=True)
    ok = luigi.build([], workers=args.workers, assistant=True, local_scheduler=False)
    return 0 if ok else 1


def scheduler_url() -> str:
    import luigi.interface

    core = luigi.interface.core()
    return core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/"


def luigid_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why luigid at `url` cannot be reached (in seconds, not after Luigi's minute of retries), or None."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "http+unix":
        return None  # a socket file: Luigi itself says whether it answers
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 8082), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def daily_date(code: str, now: dt.datetime | None = None) -> dt.date:
    """The exchange's today once its session has closed (or when it is no session: Daily says so and
    does nothing), else the session before: the one that has just closed."""
    today = trading_calendar.local_today(code, now)
    if trading_calendar.is_session(code, today) and trading_calendar.not_happened(code, today, now):
        return trading_calendar.last_closed_session(code, now)
    return today


def cmd_daily(args, out) -> int:
    """`luigi --module stockpipe Daily --date D` for cron: D defaults to the session just closed, and
    without a reachable luigid the run uses the local scheduler instead of retrying for a minute."""
    from luigi.retcodes import run_with_retcodes

    import stockpipe

    # `--module stockpipe` below finds the package already imported (by this command, before Luigi
    # was), so it would not load the tasks itself.
    stockpipe.load_tasks()
    preflight.check_config()
    code = config.stockpipe().calendar
    day = args.date or daily_date(code)
    argv = ["--module", "stockpipe", "Daily", "--date", str(day), "--workers", str(args.workers)]
    how = "the local scheduler"
    if args.local_scheduler:
        argv.append("--local-scheduler")
    else:
        url = scheduler_url()
        problem = luigid_problem(url)
        if problem:
            argv.append("--local-scheduler")
            how = f"the local scheduler (no luigid at {url}: {problem})"
        else:
            how = f"luigid at {url}"
    print(f"stockpipe daily: Daily --date {day} ({'given' if args.date else f'the {code} session just closed'}) "
          f"with {how}, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", file=out, flush=True)
    try:
        run_with_retcodes(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def cmd_report(args, out) -> int:
    from stockpipe.services import report as report_service

    store = open_store(config.store_url())
    day = args.date or store.latest_watchlist_date()
    if day is None:
        print("no watchlist yet: run `luigi --module stockpipe Daily --date ...`", file=out)
        return 1
    settings = config.report()
    stats = report_service.build_report(
        store, day, config.store_dir(), calendar=config.stockpipe().calendar, sessions=settings.sessions,
        chart_months=settings.chart_months, slowest_chunks=settings.slowest_chunks,
    )
    print(f"{stats['path']}: {stats['charts']} charts, {stats['bytes'] / 1e6:.1f} MB, {stats['seconds']} s", file=out)
    return 0


def cmd_cleanup(args, out) -> int:
    from stockpipe.services import cleanup as cleanup_service

    settings = config.cleanup()
    result = cleanup_service.clean(
        open_store(config.store_url()), data_dir=config.store_dir(), replica_path=config.replica_path(),
        log_dir=Path(settings.log_dir), days=settings.days(), dry_run=args.dry_run, changes_days=settings.changes_days,
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
    if result["changes_pruned"]:
        print(f"{result['changes_pruned']} change-log row(s) older than {settings.changes_days} days forgotten", file=out)
    return 0


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
    logs.configure()  # warnings and progress lines on stderr, as under the `luigi` command
    parser = argparse.ArgumentParser(prog="stockpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="coverage, gaps, rebuild progress and ingest quality")
    status.add_argument("--since", type=dt.date.fromisoformat, help="first date shown (default: the last 10 sessions)")
    status.set_defaults(run=cmd_status)
    watch = commands.add_parser("watchlist", help="a date's watchlist as a table (default: the latest)")
    watch.add_argument("--date", type=dt.date.fromisoformat)
    watch.set_defaults(run=cmd_watchlist)
    restore = commands.add_parser("restore", help="put back the rows saved before a rebuild, or an empty store from the replica")
    restore.add_argument("backup", help="data/<store>/runs/<run>/backup.parquet (or backup.table), or data/<store>/replica.duckdb "
                         "into an empty store")
    restore.set_defaults(run=cmd_restore)
    init_db = commands.add_parser("init-db", help="create or upgrade the schema")
    init_db.set_defaults(run=cmd_init_db)
    check = commands.add_parser("check", help="verify the store: read every table, flag duplicate keys and a pending WAL")
    check.add_argument("store", nargs="?", help="a store URL or DuckDB file (default: the configured store)")
    check.add_argument("--json", action="store_true", help="print the result, row counts and checksums as JSON")
    check.set_defaults(run=cmd_check)
    assist = commands.add_parser("assist", help="run pending tasks from luigid (another machine's rebuild chunks)")
    assist.add_argument("--workers", type=int, default=1)
    assist.set_defaults(run=cmd_assist, streams=True)
    daily = commands.add_parser("daily", help="the Daily job for the session just closed (the command for cron)")
    daily.add_argument("--date", type=dt.date.fromisoformat, help="default: the session that has just closed")
    daily.add_argument("--workers", type=int, default=1)
    daily.add_argument("--local-scheduler", action="store_true", help="never use luigid (default: use it when it answers)")
    daily.set_defaults(run=cmd_daily, streams=True)
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
    importer.set_defaults(run=cmd_import_legacy, streams=True)  # its progress shows as it goes
    args = parser.parse_args(argv)
    # A report is written out whole at the end, so `stockpipe status | head` closing the pipe early
    # neither interrupts the command nor changes its exit code.
    streams = getattr(args, "streams", False)
    buffer = out if streams else io.StringIO()
    try:
        code = args.run(args, buffer)
    except (StoreError, RuntimeError, OSError, ValueError) as exc:
        print(f"stockpipe {args.command}: {exc}", file=sys.stderr)
        code = 2
    if not streams:
        try:
            out.write(buffer.getvalue())
            out.flush()
        except BrokenPipeError:
            # The reader left: send what Python still flushes at exit to /dev/null instead of an error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
