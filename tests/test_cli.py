"""`stockpipe status`, `restore`, `check` and `init-db` (`check` on both stores: it reads each store its own way)."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from stockpipe import cli, tasks
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store.schema import SCHEMA_VERSION, TABLES

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
        store, rebuild_service.run_dir(pipeline.store_dir, "rebuild-2025-09-29"), plan_id="rebuild-2025-09-29",
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
    backup = rebuild_service.run_dir(pipeline.store_dir, "rebuild-2025-09-29") / "backup.parquet"
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


def test_status_flags_null_indicators_where_history_exists(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    code, text = run_cli("status", "--since", "2025-10-06")
    assert code == 0 and "NULL indicators" not in text
    # What an indicator computed without its history looks like: every row present, values NULL.
    with pipeline.store.session() as session:
        session.execute("UPDATE indicators SET sma_50 = NULL, macd_signal = NULL WHERE date = :d AND symbol IN "
                        "(SELECT symbol FROM symbols ORDER BY symbol LIMIT 3)", {"d": dt.date(2025, 10, 8)})
    code, text = run_cli("status", "--since", "2025-10-06")
    assert code == 1, text
    line = next(line for line in text.splitlines() if line.startswith("2025-10-08"))
    assert "3 symbols with NULL indicators despite enough history (macd_signal 3, sma_50 3)" in line
    assert "without indicators" not in line  # the rows exist: counting rows alone missed this


def test_first_valid_positions_follow_the_ta_lib_conventions():
    assert cli.first_valid_positions() == {"sma_20": 19, "sma_50": 49, "rsi_14": 14, "macd": 33, "macd_signal": 33,
                                           "macd_hist": 33, "bb_upper": 19, "bb_middle": 19, "bb_lower": 19,
                                           "avg_volume_30": 29}


def test_a_restored_rebuild_is_not_shown_in_progress(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    assert pipeline.build(tasks.RebuildFrom(start_date=dt.date(2025, 9, 29)))
    backup = rebuild_service.run_dir(pipeline.store_dir, "rebuild-2025-09-29") / "backup.parquet"
    assert run_cli("restore", str(backup))[0] == 0
    code, text = run_cli("status")
    line = next(line for line in text.splitlines() if line.startswith("rebuild-2025-09-29"))
    assert "restored (undone)" in line and "in progress" not in line and "0/3" in line


def test_watchlist_tells_a_scan_without_hits_from_a_date_never_scanned(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    code, text = run_cli("watchlist", "--date", "2025-10-09")
    assert code == 1 and "no watchlist scan for 2025-10-09: run `luigi --module stockpipe Daily --date 2025-10-09`" in text
    pipeline.configure("watchlist", rules='[{"name": "nothing", "priority": 1, "limit": 5, "order_by": "close asc", '
                                          '"conditions": ["close < 0"]}]')
    assert pipeline.build(tasks.ScanWatchlist(date=dt.date(2025, 10, 9)))
    code, text = run_cli("watchlist", "--date", "2025-10-09")
    assert code == 0 and "watchlist 2025-10-09: no symbol matched the rules (30 symbols scanned)" in text
    code, text = run_cli("watchlist")  # the latest scan, even one without hits
    assert code == 0 and "watchlist 2025-10-10:" in text


def test_status_into_a_closed_pipe_exits_as_documented_without_a_traceback(tmp_path):
    import os
    import subprocess

    from tests.conftest import prepared_store, write_luigi_cfg

    prepared_store(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}")
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}, "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")}
    whole = subprocess.run(["stockpipe", "status", "--since", "2025-09-01"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert whole.returncode in (0, 1) and len(whole.stdout.splitlines()) > 20, whole.stderr
    # `stockpipe status | head -1`: the reader is gone before the report is written.
    reader = subprocess.Popen(["stockpipe", "status", "--since", "2025-09-01"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader.stdout.close()
    err = reader.stderr.read()
    assert reader.wait(timeout=120) == whole.returncode
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_assist_without_luigid_says_where_it_looked_at_once(tmp_path):
    import os
    import subprocess
    import time

    from tests.conftest import free_port, write_luigi_cfg

    port = free_port()
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}", core={"scheduler_host": "127.0.0.1", "scheduler_port": port})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}, "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")}
    started = time.monotonic()
    done = subprocess.run(["stockpipe", "assist"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30, "no minute of retries"
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    assert f"no luigid answers at http://127.0.0.1:{port}/" in lines[0] and "luigid --background" in lines[0]


# -- stockpipe check ------------------------------------------------------------------------------
@pytest.mark.both_stores
def test_check_passes_on_a_healthy_store_and_reads_every_table(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    code, text = run_cli("check")
    assert code == 0, text
    assert text.startswith("stockpipe check: OK") and f"{len(TABLES) + 1} tables fully read" in text  # and schema_version
    bars = pipeline.store.bars_extent()[2]
    assert f"bars {bars:,}" in text
    if pipeline.store_url.startswith("duckdb"):
        assert "no pending WAL" in text


def _data_block_near_the_middle(path) -> int:
    """The file offset of indicator values that a full scan must read (a data segment, not a validity
    mask, which DuckDB skips when its statistics say there is no NULL), the one nearest the file's middle."""
    import duckdb

    connection = duckdb.connect(str(path), read_only=True)
    try:
        block_size = connection.execute("PRAGMA database_size").fetchall()[0][2]
        segments = connection.execute(
            "SELECT block_id, block_offset FROM pragma_storage_info('indicators') "
            "WHERE block_id >= 0 AND segment_type <> 'VALIDITY' AND compression <> 'Constant'").fetchall()
    finally:
        connection.close()
    header = 3 * 4096  # DuckDB's file header, then block 0
    checksum = 8  # each block starts with its checksum
    middle = path.stat().st_size // 2
    block, offset = min(segments, key=lambda s: abs(header + s[0] * block_size + s[1] - middle))
    return header + block * block_size + checksum + offset


