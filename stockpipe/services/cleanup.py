"""Retention of the files the pipeline leaves behind: run directories, rebuild backups, reports, the
replica's previous copy and logs. Days per kind come from `[cleanup]`; a kind set to 0 is kept.

Age is the time since a file was last written (a run directory: since its final report in the
store's `run_reports`). Runs are the directories of this machine's data_dir; whether each is
planned, finished or undone is the store's word (`run_plans`, `run_reports`), whichever machine ran it.
Never deleted, whatever their age:
  - an unfinished run (a directory whose run has no plan in the store yet, or a plan without a
    final report, or one undone by `stockpipe restore`): it is resumed from that plan, and its
    backup is the only copy of the rows it is replacing;
  - a run the store's markers still point to: chunk markers of its plan exist but the run's final
    marker (`RebuildFrom/<run>`, `DailyIndicators/<date>`) does not, so a rerun resumes it and needs
    the plan the chunk numbers refer to;
  - the newest complete rebuild of each start date, and the newest complete daily run (their backup,
    the bulky part, still goes after `backups_days`, unless the run is unfinished or pointed to; a
    backup.table goes with the store table it names);
  - any file named by the newest marker of a task family (e.g. the replica `Replicate` published,
    the report `Report` wrote last);
  - the live replica itself (only its `.previous` copy and temporaries left by a killed refresh go).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from stockpipe import markers
from stockpipe.services import rebuild as rebuild_service
from stockpipe.services.report import REPORTS_DIR
from stockpipe.store import Marker, Store, StoreError

log = logging.getLogger("stockpipe.cleanup")

KINDS = ("runs", "backups", "reports", "replica", "logs")
DAY = 86400.0


@dataclass(frozen=True)
class Item:
    kind: str
    path: str
    bytes: int
    age_days: float
    reason: str  # why it goes, or why it is kept


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                pass
    return total


def _age_days(path: Path, now: float) -> float:
    return max(0.0, (now - path.stat().st_mtime) / DAY)


def _named_paths(store: Store) -> set[Path]:
    """Paths in the stats of each task family's newest marker."""
    named: set[Path] = set()
    for marker in store.newest_markers():
        for value in _strings(marker["stats"]):
            if "/" in value or value.endswith((".html", ".duckdb", ".parquet", ".json")):
                named.add(Path(value).resolve())
    return named


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _final_marker(plan: rebuild_service.Plan) -> str:
    return markers.plan_final_marker(plan.kind, plan.plan_id)


def _timestamp(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.timezone.utc).timestamp()  # the store keeps UTC without a zone


def _runs(store: Store, runs_dir: Path, days: Mapping[str, int], now: float, named: set[Path],
          remove: list[Item], keep: list[Item]) -> None:
    complete: dict[tuple, list[tuple[float, Path, rebuild_service.Plan]]] = {}
    plans = {row["plan_id"]: row for row in store.read_run_plans()}
    reports = store.read_run_reports()
    for directory in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        age = _age_days(directory, now)
        row = plans.get(directory.name)
        if row is None:
            keep.append(Item("runs", str(directory), _size(directory), age,
                             "no plan in the store: being planned, or not a run"))
            continue
        try:
            plan = rebuild_service.read_plan(row, store)
        except RuntimeError as exc:
            keep.append(Item("runs", str(directory), _size(directory), age, f"unreadable plan, kept: {exc}"))
            continue
        finish = reports.get(plan.plan_id) or {}
        # A restored run is unfinished again: a rerun redoes it from the same plan.
        if finish.get("finished_at") is None or finish.get("restored_at") is not None:
            keep.append(Item("runs", str(directory), _size(directory), age, "unfinished: plan without final report"))
            continue
        chunk_markers = store.markers(prefix=markers.chunks_of(plan.plan_id))
        if chunk_markers and not store.completed([_final_marker(plan)]):
            keep.append(Item("runs", str(directory), _size(directory), age,
                             f"{len(chunk_markers)} chunk markers without {_final_marker(plan)}: a rerun resumes it"))
            continue
        group = ("rebuild", plan.start_date) if plan.kind != "daily" else ("daily",)
        complete.setdefault(group, []).append((_timestamp(finish["finished_at"]), directory, plan))

    for group, runs in complete.items():
        runs.sort(key=lambda r: (r[0], r[1].name))
        newest = runs[-1][1]
        for finished, directory, plan in runs:
            age = max(0.0, (now - finished) / DAY)
            protected = directory == newest or directory.resolve() in named
            if not protected and days["runs"] and age > days["runs"]:
                remove.append(Item("runs", str(directory), _size(directory), age, f"complete run older than {days['runs']} days"))
                continue
            why = ("newest complete run of " + (f"start date {plan.start_date}" if group[0] == "rebuild" else "the daily runs")
                   if directory == newest else "named by a marker" if protected else f"younger than {days['runs']} days")
            keep.append(Item("runs", str(directory), _size(directory), age, why))
            for backup in rebuild_service.backups_in(directory):
                size = _size(backup) + _table_bytes(store, backup)
                backup_age = _age_days(backup, now)
                if backup.name == rebuild_service.BACKUP_TABLE_FILE:
                    backup_age = min(backup_age, age)  # its table is made when the run swaps in, not planned
                if days["backups"] and backup_age > days["backups"] and backup.resolve() not in named:
                    remove.append(Item("backups", str(backup), size, backup_age,
                                       f"backup of a complete run older than {days['backups']} days"))
                else:
                    keep.append(Item("backups", str(backup), size, backup_age, "kept with its run"))


def _table_bytes(store: Store, path: Path) -> int:
    run = rebuild_service.backup_table_run(path)
    return store.backup_table_bytes(run) if run is not None else 0


