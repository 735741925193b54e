"""Retention: trees of runs of every kind, and exactly what is kept."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import time
from pathlib import Path

import pytest

from stockpipe import cli, tasks, trading_calendar
from stockpipe.services import cleanup
from stockpipe.store import Marker

NOW = time.time()
DAYS = {"runs": 60, "backups": 30, "reports": 90, "replica": 7, "logs": 30}


def _age(path: Path, days: float) -> None:
    stamp = NOW - days * 86400
    os.utime(path, (stamp, stamp))


def _file(path: Path, days: float, size: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    _age(path, days)
    return path


def _run(store, data: Path, plan_id: str, *, start: str, kind: str = "rebuild", finished_days: float | None,
         backup_days: float | None = None) -> Path:
    """A run: its plan in the store, a final report there finished `finished_days` ago (None:
    unfinished), and its directory with a backup written `backup_days` ago."""
    directory = data / "runs" / plan_id
    directory.mkdir(parents=True)
    plan = {"chunk_size": 2, "chunks": [["A", "B"], ["C"]], "replaces": {}, "full_history": []}
    backup = str(directory / "backup.parquet") if backup_days is not None else None
    assert store.add_run_plan(plan_id, kind, dt.date.fromisoformat(start), json.dumps(plan), backup, "host",
                              dt.datetime(2025, 1, 1))
    if backup_days is not None:
        _file(directory / "backup.parquet", backup_days, size=5000)
    if finished_days is not None:
        finished = dt.datetime.fromtimestamp(NOW - finished_days * 86400, dt.timezone.utc).replace(tzinfo=None)
        store.finish_run(plan_id, json.dumps({"plan_id": plan_id, "finished_at": finished.isoformat()}), finished)
    _age(directory, finished_days or 1)
    return directory


def _tree(root: Path, store, data: Path | None = None) -> dict[str, set[Path]]:
    """Every kind of file, with the set that must go and the set that must stay."""
    data, logs = data or root / "data", root / "logs"
    gone: set[Path] = set()
    kept: set[Path] = set()

    # Rebuilds of one start date: the older complete one goes, the newest complete one stays (its
    # old backup goes).
    gone.add(_run(store, data, "rebuild-2025-01-02", start="2025-01-02", finished_days=100, backup_days=100))
    newest = _run(store, data, "rebuild-2025-01-02-2nd", start="2025-01-02", finished_days=80, backup_days=80)
    kept.add(newest)
    gone.add(newest / "backup.parquet")
    # The only complete run of its start date: kept, however old.
    only = _run(store, data, "rebuild-2025-02-03", start="2025-02-03", finished_days=200)
    kept.add(only)
    # Unfinished (plan without report): kept whole, backup included, however old.
    unfinished = _run(store, data, "rebuild-2025-03-03", start="2025-03-03", finished_days=None, backup_days=150)
    kept |= {unfinished, unfinished / "backup.parquet"}
    # Complete on disk, but its chunk markers exist without RebuildFrom's: a rerun resumes it.
    pointed = _run(store, data, "rebuild-2025-04-01", start="2025-04-01", finished_days=120, backup_days=120)
    pointed_twin = _run(store, data, "rebuild-2025-04-01-2nd", start="2025-04-01", finished_days=110)
    store.touch(Marker("IndicatorChunk/rebuild-2025-04-01/0", "IndicatorChunk", {}, {"rows_saved": 1}))
    kept |= {pointed, pointed / "backup.parquet", pointed_twin}
    # A finished rebuild whose markers are all there is not protected by them.
    store.touch(Marker("IndicatorChunk/rebuild-2025-02-03/0", "IndicatorChunk", {}, {}))
    store.touch(Marker("RebuildFrom/rebuild-2025-02-03", "RebuildFrom", {}, {}))
    # Young runs stay even when not the newest; a 40-day-old backup goes, its 40-day-old run stays.
    young = _run(store, data, "rebuild-2025-05-01", start="2025-05-01", finished_days=10, backup_days=10)
    kept |= {young, young / "backup.parquet",
             _run(store, data, "rebuild-2025-05-01-2nd", start="2025-05-01", finished_days=5)}
    middle = _run(store, data, "rebuild-2025-06-02", start="2025-06-02", finished_days=40, backup_days=40)
    kept.add(middle)
    gone.add(middle / "backup.parquet")
    # Finished, then undone by `stockpipe restore`: unfinished again (a rerun redoes it), kept whole.
    restored = _run(store, data, "rebuild-2025-06-20", start="2025-06-20", finished_days=100, backup_days=100)
    with store.session() as session:
        session.execute("UPDATE run_reports SET restored_at = :t WHERE plan_id = 'rebuild-2025-06-20'",
                        {"t": dt.datetime(2025, 7, 1)})
    kept |= {restored, restored / "backup.parquet"}
    # A directory without a plan (being planned, or not ours): kept.
    kept.add(_file(data / "runs" / "rebuild-2025-07-01" / ".plan.lock", 300, size=0))
    # Daily runs: old complete ones go, the newest complete one and an unfinished one stay.
    gone.add(_run(store, data, "daily-2025-06-02", start="2025-05-27", kind="daily", finished_days=100))
    gone.add(_run(store, data, "daily-2025-06-03", start="2025-05-28", kind="daily", finished_days=90))
    kept.add(_run(store, data, "daily-2025-05-01", start="2025-04-24", kind="daily", finished_days=None))
    kept.add(_run(store, data, "daily-2025-09-01", start="2025-08-25", kind="daily", finished_days=70))

    # Reports: old go, young stay, and the one the newest Report marker names stays.
    gone.add(_file(data / "reports" / "2025-01-02.html", 100))
    kept.add(_file(data / "reports" / "2025-09-01.html", 20))
    named = _file(data / "reports" / "2025-01-03.html", 100)
    store.touch(Marker("Report/2025-01-03", "Report", {"date": "2025-01-03"}, {"path": str(named)}))
    kept.add(named)

    # Replica: the live file stays however old; its previous copy and a killed refresh's temporary go.
    kept.add(_file(data / "replica.duckdb", 50))
    gone |= {_file(data / "replica.previous.duckdb", 10), _file(data / ".replica.duckdb.4242.tmp", 10)}

    # Logs: old logs go, a young one stays, a file that is not a log by name is never touched.
    gone.add(_file(logs / "daily.log.1", 45))
    kept |= {_file(logs / "daily.log", 1), _file(logs / "notes.txt", 400)}
    return {"gone": gone, "kept": kept, "data": data, "logs": logs}


def _existing(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_cleanup_removes_exactly_the_expired_files(store, tmp_path):
    tmp_path = tmp_path / "tree"  # the store's own files live beside it
    tree = _tree(tmp_path, store)
    before = _existing(tmp_path)
    kwargs = dict(data_dir=tree["data"], replica_path=tree["data"] / "replica.duckdb", log_dir=tree["logs"],
                  days=DAYS, now=NOW)

    dry = cleanup.clean(store, dry_run=True, **kwargs)
    assert _existing(tmp_path) == before, "a dry run deleted something"
    assert {Path(i["path"]) for i in dry["items"]} == tree["gone"]
    expected_bytes = sum(cleanup._size(p) for p in tree["gone"])
    assert dry["bytes_freed"] == expected_bytes > 0

    done = cleanup.clean(store, **kwargs)
    assert {Path(i["path"]) for i in done["items"]} == tree["gone"]
    assert done["bytes_freed"] == expected_bytes
    after = _existing(tmp_path)
    for path in tree["gone"]:
        assert not path.exists(), f"{path} should be gone"
    for path in tree["kept"]:
        assert path.exists(), f"{path} should be kept"
    removed = before - after
    assert all(any(p == g or g in p.parents for g in tree["gone"]) for p in removed), \
        f"removed more than expected: {sorted(str(p) for p in removed if not any(p == g or g in p.parents for g in tree['gone']))}"

    again = cleanup.clean(store, **kwargs)
    assert again["removed"] == 0 and _existing(tmp_path) == after


def test_zero_days_keeps_every_kind(duckdb_url, tmp_path):
    from stockpipe.store import open_store

    store = open_store(duckdb_url)
    tmp_path = tmp_path / "tree"
    tree = _tree(tmp_path, store)
    before = _existing(tmp_path)
    result = cleanup.clean(store, data_dir=tree["data"], replica_path=tree["data"] / "replica.duckdb",
                           log_dir=tree["logs"], days={k: 0 for k in DAYS}, now=NOW)
    assert result["removed"] == 0 and _existing(tmp_path) == before


def test_negative_days_are_refused_naming_the_setting(duckdb_url, tmp_path):
    from stockpipe.store import open_store

    with pytest.raises(ValueError, match=r"\[cleanup\] logs_days = -1"):
        cleanup.clean(open_store(duckdb_url), data_dir=tmp_path, replica_path=tmp_path / "r.duckdb", log_dir=tmp_path,
                      days={**DAYS, "logs": -1})


def test_cli_dry_run_lists_what_would_go_and_the_space(duckdb_pipeline, tmp_path, monkeypatch):
    pipeline = duckdb_pipeline
    pipeline.configure("stockpipe", data_dir=tmp_path / "tree" / "data")
    # The store's own directory under data_dir holds its runs, reports and replica.
    from stockpipe import config

    tree = _tree(tmp_path / "tree", pipeline.store, data=config.store_dir())
    pipeline.configure("cleanup", log_dir=tree["logs"])
    before = _existing(tmp_path / "tree")
    out = io.StringIO()
    assert cli.main(["cleanup", "--dry-run"], out=out) == 0
    text = out.getvalue()
    assert _existing(tmp_path / "tree") == before
    for path in tree["gone"]:
        assert str(path) in text
    freed = sum(cleanup._size(p) for p in tree["gone"])
    assert f"{len(tree['gone'])} path(s), would free" in text and f"({freed:,} bytes)" in text
    # The real thing through the task that Daily runs, for the last session that has closed (the
    # machine's date may still be ahead in New York, or its session still trading: refused). Ages
    # count from now, whatever the date.
    day = trading_calendar.last_closed_session("XNYS")
    assert pipeline.build(tasks.CleanupOldFiles(date=day))
    assert all(not p.exists() for p in tree["gone"]) and all(p.exists() for p in tree["kept"])
    marker = pipeline.store.read_marker(f"CleanupOldFiles/{day}")
    assert marker["stats"]["removed"] == len(tree["gone"]) and marker["stats"]["bytes_freed"] == freed
