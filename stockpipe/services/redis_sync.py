"""Publish the watchlist to Redis for trading bots and dashboards.

Key layout (a public contract, under a configurable prefix, default `stockpipe:`):

    {prefix}watchlist:{date}:{symbol}   string: the row as JSON
    {prefix}watchlist:{date}            sorted set of symbols, score = priority (1 first)
    {prefix}watchlist:latest            string: the latest scan date synced (YYYY-MM-DD)
    {prefix}sync:last                   string: JSON {mode, date, dates, written, deleted, unchanged, at}
    {prefix}task_runs, {prefix}alerts   lists (newest first, capped) written by the event handlers
    {prefix}tmp:*                       short-lived keys (the sync lock); removed by RedisCleanup

Writes go through MULTI/EXEC pipelines, never one round trip per key, and keys are listed with
SCAN, never KEYS (which blocks a production Redis).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import pyarrow as pa

from stockpipe import markers
from stockpipe.redaction import encode_userinfo, redact_url, scrub
from stockpipe.store import Store
from stockpipe.store.base import utcnow

log = logging.getLogger("stockpipe.redis")

# The sync lock expires soon after its holder dies (a killed sync must not block reruns), and is
# extended every third of that while the holder works.
LOCK_SECONDS = 15
_RELEASE_IF_OURS = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND_IF_OURS = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
                   "end return 0")
_SCAN_BATCH = 500


class RedisUnavailable(RuntimeError):
    pass


def redact(url: str) -> str:
    return redact_url(url)


def connect(url: str):
    import redis

    if not url:
        raise RedisUnavailable("Redis is not configured: set [redis] url or STOCKPIPE_REDIS_URL")
    client = redis.Redis.from_url(encode_userinfo(url), decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(scrub(f"Redis at {redact(url)} is unreachable: {exc}", url)) from None
    return client


class Keys:
    def __init__(self, prefix: str):
        self.prefix = prefix

    def document(self, day: str, symbol: str) -> str:
        return f"{self.prefix}watchlist:{day}:{symbol}"

    def ranking(self, day: str) -> str:
        return f"{self.prefix}watchlist:{day}"

    @property
    def latest(self) -> str:
        return f"{self.prefix}watchlist:latest"

    @property
    def last_sync(self) -> str:
        return f"{self.prefix}sync:last"

    @property
    def lock(self) -> str:
        return f"{self.prefix}tmp:sync-lock"

    @property
    def task_runs(self) -> str:
        return f"{self.prefix}task_runs"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    def date_of(self, key: str) -> dt.date | None:
        match = re.match(re.escape(self.prefix) + r"watchlist:(\d{4}-\d{2}-\d{2})(?::|$)", key)
        return dt.date.fromisoformat(match.group(1)) if match else None


def documents(rows: pa.Table) -> dict[str, dict[str, str]]:
    """{date: {symbol: json}} for watchlist rows; NaN becomes null so every document parses."""
    out: dict[str, dict[str, str]] = {}
    for row in rows.to_pylist():
        day = str(row["scan_date"])
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        clean["scan_date"] = day
        out.setdefault(day, {})[row["symbol"]] = json.dumps(clean, sort_keys=True, default=str)
    return out


def _scan(client, pattern: str) -> Iterable[str]:
    return client.scan_iter(match=pattern, count=_SCAN_BATCH)


@contextmanager
def held_lock(client, key: str, token: str, seconds: float = LOCK_SECONDS) -> Iterator[None]:
    """`key` set to `token` for `seconds`, kept alive by a thread while the body runs, deleted
    afterwards only if still ours. A killed holder's key expires within `seconds`."""
    milliseconds = int(seconds * 1000)
    if not client.set(key, token, nx=True, px=milliseconds):
        raise RuntimeError(f"another Redis sync holds {key} ({client.get(key)}): try again later")
    done = threading.Event()

    def keep_alive() -> None:
        while not done.wait(seconds / 3):
            try:
                if not client.eval(_EXTEND_IF_OURS, 1, key, token, milliseconds):
                    log.warning("the Redis sync lock %s was lost (expired and taken)", key)
                    return
            except Exception as exc:  # noqa: BLE001 - the sync itself reports a Redis failure
                log.warning("could not extend the Redis sync lock %s: %s", key, exc)
                return

    refresher = threading.Thread(target=keep_alive, name="redis-sync-lock", daemon=True)
    refresher.start()
    try:
        yield
    finally:
        done.set()
        refresher.join(timeout=seconds)
        # Delete the lock only if it is still ours (it may have expired and been taken), atomically.
        try:
            client.eval(_RELEASE_IF_OURS, 1, key, token)
        except Exception as exc:  # noqa: BLE001 - it expires by itself; keep the sync's own error
            log.warning("could not release the Redis sync lock %s (it expires in %d s): %s", key, seconds, exc)


def _latest_scanned_session(store: Store, day: dt.date, synced: Iterable[str]) -> str | None:
    """The latest date up to `day` that was scanned (a weekend is never one), for `watchlist:latest`."""
    scanned = markers.first_parts(store.markers(prefix=markers.SCANS))
    candidates = [d for d in [*scanned, *synced] if d <= str(day)]
    return max(candidates) if candidates else None


