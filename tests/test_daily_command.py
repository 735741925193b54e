"""`stockpipe daily`, the command for cron, run the way cron runs it; and each store's own run
directories and replica."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from stockpipe import cli, config, tasks
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store import open_store
from tests.conftest import free_port, write_luigi_cfg

UTC = dt.timezone.utc


@pytest.mark.slow
def test_the_readme_cron_line_works_on_a_fresh_install_as_cron_runs_it(tmp_path):
    project = tmp_path / "srv" / "stockpipe"
    project.mkdir(parents=True)
    # luigid is configured but not running: the job must not spend a minute retrying and fail.
    write_luigi_cfg(project, f"duckdb:///{project / 'store.duckdb'}", core={"scheduler_host": "127.0.0.1",
                                                                             "scheduler_port": free_port()})
    command = Path(sys.executable).parent / "stockpipe"  # the absolute path of the installed command
    assert command.exists()
    # Cron's environment: nearly empty, a minimal PATH, another working directory, no logs/ yet.
    # PYTHONPATH is passed only so that the code under test is this checkout's.
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"}
    if os.environ.get("PYTHONPATH"):
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    line = f"cd {project} && mkdir -p logs && {command} daily --date 2025-10-10 >> logs/daily.log 2>&1"
    done = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in environment.items()), "/bin/sh", "-c", line],
                          cwd=tmp_path, timeout=300)
    log = (project / "logs" / "daily.log").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "stockpipe daily: Daily --date 2025-10-10 (given) with the local scheduler (no luigid at" in log
    from stockpipe.store import open_store

    store = open_store(f"duckdb:///{project / 'store.duckdb'}")
    assert store.read_marker("Daily/2025-10-10") is not None
    assert store.read_indicators(start=dt.date(2025, 10, 10)).num_rows == 30


def test_daily_picks_the_session_that_has_just_closed():
    # 07:00 in Seoul on Tuesday is 17:00 (EST) Monday in New York: Monday's session has closed.
    assert cli.daily_date("XNYS", dt.datetime(2026, 11, 23, 22, 0, tzinfo=UTC)) == dt.date(2026, 11, 23)
    # Before the close (10:00 New York) it is the previous session, Friday.
    assert cli.daily_date("XNYS", dt.datetime(2026, 11, 23, 15, 0, tzinfo=UTC)) == dt.date(2026, 11, 20)
    # Thanksgiving: no session, so the day itself (Daily does nothing and says so).
    assert cli.daily_date("XNYS", dt.datetime(2026, 11, 26, 22, 0, tzinfo=UTC)) == dt.date(2026, 11, 26)


def test_each_store_has_its_own_runs_and_replica(duckdb_pipeline, tmp_path, monkeypatch):
    first = duckdb_pipeline.store_url
    assert duckdb_pipeline.build(tasks.Daily(date=dt.date(2025, 10, 10)))
    first_replica = config.replica_path()
    # The same working directory and luigi.cfg, another store (as STOCKPIPE_STORE_URL does it).
    second = f"duckdb:///{tmp_path / 'second.duckdb'}"
    monkeypatch.setenv("STOCKPIPE_STORE_URL", second)
    duckdb_pipeline.configure("demo", tickers=10)
    assert duckdb_pipeline.build(tasks.Daily(date=dt.date(2025, 10, 10)))
    second_replica = config.replica_path()
    assert first_replica != second_replica
    assert first_replica.parent == duckdb_pipeline.data_dir / config.store_slug(first)
    for path, symbols in ((first_replica, 30), (second_replica, 10)):
        with duckdb.connect(str(path), read_only=True) as replica:
            assert replica.execute("SELECT count(*) FROM symbols").fetchone()[0] == symbols
    # The second store planned its own daily run instead of reusing the first store's plan.
    for url, symbols in ((first, 30), (second, 10)):
        plan = rebuild_service.load_plan(open_store(url), "daily-2025-10-10")
        assert len(plan.symbols) == symbols
    from tests.test_cli import run_cli

    code, text = run_cli("status")
    assert str(config.store_dir(second)) in text and "daily-2025-10-10" in text


def test_a_store_directory_name_is_readable_stable_and_never_holds_the_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.store_slug("duckdb:///data/prod.duckdb") == config.store_slug(f"duckdb:///{tmp_path}/data/prod.duckdb")
    assert config.store_slug("duckdb:///data/prod.duckdb").startswith("prod-")
    assert config.store_slug("duckdb:///data/prod.duckdb") != config.store_slug("duckdb:///other/prod.duckdb")
    with_password = config.store_slug("postgresql+psycopg2://app:s3cret@db.example:5432/market")
    assert with_password == config.store_slug("postgresql+psycopg2://app:rotated@db.example:5432/market")
    assert with_password.startswith("market-") and "s3cret" not in with_password
