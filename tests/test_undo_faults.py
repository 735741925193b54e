"""Faults injected into real runs (issues 9 and 17): a deleted or garbled plan, damaged backups and
JSON, a Daily committing between a rebuild chunk's read and write, two writers of one symbol's rows.
After each, no row is lost or duplicated and the indicators equal a clean recompute."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stockpipe import cli, tasks
from stockpipe.indicators import indicator_rows
from stockpipe.services import rebuild as rebuild_service
from stockpipe.services.rebuild import RebuildError, restore
from tests.conftest import run_luigi, write_luigi_cfg
from tests.test_pipeline import assert_same_indicators, indicator_frame

DAY = dt.date(2025, 10, 10)
NEXT = dt.date(2025, 10, 13)
START = dt.date(2025, 9, 29)
PLAN_ID = f"rebuild-{START}"


def assert_whole_and_exact(store) -> None:
    """Every bar has exactly one indicator row, no key twice, values equal to a clean recompute."""
    for table in ("bars", "indicators"):
        counts = store.query(f"SELECT count(*) AS n, count(DISTINCT (symbol, date)) AS k FROM {table}").to_pylist()[0]
        assert counts["n"] == counts["k"], f"duplicate rows in {table}"
    bars = store.read_bars()
    assert_same_indicators(indicator_frame(store), indicator_rows(bars))


def run_dir(pipeline, plan_id=PLAN_ID):
    return rebuild_service.run_dir(pipeline.store_dir, plan_id)


def half_done_rebuild(pipeline, monkeypatch):
    """A rebuild whose chunk 1 failed: chunks 0 and 2 replaced their rows, the backup holds the old ones."""
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    original = type(store).replace_indicators

    def chunk_1_fails(self, symbols, start, rows, marker=None, **options):
        if marker is not None and marker.marker_id == f"IndicatorChunk/{PLAN_ID}/1":
            raise RuntimeError("injected: connection lost while writing chunk 1")
        return original(self, symbols, start, rows, marker, **options)

    monkeypatch.setattr(type(store), "replace_indicators", chunk_1_fails)
    assert not pipeline.build(tasks.RebuildFrom(start_date=START))
    monkeypatch.setattr(type(store), "replace_indicators", original)
    assert len(store.markers(prefix=f"IndicatorChunk/{PLAN_ID}/")) == 2
    return store


def last_error(store, family: str) -> str:
    rows = store.query("SELECT error FROM task_runs WHERE task_family = :f AND status = 'FAILED' ORDER BY finished_at",
                       {"f": family}).to_pylist()
    assert rows, f"no failed {family} run recorded"
    return rows[-1]["error"]


def status_output() -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["status"], out)
    return code, out.getvalue()


def test_deleted_plan_refuses_to_replan_and_never_overwrites_the_backup(pipeline, monkeypatch):
    store = half_done_rebuild(pipeline, monkeypatch)
    directory = run_dir(pipeline)
    backup = (directory / "backup.parquet").read_bytes()
    (directory / "plan.json").unlink()

    assert not pipeline.build(tasks.RebuildFrom(start_date=START))
    error = last_error(store, "PlanRebuild")
    assert "plan.json is missing but run rebuild-2025-09-29 already started" in error
    assert f"stockpipe restore {directory / 'backup.parquet'}" in error and "--run-id" in error
    assert (directory / "backup.parquet").read_bytes() == backup, "the backup was overwritten"

    # Doing what the message says gets back to a complete, exact state.
    restore(store, directory / "backup.parquet")
    assert pipeline.build(tasks.RebuildFrom(start_date=START, run_id="2nd"))
    assert_whole_and_exact(store)


def test_garbled_plan_is_named_and_status_still_shows_every_section(pipeline, monkeypatch):
    store = half_done_rebuild(pipeline, monkeypatch)
    directory = run_dir(pipeline)
    (directory / "plan.json").write_text('{"plan_id": "rebuild-2025-09-29", "chun')

    assert not pipeline.build(tasks.RebuildFrom(start_date=START))
    error = last_error(store, "RebuildFrom")
    assert f"cannot read rebuild plan {directory / 'plan.json'}" in error and "stockpipe restore" in error

    code, shown = status_output()
    assert code != 2
    assert "coverage since" in shown and "recent ingests" in shown
    assert "rebuild-2025-09-29" in shown and "unreadable" in shown

    restore(store, directory / "backup.parquet")
    assert pipeline.build(tasks.RebuildFrom(start_date=START, run_id="2nd"))
    assert_whole_and_exact(store)


def _damaged_copies(backup, tmp_path):
    """The backup with half its rows (metadata intact), cut in half bytewise, and one value changed."""
    parquet = pq.ParquetFile(backup)
    table, footer = parquet.read(), parquet.metadata.metadata
    half = tmp_path / "half_rows" / "backup.parquet"
    half.parent.mkdir()
    with pq.ParquetWriter(half, table.schema) as writer:
        writer.write_table(table.slice(0, table.num_rows // 2))
        writer.add_key_value_metadata({k.decode(): v.decode() for k, v in footer.items() if k.startswith(b"stockpipe")})
    cut = tmp_path / "cut" / "backup.parquet"
    cut.parent.mkdir()
    data = backup.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    altered = tmp_path / "altered" / "backup.parquet"
    altered.parent.mkdir()
    rsi = table.column("rsi_14").to_pylist()
    rsi[3] = (rsi[3] or 0) + 1
    changed = table.set_column(table.schema.get_field_index("rsi_14"), "rsi_14", pa.array(rsi, pa.float64()))
    with pq.ParquetWriter(altered, table.schema) as writer:
        writer.write_table(changed)
        writer.add_key_value_metadata({k.decode(): v.decode() for k, v in footer.items() if k.startswith(b"stockpipe")})
    return {"half_rows": half, "cut": cut, "altered": altered}


def test_restore_refuses_a_damaged_backup_and_changes_nothing(pipeline, tmp_path):
    assert pipeline.build(tasks.Daily(date=DAY))
    assert pipeline.build(tasks.RebuildFrom(start_date=START))
    store = pipeline.store
    before = indicator_frame(store)
    markers = len(store.markers(prefix=f"IndicatorChunk/{PLAN_ID}/"))
    for name, damaged in _damaged_copies(run_dir(pipeline) / "backup.parquet", tmp_path).items():
        with pytest.raises(RebuildError, match=str(damaged)) as caught:
            restore(store, damaged)
        assert any(w in str(caught.value) for w in ("truncated", "damaged")), name
        out = io.StringIO()
        assert cli.main(["restore", str(damaged)], out) == 2
    assert_same_indicators(indicator_frame(store), before, exact=True)
    assert len(store.markers(prefix=f"IndicatorChunk/{PLAN_ID}/")) == markers


def test_restore_puts_back_exactly_the_backed_up_range_and_keeps_newer_rows(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    with store.session() as session:
        session.execute("UPDATE indicators SET rsi_14 = 1.5 WHERE date >= :d", {"d": START})
    marked = indicator_frame(store)
    assert pipeline.build(tasks.RebuildFrom(start_date=START))
    assert pipeline.build(tasks.Daily(date=NEXT))
    next_rows = store.read_indicators(start=NEXT, end=NEXT)
    assert next_rows.num_rows == 30

    result = restore(store, run_dir(pipeline) / "backup.parquet")
    assert result["end_date"] == str(DAY)
    # The Daily's session after the backup still has its indicators, and its markers stay valid.
    after = store.read_indicators(start=NEXT, end=NEXT).drop(["created_at"])
    assert after.equals(next_rows.drop(["created_at"]))
    assert store.read_marker(f"DailyIndicators/{NEXT}") is not None
    # Up to the backup's last date: exactly the saved rows.
    restored = indicator_frame(store)
    restored = restored.filter(pa.compute.less_equal(restored.column("date"), pa.scalar(DAY, pa.date32())))
    assert_same_indicators(restored, marked, exact=True)
    for table in ("bars", "indicators"):
        counts = store.query(f"SELECT count(*) AS n, count(DISTINCT (symbol, date)) AS k FROM {table}").to_pylist()[0]
        assert counts["n"] == counts["k"]
    assert store.query("SELECT count(*) AS n FROM bars b WHERE NOT EXISTS (SELECT 1 FROM indicators i "
                       "WHERE i.symbol = b.symbol AND i.date = b.date)").to_pylist()[0]["n"] == 0


def test_truncated_backup_is_detected_when_a_resumed_run_reuses_it(pipeline, monkeypatch, tmp_path):
    store = half_done_rebuild(pipeline, monkeypatch)
    backup = run_dir(pipeline) / "backup.parquet"
    half = _damaged_copies(backup, tmp_path)["half_rows"]
    backup.write_bytes(half.read_bytes())
    assert not pipeline.build(tasks.RebuildFrom(start_date=START))
    assert f"backup {backup} holds" in last_error(store, "RebuildFrom") and "truncated or damaged" in last_error(store, "RebuildFrom")


class _RunDailyAt(logging.Handler):
    """When a chunk logs that it is computing (its bars are read, nothing written yet), run a whole
    `luigi Daily` for the next session against the same store, to completion, before it goes on."""

    def __init__(self, directory, chunk_label: str, store_url: str):
        super().__init__()
        self.directory, self.label, self.store_url = directory, chunk_label, store_url
        self.outputs: list[tuple[int, str]] = []

    def emit(self, record):
        message = record.getMessage()
        if self.outputs or self.label not in message or "computing" not in message:
            return
        from stockpipe.store import open_store

        # Let go of this process's connection, as a holder does between its read and its write.
        open_store(self.store_url).close()
        self.outputs.append(run_luigi(self.directory, "Daily", "--date", str(NEXT), "--local-scheduler"))


@pytest.mark.both_stores
def test_daily_committed_during_a_rebuild_chunk_keeps_its_newer_rows(pipeline, tmp_path):
    assert pipeline.build(tasks.Daily(date=DAY))
    write_luigi_cfg(tmp_path, pipeline.store_url)
    hook = _RunDailyAt(tmp_path, "[chunk 1/3]", pipeline.store_url)
    logger = logging.getLogger("stockpipe.tasks")
    logger.addHandler(hook)
    try:
        assert pipeline.build(tasks.RebuildFrom(start_date=START))
    finally:
        logger.removeHandler(hook)
    store = pipeline.store
    # The Daily really ran inside the chunk's window, and wrote the next session (the hook ran in
    # the chunk's process, so its result is seen through the store).
    assert store.read_marker(f"Daily/{NEXT}") is not None
    assert store.read_bars(start=NEXT, end=NEXT).num_rows == 30
    assert store.read_indicators(start=NEXT, end=NEXT).num_rows == 30, "a chunk deleted rows it never read"
    assert_whole_and_exact(store)


def test_failure_records_and_marker_stats_that_are_garbage_are_named_not_fatal(pipeline, monkeypatch, caplog):
    store = half_done_rebuild(pipeline, monkeypatch)
    directory = run_dir(pipeline)
    (directory / "failed" / "1.json").write_bytes(b"\x00\xffnot json")
    garbled = f"IndicatorChunk/{PLAN_ID}/0"
    with store.session() as session:
        session.execute("UPDATE task_markers SET stats = '{\"rows_saved\": 12' WHERE marker_id = :m", {"m": garbled})

    assert pipeline.build(tasks.RebuildFrom(start_date=START))
    report = json.loads((directory / "report.json").read_text())
    assert report["failed_chunks"][0]["chunk_id"] == 1
    assert str(directory / "failed" / "1.json") in report["failed_chunks"][0]["error"]
    assert report["unreadable_markers"] == [garbled]

    code, shown = status_output()
    assert code != 2 and garbled in shown
    with caplog.at_level("WARNING", logger="stockpipe"):
        result = restore(store, directory / "backup.parquet")
    assert result["markers_forgotten"] == 4
    assert pipeline.build(tasks.RebuildFrom(start_date=START))
    assert_whole_and_exact(store)


def test_rebuild_report_seconds_cover_the_whole_attempt(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    assert pipeline.build(tasks.RebuildFrom(start_date=START))
    report = json.loads((run_dir(pipeline) / "report.json").read_text())
    chunks = pipeline.store.markers(prefix=f"IndicatorChunk/{PLAN_ID}/")
    finished = dt.datetime.fromisoformat(report["finished_at"])
    first_chunk_done = min(m["completed_at"] for m in chunks)
    # The attempt began before its first chunk finished, so it lasted at least from then to the end.
    assert report["seconds_this_attempt"] >= (finished - first_chunk_done).total_seconds()
    assert not (run_dir(pipeline) / "attempt.json").exists()


@pytest.mark.postgres
def test_a_rebuild_chunk_next_to_a_daily_on_postgres_waits_instead_of_failing_on_the_key(postgres_url):
    """Two replaces of one symbol's rows: the second starts while the first has deleted and inserted
    but not committed. It must wait and then replace, not fail with a duplicate key."""
    import psycopg2

    from stockpipe.sources.base import symbols_table
    from stockpipe.store import open_store
    from tests.store.test_contract import bars_rows

    store = open_store(postgres_url)
    store.ensure_schema()
    store.replace_universe(symbols_table({"symbol": ["AAA"]}))
    store.write_bars(bars_rows("AAA", dt.date(2024, 1, 1), 80))
    rows = indicator_rows(store.read_bars())
    store.replace_indicators(["AAA"], dt.date(2024, 1, 1), rows)

    dsn = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    blocker = psycopg2.connect(dsn)
    blocker.cursor().execute("SELECT 1 FROM symbols WHERE symbol = 'AAA' FOR UPDATE")  # holds the first writer before COMMIT
    errors: list[BaseException] = []

    def replace():
        try:
            open_store(postgres_url).replace_indicators(["AAA"], dt.date(2024, 1, 1), rows)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def waiting() -> int:
        with psycopg2.connect(dsn) as probe, probe.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'")
            return cursor.fetchone()[0]

    first = threading.Thread(target=replace)
    first.start()
    deadline = time.monotonic() + 30
    while waiting() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = threading.Thread(target=replace)
    second.start()
    while waiting() < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    blocker.rollback()
    blocker.close()
    first.join(60)
    second.join(60)
    assert errors == []
    assert store.read_indicators().num_rows == rows.num_rows
    assert_same_indicators(indicator_frame(store), rows)


@pytest.mark.postgres
def test_a_dropped_postgres_connection_reports_only_the_real_error(postgres_url, caplog):
    import psycopg2

    from stockpipe.store import open_store

    store = open_store(postgres_url)
    store.ensure_schema()
    admin = psycopg2.connect(postgres_url.replace("postgresql+psycopg2://", "postgresql://").rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    with caplog.at_level("DEBUG"):
        with pytest.raises(psycopg2.OperationalError, match="server closed the connection"):
            with store.session() as session:
                pid = session.fetch("SELECT pg_backend_pid()")[0][0]
                admin.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
                session.fetch("SELECT 1")
    admin.close()
    assert "Exception during reset" not in caplog.text and "connection already closed" not in caplog.text
    assert "SystemError" not in caplog.text
    with store.session() as session:  # the next session gets a fresh connection
        assert session.fetch("SELECT 1") == [(1,)]
