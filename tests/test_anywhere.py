"""The package behaves the same from any directory with any config file: installed as a wheel (not
from the checkout), run from a directory of the user's own with a file that sets only what they care
about. Exit codes, completion checks and timeouts must not depend on the project's luigi.cfg."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from stockpipe.store import StoreError, open_store

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]
# The venv must see its own stockpipe, not a checkout on PYTHONPATH (how worktrees run the suite): there
# a build's stockpipe.egg-info reads as "already installed" and pip would skip the wheel.
WITHOUT_PYTHONPATH = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with stockpipe installed from a built wheel; dependencies come from this interpreter."""
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies are this interpreter's (which may itself be a virtualenv); its stockpipe is
    # not: a plain path in a .pth file adds the directory without running its editable-install hooks.
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = root / "wheels"
    # Without PYTHONPATH: a checkout on it (the worktree, after the build left stockpipe.egg-info
    # there) makes pip take the wheel as already installed and skip it.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = subprocess.run([str(venv / "bin" / "pip"), "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(PROJECT)],
                           capture_output=True, text=True, env=clean)
    assert build.returncode == 0, build.stderr
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--quiet", *map(str, wheels.glob("*.whl"))],
                             capture_output=True, text=True, env=clean)
    assert install.returncode == 0, install.stderr
    return venv / "bin"


def run_elsewhere(bin_dir: Path, home: Path, config_text: str, *args: str, timeout: float = 300) -> tuple[int, str]:
    """The issue's recipe: a config file beside a working directory that has no luigi.cfg."""
    elsewhere = home / "elsewhere"
    elsewhere.mkdir(parents=True, exist_ok=True)
    (home / "stockpipe.cfg").write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "LUIGI_", "PYTHONPATH"))}
    env["LUIGI_CONFIG_PATH"] = "../stockpipe.cfg"
    # `python -m luigi` is the `luigi` command, run by the venv's interpreter (the script itself
    # belongs to the dependency's install, outside the venv).
    completed = subprocess.run([str(bin_dir / "python"), "-m", "luigi", "--module", "stockpipe", *args, "--local-scheduler"],
                               cwd=elsewhere,
                               env=env, capture_output=True, text=True, timeout=timeout)
    return completed.returncode, completed.stdout + completed.stderr


def user_config(home: Path, **stockpipe_settings) -> str:
    settings = {"store_url": f"duckdb:///{home / 'store.duckdb'}", "source": "demo", "min_symbols": 1,
                "data_dir": str(home / "data"), **stockpipe_settings}
    return "[stockpipe]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()) + "[demo]\ntickers = 20\n"


def test_the_wheel_runs_daily_from_a_users_directory_with_only_their_settings(installed, tmp_path):
    code, output = run_elsewhere(installed, tmp_path, user_config(tmp_path), "Daily", "--date", "2025-10-10")
    assert code == 0, output
    assert f"{installed.parent}" in subprocess.run(
        [str(installed / "python"), "-c", "import stockpipe; print(stockpipe.__file__)"], capture_output=True, text=True,
        cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout, "the test must run the installed wheel, not the checkout"
    store = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}")
    bars = store.bars_extent()[2]
    assert bars > 0
    assert store.read_indicators().num_rows == bars, "every stored bar has its indicator row"
    assert not (tmp_path / "store.duckdb.wal").exists(), "a finished run leaves no pending WAL"


def test_a_failure_exits_non_zero_without_the_projects_luigi_cfg(installed, tmp_path):
    code, output = run_elsewhere(installed, tmp_path, user_config(tmp_path, min_symbols=1000), "Daily", "--date", "2025-10-10")
    assert code == 30, output
    assert "fewer than the minimum 1000" in output


def test_a_users_file_overrides_the_packaged_exit_codes(installed, tmp_path):
    text = user_config(tmp_path, min_symbols=1000) + "[retcode]\ntask_failed = 3\n"
    code, output = run_elsewhere(installed, tmp_path, text, "Daily", "--date", "2025-10-10")
    assert code == 3, output


def test_a_stuck_postgresql_statement_is_cancelled(postgres_url, monkeypatch):
    import luigi.configuration

    config = luigi.configuration.get_config()
    if not config.has_section("timeouts"):
        config.add_section("timeouts")
    config.set("timeouts", "pg_statement", "1")
    store = open_store(postgres_url)
    started = time.monotonic()
    with pytest.raises(Exception, match="statement timeout"):
        with store.session(write=False) as session:
            session.fetch("SELECT pg_sleep(30)")
    assert time.monotonic() - started < 10


def test_a_postgresql_server_that_never_answers_fails_the_connection_in_bounded_time():
    import luigi.configuration

    config = luigi.configuration.get_config()
    if not config.has_section("timeouts"):
        config.add_section("timeouts")
    config.set("timeouts", "pg_connect", "2")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP connections, never says a word
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    port = silent.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect"):
        with open_store(f"postgresql+psycopg2://nobody@127.0.0.1:{port}/nothing").session(write=False):
            pass
    assert time.monotonic() - started < 15
    silent.close()


def test_every_task_family_has_a_configurable_worker_timeout():
    import datetime as dt

    import luigi.configuration

    from stockpipe import tasks

    day = dt.date(2025, 10, 10)
    assert tasks.IndicatorChunk(date=day, plan_id="p", chunk_id=0).worker_timeout == 1800
    assert tasks.RedisSync(date=day).worker_timeout == 300
    families = [cls for cls in vars(tasks).values() if isinstance(cls, type) and issubclass(cls, tasks.StockpipeTask)]
    for cls in families:
        assert cls.timeout_setting in tasks.config.timeouts().param_kwargs, cls
    config = luigi.configuration.get_config()
    if not config.has_section("timeouts"):
        config.add_section("timeouts")
    config.set("timeouts", "chunk", "0")
    assert tasks.IndicatorChunk(date=day, plan_id="p2", chunk_id=0).worker_timeout is None
