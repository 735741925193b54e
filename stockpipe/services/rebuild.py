"""Rebuild plans: what will be replaced, a backup of it, a fixed chunk plan, and the final report.

A run's files live in `<data_dir>/runs/<plan_id>/`:
  plan.json      chunks (sorted symbols) fixed at the first attempt, so a resumed run uses the same
                 chunks even if the universe changed; the status report of what gets replaced
  backup.parquet the indicator rows the rebuild replaces (restore: `stockpipe restore <file>`)
  failed/N.json  the last error of chunk N, if it ever failed
  staged/        rows an engine computed ahead of the chunk tasks (Spark), until each chunk stores them
  attempt.json   when the current attempt started (so the report covers all of it)
  report.json    the final report

Once taken, a backup is never overwritten: it is the only copy of the rows the run replaces.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in restore
import pyarrow.parquet as pq

from stockpipe import markers
from stockpipe.services.indicators import chunk
from stockpipe.store import Store
from stockpipe.store.base import utcnow
from stockpipe.tempfiles import discard_orphans, discard_orphans_in, temporary_for

log = logging.getLogger("stockpipe.rebuild")

PLAN_FILE = "plan.json"
BACKUP_FILE = "backup.parquet"
REPORT_FILE = "report.json"
ATTEMPT_FILE = "attempt.json"


class RebuildError(RuntimeError):
    """A run's files are missing or damaged; the message names the file and how to proceed."""


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


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    discard_orphans(path)
    temporary = temporary_for(path)
    try:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_litter(directory: Path) -> list[Path]:
    """Temporary files of killed processes in a run directory and its failed/."""
    return discard_orphans_in(directory) + discard_orphans_in(Path(directory) / "failed")


def _how_to_proceed(directory: Path) -> str:
    backup = Path(directory) / BACKUP_FILE
    advice = "to rebuild again, start a new run with --run-id NAME"
    if backup.exists():
        return f"Its backup is kept: `stockpipe restore {backup}` puts back the rows the run replaced; {advice}."
    return advice[0].upper() + advice[1:] + "."


