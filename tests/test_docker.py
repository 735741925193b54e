"""docker/: the whole stack as containers, built without any image registry and run for real.

The module builds every image with docker/build-offline.sh (a debootstrap'd Debian base, PostgreSQL
and Redis from Debian's packages, the stockpipe images), brings up the stack of docker/compose.yaml
under a project name of its own, and checks what a user relies on: Daily in the `stockpipe` service
fills the stack's PostgreSQL and Redis and shows DONE in the containerised luigid, `assist`
containers take chunks of a RebuildFrom, the `cron` service's schedule, and the spark profile.

Docker is installed from Debian's packages when missing and `dockerd` started when none runs (a
machine without an init system). Everything the module started (containers, networks, volumes, the
dockerd) is removed by ID at the end; the images stay, so the next run reuses them (build-offline.sh
skips an image whose content hash is unchanged). Under CI=true a Docker that cannot run fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from stockpipe import markers
from tests.conftest import free_port, service_missing

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DEMO_TICKERS = 100  # docker/luigi.cfg leaves [demo] tickers at its default
CHUNK_RE = re.compile(r"running\s+IndicatorChunk\(date=2025-09-29, plan_id=rebuild-2025-09-29, chunk_id=(\d+)\)")


def _run(argv: list[str], timeout: float, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                            env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-5000:]}"
    return result


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# -- the engine -------------------------------------------------------------------------------------
def _install_docker() -> None:
    """Debian's docker.io, docker-compose (1.29) and debootstrap, when any is missing."""
    needed = {"docker": "docker.io", "dockerd": "docker.io", "debootstrap": "debootstrap"}
    if shutil.which("docker-compose") is None and not _compose_v2_available():
        needed["docker-compose"] = "docker-compose"
    missing = sorted({package for tool, package in needed.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        service_missing("Docker", f"{', '.join(missing)} not installed and this is not a root Debian machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], timeout=600, env=env)
    _run(["apt-get", "install", "-y", "-qq", *missing], timeout=900, env=env)


def _compose_v2_available() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory):
    """A Docker engine that answers; started here (and stopped at the end) when none runs."""
    _install_docker()
    started = None
    if not _docker_answers():
        if os.geteuid() != 0:
            service_missing("Docker", "no engine answers and only root can start dockerd")
        log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        log = open(log_path, "w")
        # No init system here: dockerd runs as this module's child, in a session of its own.
        started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while not _docker_answers():
            if started.poll() is not None or time.monotonic() > deadline:
                started.kill()
                service_missing("Docker", f"dockerd did not start: {log_path.read_text()[-2000:]}")
            time.sleep(1)
    yield
    if started is not None:
        started.terminate()  # dockerd stops its containerd and any container still running
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait(timeout=30)


# -- the stack ----------------------------------------------------------------------------------------
class Stack:
    def __init__(self, project: str, env: dict, ports: dict):
        self.project = project
        self.env = env
        self.ports = ports
        self.password = env["POSTGRES_PASSWORD"]
        base = ["docker", "compose"] if _compose_v2_available() else ["docker-compose"]
        self.command = [*base, "-p", project, "-f", str(COMPOSE_FILE), "--env-file", env["_ENV_FILE"]]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.command, *args], timeout=timeout, env=self.env, check=check)

    def containers(self, service: str) -> list[str]:
        found = _run(["docker", "ps", "-q", "--no-trunc",
                      "--filter", f"label=com.docker.compose.project={self.project}",
                      "--filter", f"label=com.docker.compose.service={service}"], timeout=60)
        return found.stdout.split()

    def logs(self, container: str) -> str:
        return _run(["docker", "logs", container], timeout=120).stdout

    def luigid(self, path: str, **query) -> dict:
        url = f"http://127.0.0.1:{self.ports['LUIGID_HOST_PORT']}{path}?data={urllib.parse.quote(json.dumps(query))}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())["response"]

    def connect(self):
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.ports["POSTGRES_HOST_PORT"], user="stockpipe",
                                      password=self.password, dbname="stockpipe", connect_timeout=10)
        connection.autocommit = True
        return connection

    def sql(self, query: str, *params):
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def redis(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.ports["REDIS_HOST_PORT"], decode_responses=True,
                           socket_timeout=10, socket_connect_timeout=10)

    def remove_everything(self) -> None:
        """Containers, networks and volumes of this project, by ID (images stay as the next run's cache)."""
        label = f"label=com.docker.compose.project={self.project}"
        for kind, listing, remove in (
            ("container", ["docker", "ps", "-aq", "--no-trunc", "--filter", label], ["docker", "rm", "-f", "-v"]),
            ("network", ["docker", "network", "ls", "-q", "--no-trunc", "--filter", label], ["docker", "network", "rm"]),
            ("volume", ["docker", "volume", "ls", "-q", "--filter", label], ["docker", "volume", "rm", "-f"]),
        ):
            ids = _run(listing, timeout=60, check=False).stdout.split()
            if ids:
                _run([*remove, *ids], timeout=180, check=False)


