"""`stockpipe check`: is the store whole? Read every table, name what failed and how to recover.

A DuckDB file verifies a block's checksum when the block is read, so a corrupt block shows only to
a query that reads it: the check reads every value of every table. Data that reads back but is
wrong in ways a writer can cause (duplicate keys, a WAL left pending) is flagged too.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from stockpipe.services.rebuild import backup_table_run
from stockpipe.store import Store, replica_file
from stockpipe.store.base import IntegrityError, IntegrityReport


@dataclass
class CheckResult:
    ok: bool
    lines: list[str] = field(default_factory=list)
    report: IntegrityReport | None = None
    seconds: float = 0.0


def check_store(store: Store, data_dir: Path, replica: Path) -> CheckResult:
    started = time.monotonic()
    where = getattr(store, "path", None) or store.redacted_url()
    try:
        report = store.check_integrity()
    except IntegrityError as exc:
        place = f"table {exc.table}" if exc.table else "opening it"
        return CheckResult(False, [
            f"FAILED {where}: {place}: {exc.cause}. What to do: {recovery_advice(store, data_dir, replica)}"
        ], seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    if report.problems:
        return CheckResult(False, [f"PROBLEM {where}: {p}" for p in report.problems], report, seconds)
    rows = sum(t["rows"] for t in report.tables.values())
    biggest = ", ".join(f"{name} {t['rows']:,}" for name, t in sorted(report.tables.items(), key=lambda kv: -kv[1]["rows"])[:3])
    storage = report.storage
    size = f", {storage['file_bytes'] / 1e6:,.1f} MB ({storage['free_blocks']:,} of {storage['total_blocks']:,} blocks free)" \
        if "file_bytes" in storage else ""
    wal = ", no pending WAL" if "wal_file_bytes" in storage else ""
    return CheckResult(True, [
        f"OK {where}: {len(report.tables)} tables fully read, {rows:,} rows ({biggest}){size}{wal}, "
        f"no duplicate keys, {seconds:.1f} s"
    ], report, seconds)


def recovery_advice(store: Store, data_dir: Path, replica: Path) -> str:
    """The recovery options that exist for this store, best first."""
    steps = []
    if getattr(store, "path", None) is not None:
        steps.append(f"stop every stockpipe job and move {store.path} aside (do not write to it)")
    previous = replica.with_name(replica.stem + ".previous" + replica.suffix)
    replicas = [(p, _replica_state(p)) for p in (replica, previous) if p.exists()]
    if replicas:
        best = next((p for p, state in replicas if state.endswith("opens")), replicas[0][0])
        steps.append("restore the tables from the replica " + " or ".join(f"{p} ({state})" for p, state in replicas)
                     + f" into an empty store: `stockpipe restore {best}`")
    # A file of rows first; else a backup.table whose table (in this same store) is still there.
    backups = sorted(Path(data_dir).glob("runs/*/backup.parquet"), key=lambda p: p.stat().st_mtime) or sorted(
        (p for p in Path(data_dir).glob("runs/*/backup.table") if _table_still_there(store, p)),
        key=lambda p: p.stat().st_mtime)
    if backups:
        steps.append(f"put back the indicator rows a rebuild replaced with `stockpipe restore {backups[-1]}`"
                     + (f" ({len(backups)} backups under {Path(data_dir) / 'runs'})" if len(backups) > 1 else ""))
    if len(steps) < 2:
        steps.append(f"no replica or rebuild backup found (looked for {replica} and {Path(data_dir) / 'runs'}): "
                     "rebuild the store with Backfill, then RebuildFrom")
    return "; ".join(steps)


def _table_still_there(store: Store, pointer: Path) -> bool:
    run = backup_table_run(pointer)
    try:
        return run is not None and store.has_backup_table(run)
    except Exception:  # noqa: BLE001 - a damaged store: not a way to recover
        return False


def _replica_state(path: Path) -> str:
    written = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    why = replica_file.unreadable(path)
    if why is not None:
        return f"written {written}, NOT readable either: {why[:200]}"
    return f"written {written}, opens"
