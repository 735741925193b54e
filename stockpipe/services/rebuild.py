"""Rebuild plans: what will be replaced, a backup of it, a fixed chunk plan, and the final report.

A run's state lives in the store, so every worker on every machine reads the same (an assistant
lent through luigid has its own, empty data_dir):
  run_plans           the plan, written once at the first attempt and never changed: chunks (sorted
                      symbols), so a resumed run uses the same chunks even if the universe changed;
                      the status report of what gets replaced; where its backup is
  run_chunk_failures  the last error of each chunk that ever failed
  run_reports         when the current attempt started, then the final report

Files stay only where bulk data needs them, in `<data_dir>/<store>/runs/<plan_id>/` of the machine
that planned the run (named in the plan):
  backup.parquet the indicator rows the rebuild replaces (restore: `stockpipe restore <file>`)
  backup.table   instead, for a run built aside (`Store.begin_build`): what the backup covers and
                 the store table that holds it, the indicators table the run replaced (same restore)
  staged/        rows an engine computed ahead of the chunk tasks (Spark), until each chunk stores them

Once taken, a backup is never overwritten: it is the only copy of the rows the run replaces.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in restore
import pyarrow.parquet as pq

from stockpipe import markers
from stockpipe.services.indicators import chunk
from stockpipe.store import Marker, Store
from stockpipe.store.base import backup_table_name, utcnow
from stockpipe.tempfiles import discard_orphans, discard_orphans_in, temporary_for

log = logging.getLogger("stockpipe.rebuild")

BACKUP_FILE = "backup.parquet"
BACKUP_TABLE_FILE = "backup.table"  # JSON: a run built aside keeps its backup in a store table


class RebuildError(RuntimeError):
    """A run's plan or backup is missing or damaged; the message names it and how to proceed."""


@dataclass
class Plan:
    plan_id: str
    kind: str
    start_date: str
    chunk_size: int
    chunks: list[list[str]]
    created_at: str
    replaces: dict[str, Any] = field(default_factory=dict)
    backup: str | None = None  # absolute path of the backup Parquet (or .table) on `planned_on`
    full_history: list[str] = field(default_factory=list)  # symbols recomputed from their first bar
    planned_on: str | None = None  # the host that planned the run (and holds its backup)
    # Whether the run began writing into a build table of its own (Store.begin_build). Its chunks
    # write there while the table exists (a restore drops it with the chunks' markers); a run
    # planned without one never has one.
    built_aside: bool = False

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)

    @property
    def symbols(self) -> list[str]:
        return [s for c in self.chunks for s in c]

    @property
    def backup_in_table(self) -> bool:
        """Whether its backup is a store table (backup.table), not a file of rows."""
        return bool(self.backup) and Path(self.backup).name == BACKUP_TABLE_FILE

    def document(self) -> str:
        """The stored plan's JSON: what the row's own columns do not hold."""
        return json.dumps({"chunk_size": self.chunk_size, "chunks": self.chunks, "replaces": self.replaces,
                           "full_history": self.full_history, "built_aside": self.built_aside},
                          sort_keys=True, default=str)


def run_dir(data_dir: Path, plan_id: str) -> Path:
    return Path(data_dir) / "runs" / plan_id


def staging_dir(directory: Path) -> Path:
    """Where an engine that computes ahead of the chunk tasks (Spark) stages each chunk's rows."""
    return Path(directory).resolve() / "staged"




def remove_litter(directory: Path) -> list[Path]:
    """Temporary files of killed processes in a run directory."""
    return discard_orphans_in(directory) if Path(directory).is_dir() else []


def _how_to_proceed(backup: Path | str | None) -> str:
    advice = "to rebuild again, start a new run with --run-id NAME"
    if backup is not None and Path(backup).exists():
        return f"Its backup is kept: `stockpipe restore {backup}` puts back the rows the run replaced; {advice}."
    return advice[0].upper() + advice[1:] + "."


def _plan_from_row(row: dict[str, Any]) -> Plan:
    document = json.loads(row["plan"])
    if not isinstance(document, dict):
        raise ValueError(f"its document is not a JSON object: {row['plan'][:80]!r}")
    chunks = document["chunks"]
    if not (isinstance(chunks, list) and all(isinstance(c, list) and all(isinstance(s, str) for s in c) for c in chunks)):
        raise ValueError("its chunks are not lists of symbols")
    created = row["created_at"]
    return Plan(
        plan_id=row["plan_id"],
        kind=row["kind"],
        start_date=str(row["start_date"]),
        chunk_size=int(document["chunk_size"]),
        chunks=chunks,
        created_at=created.isoformat() if isinstance(created, dt.datetime) else str(created),
        replaces=dict(document.get("replaces") or {}),
        backup=row["backup_path"],
        full_history=list(document.get("full_history") or []),
        planned_on=row["planned_on"],
        built_aside=document.get("built_aside") is True,
    )