def _report(request, line: str) -> None:
    """A line on the terminal even under capture: the build and test times CI's log should show."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


@pytest.fixture(scope="module")
def stack(docker_engine, tmp_path_factory, request):
    started = time.monotonic()
    build = subprocess.run([str(ROOT / "docker" / "build-offline.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=1800, cwd=ROOT, stdin=subprocess.DEVNULL)
    build_seconds = time.monotonic() - started
    if build.returncode != 0:
        pytest.fail(f"docker/build-offline.sh exited {build.returncode}:\n{build.stdout[-6000:]}", pytrace=False)
    cached = build.stdout.count("(cached)")

    project = f"stockpipe-test-{uuid.uuid4().hex[:8]}"
    ports = {name: str(free_port()) for name in
             ("POSTGRES_HOST_PORT", "REDIS_HOST_PORT", "LUIGID_HOST_PORT", "SPARK_MASTER_HOST_PORT", "SPARK_UI_HOST_PORT")}
    settings = {"POSTGRES_PASSWORD": uuid.uuid4().hex, "STOCKPIPE_STORE_URL": "", "STOCKPIPE_REDIS_URL": "",
                "STOCKPIPE_SOURCE": "demo", "STOCKPIPE_ALERT_URLS": "", "ASSIST_WORKERS": "2", **ports}
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    # Nothing of the calling shell's stockpipe/compose settings may leak into the stack.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STOCKPIPE_", "POSTGRES_", "REDIS_", "LUIGI", "SPARK_", "COMPOSE_", "ASSIST_"))}
    env.update(settings, _ENV_FILE=str(env_file))
    stack = Stack(project, env, {k: int(v) for k, v in ports.items()})
    up_seconds = float("nan")
    try:
        up = time.monotonic()
        stack.compose("up", "-d", "postgres", "redis", "luigid", timeout=300)
        _wait_healthy(stack, ("postgres", "redis", "luigid"), timeout=180)
        up_seconds = time.monotonic() - up
        yield stack
    finally:
        stack.remove_everything()
        _report(request, f"docker: build-offline.sh {build_seconds:.0f} s ({cached} images cached), "
                         f"stack up {up_seconds:.0f} s, "
                         f"whole module {time.monotonic() - started:.0f} s")


def _wait_healthy(stack: Stack, services: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {}
        for service in services:
            ids = stack.containers(service)
            inspected = _run(["docker", "inspect", "-f", "{{ if .State.Health }}{{ .State.Health.Status }}{{ else }}none{{ end }}",
                              *ids], timeout=60, check=False).stdout.split() if ids else ["missing"]
            states[service] = inspected
        if all(state and all(s == "healthy" for s in state) for state in states.values()):
            return
        if time.monotonic() > deadline:
            logs = {s: stack.compose("logs", "--tail", "30", s, check=False).stdout for s in services}
            pytest.fail(f"not healthy after {timeout:.0f} s: {states}\n{logs}", pytrace=False)
        time.sleep(2)


@pytest.fixture(scope="module")
def daily(stack):
    """Daily for 2025-10-10 in the one-off `stockpipe` service, through the stack's luigid."""
    result = stack.compose("run", "--rm", "stockpipe", "luigi", "--module", "stockpipe", "Daily", "--date", "2025-10-10",
                           timeout=900, check=False)
    return result


