"""Rebuild plans: what will be replaced, a backup of it, a fixed chunk plan, and the final report.

A run's files live in `<data_dir>/runs/<plan_id>/`:
  plan.json      chunks (sorted symbols) fixed at the first attempt, so a resumed run uses the same
                 chunks even if the universe changed; the status report of what gets replaced
  backup.parquet the indicator rows the rebuild replaces (restore: `stockpipe restore <file>`)
  failed/N.json  the last error of chunk N, if it ever failed
  staged/        rows an engine computed ahead of the chunk tasks (Spark), until each chunk stores them
  report.json    the final report
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from stockpipe.services.indicators import chunk
from stockpipe.store import Store
from stockpipe.store.base import utcnow
from stockpipe.tempfiles import discard_orphans, temporary_for

log = logging.getLogger("stockpipe.rebuild")

PLAN_FILE = "plan.json"
BACKUP_FILE = "backup.parquet"
REPORT_FILE = "report.json"


@dataclass
class Plan:
    plan_id: str
    kind: str
    start_date: str
    chunk_size: int
    chunks: list[list[str]]
    created_at: str
    replaces: dict[str, Any] = field(default_factory=dict)
    backup: str | None = None
    full_history: list[str] = field(default_factory=list)  # symbols recomputed from their first bar

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)

    @property
    def symbols(self) -> list[str]:
        return [s for c in self.chunks for s in c]


def run_dir(data_dir: Path, plan_id: str) -> Path:
    return Path(data_dir) / "runs" / plan_id


def staging_dir(directory: Path) -> Path:
    """Where an engine that computes ahead of the chunk tasks (Spark) stages each chunk's rows."""
    return Path(directory).resolve() / "staged"


