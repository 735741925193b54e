"""Shared fixtures: real stores (a DuckDB file, a fresh PostgreSQL database per test), Luigi config
isolation, and running the real `luigi` command.

Stores: `store_url`, `store` and `pipeline` are DuckDB. A test about store behaviour (and a few chosen
end-to-end tests) opts into both stores with `@pytest.mark.both_stores`: it then runs once per store,
its PostgreSQL run marked `postgres`. A test that needs PostgreSQL or Redis carries the `postgres` or
`redis` marker (added here from the fixtures it uses), so `pytest -m "not postgres"` runs without them.

Isolation: every test runs from an empty working directory of its own, with Luigi reading only the
package's defaults and tests/luigi.cfg (never the checkout's luigi.cfg), and without the user's
STOCKPIPE_* variables (a STOCKPIPE_REDIS_URL in the shell would otherwise receive the tests' syncs).

A test that needs PostgreSQL, Redis or luigid fails when the service is missing in CI (CI=true) and
skips with the reason on a laptop without it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# yfinance picks its HTTP backend at import: the requests one lets tests answer Yahoo offline.
os.environ.setdefault("YF_DISABLE_CURL_CFFI", "1")

# Settings the tests read instead of the checkout's luigi.cfg (see _isolated_settings).
TEST_LUIGI_CFG = Path(__file__).with_name("luigi.cfg")
os.environ["LUIGI_CONFIG_PATH"] = str(TEST_LUIGI_CFG)

import luigi  # noqa: E402
import luigi.configuration  # noqa: E402
import pytest  # noqa: E402
from luigi.configuration.cfg_parser import LuigiConfigParser  # noqa: E402
from luigi.task_register import Register  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"
# The tests' own services: these two variables configure the suite, not stockpipe, and are kept.
PG_ADMIN_DSN = os.environ.get("STOCKPIPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("STOCKPIPE_TEST_REDIS", "redis://127.0.0.1:6379/0")
TEST_VARIABLES = ("STOCKPIPE_TEST_PG", "STOCKPIPE_TEST_REDIS")

# Fixtures that reach a real service, and the marker a test using one carries.
SERVICE_FIXTURES = {
    "postgres_url": "postgres",
    "redis_prefix": "redis",
    "throwaway_redis": "redis",
    "tls_redis": "redis",
}


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("both_stores") is None or "store_kind" not in metafunc.fixturenames:
        # (A module marked both_stores may hold a test that needs no store; a test marked itself must use one.)
        if any(m.name == "both_stores" for m in metafunc.definition.own_markers):
            raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked both_stores but uses no store fixture")
        return
    metafunc.parametrize("store_kind", [pytest.param("duckdb", id="duckdb"),
                                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in SERVICE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
                item.add_marker(getattr(pytest.mark, marker))


def service_missing(what: str, why: str) -> None:
    message = f"{what} is not available ({why})"
    if IN_CI:
        pytest.fail(message + ": CI must run this test", pytrace=False)
    pytest.skip(message)


@contextmanager
def mounted_tmpfs(directory: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of `megabytes` mounted at `directory` for one test (the tests run as root), unmounted
    afterwards, also when the test fails: a small disk to fill."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        service_missing("a tmpfs mount", mounted.stderr.strip() or "mount failed (needs root)")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


# -- PostgreSQL -----------------------------------------------------------------------------------
def _pg_admin():
    import psycopg2

    try:
        connection = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        service_missing("PostgreSQL", f"{PG_ADMIN_DSN}: {str(exc).strip()}")
    connection.autocommit = True
    return connection


def pg_url_for(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"{base}/{database}"


@pytest.fixture
def postgres_url():
    """A database of its own for this test, dropped afterwards."""
    admin = _pg_admin()
    name = f"stockpipe_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield pg_url_for(name)
    from stockpipe import store as store_module

    for key, opened in list(store_module._OPEN.items()):
        if key[0].endswith("/" + name):
            opened.close()
            store_module._OPEN.pop(key)
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def duckdb_url(tmp_path):
    return f"duckdb:///{tmp_path / 'store.duckdb'}"


@pytest.fixture
def store_kind():
    """DuckDB, the default store; `@pytest.mark.both_stores` parametrizes this over both stores."""
    return "duckdb"


@pytest.fixture
def store_url(request, store_kind, tmp_path):
    if store_kind == "duckdb":
        return f"duckdb:///{tmp_path / 'store.duckdb'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    from stockpipe.store import open_store

    return open_store(store_url)


# -- Redis --------------------------------------------------------------------------------------
@pytest.fixture
def redis_prefix():
    """A key prefix of this test's own on the real Redis server, emptied afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing("Redis", f"{REDIS_TEST_URL}: {exc}")
    prefix = f"stockpipe-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


# -- Luigi ----------------------------------------------------------------------------------------
def _reset_luigi_state() -> None:
    Register.clear_instance_cache()
    from stockpipe import targets

    targets.forget()


