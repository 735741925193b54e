"""Metrics and alerts through Luigi event handlers, registered once for every stockpipe task.

Each task's run is recorded in the store's `task_runs` table (and pushed to a capped Redis list when
Redis is configured). A failure sends an alert (task, parameters, error, time) to the `[alerts]`
URLs through apprise (Slack, Discord, generic JSON webhooks, ...) and to a capped Redis list. A
successful Daily sends a one-line summary. Reporting never fails the task it reports on, and never
slows it: Redis gets short timeouts and a circuit breaker shared by every process on the machine
(after a failure it is left alone for a while, and the outage is logged once).

Luigi's timeout and dead-task-process events (raised in the worker's parent process, where the task
never ran) are recorded and alerted like failures. A run that found its work done by another run
meanwhile is recorded as SKIPPED and sends no summary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from typing import Any

import luigi

from stockpipe import config, markers

log = logging.getLogger("stockpipe.events")
_STARTED: dict[str, float] = {}


def _params(task: luigi.Task) -> dict[str, str]:
    return task.to_str_params()


def notify(title: str, body: str, attach: str | None = None) -> bool:
    """Send to every `[alerts]` URL; `attach` (a file path) goes along to the services that take
    attachments (email, Discord, Slack with a bot token, json://, ...); the others get the text."""
    urls = config.alerts().urls.split()
    if not urls:
        return False
    import apprise

    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(url):
            log.warning("alerts: apprise does not understand the URL %s", url.split("://")[0] + "://...")
    return bool(sender.notify(title=title, body=body, attach=attach))


# Metrics are a side channel: a Redis that does not answer within this is treated as down.
REDIS_METRICS_TIMEOUT_SECONDS = 1.0
# ... and left alone this long before one probe tries again.
REDIS_RETRY_SECONDS = 60.0


def _breaker_file(url: str) -> str:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"stockpipe-redis-down-{digest}")


def _breaker_open(path: str) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime < REDIS_RETRY_SECONDS
    except OSError:
        return False


