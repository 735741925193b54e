"""`stockpipe status`, `restore` and `init-db` on both stores."""

from __future__ import annotations

import datetime as dt
import io

from stockpipe import cli, tasks
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store.schema import SCHEMA_VERSION

DAY = dt.date(2025, 10, 10)


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(args), out=out), out.getvalue()


def test_init_db_creates_then_reports_current(pipeline):
    code, text = run_cli("init-db")
    assert code == 0 and f"created stockpipe schema version {SCHEMA_VERSION}" in text
    code, text = run_cli("init-db")
    assert f"already at schema version {SCHEMA_VERSION}" in text


def test_status_shows_coverage_runs_and_ingest_quality_and_flags_gaps(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    code, text = run_cli("status", "--since", "2025-10-06")
    assert code == 0, text
    for day in ("2025-10-06", "2025-10-09", "2025-10-10"):
        assert day in text
    assert "daily-2025-10-10" in text and "3/3" in text
    assert "recent ingests" in text and "2025-10-10" in text
    # Remove one session's indicators for some symbols: status names the gap and exits non-zero.
    with pipeline.store.session() as session:
        session.execute("DELETE FROM indicators WHERE date = :d AND symbol IN (SELECT symbol FROM symbols ORDER BY symbol LIMIT 4)",
                        {"d": dt.date(2025, 10, 8)})
    code, text = run_cli("status", "--since", "2025-10-06")
    assert code == 1
    assert "4 symbols without indicators" in text


def test_status_shows_a_rebuild_in_progress(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    plan = rebuild_service.create_plan(
        store, rebuild_service.run_dir(pipeline.data_dir, "rebuild-2025-09-29"), plan_id="rebuild-2025-09-29",
        kind="rebuild", start=dt.date(2025, 9, 29), symbols=store.active_symbols(), chunk_size=10, backup=True,
    )
    assert len(plan.chunks) == 3
    assert pipeline.build(tasks.IndicatorChunk(date=dt.date(2025, 9, 29), plan_id="rebuild-2025-09-29", chunk_id=1))
    code, text = run_cli("status")
    line = next(line for line in text.splitlines() if line.startswith("rebuild-2025-09-29"))
    assert "in progress" in line and "1/3" in line and "0, 2" in line


def test_restore_command_puts_rows_back(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    before = pipeline.store.read_indicators(start=dt.date(2025, 9, 29)).drop(["created_at"])
    assert pipeline.build(tasks.RebuildFrom(start_date=dt.date(2025, 9, 29)))
    backup = rebuild_service.run_dir(pipeline.data_dir, "rebuild-2025-09-29") / "backup.parquet"
    code, text = run_cli("restore", str(backup))
    assert code == 0 and "rows_restored" in text
    after = pipeline.store.read_indicators(start=dt.date(2025, 9, 29)).drop(["created_at"])
    assert after.equals(before)


def test_restore_of_a_file_that_is_not_a_backup_names_it(pipeline, tmp_path, capsys):
    bogus = tmp_path / "notes.parquet"
    bogus.write_text("hello")
    code, _ = run_cli("restore", str(bogus))
    assert code == 2
    assert f"{bogus} is not a stockpipe rebuild backup" in capsys.readouterr().err


def test_watchlist_command_shows_the_latest_scan_as_a_table(pipeline):
    code, text = run_cli("watchlist")
    assert code == 1 and "no watchlist yet" in text
    assert pipeline.build(tasks.ScanWatchlist(date=DAY))
    rows = pipeline.store.read_watchlist(since=DAY, until=DAY).to_pylist()
    code, text = run_cli("watchlist")
    assert code == 0 and f"watchlist {DAY}: {len(rows)} symbols" in text
    for row in rows:
        assert row["symbol"] in text and row["scan_reason"] in text
