"""Where a worker runs each task on DuckDB (stockpipe/execution.py), and the in-process timeout.

Real `luigi` runs on real DuckDB files: one worker runs the store-only tasks in its own process and
keeps one connection for them, tasks that wait on a source run in a child process, `--workers N`
becomes one process, a hung task in the worker's process is stopped by its timeout and the rerun
completes exactly, and two runs that each keep their connection hand the file over to each other.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pytest
from sqlalchemy.engine import make_url

from stockpipe.markers import indicator_chunk as chunk_marker_id
from stockpipe.store import open_store
from tests.conftest import luigi_command
from tests.test_faults import (
    DAY,
    DAY0,
    REBUILD,
    START,
    assert_whole_and_exact,
    configure,
    contents,
    run_ok,
    scan_every_table,
)

pytestmark = pytest.mark.slow

TASK_LINE = re.compile(r"\[pid (\d+)\] Worker Worker\(.*?pid=(\d+)\) running\s+(\w+)\(")


def where_tasks_ran(output: str) -> dict[str, set[str]]:
    """Per task family: 'worker' when it ran in the worker's own process, 'child' when in a fork."""
    found: dict[str, set[str]] = {}
    for task_pid, worker_pid, family in TASK_LINE.findall(output):
        found.setdefault(family, set()).add("worker" if task_pid == worker_pid else "child")
    return found


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    """A DuckDB store on which Daily DAY0 has run (copied per test)."""
    directory = tmp_path_factory.mktemp("seed")
    configure(directory, f"duckdb:///{directory / 'store.duckdb'}")
    run_ok(directory, "Daily", "--date", DAY0)
    return directory


def clone(seed: Path, directory: Path, **sections) -> str:
    directory.mkdir(parents=True)
    shutil.copytree(seed / "data", directory / "data")
    shutil.copy(seed / "store.duckdb", directory / "store.duckdb")
    url = f"duckdb:///{directory / 'store.duckdb'}"
    sections.setdefault("stockpipe", {})["data_dir"] = str(directory / "data")
    configure(directory, url, **sections)
    return url


@pytest.mark.parametrize("workers", [1, 2])
def test_store_and_demo_source_tasks_run_in_the_worker_process(seed, tmp_path, workers):
    url = clone(seed, tmp_path / "run")
    code, output = run_luigi_workers(tmp_path / "run", workers, "Daily", "--date", DAY)
    assert code == 0, output
    ran = where_tasks_ran(output)
    # Only computing and writing the store (the demo source waits on nothing): the worker's own
    # process, no fork per task. A source that waits (csv, yahoo) runs in a child process the worker
    # can terminate at the timeout (test_fault_commands: a hung CSV source's task killed and alerted).
    for family in ("CollectSymbols", "IngestDate", "DailyIndicators", "IndicatorChunk", "ScanWatchlist", "Replicate",
                   "Report", "Daily"):
        assert ran[family] == {"worker"}, (family, ran)
    assert len({worker for _, worker, _ in TASK_LINE.findall(output)}) == 1, "one worker process"
    if workers > 1:
        assert f"--workers {workers} runs its tasks in this process" in output
    assert not (tmp_path / "run" / "store.duckdb.wal").exists(), "the run ended with un-checkpointed changes"
    scan_every_table(url)
    store = open_store(url)
    assert store.read_marker(f"Daily/{DAY}") is not None
    # The chunks after the first take their inputs from an earlier chunk's read (the same rows:
    # tests/services/test_indicators.py).
    chunks = [m["stats"] for m in store.markers(prefix="IndicatorChunk/")]
    assert chunks and any(c["read_ahead"] for c in chunks), chunks
    store.close()