# -- the tests ------------------------------------------------------------------------------------------
def test_daily_in_the_stockpipe_service_fills_the_stacks_postgresql_redis_and_luigid(stack, daily):
    assert daily.returncode == 0, daily.stdout[-5000:]
    # The run went through the containerised luigid, not a local scheduler.
    assert re.search(r"Informed scheduler that task\s+Daily_2025_10_10", daily.stdout), daily.stdout[-5000:]

    assert stack.sql("SELECT count(*) FROM symbols WHERE is_active") == [(DEMO_TICKERS,)]
    assert stack.sql("SELECT count(*) FROM bars WHERE date = '2025-10-10'") == [(DEMO_TICKERS,)]
    assert stack.sql("SELECT count(*) FROM indicators WHERE date = '2025-10-10' AND rsi_14 IS NOT NULL") == [(DEMO_TICKERS,)]
    watchlist = dict(stack.sql("SELECT symbol, priority FROM daily_watchlist WHERE scan_date = '2025-10-10'"))
    assert watchlist, "the demo market's 2025-10-10 scan has hits"

    client = stack.redis()
    try:
        assert client.get("stockpipe:watchlist:latest") == "2025-10-10"
        ranked = dict(client.zrange("stockpipe:watchlist:2025-10-10", 0, -1, withscores=True))
        assert {symbol: int(score) for symbol, score in ranked.items()} == watchlist
        some = sorted(watchlist)[0]
        assert json.loads(client.get(f"stockpipe:watchlist:2025-10-10:{some}"))["symbol"] == some
    finally:
        client.close()

    done = stack.luigid("/api/task_list", status="DONE", upstream_status="", search="Daily")
    assert [task["params"] for task in done.values() if task["name"] == "Daily"] == [{"date": "2025-10-10"}], done


def test_assist_containers_take_chunks_of_a_rebuild(stack, daily):
    assert daily.returncode == 0, daily.stdout[-3000:]
    stack.compose("up", "-d", "--scale", "assist=2", "assist", timeout=300)
    _wait_healthy(stack, ("assist",), timeout=120)
    assistants = stack.containers("assist")
    assert len(assistants) == 2

    chunk_size = 5
    # With `--workers 1` the rebuilding worker runs its chunks in its own process, ~50 ms each: it
    # can finish all 20 before an idle assistant next asks luigid for work. As a slow chunk would,
    # chunk 0 is held (its run lock, taken here) for a while: whichever worker takes it waits, and
    # the others share the rest.
    held = stack.connect()
    with held.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                       ("stockpipe-run:" + markers.indicator_chunk("rebuild-2025-09-29", 0),))
    release = threading.Timer(20, held.close)
    release.start()
    try:
        rebuild = stack.compose("run", "--rm", "stockpipe", "luigi", "--module", "stockpipe", "RebuildFrom",
                                "--start-date", "2025-09-29", "--stockpipe-chunk-size", str(chunk_size),
                                "--workers", "1", timeout=900, check=False)
    finally:
        release.cancel()
        held.close()
    # 10/25: an assistant ran the last tasks ("run by another worker"); the job is complete either way.
    assert rebuild.returncode in (0, 10, 25), rebuild.stdout[-5000:]
    chunks = DEMO_TICKERS // chunk_size
    deadline = time.monotonic() + 120
    while not stack.sql("SELECT 1 FROM task_markers WHERE marker_id = 'RebuildFrom/rebuild-2025-09-29'"):
        assert time.monotonic() < deadline, "the rebuild never completed"
        time.sleep(1)

    mine = CHUNK_RE.findall(rebuild.stdout)
    theirs = [chunk for container in assistants for chunk in CHUNK_RE.findall(stack.logs(container))]
    assert theirs, "no assist container took a chunk of the rebuild"
    assert sorted(map(int, mine + theirs)) == list(range(chunks)), "luigid hands each chunk to exactly one worker"
    assert stack.sql("SELECT count(*) FROM task_markers WHERE marker_id LIKE 'IndicatorChunk/rebuild-2025-09-29/%%'") \
        == [(chunks,)]

    # luigid names the worker of each chunk: the assist containers' hostnames are their short IDs.
    done = stack.luigid("/api/task_list", status="DONE", upstream_status="", search="IndicatorChunk")
    hosts = {re.search(r"host=([^,]+)", task["worker_running"]).group(1)
             for task in done.values() if task["params"].get("plan_id") == "rebuild-2025-09-29"}
    assert hosts & {container[:12] for container in assistants}, hosts

    again = stack.compose("run", "--rm", "stockpipe", "luigi", "--module", "stockpipe", "RebuildFrom",
                          "--start-date", "2025-09-29", "--stockpipe-chunk-size", str(chunk_size), timeout=600, check=False)
    assert again.returncode == 0 and not CHUNK_RE.search(again.stdout), again.stdout[-3000:]