def load_plan(directory: Path) -> Plan:
    path = Path(directory) / PLAN_FILE
    try:
        return Plan(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise RebuildError(f"cannot read rebuild plan {path}: {exc}. {_how_to_proceed(directory)}") from None


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
        return open_plan(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Two processes started on the same run must not both plan it: the second one's backup would be
    # taken after the first had started replacing rows.
    with open(directory / ".plan.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / PLAN_FILE).exists():
            return open_plan(directory)
        remove_litter(directory)
        if backup:
            _refuse_replanning_a_started_run(store, directory, plan_id)
        return _create_plan_locked(store, directory, plan_id=plan_id, kind=kind, start=start, symbols=symbols,
                                   chunk_size=chunk_size, backup=backup, full_history=full_history)


def open_plan(directory: Path) -> Plan:
    """The plan of a run being resumed, with its backup checked: a damaged backup is reported now,
    not when a restore is needed."""
    plan = load_plan(directory)
    if plan.backup:
        check_backup(Path(directory) / plan.backup, quick=True)
    return plan


def _refuse_replanning_a_started_run(store: Store, directory: Path, plan_id: str) -> None:
    evidence = []
    if (directory / BACKUP_FILE).exists():
        evidence.append(f"its backup {directory / BACKUP_FILE}")
    chunks = store.markers(prefix=markers.chunks_of(plan_id))
    if chunks:
        evidence.append(f"{len(chunks)} finished chunk(s)")
    if store.markers(exact=markers.rebuild_from(plan_id)):
        evidence.append("its completion marker")
    if evidence:
        raise RebuildError(
            f"{directory / PLAN_FILE} is missing but run {plan_id} already started ({', '.join(evidence)} exist): "
            f"planning it again would replace its backup with rows it already rebuilt. {_how_to_proceed(directory)}"
        )


def _create_plan_locked(store, directory, *, plan_id, kind, start, symbols, chunk_size, backup, full_history) -> Plan:
    replaces = store.indicator_summary(symbols, start)
    chunks = -(-len(symbols) // max(chunk_size, 1))
    if replaces["rows"]:
        log.info(
            "%s will replace %d indicator rows of %d symbols (%s..%s) from %s; %d symbols in %d chunks",
            plan_id, replaces["rows"], replaces["symbols"], replaces["first_date"], replaces["last_date"], start,
            len(symbols), chunks,
        )
    else:
        log.info("%s: no indicator rows stored from %s yet, nothing to replace; %d symbols in %d chunks",
                 plan_id, start, len(symbols), chunks)
    backup_name = None
    if backup:
        directory.mkdir(parents=True, exist_ok=True)
        # The chunks replace rows up to the last bar they read; the backup covers up to the last
        # bar now, and a restore puts back exactly that range.
        end = store.bars_extent()[1]
        metadata = {"stockpipe": json.dumps({"plan_id": plan_id, "start_date": str(start),
                                             "end_date": str(end) if end else None, "symbols": sorted(symbols)})}
        discard_orphans(directory / BACKUP_FILE)  # a killed attempt's partial backup
        temporary = temporary_for(directory / BACKUP_FILE)
        try:
            saved = store.export_indicators(temporary, symbols, start, metadata, end=end)
            check_backup(temporary, quick=True, expected_rows=saved)
            os.link(temporary, directory / BACKUP_FILE)  # never over an existing backup
        finally:
            temporary.unlink(missing_ok=True)
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


def record_failure(directory: Path, chunk_id: int, error: BaseException | str) -> bool:
    """Leave `failed/<chunk>.json`; False (logged) when that is impossible, e.g. on a full disk,
    where the failure handler must not fail in turn."""
    path = Path(directory) / "failed" / f"{chunk_id}.json"
    try:
        _write_json_atomically(
            path, {"chunk_id": chunk_id, "error": str(error), "type": type(error).__name__, "at": utcnow().isoformat()},
        )
    except OSError as exc:
        log.error("chunk %s failed with %s: %s, and its failure could not be recorded in %s: %s",
                  chunk_id, type(error).__name__, error, path, exc)
        return False
    return True


def failures(directory: Path) -> dict[int, dict[str, Any]]:
    """Each failed chunk's record; an unreadable `failed/N.json` is named as its error."""
    found = {}
    for path in sorted((Path(directory) / "failed").glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            chunk_id = int(data["chunk_id"])
            data["error"] = str(data.get("error", ""))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("unreadable chunk failure record %s: %s", path, exc)
            try:
                chunk_id = int(path.stem)
            except ValueError:
                continue
            data = {"chunk_id": chunk_id, "error": f"unreadable failure record {path}: {exc}"}
        found[chunk_id] = data
    return found


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def progress_report(store: Store, plan: Plan, directory: Path) -> dict[str, Any]:
    """Chunks done, pending and failed, with saved rows so far: the report's body."""
    found = {m["marker_id"]: m for m in store.markers(prefix=markers.chunks_of(plan.plan_id))}
    done = [i for i in range(len(plan.chunks)) if markers.indicator_chunk(plan.plan_id, i) in found]
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
        "saved_rows": sum(_count(m["stats"].get("rows_saved")) for m in found.values()),
        "unreadable_markers": sorted(m["marker_id"] for m in found.values() if "unreadable" in m["stats"]),
        "failed_chunks": [
            {"chunk_id": i, "error": f["error"], "redone": i in set(done)} for i, f in sorted(failed.items())
        ],
        "backup": str(Path(directory) / plan.backup) if plan.backup else None,
    }


def attempt_owner() -> int:
    """The pid of the command running this attempt: Luigi re-enters a task with dynamic
    dependencies once per batch of them, in a fresh child process under `--workers N`."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else os.getpid()


def attempt_started(directory: Path) -> dt.datetime:
    """When this command's attempt at the run started, kept in attempt.json across re-entries.
    Best effort: a run directory that cannot be written (a full disk) times from now."""
    path = Path(directory) / ATTEMPT_FILE
    owner = {"host": socket.gethostname(), "pid": attempt_owner()}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if {k: data.get(k) for k in owner} == owner:
            return dt.datetime.fromisoformat(data["started_at"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    now = utcnow()
    try:
        _write_json_atomically(path, {**owner, "started_at": now.isoformat()})
    except OSError as exc:
        log.warning("cannot record the attempt's start in %s: %s", path, exc)
    return now


def write_final_report(store: Store, plan: Plan, directory: Path, attempt_start: dt.datetime | None = None) -> dict[str, Any]:
    """The run's report, once every chunk is stored; first the replaced rows' space is reclaimed
    (see `Store.reclaim`), which the report's time includes."""
    store.reclaim("indicators", _count(plan.replaces.get("rows")))
    report = progress_report(store, plan, directory)
    created = dt.datetime.fromisoformat(plan.created_at)
    now = utcnow()
    report["seconds"] = round((now - created).total_seconds(), 3)
    if attempt_start is not None:
        report["seconds_this_attempt"] = round((now - attempt_start).total_seconds(), 3)
    report["finished_at"] = now.isoformat()
    _write_json_atomically(Path(directory) / REPORT_FILE, report)
    (Path(directory) / ATTEMPT_FILE).unlink(missing_ok=True)
    log.info("rebuild report %s", json.dumps(report, sort_keys=True, default=str))
    return report


def check_backup(path: Path, *, quick: bool = False, expected_rows: int | None = None) -> dict[str, Any]:
    """Verify a backup against the row count and checksum recorded when it was taken (`quick`: only
    the footer's count; otherwise every row, read batch by batch, so memory stays bounded by a batch);
    returns its `stockpipe` metadata. A truncated or altered file raises RebuildError naming it."""
    from stockpipe.store.checksum import batch_checksum

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
        raw = parquet.metadata.metadata or {}
        meta = json.loads(raw[b"stockpipe"])
    except FileNotFoundError:
        raise RebuildError(f"backup {path} is missing") from None
    except (OSError, KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise RebuildError(f"{path} is not a stockpipe rebuild backup (unreadable: truncated or damaged?): {exc}") from None
    recorded = raw.get(b"stockpipe.rows")
    found = parquet.metadata.num_rows
    if recorded is None:
        log.warning("%s was written by an older stockpipe: no row count or checksum to verify it against", path)
    elif int(recorded) != found or (expected_rows is not None and found != expected_rows):
        raise RebuildError(f"backup {path} holds {found} rows but {int(recorded) if expected_rows is None else expected_rows} "
                           f"were backed up: it is truncated or damaged, and cannot be used")
    if quick:
        return meta
    checksum = 0
    for batch in backup_batches(path):
        checksum = (checksum + batch_checksum(batch)) % (1 << 64)
    recorded_checksum = raw.get(b"stockpipe.checksum")
    if recorded_checksum is not None and int(recorded_checksum, 16) != checksum:
        raise RebuildError(f"backup {path}: its rows do not match the checksum recorded when it was taken: "
                           f"it is damaged, and cannot be used")
    return meta


def backup_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A backup's rows, batch by batch, without its metadata (RebuildError if the file cannot be read)."""
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            yield batch.replace_schema_metadata(None)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RebuildError(f"backup {path} cannot be read (truncated or damaged?): {exc}") from None


def restore(store: Store, backup_path: Path) -> dict[str, Any]:
    """Put back the rows a rebuild replaced, exactly over the range that was backed up (one
    transaction), and forget that rebuild's markers, so running it again redoes it. A backup that
    does not match its recorded row count and checksum is refused before anything changes. The
    file is read batch by batch (once to verify it, once to put it back): memory stays bounded."""
    backup_path = Path(backup_path)
    meta = check_backup(backup_path)
    try:
        plan_id = meta["plan_id"]
        start = dt.date.fromisoformat(meta["start_date"])
        symbols = list(meta["symbols"])
        end = dt.date.fromisoformat(meta["end_date"]) if meta.get("end_date") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise RebuildError(f"{backup_path}: its metadata lacks {exc}: not a stockpipe rebuild backup") from None
    if end is None and "end_date" not in meta:
        # An older backup: its own last date is the best bound there is.
        dates = [pa.compute.max(b.column("date")).as_py() for b in backup_batches(backup_path) if b.num_rows]
        end = max(dates) if dates else None
    forget = [m["marker_id"] for m in store.markers(prefix=markers.chunks_of(plan_id))]
    forget += [m["marker_id"] for m in store.markers(exact=markers.rebuild_from(plan_id))]
    restored = store.restore_indicators(backup_batches(backup_path), symbols, start, forget, end=end)
    report = backup_path.parent / REPORT_FILE
    if report.exists():
        report.rename(report.with_name(f"report.restored-{utcnow():%Y%m%dT%H%M%S}.json"))
    return {"plan_id": plan_id, "start_date": str(start), "end_date": str(end) if end else None,
            "symbols": len(symbols), "rows_restored": restored, "markers_forgotten": len(forget)}
