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
    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): the CA needs basicConstraints and keyUsage,
    # the server certificate key usages and an authority key identifier.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stockpipe-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash", "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (certs / "server.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "server.cnf", "-out", "server.crt")
    port = free_port()
    log_path = tmp_path / "redis.log"
    process = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs / "server.crt"),
         "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
         "--tls-auth-clients", "no", "--requirepass", "s3cret", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--logfile", str(log_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=5).ping()
            break
        except redis.RedisError as exc:
            if process.poll() is not None:
                log = log_path.read_text() if log_path.exists() else ""
                service_missing("redis-server with TLS", f"the throwaway server exited: {log[-500:]}")
            if time.monotonic() > deadline:
                process.kill()
                # The server runs: a failure here is the client's (e.g. certificate verification), not a missing service.
                pytest.fail(f"cannot talk TLS to the throwaway redis-server on port {port}: {exc}")
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