def test_cron_runs_daily_at_seven_seoul_tuesday_to_saturday_for_the_us_session_just_closed(stack):
    stack.compose("up", "-d", "cron", timeout=300)
    _wait_healthy(stack, ("cron",), timeout=120)
    (cron,) = stack.containers("cron")
    assert "Daily at 07:00 Asia/Seoul on tue-sat" in stack.logs(cron)

    now = dt.datetime.now(dt.timezone.utc)
    listed = _run(["docker", "exec", cron, "python", "/opt/stockpipe/bin/cron.py", "--next", "10"], timeout=120).stdout
    lines = [line.split(" ", 1) for line in listed.strip().splitlines()]
    assert len(lines) == 10, listed
    fire_times = [dt.datetime.fromisoformat(at) for at, _ in lines]
    assert fire_times == sorted(fire_times) and fire_times[0] > now
    assert fire_times[0] - now < dt.timedelta(days=4), "Sunday and Monday in Seoul are the only days without a run"
    for at, (_, command) in zip(fire_times, lines):
        assert (at.hour, at.minute, at.utcoffset()) == (7, 0, dt.timedelta(hours=9)), at
        assert at.isoweekday() in (2, 3, 4, 5, 6), f"{at} is not Tuesday to Saturday in Seoul"
        # 07:00 in Seoul is 17:00/18:00 of the previous day in New York: that session is the one run.
        previous_day = (at.date() - dt.timedelta(days=1)).isoformat()
        assert command == f"luigi --module stockpipe Daily --date {previous_day}", (at, command)
    assert {at.isoweekday() for at in fire_times} == {2, 3, 4, 5, 6}


def test_spark_profile_runs_a_master_and_a_registered_worker(stack):
    stack.compose("--profile", "spark", "up", "-d", "spark-master", "spark-worker", timeout=600)
    url = f"http://127.0.0.1:{stack.ports['SPARK_UI_HOST_PORT']}/json/"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                master = json.loads(response.read())
            if master["status"] == "ALIVE" and master["aliveworkers"] >= 1:
                break
        except (OSError, ValueError):
            master = None
        if time.monotonic() > deadline:
            logs = stack.compose("--profile", "spark", "logs", "--tail", "40", "spark-master", "spark-worker", check=False)
            pytest.fail(f"no Spark worker registered: {master}\n{logs.stdout[-4000:]}", pytrace=False)
        time.sleep(3)
    assert master["url"] == "spark://spark-master:7077"
    assert master["cores"] >= 1