def run_luigi_workers(directory: Path, workers: int, *args: str) -> tuple[int, str]:
    process = luigi_command(directory, *args, "--local-scheduler", "--workers", str(workers))
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def test_a_chunk_hung_in_the_worker_process_is_stopped_by_its_timeout_and_a_rerun_completes(seed, tmp_path):
    clean_url = clone(seed, tmp_path / "clean")
    run_ok(tmp_path / "clean", *REBUILD)
    expected = contents(clean_url)

    url = clone(seed, tmp_path / "run", timeouts={"chunk": 3})
    # The test holds chunk 2's run lock, as a run hung on that chunk would: the chunk task waits for
    # it for ever (a blocking lock call) unless its timeout stops it.
    holder = open_store(url)
    started = time.monotonic()
    with holder.run_lock(chunk_marker_id(f"rebuild-{START}", 1)):
        process = luigi_command(tmp_path / "run", *REBUILD, "--local-scheduler")
        output, _ = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert process.returncode == 30, output
    assert elapsed < 60, f"the hung chunk took {elapsed:.0f} s to be stopped"
    assert re.search(r"IndicatorChunk\S* timed out after 3 seconds", output), output
    assert where_tasks_ran(output)["IndicatorChunk"] == {"worker"}, "the chunk ran in a child process"
    assert not (tmp_path / "run" / "store.duckdb.wal").exists()
    scan_every_table(url)
    store = open_store(url)
    runs = store.query("SELECT task_family, status, error FROM task_runs WHERE status = 'FAILED'").to_pylist()
    assert [r["task_family"] for r in runs] == ["IndicatorChunk"], runs
    assert "timed out after 3 seconds" in runs[0]["error"], runs
    assert store.read_marker(chunk_marker_id(f"rebuild-{START}", 1)) is None
    store.close()

    rerun = run_ok(tmp_path / "run", *REBUILD)
    assert "chunk_id=1)" in rerun
    assert_whole_and_exact(url, expected)


@pytest.mark.postgres
def test_on_postgresql_a_chunk_stuck_in_a_statement_is_cancelled_at_its_timeout_in_the_worker_process(
        seed, postgres_url, tmp_path):
    """With `--workers 1` on PostgreSQL the store's tasks run in the worker's process too. A chunk
    whose DELETE waits on rows another transaction holds is inside libpq, where no signal handler
    runs: at its timeout the statement is cancelled, the chunk fails as timed out with nothing
    written, the other chunks finish, and the rerun completes with the exact values."""
    clean_url = clone(seed, tmp_path / "clean")
    run_ok(tmp_path / "clean", *REBUILD)
    expected = contents(clean_url)
    open_store(clean_url).close()

    (tmp_path / "run").mkdir()
    configure(tmp_path / "run", postgres_url, timeouts={"chunk": 3})
    run_ok(tmp_path / "run", "Daily", "--date", DAY0)
    store = open_store(postgres_url)
    held_symbol = store.active_symbols()[10]  # chunk 1 of chunks of 10
    holder = psycopg2.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False))
    started = time.monotonic()
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT 1 FROM indicators WHERE symbol = %s FOR UPDATE", (held_symbol,))
        code, output = run_luigi_workers(tmp_path / "run", 1, *REBUILD)
    finally:
        holder.rollback()
        holder.close()
    elapsed = time.monotonic() - started
    assert code == 30, output
    # Without the cancel, the DELETE would wait for the holder until statement_timeout (900 s).
    assert elapsed < 60, f"the stuck chunk took {elapsed:.0f} s to be stopped"
    assert re.search(r"IndicatorChunk\S* timed out after 3 seconds", output), output
    ran = where_tasks_ran(output)
    assert ran["IndicatorChunk"] == ran["PlanRebuild"] == {"worker"}, ran
    assert store.read_marker(chunk_marker_id(f"rebuild-{START}", 1)) is None
    assert store.read_marker(chunk_marker_id(f"rebuild-{START}", 2)) is not None, "the other chunks went on"
    failed = store.query("SELECT task_family, error FROM task_runs WHERE status = 'FAILED'").to_pylist()
    assert [r["task_family"] for r in failed] == ["IndicatorChunk"], failed

    rerun = run_ok(tmp_path / "run", *REBUILD)
    assert "chunk_id=1)" in rerun
    assert_whole_and_exact(postgres_url, expected)


