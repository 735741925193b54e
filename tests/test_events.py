"""Metrics and alerts never slow the pipeline, and Redis outages are survived (issue 17 items 4, 12, 15)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from stockpipe import events, tasks
from stockpipe.store import open_store
from stockpipe.redaction import encode_userinfo, redact_url
from stockpipe.services import redis_sync
from tests.conftest import REDIS_TEST_URL, free_port, run_luigi, service_missing, write_luigi_cfg
from tests.test_faults import assert_whole_and_exact

DAY = dt.date(2025, 10, 10)


class SilentServer:
    """Accepts TCP connections and never answers: a hung Redis."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self):
        self.listener.close()
        for connection in self.accepted:
            connection.close()


def test_a_redis_that_never_answers_does_not_slow_tasks_and_is_reported_once(tmp_path):
    server = SilentServer()
    url = f"redis://127.0.0.1:{server.port}/0"
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}")
    try:
        code, output = run_luigi(tmp_path, "ScanWatchlist", "--date", str(DAY), "--local-scheduler",
                                 env={"STOCKPIPE_REDIS_URL": url})
    finally:
        server.close()
        breaker = events._breaker_file(url)
        if os.path.exists(breaker):
            os.unlink(breaker)
    assert code == 0, output
    runs = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}").query("SELECT status FROM task_runs").to_pylist()
    assert len(runs) >= 7 and all(r["status"] == "DONE" for r in runs)
    # One attempt, then the breaker keeps every other task (in any process) away from it.
    assert len(server.accepted) == 1, f"{len(server.accepted)} connections to a Redis that never answers"
    assert output.count(f"Redis at {url} does not answer") == 1, output


def test_a_killed_syncs_lock_expires_and_a_held_lock_is_kept_alive(redis_prefix):
    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    key = f"{redis_prefix}tmp:sync-lock"
    assert redis_sync.LOCK_SECONDS <= 30
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, redis; from stockpipe.services import redis_sync\n"
         f"client = redis.Redis.from_url({REDIS_TEST_URL!r}, decode_responses=True)\n"
         f"with redis_sync.held_lock(client, {key!r}, 'killed-sync', seconds=1.5):\n"
         "    print('locked', flush=True); time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert client.get(key) == "killed-sync"
    time.sleep(1.6)
    assert client.get(key) is None, "a killed sync's lock outlived its expiry"

    with redis_sync.held_lock(client, key, "working", seconds=0.6):
        time.sleep(1.5)  # more than twice the expiry: only the refresher keeps it
        assert client.get(key) == "working"
    assert client.get(key) is None


@pytest.fixture
def throwaway_redis(tmp_path):
    """A redis-server of this test's own on a free port (the shared one is never stopped)."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server", "not on PATH")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp_path)]

    class Server:
        url = f"redis://127.0.0.1:{port}/0"

        def start(self):
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port, socket_timeout=1).ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)

        def kill(self):
            self.process.kill()
            self.process.wait()

    server = Server()
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


def test_redis_killed_mid_sync_and_restarted_then_the_rerun_syncs_everything(pipeline, throwaway_redis, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_REDIS_URL", throwaway_redis.url)
    original = redis_sync.documents

    def kill_redis_mid_sync(rows):
        # The sync holds its lock and has read the watchlist; its writes are next.
        os.kill(throwaway_redis.process.pid, 9)
        return original(rows)

    monkeypatch.setattr(redis_sync, "documents", kill_redis_mid_sync)
    assert not pipeline.build(tasks.Daily(date=DAY))
    assert throwaway_redis.process.wait(timeout=10) == -9, "the sync never got as far as its writes"
    store = pipeline.store
    for done in (f"ScanWatchlist/{DAY}", f"Replicate/{DAY}"):
        assert store.read_marker(done) is not None
    assert store.read_marker(f"RedisSync/{DAY}/incremental") is None

    throwaway_redis.start()
    monkeypatch.setattr(redis_sync, "documents", original)
    assert pipeline.build(tasks.Daily(date=DAY))
    client = redis.Redis.from_url(throwaway_redis.url, decode_responses=True)
    rows = store.read_watchlist(since=DAY, until=DAY).to_pylist()
    assert sorted(client.zrange(f"stockpipe:watchlist:{DAY}", 0, -1)) == sorted(r["symbol"] for r in rows)
    assert client.get("stockpipe:watchlist:latest") == str(DAY)
    assert_whole_and_exact(store)


PASSWORD = "Zq9s3cr@t/Kx:w#Jrd@Vx"
PIECES = ("Zq9", "s3cr", "Kx:w", "#Jrd", "Jrd@Vx", "%40t")


def test_redaction_hides_a_password_whatever_the_url():
    for url in (f"postgresql+psycopg2://app:{PASSWORD}@db:5432/prod", f"redis://:{PASSWORD}@cache:6379/0",
                f"rediss://user:{PASSWORD}@cache/0"):
        shown = redact_url(url)
        assert ":***@" in shown
        for piece in PIECES:
            assert piece not in shown, (url, shown)
    assert redact_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert encode_userinfo(f"redis://:{PASSWORD}@cache:6379/0") == "redis://:Zq9s3cr%40t%2FKx%3Aw%23Jrd%40Vx@cache:6379/0"


def test_a_password_with_odd_characters_never_reaches_the_log(tmp_path, postgres_url):
    # The test server trusts local connections: the password is sent and ignored, so the run works.
    store_url = postgres_url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)
    redis_url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens: Redis tasks fail
    write_luigi_cfg(tmp_path, "duckdb:///unused.duckdb")
    code, output = run_luigi(tmp_path, "Daily", "--date", str(DAY), "--local-scheduler",
                             env={"STOCKPIPE_STORE_URL": store_url, "STOCKPIPE_REDIS_URL": redis_url})
    assert code == 30, output  # the Redis steps fail; everything else is done
    assert "is unreachable" in output
    for piece in PIECES:
        assert piece not in output, f"{piece!r} of the password is in the log"
    unreachable = store_url.replace("127.0.0.1:5432", "127.0.0.1:1", 1)
    code, output = run_luigi(tmp_path, "Daily", "--date", str(DAY), "--local-scheduler", env={"STOCKPIPE_STORE_URL": unreachable})
    assert code != 0 and "postgres:***@127.0.0.1:1" in output, output
    for piece in PIECES:
        assert piece not in output, f"{piece!r} of the password is in the log"