@pytest.fixture
def pipeline(tmp_path, store_url, monkeypatch):
    """In-process Luigi runs on an isolated store and data_dir, with a small demo market."""
    return _pipeline(tmp_path, store_url, monkeypatch)


@pytest.fixture
def duckdb_pipeline(tmp_path, duckdb_url, monkeypatch):
    return _pipeline(tmp_path, duckdb_url, monkeypatch)


class Pipeline:
    def __init__(self, tmp_path: Path, store_url: str):
        self.tmp_path = tmp_path
        self.store_url = store_url
        self.data_dir = tmp_path / "data"

    def configure(self, section: str, **values) -> None:
        config = luigi.configuration.get_config()
        if not config.has_section(section):
            config.add_section(section)
        for key, value in values.items():
            config.set(section, key, str(value))
        _reset_luigi_state()

    def build(self, *tasks, workers: int = 1) -> bool:
        _reset_luigi_state()
        ok = luigi.build(list(tasks), local_scheduler=True, workers=workers, log_level="WARNING")
        # Luigi takes a task's result before its process has exited, and a DuckDB task process
        # checkpoints and closes its store on the way out: wait for that, as the `luigi` command
        # does at exit, so a test sees the store (and its file) as a finished run leaves it.
        import multiprocessing

        from luigi.worker import TaskProcess

        for child in multiprocessing.active_children():
            if isinstance(child, TaskProcess):  # not the worker's Manager, which lives on
                child.join(timeout=60)
        return ok

    @property
    def store(self):
        from stockpipe.store import open_store

        return open_store(self.store_url)

    @property
    def store_dir(self) -> Path:
        """This store's runs and replica: a subdirectory of data_dir named after the store."""
        from stockpipe import config

        return self.data_dir / config.store_slug(self.store_url)


def _pipeline(tmp_path, store_url, monkeypatch) -> Pipeline:
    monkeypatch.setenv("STOCKPIPE_STORE_URL", store_url)
    monkeypatch.setenv("STOCKPIPE_SOURCE", "demo")
    pipe = Pipeline(tmp_path, store_url)
    pipe.configure("stockpipe", data_dir=pipe.data_dir, chunk_size=10, daily_chunk_size=10, min_symbols=5,
                   backfill_sessions=600)
    pipe.configure("demo", tickers=30)
    return pipe


def _fresh_luigi_config() -> None:
    """Luigi's config singleton re-read from the package's defaults and tests/luigi.cfg only: not the
    working directory's luigi.cfg, /etc/luigi, nor a user's LUIGI_CONFIG_PATH."""
    from stockpipe import config as stockpipe_config

    LuigiConfigParser._config_paths = [str(stockpipe_config.PACKAGE_DEFAULTS), str(TEST_LUIGI_CFG)]
    LuigiConfigParser._instance = None
    luigi.configuration.get_config()


_fresh_luigi_config()


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path_factory):
    """No test sees the checkout's luigi.cfg, a user's STOCKPIPE_* variables, or another test's settings."""
    for name in list(os.environ):
        if name.startswith("STOCKPIPE_") and name not in TEST_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(TEST_LUIGI_CFG))
    # Subprocesses a test starts without a cwd of their own (and relative paths) land here, not in the checkout.
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    _fresh_luigi_config()
    _reset_luigi_state()
    yield
    _fresh_luigi_config()
    _reset_luigi_state()


# -- the real `luigi` command ---------------------------------------------------------------------
def write_luigi_cfg(directory: Path, store_url: str, **sections: dict) -> Path:
    """A user's luigi.cfg pointing at an isolated store and data_dir."""
    # Only what a user would set: exit codes, timeouts and the rest come from the package's defaults.
    settings: dict[str, dict] = {
        "stockpipe": {"store_url": store_url, "source": "demo", "data_dir": str(directory / "data"),
                      "chunk_size": 10, "daily_chunk_size": 10, "min_symbols": 5, "backfill_sessions": 600},
        "demo": {"tickers": 30},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) for section, values in settings.items())
    path = directory / "luigi.cfg"
    path.write_text(text)
    return path


def prepared_store(directory: Path, store_url: str, **sections: dict):
    """A luigi.cfg for `store_url` and one offline Daily already run: the starting point of a rebuild test."""
    from stockpipe.store import open_store

    write_luigi_cfg(directory, store_url, **sections)
    code, output = run_luigi(directory, "Daily", "--date", "2025-10-10", "--local-scheduler")
    assert code == 0, output
    return open_store(store_url)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def luigi_command(directory: Path, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
    environment["LUIGI_CONFIG_PATH"] = str(directory / "luigi.cfg")
    environment.update(env or {})
    return subprocess.Popen(
        ["luigi", "--module", "stockpipe", *args],
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_luigi(directory: Path, *args: str, timeout: float = 300, env: dict | None = None) -> tuple[int, str]:
    process = luigi_command(directory, *args, env=env)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output