def _drop_backup_table(store: Store, path: Path) -> None:
    """Drop the backup table that a backup.table (or a run directory holding one) names, before
    the file that tells which one it is goes."""
    pointers = [path] if path.is_file() else rebuild_service.backups_in(path) if path.is_dir() else []
    for pointer in pointers:
        run = rebuild_service.backup_table_run(pointer)
        if run is not None and store.drop_backup_table(run):
            log.info("cleanup dropped the backup table of run %s (%s)", run, pointer)


def _aged_files(kind: str, paths: Iterable[Path], days: Mapping[str, int], now: float, named: set[Path],
                remove: list[Item], keep: list[Item]) -> None:
    for path in sorted(paths):
        if not path.is_file():
            continue
        age = _age_days(path, now)
        if path.resolve() in named:
            keep.append(Item(kind, str(path), _size(path), age, "named by the newest marker of its task"))
        elif days[kind] and age > days[kind]:
            remove.append(Item(kind, str(path), _size(path), age, f"older than {days[kind]} days"))
        else:
            keep.append(Item(kind, str(path), _size(path), age, f"younger than {days[kind]} days" if days[kind] else "kept for ever (0)"))


def plan_cleanup(store: Store, *, data_dir: Path, replica_path: Path, log_dir: Path, days: Mapping[str, int],
                 now: float | None = None) -> tuple[list[Item], list[Item]]:
    """(what goes, what stays) without deleting anything."""
    unknown = set(days) ^ set(KINDS)
    if unknown:
        raise ValueError(f"[cleanup] needs days for exactly {', '.join(KINDS)}; got {', '.join(sorted(days))}")
    for kind, value in days.items():
        if value < 0:
            raise ValueError(f"[cleanup] {kind}_days = {value}: days cannot be negative (0 keeps for ever)")
    now = time.time() if now is None else now
    data_dir, replica_path, log_dir = Path(data_dir), Path(replica_path), Path(log_dir)
    named = _named_paths(store)
    live_replica = replica_path.resolve()
    named.add(live_replica)
    remove: list[Item] = []
    keep: list[Item] = []
    _runs(store, data_dir / "runs", days, now, named, remove, keep)
    reports = data_dir / REPORTS_DIR
    _aged_files("reports", reports.glob("*.html") if reports.is_dir() else [], days, now, named, remove, keep)
    previous = replica_path.with_name(replica_path.stem + ".previous" + replica_path.suffix)
    replica_copies = [previous, previous.with_name(previous.name + ".wal")]
    if replica_path.parent.is_dir():  # temporaries a killed refresh left (.replica.duckdb.<pid>.tmp)
        replica_copies += list(replica_path.parent.glob(f".{replica_path.name}.*.tmp"))
        replica_copies += list(replica_path.parent.glob(f".{previous.name}.*.tmp"))
    _aged_files("replica", [p for p in replica_copies if p.resolve() != live_replica], days, now, named, remove, keep)
    # Only files that are logs by name: a log_dir pointed at the wrong directory deletes nothing else.
    _aged_files("logs", [p for p in log_dir.iterdir() if ".log" in p.name] if log_dir.is_dir() else [],
                days, now, named, remove, keep)
    return remove, keep


def clean(store: Store, *, data_dir: Path, replica_path: Path, log_dir: Path, days: Mapping[str, int],
          dry_run: bool = False, now: float | None = None, marker: Marker | None = None,
          changes_days: int = 0) -> dict[str, Any]:
    """Delete what `plan_cleanup` lists (nothing with `dry_run`), and change-log rows older than
    `changes_days` (0: kept for ever); returns what went and the bytes freed."""
    if changes_days < 0:
        raise ValueError(f"[cleanup] changes_days = {changes_days}: days cannot be negative (0 keeps for ever)")
    remove, keep = plan_cleanup(store, data_dir=data_dir, replica_path=replica_path, log_dir=log_dir, days=days, now=now)
    removed: list[Item] = []
    errors: list[str] = []
    for item in remove:
        if dry_run:
            removed.append(item)
            continue
        path = Path(item.path)
        try:
            _drop_backup_table(store, path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            removed.append(item)
            log.info("cleanup removed %s %s (%d bytes, %.0f days old)", item.kind, path, item.bytes, item.age_days)
        except (OSError, StoreError) as exc:
            errors.append(f"{path}: {exc}")
            log.warning("cleanup could not remove %s: %s", path, exc)
    by_kind = {kind: {"files": sum(1 for i in removed if i.kind == kind),
                      "bytes": sum(i.bytes for i in removed if i.kind == kind)} for kind in KINDS}
    stats = {"dry_run": dry_run, "removed": len(removed), "bytes_freed": sum(i.bytes for i in removed),
             "by_kind": by_kind, "kept": len(keep), "errors": errors,
             "paths": [i.path for i in removed][:200]}
    log.info("cleanup%s: %d removed, %.1f MB freed, %d kept", " (dry run)" if dry_run else "", len(removed),
             stats["bytes_freed"] / 1e6, len(keep))
    stats["changes_pruned"] = 0
    if changes_days and not dry_run:
        cutoff = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).replace(tzinfo=None)
        stats["changes_pruned"] = store.prune_changes(cutoff - dt.timedelta(days=changes_days))
        if stats["changes_pruned"]:
            log.info("cleanup forgot %d change-log rows older than %d days", stats["changes_pruned"], changes_days)
    if errors:
        raise OSError(f"cleanup could not remove {len(errors)} path(s): {'; '.join(errors[:3])}")
    if marker is not None and not dry_run:
        store.touch(Marker(marker.marker_id, marker.task_family, marker.params, stats))
    return {**stats, "items": [asdict(i) for i in removed], "kept_items": [asdict(i) for i in keep]}