def _trip_breaker(path: str) -> bool:
    """Mark Redis down (for every process); True for the caller that marked it first."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        os.utime(path)
        return False
    except OSError:
        return True


def _redis_push(key_name: str, payload: dict[str, Any]) -> None:
    url = config.redis_url()
    if not url:
        return
    import redis

    from stockpipe.redaction import encode_userinfo, redact_url, scrub
    from stockpipe.services import redis_sync

    breaker = _breaker_file(url)
    if _breaker_open(breaker):
        return  # the store's task_runs table has the record; Redis gets the next ones
    try:
        client = redis.Redis.from_url(encode_userinfo(url), decode_responses=True,
                                      socket_timeout=REDIS_METRICS_TIMEOUT_SECONDS,
                                      socket_connect_timeout=REDIS_METRICS_TIMEOUT_SECONDS)
        try:
            keys = redis_sync.Keys(config.redis().prefix)
            redis_sync.push_capped(client, getattr(keys, key_name), payload, config.redis().list_length)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - Redis being down must not fail or slow a data task
        if _trip_breaker(breaker):
            log.warning("Redis at %s does not answer (%s): task runs and alerts go to the store only; "
                        "Redis is tried again in %d s", redact_url(url), scrub(str(exc), url), REDIS_RETRY_SECONDS)
        return
    if os.path.exists(breaker):
        try:
            os.unlink(breaker)
            log.info("Redis at %s answers again: task runs and alerts go to it again", redact_url(url))
        except FileNotFoundError:
            pass


def record(task: luigi.Task, status: str, error: str | None = None) -> dict[str, Any]:
    from stockpipe.store import open_store
    from stockpipe.store.base import utcnow

    finished = utcnow()
    started_monotonic = _STARTED.pop(task.task_id, None)
    duration = round(time.monotonic() - started_monotonic, 3) if started_monotonic is not None else None
    started = finished - dt.timedelta(seconds=duration or 0)
    row: dict[str, Any] = {
        "task_id": task.task_id, "task_family": task.get_task_family(),
        "params": json.dumps(_params(task), sort_keys=True), "status": status, "attempt": 1,
        "started_at": started, "finished_at": finished, "duration_seconds": duration,
        "error": error, "host": socket.gethostname(),
    }
    try:
        # The alert and the Redis list show the attempt; a plain success needs no second query.
        attempt = open_store(config.store_url()).record_task_run(row, with_attempt=status != "DONE" or bool(config.redis_url()))
        if attempt is not None:
            row["attempt"] = attempt
    except Exception as exc:  # noqa: BLE001 - a store that is down is reported by the task itself
        log.warning("could not record the run of %s: %s", task.task_id, exc)
    _redis_push("task_runs", row)
    return row


@luigi.Task.event_handler(luigi.Event.START)
def _on_start(task: luigi.Task) -> None:
    if _is_ours(task):
        _STARTED[task.task_id] = time.monotonic()


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _on_success(task: luigi.Task) -> None:
    if not _is_ours(task):
        return
    if getattr(task, "skipped", False):
        record(task, "SKIPPED", "done by another run meanwhile")
        return
    row = record(task, "DONE")
    if task.get_task_family() == "Daily":
        summary = daily_summary(task, row.get("duration_seconds"))
        log.info("%s", summary)
        if config.alerts().notify_success:
            try:
                report, link = _daily_report(task)
                notify("stockpipe Daily done", summary + (f"\nreport: {link}" if link else ""), attach=report)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not send the Daily summary: %s", exc)


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _on_failure(task: luigi.Task, exception: BaseException) -> None:
    if not _is_ours(task):
        return
    alert_failure(task, f"{type(exception).__name__}: {exception}")


@luigi.Task.event_handler(luigi.Event.TIMEOUT)
def _on_timeout(task: luigi.Task, error_msg: str) -> None:
    if _is_ours(task):
        alert_failure(task, f"timeout: {error_msg}")


@luigi.Task.event_handler(luigi.Event.PROCESS_FAILURE)
def _on_process_failure(task: luigi.Task, error_msg: str) -> None:
    if _is_ours(task):
        alert_failure(task, f"task process died: {error_msg}")


def alert_failure(task: luigi.Task, error: str) -> None:
    row = record(task, "FAILED", error)
    alert = {"task": task.task_id, "task_family": task.get_task_family(), "params": _params(task),
             "error": error, "time": row["finished_at"].isoformat(), "host": row["host"], "attempt": row["attempt"]}
    _redis_push("alerts", alert)
    body = (f"{task.get_task_family()} failed (attempt {row['attempt']}) on {row['host']} at {alert['time']}\n"
            f"parameters: {json.dumps(alert['params'], sort_keys=True)}\nerror: {error}")
    try:
        notify(f"stockpipe: {task.get_task_family()} failed", body)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not send the failure alert: %s", exc)


def daily_summary(task: luigi.Task, seconds: float | None) -> str:
    from stockpipe.store import open_store

    store = open_store(config.store_url())
    day = getattr(task, "date", None)
    symbols = len(store.active_symbols())
    ingest = store.read_marker(markers.ingest_date(day)) or {"stats": {}}
    scan = store.read_marker(markers.scan_watchlist(day)) or {"stats": {}}
    collected = store.read_marker(markers.collect_symbols(day))
    if collected is not None:
        # The whole chain, from its first task's completion, not just the wrapper's own run.
        from stockpipe.store.base import utcnow

        seconds = round((utcnow() - collected["completed_at"]).total_seconds(), 1)
    return (f"stockpipe Daily {day}: {symbols} symbols, {ingest['stats'].get('bars_stored', 0)} bars, "
            f"watchlist {scan['stats'].get('hits', 0)}, {seconds if seconds is not None else '?'} s")


def _daily_report(task: luigi.Task) -> tuple[str | None, str | None]:
    """The day's HTML report to attach, and where to read it: `[report] link_base` + its name when
    the reports directory is served, else its path."""
    from stockpipe.services.report import report_path

    day = getattr(task, "date", None)
    path = report_path(config.store_dir(), day) if day is not None else None
    if path is None or not path.exists():
        return None, None
    base = config.report().link_base
    return str(path), (f"{base.rstrip('/')}/{path.name}" if base else str(path.resolve()))


def _is_ours(task: luigi.Task) -> bool:
    from stockpipe.tasks import StockpipeTask

    return isinstance(task, StockpipeTask)