def build_target(store: Store, plan: Plan) -> str | None:
    """The table `plan`'s chunks write into: its build table while it has one, else None (the
    indicators table). Asked only of a run planned with one: the others never have one."""
    return store.build_table(plan.plan_id) if plan.built_aside else None


def chunk_target(store: Store, plan: Plan) -> str | None:
    """`build_target`, for a chunk about to write: one of a run whose backup is a table but whose
    build is gone (restored, or its swap gave up) writes in place, so that table is made first."""
    target = build_target(store, plan)
    if target is None and plan.built_aside and plan.backup_in_table:
        store.keep_as_backup(plan.plan_id)
    return target


def read_plan(row: dict[str, Any], store: Store) -> Plan:
    """The Plan of a stored row; a damaged row raises RebuildError naming the run and the store."""
    try:
        return _plan_from_row(row)
    except (ValueError, TypeError, KeyError) as exc:
        raise RebuildError(
            f"cannot read rebuild plan {row.get('plan_id')} (table run_plans of {store.redacted_url()}): "
            f"{type(exc).__name__}: {exc}. {_how_to_proceed(row.get('backup_path'))}"
        ) from None


def load_plan(store: Store, plan_id: str) -> Plan:
    """The stored plan of a run, from any machine."""
    row = store.read_run_plan(plan_id)
    if row is None:
        raise RebuildError(f"run {plan_id} has no plan in {store.redacted_url()} (table run_plans): "
                           f"it was never planned, or its plan was deleted. {_how_to_proceed(None)}")
    return read_plan(row, store)


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
    so a stored plan always has its backup."""
    directory = Path(directory).resolve()
    if store.read_run_plan(plan_id) is not None:
        return open_plan(store, plan_id)
    # Two processes started on the same run, on any machines, must not both plan it: the second
    # one's backup would be taken after the first had started replacing rows.
    with store.run_lock(f"plan/{plan_id}"):
        if store.read_run_plan(plan_id) is not None:
            return open_plan(store, plan_id)
        remove_litter(directory)
        if backup:
            _refuse_replanning_a_started_run(store, directory, plan_id)
        return _create_plan_locked(store, directory, plan_id=plan_id, kind=kind, start=start, symbols=symbols,
                                   chunk_size=chunk_size, backup=backup, full_history=full_history)


def open_plan(store: Store, plan_id: str) -> Plan:
    """The plan of a run being resumed, with its backup checked: a damaged backup is reported now,
    not when a restore is needed. A backup on another machine (an assistant resuming the run) is
    checked where it is, by that machine's next attempt."""
    plan = load_plan(store, plan_id)
    if plan.backup:
        backup = Path(plan.backup)
        if backup.exists() or plan.planned_on in (None, socket.gethostname()):
            check_backup(backup, quick=True)
        else:
            log.info("%s: its backup %s is on %s, not checked from here", plan_id, backup, plan.planned_on)
    return plan


def backups_in(directory: Path) -> list[Path]:
    """A run directory's backup: a Parquet file, or a backup.table naming the store table that holds it."""
    return [p for p in (Path(directory) / BACKUP_FILE, Path(directory) / BACKUP_TABLE_FILE) if p.exists()]


def backup_table_run(path: Path) -> str | None:
    """The run whose backup table `path` (a backup.table) names; None for another file or an unreadable one."""
    if Path(path).name != BACKUP_TABLE_FILE:
        return None
    try:
        return str(_table_backup(Path(path))["plan_id"])
    except RebuildError:
        return None