def sync_watchlist(store: Store, client, prefix: str, day: dt.date, *, full: bool, full_days: int) -> dict[str, Any]:
    """Incremental: write only what changed for `day`. Full: rewrite the last `full_days` days."""
    keys = Keys(prefix)
    token = f"{day}:{utcnow().isoformat()}"
    with held_lock(client, keys.lock, token):
        since = day - dt.timedelta(days=full_days) if full else day
        wanted = documents(store.read_watchlist(since=since, until=day))
        days = sorted(set(wanted) | ({str(day)} if not full else set()))
        if full:
            days = sorted(set(days) | {str(d) for d in _synced_days(client, keys) if since <= d <= day})
        written = deleted = unchanged = 0
        for scan_day in days:
            docs = wanted.get(scan_day, {})
            rows_by_symbol = {s: json.loads(d) for s, d in docs.items()}
            current_members: set[str] = set()
            if full:
                stale = set(_scan(client, f"{keys.ranking(scan_day)}:*"))
                current = {}
            else:
                stale = set()
                current_members = set(client.zrange(keys.ranking(scan_day), 0, -1))
                members = sorted(current_members | set(docs))
                values = client.mget([keys.document(scan_day, s) for s in members]) if members else []
                current = {s: v for s, v in zip(members, values) if v is not None}
            pipe = client.pipeline(transaction=True)
            if full:
                pipe.delete(keys.ranking(scan_day), *stale)
            for symbol, document in docs.items():
                if current.get(symbol) == document:
                    unchanged += 1
                    continue
                pipe.set(keys.document(scan_day, symbol), document)
                pipe.zadd(keys.ranking(scan_day), {symbol: rows_by_symbol[symbol]["priority"]})
                written += 1
            removed = set() if full else (set(current) | current_members) - set(docs)
            for symbol in removed:
                pipe.delete(keys.document(scan_day, symbol))
                pipe.zrem(keys.ranking(scan_day), symbol)
                deleted += 1
            pipe.execute()
        latest = client.get(keys.latest)
        newest = _latest_scanned_session(store, day, wanted) if full else str(day)
        pipe = client.pipeline(transaction=True)
        if newest is not None and (latest is None or latest <= newest):
            pipe.set(keys.latest, newest)
        summary = {"mode": "full" if full else "incremental", "date": str(day), "dates": len(days),
                   "written": written, "deleted": deleted, "unchanged": unchanged, "at": utcnow().isoformat()}
        pipe.set(keys.last_sync, json.dumps(summary))
        pipe.execute()
    log.info("redis %s sync for %s: %d written, %d deleted, %d unchanged over %d date(s)",
             summary["mode"], day, written, deleted, unchanged, len(days))
    return summary


def _synced_days(client, keys: Keys) -> set[dt.date]:
    found = set()
    for key in _scan(client, f"{keys.prefix}watchlist:*"):
        day = keys.date_of(key)
        if day is not None:
            found.add(day)
    return found


REQUIRED_FIELDS = ("scan_date", "symbol", "priority", "scan_reason", "close", "market_cap_tier")


def health_check(client, prefix: str) -> dict[str, Any]:
    keys = Keys(prefix)
    latest = client.get(keys.latest)
    if latest is None:
        raise RuntimeError(f"Redis has no {keys.latest}: nothing was ever synced under prefix {prefix!r}")
    members = client.zrange(keys.ranking(latest), 0, 0)
    if not members:
        last = client.get(keys.last_sync)
        if last and json.loads(last).get("written", 0) == 0 and json.loads(last).get("unchanged", 0) == 0:
            return {"latest": latest, "documents": 0, "note": "latest scan had no hits"}
        raise RuntimeError(f"Redis sorted set {keys.ranking(latest)} is empty or missing")
    raw = client.get(keys.document(latest, members[0]))
    try:
        document = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"Redis document {keys.document(latest, members[0])} is not JSON: {exc}") from exc
    if not document or any(f not in document for f in REQUIRED_FIELDS):
        raise RuntimeError(f"Redis document {keys.document(latest, members[0])} lacks fields {REQUIRED_FIELDS}: {raw!r}")
    return {"latest": latest, "documents": client.zcard(keys.ranking(latest)), "sample": members[0]}


def cleanup(client, prefix: str, today: dt.date, retention_days: int) -> dict[str, Any]:
    """Remove scan dates older than the retention, and leftover temporary keys, with SCAN."""
    keys = Keys(prefix)
    cutoff = today - dt.timedelta(days=retention_days)
    doomed = [k for k in _scan(client, f"{prefix}watchlist:*") if (d := keys.date_of(k)) is not None and d < cutoff]
    doomed += [k for k in _scan(client, f"{prefix}tmp:*") if k != keys.lock or client.ttl(k) < 0]
    for start in range(0, len(doomed), _SCAN_BATCH):
        client.unlink(*doomed[start : start + _SCAN_BATCH])
    log.info("redis cleanup: removed %d keys older than %s or temporary", len(doomed), cutoff)
    return {"removed": len(doomed), "cutoff": str(cutoff)}


def push_capped(client, key: str, payload: dict[str, Any], length: int) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.lpush(key, json.dumps(payload, default=str))
    pipe.ltrim(key, 0, length - 1)
    pipe.execute()
