"""Redis with a password and TLS (rediss://): a throwaway redis-server from the installed binary."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time

import pytest
import redis

from stockpipe import tasks
from stockpipe.services.redis_sync import RedisUnavailable, connect
from tests.conftest import free_port, service_missing

DAY = dt.date(2025, 10, 10)


@pytest.fixture
def tls_redis(tmp_path):
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not server or not openssl:
        service_missing("redis-server with TLS", "redis-server or openssl is not installed")
    certs = tmp_path / "certs"
    certs.mkdir()
    run = lambda *args: subprocess.run([openssl, *args], cwd=certs, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stockpipe-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.cnf", "-out", "server.crt")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs / "server.crt"),
         "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
         "--tls-auth-clients", "no", "--requirepass", "s3cret", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                service_missing("redis-server with TLS", "the throwaway server did not start")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_sync_over_tls_with_a_password(pipeline, tls_redis, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_REDIS_URL", tls_redis)
    assert pipeline.build(tasks.Daily(date=DAY))
    client = redis.Redis.from_url(tls_redis, decode_responses=True)
    assert client.get("stockpipe:watchlist:latest") == str(DAY)
    assert client.zcard(f"stockpipe:watchlist:{DAY}") == pipeline.store.read_watchlist(since=DAY, until=DAY).num_rows


def test_a_wrong_password_is_a_clear_error_without_the_secret(tls_redis):
    wrong = tls_redis.replace(":s3cret@", ":nope@")
    with pytest.raises(RedisUnavailable, match=r"rediss://:\*\*\*@127\.0\.0\.1:\d+/0.* is unreachable") as failure:
        connect(wrong)
    assert "nope" not in str(failure.value)