def _refuse_replanning_a_started_run(store: Store, directory: Path, plan_id: str) -> None:
    evidence = []
    backup = next(iter(backups_in(directory)), None)
    if backup is not None:
        evidence.append(f"its backup {backup}")
    chunks = store.markers(prefix=markers.chunks_of(plan_id))
    if chunks:
        evidence.append(f"{len(chunks)} finished chunk(s)")
    if store.markers(exact=markers.rebuild_from(plan_id)):
        evidence.append("its completion marker")
    if evidence:
        raise RebuildError(
            f"the plan of run {plan_id} is missing from {store.redacted_url()} (table run_plans) but the run already "
            f"started ({', '.join(evidence)} exist): planning it again would replace its backup with rows it already "
            f"rebuilt. {_how_to_proceed(backup)}"
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
    backup_path = None
    # The rows written from here on are made in the build table too; a run built aside keeps the
    # table it replaces as its backup (no copy now), the others write a backup file first.
    built_aside = bool(backup and replaces["rows"]) and store.begin_build(plan_id, symbols, start)
    if backup:
        directory.mkdir(parents=True, exist_ok=True)
        # The chunks replace rows up to the last bar they read; the backup covers up to the last
        # bar now, and a restore puts back exactly that range.
        end = store.last_bar_date()
        covers = {"plan_id": plan_id, "start_date": str(start), "end_date": str(end) if end else None,
                  "symbols": sorted(symbols)}
        path = directory / (BACKUP_TABLE_FILE if built_aside else BACKUP_FILE)
        discard_orphans(path)  # a killed attempt's partial backup
        temporary = temporary_for(path)
        try:
            if built_aside:
                temporary.write_text(json.dumps({**covers, "table": backup_table_name(plan_id)}, indent=1) + "\n")
            else:
                saved = store.export_indicators(temporary, symbols, start, {"stockpipe": json.dumps(covers)}, end=end,
                                                batch_symbols=_backup_batch(len(symbols), replaces["rows"]))
                check_backup(temporary, quick=True, expected_rows=saved)
            os.link(temporary, path)  # never over an existing backup
        finally:
            temporary.unlink(missing_ok=True)
        if built_aside:
            log.info("%s keeps the %d rows it replaces in the indicators table until it swaps in its own, then "
                     "in %s (%s)", plan_id, replaces["rows"], backup_table_name(plan_id), path)
        else:
            log.info("%s backed up %d rows to %s", plan_id, saved, path)
        backup_path = str(path)
    created = utcnow()
    plan = Plan(
        plan_id=plan_id,
        kind=kind,
        start_date=str(start),
        chunk_size=chunk_size,
        chunks=chunk(symbols, chunk_size),
        created_at=created.isoformat(),
        replaces={k: (str(v) if isinstance(v, dt.date) else v) for k, v in replaces.items()},
        backup=backup_path,
        full_history=sorted(set(full_history)),
        planned_on=socket.gethostname(),
        built_aside=built_aside,
    )
    if not store.add_run_plan(plan_id, kind, start, plan.document(), backup_path, plan.planned_on, created):
        return open_plan(store, plan_id)  # unreachable under the run lock; the stored plan wins
    return plan


BACKUP_BATCH_ROWS = 250_000  # indicator rows a backup query reads at once (100 symbols' whole history)


def _backup_batch(symbols: int, rows: int) -> int:
    """Symbols a backup query reads at once: as many as hold about BACKUP_BATCH_ROWS rows, so memory
    stays bounded by that for a full rebuild while a 13-session one is one query instead of 25."""
    return max(100, BACKUP_BATCH_ROWS * symbols // max(rows, 1))


def record_failure(store: Store, plan_id: str, chunk_id: int, error: BaseException | str) -> bool:
    """Keep the chunk's failure in the store, committed on its own (the chunk's transaction was
    rolled back); False (logged) when that is impossible, e.g. the store is unreachable or its disk
    full, where the failure handler must not fail in turn."""
    try:
        store.record_chunk_failure(plan_id, chunk_id, str(error), type(error).__name__, socket.gethostname())
    except Exception as exc:  # noqa: BLE001 - whatever the store raises, the chunk's own error is the one reported
        log.error("chunk %s of %s failed with %s: %s, and its failure could not be recorded in the store: %s",
                  chunk_id, plan_id, type(error).__name__, error, exc)
        return False
    return True


def failures(store: Store, plan_id: str) -> dict[int, dict[str, Any]]:
    """Each failed chunk's last failure record."""
    return {int(f["chunk_id"]): {**f, "chunk_id": int(f["chunk_id"]), "type": f["error_type"],
                                 "at": f["failed_at"].isoformat() if f["failed_at"] else None}
            for f in store.read_chunk_failures(plan_id)}


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def progress_report(store: Store, plan: Plan) -> dict[str, Any]:
    """Chunks done, pending and failed, with saved rows so far: the report's body."""
    found = {m["marker_id"]: m for m in store.markers(prefix=markers.chunks_of(plan.plan_id))}
    done = [i for i in range(len(plan.chunks)) if markers.indicator_chunk(plan.plan_id, i) in found]
    failed = failures(store, plan.plan_id)
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
        "backup": plan.backup,
        "built_aside": plan.built_aside,  # written into a table of its own, swapped in at the end
    }


def attempt_owner() -> int:
    """The pid of the command running this attempt: Luigi re-enters a task with dynamic
    dependencies once per batch of them, in a fresh child process under `--workers N`."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else os.getpid()


def attempt_started(store: Store, plan_id: str) -> dt.datetime:
    """When this command's attempt at the run started, kept in the store across re-entries. Best
    effort: when it cannot be recorded, the attempt is timed from now."""
    try:
        return store.start_run_attempt(plan_id, f"{socket.gethostname()}:{attempt_owner()}")
    except Exception as exc:  # noqa: BLE001 - timing is never worth failing the run for
        log.warning("cannot record the start of %s's attempt: %s", plan_id, exc)
        return utcnow()


def write_final_report(store: Store, plan: Plan, attempt_start: dt.datetime | None = None, *,
                       marker: Marker | None = None, marker_stats: Sequence[str] = ()) -> tuple[dict[str, Any], bool]:
    """The run's final report, stored with `marker` (its `marker_stats` keys of the report as the
    marker's stats) in one transaction; returns it and False if another worker finished the run first.
    First the replaced rows' space is reclaimed (see `Store.reclaim`), which the report's time includes;
    a run that built its rows aside (`Store.begin_build`) swaps them in with the report instead."""
    if build_target(store, plan) is None:
        store.reclaim("indicators", _count(plan.replaces.get("rows")))
    report = progress_report(store, plan)
    created = dt.datetime.fromisoformat(plan.created_at)
    now = utcnow()
    report["seconds"] = round((now - created).total_seconds(), 3)
    if attempt_start is not None:
        report["seconds_this_attempt"] = round((now - attempt_start).total_seconds(), 3)
    report["finished_at"] = now.isoformat()
    if marker is not None:
        marker = Marker(marker.marker_id, marker.task_family, marker.params, {k: report[k] for k in marker_stats})
    if not store.finish_run(plan.plan_id, json.dumps(report, sort_keys=True, default=str), now, marker,
                            built_aside=plan.built_aside, keep_replaced=plan.backup_in_table, chunks=len(plan.chunks)):
        log.info("%s was finished by another worker meanwhile: its report stands", plan.plan_id)
        return report, False
    log.info("rebuild report %s", json.dumps(report, sort_keys=True, default=str))
    return report, True


def read_report(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's final report from its `run_reports` row (None while unfinished or when unreadable)."""
    if not row or not row.get("report"):
        return None
    try:
        report = json.loads(row["report"])
    except ValueError as exc:
        log.warning("unreadable report of run %s: %s", row.get("plan_id"), exc)
        return None
    return report if isinstance(report, dict) else None


def final_report(store: Store, plan_id: str) -> dict[str, Any] | None:
    """The stored final report of a run, or None while it is unfinished."""
    return read_report(store.read_run_reports(plan_id).get(plan_id))


def check_backup(path: Path, *, quick: bool = False, expected_rows: int | None = None) -> dict[str, Any]:
    """Verify a backup against the row count and checksum recorded when it was taken (`quick`: only
    the footer's count; otherwise every row, read batch by batch, so memory stays bounded by a batch);
    returns its `stockpipe` metadata. A truncated or altered file raises RebuildError naming it."""
    from stockpipe.store.checksum import batch_checksum

    path = Path(path)
    if path.suffix == Path(BACKUP_TABLE_FILE).suffix:
        return _table_backup(path)
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


def _table_backup(path: Path) -> dict[str, Any]:
    """What a backup.table file says: the range a run built aside replaced, and its backup table."""
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or meta.get("table") != backup_table_name(str(meta.get("plan_id"))):
            raise ValueError(f"it does not name run {meta.get('plan_id') if isinstance(meta, dict) else None}'s "
                             "backup table")
    except FileNotFoundError:
        raise RebuildError(f"backup {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise RebuildError(f"{path} is not a stockpipe rebuild backup (unreadable: truncated or damaged?): {exc}") from None
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
    if "table" in meta:
        restored, forgotten = store.restore_from_backup_table(plan_id, symbols, start, end)
        return {"plan_id": plan_id, "start_date": str(start), "end_date": str(end) if end else None,
                "symbols": len(symbols), "rows_restored": restored, "markers_forgotten": forgotten,
                "backup_table": meta["table"]}
    forget = [m["marker_id"] for m in store.markers(prefix=markers.chunks_of(plan_id))]
    forget += [m["marker_id"] for m in store.markers(exact=markers.rebuild_from(plan_id))]
    if end is None and "end_date" not in meta:
        # An older backup: its own last date is the best bound there is.
        dates = [pa.compute.max(b.column("date")).as_py() for b in backup_batches(backup_path) if b.num_rows]
        end = max(dates) if dates else None
    restored = store.restore_indicators(backup_batches(backup_path), symbols, start, forget, end=end,
                                        undone_run=plan_id)
    return {"plan_id": plan_id, "start_date": str(start), "end_date": str(end) if end else None,
            "symbols": len(symbols), "rows_restored": restored, "markers_forgotten": len(forget)}