@pytest.mark.postgres
def test_on_postgresql_workers_2_runs_chunks_in_the_worker_and_a_child_side_by_side(seed, postgres_url, tmp_path):
    """`--workers 2` on PostgreSQL: the tasks that run one after another (symbols, bars, the plan, the
    watchlist, the replica...) run in the worker's process as with one worker; a plan's chunks run
    side by side in the worker's process and one child at a time. The rows are those of one worker."""
    clean_url = clone(seed, tmp_path / "clean")
    run_ok(tmp_path / "clean", *REBUILD)
    expected = contents(clean_url)
    open_store(clean_url).close()

    (tmp_path / "run").mkdir()
    configure(tmp_path / "run", postgres_url)
    code, output = run_luigi_workers(tmp_path / "run", 2, "Daily", "--date", DAY0)
    assert code == 0, output
    ran = where_tasks_ran(output)
    for family in ("CollectSymbols", "IngestDate", "DailyIndicators", "ScanWatchlist", "Replicate", "Report", "Daily"):
        assert ran[family] == {"worker"}, (family, ran)
    assert ran["IndicatorChunk"] == {"worker", "child"}, ran

    code, output = run_luigi_workers(tmp_path / "run", 2, *REBUILD)
    assert code == 0, output
    ran = where_tasks_ran(output)
    assert ran["PlanRebuild"] == ran["RebuildFrom"] == {"worker"}, ran
    assert ran["IndicatorChunk"] == {"worker", "child"}, ran
    assert_whole_and_exact(postgres_url, expected)


def test_two_runs_keeping_their_connections_hand_the_file_over(seed, tmp_path):
    """A rebuild and a Daily of the next date on one file, started together: each keeps its
    connection across its tasks, so each must let go when the other waits; both finish, the store
    equals the two commands run one after the other, and no WAL is left."""
    url = clone(seed, tmp_path / "run")
    sequential = clone(seed, tmp_path / "sequential")
    run_ok(tmp_path / "sequential", "Daily", "--date", DAY)
    run_ok(tmp_path / "sequential", *REBUILD)

    daily = luigi_command(tmp_path / "run", "Daily", "--date", DAY, "--local-scheduler")
    rebuild = luigi_command(tmp_path / "run", *REBUILD, "--local-scheduler", "--workers", "2")
    outputs = [p.communicate(timeout=300)[0] for p in (daily, rebuild)]
    assert [daily.returncode, rebuild.returncode] == [0, 0], outputs
    assert not (tmp_path / "run" / "store.duckdb.wal").exists()
    scan_every_table(url)
    # The rebuild may have read its bars before or after the Daily stored DAY's: finishing the
    # rebuild again afterwards (a new run id) must change nothing the sequential runs left.
    run_ok(tmp_path / "run", *REBUILD, "--run-id", "again")
    run_ok(tmp_path / "sequential", *REBUILD, "--run-id", "again")
    # The watchlist of DAY keeps the indicators as they were when it was scanned: the Daily's own
    # (warm-up from 500 bars before DAY) or, when the concurrent rebuild's chunk stored DAY first,
    # the rebuild's (warm-up from 500 bars before its start). Both are the exact definition, and
    # Wilder's smoothing leaves them apart in the last bits only; every other value is compared exactly.
    expected = contents(sequential)
    actual_watchlist = contents(url)["watchlist"]
    assert actual_watchlist.column_names == expected["watchlist"].column_names
    for column in expected["watchlist"].column_names:
        got, want = actual_watchlist.column(column), expected["watchlist"].column(column)
        if pa.types.is_floating(want.type):
            np.testing.assert_allclose(got.to_numpy(zero_copy_only=False), want.to_numpy(zero_copy_only=False),
                                       rtol=1e-12, atol=0, err_msg=f"watchlist.{column}")
        else:
            assert got.to_pylist() == want.to_pylist(), f"watchlist.{column}"
    assert_whole_and_exact(url, {**expected, "watchlist": actual_watchlist})