def chunk_marker_id(plan_id: str, chunk_id: int) -> str:
    return f"IndicatorChunk/{plan_id}/{chunk_id}"


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    discard_orphans(path)
    temporary = temporary_for(path)
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def load_plan(directory: Path) -> Plan:
    path = Path(directory) / PLAN_FILE
    try:
        return Plan(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise RuntimeError(f"cannot read rebuild plan {path}: {exc}") from exc


def create_plan(
    store: Store,
    directory: Path,
    *,
    plan_id: str,
    kind: str,
    start: dt.date,
    symbols: Sequence[str],
    chunk_size: int,
    backup: bool,
    full_history: Sequence[str] = (),
) -> Plan:
    """Write (or, when one exists, reuse) the plan of a run. The backup is written before the plan,
    so a plan on disk always has its backup."""
    directory = Path(directory)
    if (directory / PLAN_FILE).exists():
        return load_plan(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Two processes started on the same run must not both plan it: the second one's backup would be
    # taken after the first had started replacing rows.
    with open(directory / ".plan.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / PLAN_FILE).exists():
            return load_plan(directory)
        return _create_plan_locked(store, directory, plan_id=plan_id, kind=kind, start=start, symbols=symbols,
                                   chunk_size=chunk_size, backup=backup, full_history=full_history)


def _create_plan_locked(store, directory, *, plan_id, kind, start, symbols, chunk_size, backup, full_history) -> Plan:
    replaces = store.indicator_summary(symbols, start)
    log.info(
        "%s will replace %d indicator rows of %d symbols (%s..%s) from %s; %d symbols in %d chunks",
        plan_id, replaces["rows"], replaces["symbols"], replaces["first_date"], replaces["last_date"], start,
        len(symbols), -(-len(symbols) // max(chunk_size, 1)),
    )
    backup_name = None
    if backup:
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {"stockpipe": json.dumps({"plan_id": plan_id, "start_date": str(start), "symbols": sorted(symbols)})}
        discard_orphans(directory / BACKUP_FILE)  # a killed attempt's partial backup
        temporary = temporary_for(directory / BACKUP_FILE)
        saved = store.export_indicators(temporary, symbols, start, metadata)
        os.replace(temporary, directory / BACKUP_FILE)
        log.info("%s backed up %d rows to %s", plan_id, saved, directory / BACKUP_FILE)
        backup_name = BACKUP_FILE
    plan = Plan(
        plan_id=plan_id,
        kind=kind,
        start_date=str(start),
        chunk_size=chunk_size,
        chunks=chunk(symbols, chunk_size),
        created_at=utcnow().isoformat(),
        replaces={k: (str(v) if isinstance(v, dt.date) else v) for k, v in replaces.items()},
        backup=backup_name,
        full_history=sorted(set(full_history)),
    )
    _write_json_atomically(directory / PLAN_FILE, asdict(plan))
    return plan


def record_failure(directory: Path, chunk_id: int, error: BaseException | str) -> None:
    _write_json_atomically(
        Path(directory) / "failed" / f"{chunk_id}.json",
        {"chunk_id": chunk_id, "error": str(error), "type": type(error).__name__, "at": utcnow().isoformat()},
    )


def failures(directory: Path) -> dict[int, dict[str, Any]]:
    found = {}
    for path in sorted((Path(directory) / "failed").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        found[int(data["chunk_id"])] = data
    return found


def progress_report(store: Store, plan: Plan, directory: Path) -> dict[str, Any]:
    """Chunks done, pending and failed, with saved rows so far: the report's body."""
    markers = {m["marker_id"]: m for m in store.markers(prefix=f"IndicatorChunk/{plan.plan_id}/")}
    done = [i for i in range(len(plan.chunks)) if chunk_marker_id(plan.plan_id, i) in markers]
    failed = failures(directory)
    return {
        "plan_id": plan.plan_id,
        "kind": plan.kind,
        "start_date": plan.start_date,
        "symbols": len(plan.symbols),
        "chunks": len(plan.chunks),
        "chunks_done": len(done),
        "chunks_pending": [i for i in range(len(plan.chunks)) if i not in set(done)],
        "replaced_rows": plan.replaces.get("rows", 0),
        "saved_rows": sum(int(m["stats"].get("rows_saved", 0)) for m in markers.values()),
        "failed_chunks": [
            {"chunk_id": i, "error": f["error"], "redone": i in set(done)} for i, f in sorted(failed.items())
        ],
        "backup": str(Path(directory) / plan.backup) if plan.backup else None,
    }


def write_final_report(store: Store, plan: Plan, directory: Path, started_monotonic: float | None = None) -> dict[str, Any]:
    report = progress_report(store, plan, directory)
    created = dt.datetime.fromisoformat(plan.created_at)
    report["seconds"] = round((utcnow() - created).total_seconds(), 3)
    if started_monotonic is not None:
        report["seconds_this_attempt"] = round(time.monotonic() - started_monotonic, 3)
    report["finished_at"] = utcnow().isoformat()
    _write_json_atomically(Path(directory) / REPORT_FILE, report)
    log.info("rebuild report %s", json.dumps(report, sort_keys=True, default=str))
    return report


def restore(store: Store, backup_path: Path) -> dict[str, Any]:
    """Put back the rows a rebuild replaced (one transaction) and forget that rebuild's markers, so
    running it again redoes it."""
    backup_path = Path(backup_path)
    try:
        table = pq.read_table(backup_path)
        meta = json.loads((table.schema.metadata or {})[b"stockpipe"])
    except (OSError, KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise RuntimeError(f"{backup_path} is not a stockpipe rebuild backup: {exc}") from exc
    plan_id = meta["plan_id"]
    start = dt.date.fromisoformat(meta["start_date"])
    forget = [m["marker_id"] for m in store.markers(prefix=f"IndicatorChunk/{plan_id}/")]
    forget += [m["marker_id"] for m in store.markers(exact=f"RebuildFrom/{plan_id}")]
    restored = store.restore_indicators(table.replace_schema_metadata(None), meta["symbols"], start, forget)
    report = backup_path.parent / REPORT_FILE
    if report.exists():
        report.rename(report.with_name(f"report.restored-{utcnow():%Y%m%dT%H%M%S}.json"))
    return {"plan_id": plan_id, "start_date": str(start), "symbols": len(meta["symbols"]), "rows_restored": restored,
            "markers_forgotten": len(forget)}
