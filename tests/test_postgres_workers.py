"""PostgreSQL with several workers and processes, and a server that goes away mid-chunk."""

from __future__ import annotations

import os
import re
import subprocess
import time

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import luigi_command, prepared_store, run_luigi

pytestmark = pytest.mark.slow
START = "2025-09-29"


def _dsn(url: str) -> str:
    parsed = make_url(url)
    return f"host={parsed.host} port={parsed.port or 5432} user={parsed.username} dbname={parsed.database}"


def _assert_indicators_whole(store):
    rows = store.query("SELECT count(*) AS n, count(DISTINCT (symbol, date)) AS keys FROM indicators").to_pylist()[0]
    bars = store.bars_extent()[2]
    assert rows["n"] == rows["keys"] == bars


def test_rebuild_with_four_workers_has_no_duplicate_or_missing_row(tmp_path, postgres_url):
    store = prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 3})
    code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", START, "--local-scheduler", "--workers", "4")
    assert code == 0, output
    assert len(store.markers(prefix=f"IndicatorChunk/rebuild-{START}/")) == 10
    _assert_indicators_whole(store)


def test_a_full_history_rebuild_with_two_workers_is_built_aside_and_swapped_in(tmp_path, postgres_url):
    from stockpipe.services import rebuild

    store = prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 3})
    first = str(store.bars_extent()[0])
    with store.session() as session:  # values the rebuild replaces and the restore must bring back
        session.execute("UPDATE indicators SET sma_20 = -1")
    before = store.read_indicators().drop(["created_at"])
    # Its chunks run two at a time, one in a forked child: each finds the build table itself.
    code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", first, "--run-id", "whole", "--local-scheduler",
                             "--workers", "2")
    assert code == 0, output
    assert "swapped in at the end" in output
    assert rebuild.final_report(store, f"rebuild-{first}-whole")["built_aside"] is True
    assert store.query("SELECT count(*) AS n FROM pg_class WHERE relname::text LIKE 'indicators_build%%'")["n"][0].as_py() == 0
    _assert_indicators_whole(store)
    after = store.read_indicators().drop(["created_at"])
    assert after.column_names == before.column_names and after.num_rows == before.num_rows
    assert not after.equals(before)

    # Its backup is the table it replaced, named by backup.table: the real command puts it back.
    backup = rebuild.load_plan(store, f"rebuild-{first}-whole").backup
    assert backup.endswith("/backup.table") and store.has_backup_table(f"rebuild-{first}-whole")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
    environment["LUIGI_CONFIG_PATH"] = str(tmp_path / "luigi.cfg")
    restored = subprocess.run(["stockpipe", "restore", backup], cwd=tmp_path, env=environment, capture_output=True,
                              text=True, timeout=120)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"{before.num_rows:,}" in restored.stdout and "indicators_backup_" in restored.stdout
    assert store.read_indicators().drop(["created_at"]).equals(before)
    assert not store.markers(prefix=f"IndicatorChunk/rebuild-{first}-whole/")


def test_two_processes_on_one_rebuild_never_write_the_same_chunk(tmp_path, postgres_url):
    store = prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 3})
    # --no-lock: Luigi's own pid lock would stop an identical second command line; this shows the
    # store's advisory lock keeps two independent processes from writing one chunk.
    command = ("RebuildFrom", "--start-date", START, "--local-scheduler", "--workers", "2", "--no-lock")
    first = luigi_command(tmp_path, *command)
    second = luigi_command(tmp_path, *command)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    written = re.findall(r"\[chunk (\d+)/10\] \[\d+/\d+\] .* saved", "\n".join(outputs))
    # Skipped at the write's claim, or before any work under the task's run lock.
    skipped = re.findall(r"\[chunk (\d+)/10\] already completed by another worker|"
                         r"IndicatorChunk_\S+ done by another run meanwhile", "\n".join(outputs))
    # A chunk logs its batches only after its own write committed: each chunk exactly once.
    assert sorted(set(written), key=int) == [str(i) for i in range(1, 11)]
    assert len(written) == 10, written
    assert len(store.markers(prefix=f"IndicatorChunk/rebuild-{START}/")) == 10
    _assert_indicators_whole(store)
    ran = sum(len(re.findall(r"running\s+IndicatorChunk", o)) for o in outputs)
    # Any chunk both processes ran was written by one and skipped by the other.
    assert ran - 10 == len(skipped), (ran, skipped)


def test_server_killing_the_backend_mid_chunk_fails_cleanly_and_rerun_completes(tmp_path, postgres_url):
    store = prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 30})
    before = store.read_indicators(start=__import__("datetime").date(2025, 9, 29))
    holder = psycopg2.connect(_dsn(postgres_url))
    with holder.cursor() as cursor:
        # Hold a row the chunk updates after its DELETE and COPY, so it waits mid-transaction.
        cursor.execute("SELECT symbol FROM symbols ORDER BY symbol LIMIT 1 FOR UPDATE")
    process = luigi_command(tmp_path, "RebuildFrom", "--start-date", START, "--local-scheduler")
    admin = psycopg2.connect(_dsn(postgres_url))
    admin.autocommit = True
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query ILIKE 'UPDATE symbols%%'"
            )
            row = cursor.fetchone()
            if row:
                cursor.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                killed = row[0]
        time.sleep(0.05)
    output, _ = process.communicate(timeout=120)
    holder.rollback()
    holder.close()
    admin.close()
    assert killed is not None, output
    assert process.returncode == 30, output
    assert "terminating connection due to administrator command" in output or "server closed the connection" in output
    after_failure = store.read_indicators(start=__import__("datetime").date(2025, 9, 29))
    assert after_failure.equals(before), "the failed chunk must leave the previous rows in place"
    assert store.markers(prefix=f"IndicatorChunk/rebuild-{START}/") == []

    code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", START, "--local-scheduler")
    assert code == 0, output
    assert len(store.markers(prefix=f"IndicatorChunk/rebuild-{START}/")) == 1
    _assert_indicators_whole(store)
