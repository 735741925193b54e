"""The complete Daily: watchlist, replica, Redis, alerts and metrics, against real services."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import subprocess
import sys
import textwrap
import threading

import duckdb
import pytest
import redis

from stockpipe import config, tasks
from stockpipe.services import redis_sync
from stockpipe.services.replica import publish_replica
from tests.conftest import REDIS_TEST_URL, luigi_command, write_luigi_cfg

DAY = dt.date(2025, 10, 10)


def test_demo_daily_produces_a_watchlist_with_every_rule(duckdb_pipeline):
    duckdb_pipeline.configure("demo", tickers=100)
    duckdb_pipeline.configure("stockpipe", min_symbols=100)
    assert duckdb_pipeline.build(tasks.Daily(date=DAY))
    rows = duckdb_pipeline.store.read_watchlist(since=DAY, until=DAY).to_pylist()
    assert {r["scan_reason"] for r in rows} == {"rsi_oversold", "bollinger_lower_touch", "high_volume_breakout"}
    assert len({r["symbol"] for r in rows}) == len(rows)
    assert all(r["scan_date"] == DAY for r in rows)
    marker = duckdb_pipeline.store.read_marker(f"ScanWatchlist/{DAY}")["stats"]
    assert marker["hits"] == len(rows) and marker["symbols_scanned"] == 100
    runs = duckdb_pipeline.store.query("SELECT task_family, status FROM task_runs").to_pylist()
    assert {"task_family": "Daily", "status": "DONE"} in runs


def test_replica_refresh_is_atomic_for_an_open_reader(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    path = config.replica_path()
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    bars_before = duckdb.connect(str(path), read_only=True).execute("SELECT count(*) FROM bars").fetchone()[0]
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys
            connection = duckdb.connect({str(path)!r}, read_only=True)
            print(connection.execute("SELECT count(*) FROM bars").fetchone()[0], flush=True)
            sys.stdin.readline()
            print(connection.execute("SELECT count(*) FROM bars").fetchone()[0], flush=True)
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert int(reader.stdout.readline()) == bars_before
    with pipeline.store.session() as session:
        session.execute("DELETE FROM bars WHERE date = :d", {"d": DAY})
    stats = publish_replica(pipeline.store, path)
    reader.stdin.write("\n")
    reader.stdin.flush()
    assert int(reader.stdout.readline()) == bars_before, "an open reader keeps its snapshot"
    reader.wait(timeout=30)
    fresh = duckdb.connect(str(path), read_only=True)
    assert fresh.execute("SELECT count(*) FROM bars").fetchone()[0] == stats["tables"]["bars"] < bars_before
    fresh.close()
    previous = path.with_name("replica.previous.duckdb")
    assert duckdb.connect(str(previous), read_only=True).execute("SELECT count(*) FROM bars").fetchone()[0] == bars_before


def test_failed_refresh_leaves_the_previous_replica(pipeline):
    from stockpipe.tempfiles import temporary_for

    assert pipeline.build(tasks.Daily(date=DAY))
    path = config.replica_path()
    before = path.read_bytes()
    blocker = temporary_for(path)
    blocker.mkdir()  # the refresh cannot create its temporary file
    with pytest.raises(Exception, match=r"(?i)directory"):
        publish_replica(pipeline.store, path)
    assert path.read_bytes() == before


@pytest.fixture
def redis_client(redis_prefix):
    client = redis_sync.connect(REDIS_TEST_URL)
    yield client
    client.close()


def test_redis_sync_writes_only_changes_and_full_mode_rewrites(pipeline, redis_prefix, redis_client):
    assert pipeline.build(tasks.ScanWatchlist(date=DAY))
    store = pipeline.store
    rows = store.read_watchlist(since=DAY, until=DAY).to_pylist()
    assert len(rows) >= 2
    first = redis_sync.sync_watchlist(store, redis_client, redis_prefix, DAY, full=False, full_days=30)
    assert first["written"] == len(rows) and first["deleted"] == 0
    keys = redis_sync.Keys(redis_prefix)
    assert redis_client.zrange(keys.ranking(str(DAY)), 0, -1) != []
    assert redis_client.get(keys.latest) == str(DAY)
    doc = json.loads(redis_client.get(keys.document(str(DAY), rows[0]["symbol"])))
    assert doc["scan_reason"] == rows[0]["scan_reason"] and doc["priority"] == rows[0]["priority"]

    changed, gone = rows[0]["symbol"], rows[1]["symbol"]
    with store.session() as session:
        session.execute("UPDATE daily_watchlist SET close = close + 1 WHERE symbol = :s", {"s": changed})
        session.execute("DELETE FROM daily_watchlist WHERE symbol = :s", {"s": gone})
    second = redis_sync.sync_watchlist(store, redis_client, redis_prefix, DAY, full=False, full_days=30)
    assert (second["written"], second["deleted"], second["unchanged"]) == (1, 1, len(rows) - 2)
    assert redis_client.get(keys.document(str(DAY), gone)) is None
    assert gone not in redis_client.zrange(keys.ranking(str(DAY)), 0, -1)

    redis_client.set(keys.document(str(DAY), "STRAY"), "{}")
    full = redis_sync.sync_watchlist(store, redis_client, redis_prefix, DAY, full=True, full_days=30)
    assert full["mode"] == "full" and full["written"] == len(rows) - 1
    assert redis_client.get(keys.document(str(DAY), "STRAY")) is None
    assert json.loads(redis_client.get(keys.last_sync))["mode"] == "full"


def test_health_check_and_cleanup(pipeline, redis_prefix, redis_client):
    keys = redis_sync.Keys(redis_prefix)
    with pytest.raises(RuntimeError, match="nothing was ever synced"):
        redis_sync.health_check(redis_client, redis_prefix)
    assert pipeline.build(tasks.ScanWatchlist(date=DAY))
    redis_sync.sync_watchlist(pipeline.store, redis_client, redis_prefix, DAY, full=False, full_days=30)
    assert redis_sync.health_check(redis_client, redis_prefix)["latest"] == str(DAY)
    sample = redis_client.zrange(keys.ranking(str(DAY)), 0, 0)[0]
    redis_client.set(keys.document(str(DAY), sample), "not json")
    with pytest.raises(RuntimeError, match="is not JSON"):
        redis_sync.health_check(redis_client, redis_prefix)

    old = "2025-09-01"
    redis_client.set(keys.document(old, "OLD"), "{}")
    redis_client.zadd(keys.ranking(old), {"OLD": 1})
    redis_client.set(f"{redis_prefix}tmp:leftover", "x")
    other = "someone-else:watchlist:2025-09-01"
    redis_client.set(other, "keep")
    try:
        result = redis_sync.cleanup(redis_client, redis_prefix, DAY, retention_days=7)
        assert result["removed"] == 3
        assert redis_client.get(keys.document(str(DAY), sample)) is not None
        assert redis_client.get(other) == "keep"
    finally:
        redis_client.delete(other)


def test_redis_down_fails_only_the_redis_tasks_and_a_rerun_syncs(pipeline, redis_prefix, monkeypatch):
    pipeline.configure("redis", prefix=redis_prefix)
    monkeypatch.setenv("STOCKPIPE_REDIS_URL", "redis://127.0.0.1:1/0")
    assert not pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    for done in (f"ScanWatchlist/{DAY}", f"Replicate/{DAY}", f"DailyIndicators/{DAY}"):
        assert store.read_marker(done) is not None, done
    assert store.read_marker(f"Daily/{DAY}") is None
    failed = store.query("SELECT task_family, error FROM task_runs WHERE status = 'FAILED'").to_pylist()
    assert any("127.0.0.1:1" in r["error"] and "unreachable" in r["error"] for r in failed)

    monkeypatch.setenv("STOCKPIPE_REDIS_URL", REDIS_TEST_URL)
    assert pipeline.build(tasks.Daily(date=DAY))
    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    assert client.get(f"{redis_prefix}watchlist:latest") == str(DAY)
    assert client.llen(f"{redis_prefix}task_runs") > 0


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append({"path": self.path, "body": body.decode("utf-8", "replace")})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    _Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Hooks.received
    server.shutdown()


def test_failure_alert_reaches_webhooks_and_redis_and_counts_attempts(pipeline, webhook_server, redis_prefix, monkeypatch):
    port, received = webhook_server
    # json:// is a generic webhook; mmost:// posts Slack's incoming-webhook payload to any host.
    pipeline.configure("alerts", urls=f"json://127.0.0.1:{port}/alert mmost://127.0.0.1:{port}/slackcompatibletoken0001")
    pipeline.configure("redis", prefix=redis_prefix)
    pipeline.configure("stockpipe", min_symbols=1000)
    monkeypatch.setenv("STOCKPIPE_REDIS_URL", REDIS_TEST_URL)
    assert not pipeline.build(tasks.CollectSymbols(date=DAY))
    assert not pipeline.build(tasks.CollectSymbols(date=DAY))
    generic = [json.loads(r["body"]) for r in received if r["path"] == "/alert"]
    slack = [json.loads(r["body"]) for r in received if r["path"].startswith("/hooks/")]
    assert len(generic) == 2 and len(slack) == 2
    assert "CollectSymbols failed (attempt 2)" in generic[1]["message"]
    assert "fewer than the minimum 1000" in generic[0]["message"] and '"date": "2025-10-10"' in generic[0]["message"]
    assert "CollectSymbols failed" in json.dumps(slack[0])
    alerts = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True).lrange(f"{redis_prefix}alerts", 0, -1)
    assert json.loads(alerts[0])["attempt"] == 2 and json.loads(alerts[0])["params"] == {"date": "2025-10-10"}
    attempts = pipeline.store.query("SELECT attempt, status FROM task_runs ORDER BY attempt").to_pylist()
    assert attempts == [{"attempt": 1, "status": "FAILED"}, {"attempt": 2, "status": "FAILED"}]


def test_daily_success_sends_a_one_line_summary(pipeline, webhook_server):
    port, received = webhook_server
    pipeline.configure("alerts", urls=f"json://127.0.0.1:{port}/summary")
    assert pipeline.build(tasks.Daily(date=DAY))
    summaries = [json.loads(r["body"])["message"] for r in received]
    assert len(summaries) == 1
    assert summaries[0].startswith(f"stockpipe Daily {DAY}: 30 symbols, ") and "watchlist" in summaries[0]


def test_daily_summary_attaches_and_links_the_report(pipeline, webhook_server):
    import base64

    from stockpipe.services.report import report_path

    port, received = webhook_server
    pipeline.configure("alerts", urls=f"json://127.0.0.1:{port}/summary")
    pipeline.configure("report", link_base="https://reports.example/stockpipe/")
    assert pipeline.build(tasks.Daily(date=DAY))
    (payload,) = [json.loads(r["body"]) for r in received]
    assert payload["message"].endswith(f"\nreport: https://reports.example/stockpipe/{DAY}.html")
    (attachment,) = payload["attachments"]
    assert attachment["filename"] == f"{DAY}.html"
    assert base64.b64decode(attachment["base64"]) == report_path(pipeline.store_dir, DAY).read_bytes()


@pytest.mark.slow
def test_two_overlapping_daily_runs_write_each_date_once(tmp_path):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url)
    # Different command lines, so Luigi's own pid lock does not stop the second one.
    first = luigi_command(tmp_path, "Daily", "--date", str(DAY), "--local-scheduler", "--workers", "1")
    second = luigi_command(tmp_path, "Daily", "--date", str(DAY), "--local-scheduler", "--workers", "2")
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    from stockpipe.store import open_store

    store = open_store(url)
    counts = store.query("SELECT count(*) AS n, count(DISTINCT (symbol, date)) AS k FROM bars").to_pylist()[0]
    assert counts["n"] == counts["k"]
    counts = store.query("SELECT count(*) AS n, count(DISTINCT (symbol, date)) AS k FROM indicators").to_pylist()[0]
    assert counts["n"] == counts["k"] == store.bars_extent()[2]
    watch = store.query("SELECT count(*) AS n, count(DISTINCT symbol) AS k FROM daily_watchlist").to_pylist()[0]
    assert watch["n"] == watch["k"] > 0
    markers = store.query("SELECT marker_id FROM task_markers WHERE marker_id LIKE 'ScanWatchlist/%'").to_pylist()
    assert len(markers) == 1


def test_slack_and_discord_alerts_are_delivered_in_their_formats(pipeline, webhook_server, monkeypatch):
    """apprise's own Slack and Discord plugins build and send the alerts; their fixed service
    endpoints are pointed at the local server (the library's HTTP target, not our code)."""
    from apprise.plugins.discord import NotifyDiscord
    from apprise.plugins.slack import NotifySlack

    port, received = webhook_server
    monkeypatch.setattr(NotifySlack, "webhook_url", f"http://127.0.0.1:{port}/slack/services")
    monkeypatch.setattr(NotifyDiscord, "notify_url", f"http://127.0.0.1:{port}/discord/api/webhooks")
    pipeline.configure("alerts", urls="slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ "
                                      "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js")
    pipeline.configure("stockpipe", min_symbols=1000)
    assert not pipeline.build(tasks.CollectSymbols(date=DAY))
    slack = [json.loads(r["body"]) for r in received if r["path"].startswith("/slack/services/T1JJ3T3L2/")]
    discord = [json.loads(r["body"]) for r in received if r["path"].startswith("/discord/api/webhooks/4174216298/")]
    assert len(slack) == 1 and len(discord) == 1, received
    assert "CollectSymbols failed" in json.dumps(slack[0]) and "fewer than the minimum 1000" in json.dumps(slack[0])
    assert "CollectSymbols failed" in json.dumps(discord[0]) and "fewer than the minimum 1000" in json.dumps(discord[0])


def test_a_second_sync_is_refused_while_another_holds_the_lock_and_a_sync_releases_only_its_own(pipeline, redis_prefix, redis_client):
    """A sync does not wait for another: it fails at once, naming the holder, and its task is retried
    like any failure (a killed holder's lock expires, see test_events)."""
    assert pipeline.build(tasks.ScanWatchlist(date=DAY))
    keys = redis_sync.Keys(redis_prefix)
    redis_client.set(keys.lock, "someone-else", ex=60)
    with pytest.raises(RuntimeError, match=r"another Redis sync holds .*tmp:sync-lock \(someone-else\)"):
        redis_sync.sync_watchlist(pipeline.store, redis_client, redis_prefix, DAY, full=False, full_days=30)
    assert redis_client.get(keys.lock) == "someone-else"
    assert redis_client.get(redis_sync.Keys(redis_prefix).latest) is None, "the refused sync wrote nothing"
    redis_client.delete(keys.lock)
    redis_sync.sync_watchlist(pipeline.store, redis_client, redis_prefix, DAY, full=False, full_days=30)
    assert redis_client.get(keys.lock) is None
    # A holder whose lock expired and was taken by another sync leaves the new holder's lock alone.
    with redis_sync.held_lock(redis_client, keys.lock, "first", seconds=30):
        redis_client.set(keys.lock, "second")
    assert redis_client.get(keys.lock) == "second"
