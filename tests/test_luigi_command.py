"""The real `luigi --module stockpipe ...` command: exit codes, --workers 2 on one DuckDB file, and
a rebuild killed with SIGKILL that resumes without redoing finished chunks."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

from stockpipe.store import open_store
from tests.conftest import luigi_command, run_luigi, write_luigi_cfg

pytestmark = pytest.mark.slow


def indicator_values(url: str):
    table = open_store(url).read_indicators().drop(["created_at"])
    return table.sort_by([("symbol", "ascending"), ("date", "ascending")])


def test_daily_and_rebuild_exit_zero_with_two_workers_on_one_duckdb_file(tmp_path):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url)
    code, output = run_luigi(tmp_path, "Daily", "--date", "2025-10-10", "--local-scheduler", "--workers", "2")
    assert code == 0, output
    code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler", "--workers", "2")
    assert code == 0, output
    assert "could not set lock" not in output.lower()
    # One process writes a DuckDB file at a time, so --workers 2 runs the chunks in one process
    # (two only took turns at the write lock, each paying an open and a checkpoint per chunk).
    pids = set(re.findall(r"\[pid (\d+)\] Worker .* running\s+IndicatorChunk", output))
    assert len(pids) == 1 and "--workers 2 runs its tasks in this process" in output, output
    store = open_store(url)
    assert len(store.markers(prefix="IndicatorChunk/rebuild-2025-09-29/")) == 3
    assert store.read_indicators(start=dt.date(2025, 10, 10)).num_rows == 30


def test_a_failing_task_makes_luigi_exit_non_zero(tmp_path):
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}", stockpipe={"min_symbols": 1000})
    code, output = run_luigi(tmp_path, "Daily", "--date", "2025-10-10", "--local-scheduler")
    assert code == 30, output
    assert "returned 30 symbols for 2025-10-10, fewer than the minimum 1000" in output


def test_killed_rebuild_resumes_to_the_uninterrupted_result_without_redoing_chunks(tmp_path):
    work, reference = tmp_path / "killed", tmp_path / "reference"
    work.mkdir()
    reference.mkdir()
    url = f"duckdb:///{work / 'store.duckdb'}"
    settings = {"stockpipe": {"chunk_size": 2}, "demo": {"tickers": 40}}
    write_luigi_cfg(work, url, **settings)
    code, output = run_luigi(work, "Daily", "--date", "2025-10-10", "--local-scheduler")
    assert code == 0, output
    # The same store, copied before the rebuild, gets the uninterrupted run.
    shutil.copy(work / "store.duckdb", reference / "store.duckdb")
    reference_url = f"duckdb:///{reference / 'store.duckdb'}"
    write_luigi_cfg(reference, reference_url, **settings)
    code, output = run_luigi(reference, "RebuildFrom", "--start-date", "2023-06-01", "--local-scheduler")
    assert code == 0, output

    process = luigi_command(work, "RebuildFrom", "--start-date", "2023-06-01", "--local-scheduler", start_new_session=True)
    saved_lines = 0
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if re.search(r"\[chunk \d+/20\] \[2/2\] .* saved", line):
            saved_lines += 1
            if saved_lines == 6:
                os.killpg(process.pid, signal.SIGKILL)
                break
        assert time.monotonic() < deadline, "rebuild never got going"
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    store = open_store(url)
    done_before = {m["marker_id"]: m["completed_at"] for m in store.markers(prefix="IndicatorChunk/rebuild-2023-06-01/")}
    assert 6 <= len(done_before) < 20

    code, output = run_luigi(work, "RebuildFrom", "--start-date", "2023-06-01", "--local-scheduler")
    assert code == 0, output
    done_after = {m["marker_id"]: m["completed_at"] for m in store.markers(prefix="IndicatorChunk/rebuild-2023-06-01/")}
    assert len(done_after) == 20
    assert {k: done_after[k] for k in done_before} == done_before, "a finished chunk was redone"
    redone = set(re.findall(r"running\s+IndicatorChunk\(date=2023-06-01, plan_id=rebuild-2023-06-01, chunk_id=(\d+)\)", output))
    assert not redone & {k.rsplit("/", 1)[1] for k in done_before}

    actual, expected = indicator_values(url), indicator_values(reference_url)
    assert actual.column_names == expected.column_names
    assert actual.num_rows == expected.num_rows
    for name in actual.column_names[2:]:
        a = actual.column(name).to_numpy(zero_copy_only=False).astype(float)
        b = expected.column(name).to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_array_equal(a, b, err_msg=name)
