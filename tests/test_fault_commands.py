"""Faults injected into real `luigi` commands (issue 17): overlapping runs, a hung source under a
timeout, a killed task process, a full disk, kills that leave temporary files or helpers behind."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis

from stockpipe.store import open_store
from tests.conftest import REDIS_TEST_URL, luigi_command, mounted_tmpfs, prepared_store, run_luigi, write_luigi_cfg
from tests.test_undo_faults import assert_whole_and_exact

pytestmark = pytest.mark.slow
DAY = "2025-10-10"


def test_two_identical_dailies_started_together_do_the_work_once(tmp_path):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url)
    runs = [luigi_command(tmp_path, "Daily", "--date", DAY, "--local-scheduler") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    both = "".join(outputs)
    assert len(re.findall(r"stored \d+ bars", both)) == 1, both
    assert len(re.findall(r"replica .* refreshed", both)) == 1, both
    assert len(re.findall(rf"stockpipe Daily {DAY}: ", both)) == 1, both
    store = open_store(url)
    done = store.query("SELECT task_id, count(*) AS n FROM task_runs WHERE status = 'DONE' GROUP BY task_id").to_pylist()
    assert done and all(r["n"] == 1 for r in done), done
    assert_whole_and_exact(store)


def test_the_same_command_line_for_another_directory_and_store_is_not_refused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        write_luigi_cfg(directory, f"duckdb:///{directory / 'store.duckdb'}")
    running = luigi_command(first, "Daily", "--date", DAY, "--local-scheduler")
    for line in running.stdout:
        if "running" in line and "CollectSymbols" in line:
            break
    code, output = run_luigi(second, "Daily", "--date", DAY, "--local-scheduler")
    rest = running.communicate(timeout=300)[0]
    assert code == 0, output
    assert running.returncode == 0, rest
    assert open_store(f"duckdb:///{second / 'store.duckdb'}").read_marker(f"Daily/{DAY}") is not None


def _hung_csv_source(directory):
    """A [csv] path whose only file is a FIFO nobody writes: reading it never returns."""
    bars = directory / "bars"
    bars.mkdir()
    os.mkfifo(bars / "bars.csv")
    return {"stockpipe": {"source": "csv"}, "csv": {"path": str(bars)}}


def _alerts(prefix):
    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    return [json.loads(a) for a in client.lrange(f"{prefix}alerts", 0, -1)]


def test_a_task_timeout_is_recorded_and_alerted(tmp_path, redis_prefix):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url, timeouts={"collect_symbols": 3}, redis={"prefix": redis_prefix},
                    **_hung_csv_source(tmp_path))
    code, output = run_luigi(tmp_path, "CollectSymbols", "--date", DAY, "--local-scheduler",
                             env={"STOCKPIPE_REDIS_URL": REDIS_TEST_URL})
    assert code == 30, output
    runs = open_store(url).query("SELECT task_family, status, error FROM task_runs").to_pylist()
    assert [(r["task_family"], r["status"]) for r in runs] == [("CollectSymbols", "FAILED")], runs
    assert "timed out after 3 seconds" in runs[0]["error"]
    alerts = _alerts(redis_prefix)
    assert len(alerts) == 1 and alerts[0]["task_family"] == "CollectSymbols" and "timed out" in alerts[0]["error"]


def test_a_killed_task_process_is_recorded_and_alerted(tmp_path, redis_prefix):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url, redis={"prefix": redis_prefix}, **_hung_csv_source(tmp_path))
    process = luigi_command(tmp_path, "CollectSymbols", "--date", DAY, "--local-scheduler",
                            env={"STOCKPIPE_REDIS_URL": REDIS_TEST_URL})
    output = []
    for line in process.stdout:
        output.append(line)
        found = re.search(r"\[pid (\d+)\] Worker .* running\s+CollectSymbols", line)
        if found:
            child = int(found.group(1))
            assert child != process.pid, "the task runs in a child process of its own (it has a timeout)"
            os.kill(child, signal.SIGKILL)
            break
    output.append(process.communicate(timeout=120)[0])
    assert process.returncode == 30, "".join(output)
    runs = open_store(url).query("SELECT task_family, status, error FROM task_runs").to_pylist()
    assert [(r["task_family"], r["status"]) for r in runs] == [("CollectSymbols", "FAILED")], runs
    assert "died unexpectedly with exit code -9" in runs[0]["error"]
    assert "died" in _alerts(redis_prefix)[0]["error"]


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", 48) as disk:
        yield disk


def _fill(directory):
    """Fill the file system of `directory` to the last byte."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_a_full_disk_during_a_chunk_exits_30_and_the_rerun_completes(small_disk):
    url = f"duckdb:///{small_disk / 'store.duckdb'}"
    store = prepared_store(small_disk, url)
    code, output = run_luigi(small_disk, "PlanRebuild", "--start-date", "2025-09-29", "--local-scheduler")
    assert code == 0, output
    filler = _fill(small_disk)
    code, output = run_luigi(small_disk, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler")
    assert code == 30, output
    assert "No space left on device" in output or "Out of Memory" in output or "disk" in output.lower(), output
    filler.unlink()
    code, output = run_luigi(small_disk, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler")
    assert code == 0, output
    assert_whole_and_exact(store)


def test_a_full_disk_during_replicate_records_the_real_error(small_disk, tmp_path, redis_prefix):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url, replica={"path": str(small_disk / "replica.duckdb")}, redis={"prefix": redis_prefix})
    _fill(small_disk)
    code, output = run_luigi(tmp_path, "Replicate", "--date", DAY, "--local-scheduler")
    assert code == 30, output
    failed = open_store(url).query("SELECT task_family, error FROM task_runs WHERE status = 'FAILED'").to_pylist()
    assert [r["task_family"] for r in failed] == ["Replicate"], failed
    assert "No space left on device" in failed[0]["error"], failed
    assert "cannot rollback" not in failed[0]["error"]
    assert list(small_disk.glob(".replica.duckdb.*")) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    prepared_store(tmp_path, url)
    from stockpipe.config import store_slug
    from stockpipe.tempfiles import temporary_for

    data = tmp_path / "data" / store_slug(url)  # the store's own directory
    run = data / "runs" / "rebuild-2025-09-29"
    run.mkdir(parents=True)
    dead = _dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        host = temporary_for(tmp_path / "x").name.split(".")[-2].rsplit("-", 1)[0]
        litter = [run / f".backup.parquet.{host}-{dead}.tmp",
                  data / f".replica.duckdb.{host}-{dead}.tmp", data / f".replica.duckdb.{host}-{dead}.tmp.wal"]
        kept = run / f".backup.parquet.{host}-{alive.pid}.tmp"
        for path in [*litter, kept]:
            path.write_bytes(b"x" * 1024)
        code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler")
        assert code == 0, output
        code, output = run_luigi(tmp_path, "Daily", "--date", "2025-10-13", "--local-scheduler")
        assert code == 0, output
        assert [p for p in litter if p.exists()] == []
        assert kept.exists(), "a running process's temporary file was removed"
    finally:
        alive.kill()
        alive.wait()


def test_killing_only_luigi_leaves_no_helper_holding_its_output(tmp_path):
    # As in the committed luigi.cfg: the completion cache is a multiprocessing manager process.
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}", worker={"cache_task_completion": "true"})
    process = luigi_command(tmp_path, "Daily", "--date", DAY, "--local-scheduler")
    for line in process.stdout:
        if "Running Worker" in line:
            break
    helpers = [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(process.pid)],
                                               capture_output=True, text=True).stdout.split()]
    assert helpers, "luigi forked no helper (cache_task_completion's manager)"
    os.kill(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=20)  # EOF: nobody else holds the pipe
    except subprocess.TimeoutExpired:
        for pid in helpers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"helper process(es) {helpers} outlived luigi and kept its output pipe open")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for pid in helpers:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    states.append(stat.read().split(")")[1].split()[0])
            except FileNotFoundError:
                pass
        if all(state == "Z" for state in states):
            break
        time.sleep(0.1)
    assert all(state == "Z" for state in states), f"helpers still running: {helpers} {states}"