def test_check_of_a_corrupted_duckdb_copy_fails_naming_table_and_recovery(duckdb_pipeline, tmp_path):
    import shutil

    assert duckdb_pipeline.build(tasks.Daily(date=DAY))
    assert duckdb_pipeline.build(tasks.RebuildFrom(start_date=dt.date(2025, 9, 29)))
    store_file = duckdb_pipeline.store.path
    assert not store_file.with_name(store_file.name + ".wal").exists()
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(store_file, copy)
    assert run_cli("check", str(copy))[0] == 0
    offset = _data_block_near_the_middle(copy)
    with open(copy, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xde\xad\xbe\xef" * 64)
    code, text = run_cli("check", str(copy))
    assert code == 1
    lines = text.splitlines()
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith(f"stockpipe check: FAILED {copy}: table indicators: ")
    assert "Corrupt database file" in line and "checksum" in line  # DuckDB's own words
    assert f"move {copy} aside" in line
    replica = duckdb_pipeline.store_dir / "replica.duckdb"
    assert f"restore the tables from the replica {replica} (written " in line
    assert f"into an empty store: `stockpipe restore {replica}`" in line
    backup = duckdb_pipeline.store_dir / "runs" / "rebuild-2025-09-29" / "backup.parquet"
    assert f"`stockpipe restore {backup}`" in line
    # A damaged first block: the file does not even open, and the check says so in DuckDB's words.
    shutil.copyfile(store_file, copy)
    with open(copy, "r+b") as handle:
        handle.seek(3 * 4096 + 100)
        handle.write(b"\xde\xad\xbe\xef" * 64)
    code, text = run_cli("check", str(copy))
    assert code == 1
    assert text.startswith(f"stockpipe check: FAILED {copy}: opening it: Corrupt database file") and "What to do:" in text
    assert "Another program" not in text
    # The original is untouched and still whole.
    assert run_cli("check")[0] == 0


def test_check_flags_duplicate_keys_in_bars_and_indicators(duckdb_pipeline):
    assert duckdb_pipeline.build(tasks.Daily(date=DAY))
    with duckdb_pipeline.store.session() as session:
        for table in ("bars", "indicators"):
            session.execute(f"INSERT INTO {table} SELECT * FROM {table} WHERE symbol = "
                            f"(SELECT min(symbol) FROM {table}) AND date = :d", {"d": DAY})
    symbol = duckdb_pipeline.store.active_symbols()[0]
    code, text = run_cli("check")
    assert code == 1
    assert f"bars: 1 duplicate (symbol, date) key(s), 2 rows (e.g. {symbol} {DAY})" in text
    assert f"indicators: 1 duplicate (symbol, date) key(s), 2 rows (e.g. {symbol} {DAY})" in text


def test_check_flags_a_wal_left_pending_by_a_writer_that_did_not_close(duckdb_pipeline):
    import subprocess
    import sys

    assert duckdb_pipeline.build(tasks.Daily(date=DAY))
    store_file = duckdb_pipeline.store.path
    duckdb_pipeline.store.close()
    # A writer outside stockpipe commits, then dies without closing (no checkpoint).
    subprocess.run([sys.executable, "-c",
                    "import duckdb, os, sys; c = duckdb.connect(sys.argv[1]); "
                    "c.execute(\"UPDATE symbols SET name = 'renamed' WHERE symbol = (SELECT min(symbol) FROM symbols)\"); "
                    "os._exit(0)", str(store_file)], check=True)
    wal = store_file.with_name(store_file.name + ".wal")
    assert wal.exists() and wal.stat().st_size > 0
    code, text = run_cli("check")
    assert code == 1
    assert f"PROBLEM {store_file}: {wal} holds" in text and "a copy of store.duckdb alone would miss them" in text
    assert wal.exists(), "the check is read-only: it must not checkpoint the WAL away"


def test_check_of_a_missing_file_says_so_and_creates_nothing(duckdb_pipeline, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "store.duckdb"
    code, _ = run_cli("check", str(missing))
    assert code == 2
    assert f"{missing}: no such DuckDB file" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_restore_from_the_replica_fills_an_empty_store_that_then_works(duckdb_pipeline, capsys):
    import duckdb

    assert duckdb_pipeline.build(tasks.Daily(date=DAY))
    store = duckdb_pipeline.store
    replica = duckdb_pipeline.store_dir / "replica.duckdb"
    # The replica is the store as of its export (before Daily's own last markers).
    connection = duckdb.connect(str(replica), read_only=True)
    before = {t: connection.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
              for t in ("symbols", "bars", "indicators", "task_markers", "daily_watchlist", "task_runs")}
    connection.close()
    assert before["bars"] == store.bars_extent()[2] and before["daily_watchlist"] > 0
    code, _ = run_cli("restore", str(replica))
    assert code == 2 and "is not empty (symbols has 30 rows)" in capsys.readouterr().err
    store.close()
    store.path.rename(store.path.with_name("damaged.duckdb"))
    code, text = run_cli("restore", str(replica))
    assert code == 0 and f"from {replica}: symbols 30" in text
    for table, rows in before.items():
        assert store.query(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py() == rows, table
    assert run_cli("check")[0] == 0
    # The restored store keeps its declared keys: the next day's Daily (symbol upserts included) runs.
    assert duckdb_pipeline.build(tasks.Daily(date=dt.date(2025, 10, 13)))
    assert store.bars_extent()[1] == dt.date(2025, 10, 13)