def test_two_dailies_for_one_date_each_report_what_they_did_on_postgres(tmp_path, postgres_url):
    write_luigi_cfg(tmp_path, postgres_url)
    runs = [luigi_command(tmp_path, "Daily", "--date", DAY, "--local-scheduler", "--workers", str(w)) for w in (1, 2)]
    outputs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    both = "".join(outputs)
    assert len(re.findall(r"stored \d+ bars", both)) == 1, both
    assert len(re.findall(r"replica .* refreshed", both)) == 1, both
    store = open_store(postgres_url)
    done = store.query("SELECT task_id, count(*) AS n FROM task_runs WHERE status = 'DONE' GROUP BY task_id").to_pylist()
    assert all(r["n"] == 1 for r in done), done
    assert_whole_and_exact(store)


def test_a_daily_weekend_with_redis_after_a_friday_points_latest_at_friday(tmp_path, redis_prefix):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url, redis={"prefix": redis_prefix})
    env = {"STOCKPIPE_REDIS_URL": REDIS_TEST_URL}
    for day in ("2025-10-10", "2025-10-11"):
        code, output = run_luigi(tmp_path, "Daily", "--date", day, "--local-scheduler", env=env)
        assert code == 0, output
    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    assert client.get(f"{redis_prefix}watchlist:latest") == "2025-10-10"
    code, output = run_luigi(tmp_path, "RedisHealthCheck", "--date", "2025-10-11", "--local-scheduler", env=env)
    assert code == 0, output
    assert dt.date.fromisoformat(client.get(f"{redis_prefix}watchlist:latest")).weekday() < 5
