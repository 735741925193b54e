"""Trading sessions from a real exchange calendar (exchange-calendars), never guessed from weekdays.

exchange-calendars takes half a second to import and build a calendar, on every `luigi` start that
reads one. Its sessions and closes are what stockpipe asks of it, so they are kept in a small file
under data_dir/cache, read in milliseconds: rebuilt from the library when its version changes, and
every `REFRESH_DAYS` so the calendar still reaches a year ahead as the library's does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("stockpipe.calendar")

CALENDAR_START = "2000-01-01"
REFRESH_DAYS = 30


@dataclass(frozen=True)
class Calendar:
    """An exchange's sessions (sorted dates) and each session's close (UTC), and its time zone."""

    code: str
    tz: str
    days: np.ndarray  # datetime64[D]
    closes: np.ndarray  # datetime64[s], UTC

    @property
    def first(self) -> dt.date:
        return self.days[0].item()

    @property
    def last(self) -> dt.date:
        return self.days[-1].item()

    def index(self, day: dt.date) -> int:
        """The position of the last session on or before `day`: -1 before the first."""
        return int(np.searchsorted(self.days, np.datetime64(day, "D"), side="right")) - 1

    def check_bounds(self, day: dt.date) -> None:
        if not self.first <= day <= self.last:
            raise ValueError(f"{day} is outside the {self.code} calendar, which knows sessions from {self.first} "
                             f"to {self.last}")

    def is_session(self, day: dt.date) -> bool:
        self.check_bounds(day)
        i = self.index(day)
        return i >= 0 and self.days[i] == np.datetime64(day, "D")

    def close(self, i: int) -> dt.datetime:
        return self.closes[i].item().replace(tzinfo=dt.timezone.utc)


def _library_calendar(code: str) -> Calendar:
    import exchange_calendars  # slow to import; read once, then from the cache file

    calendar = exchange_calendars.get_calendar(code, start=CALENDAR_START)
    days = calendar.sessions.to_numpy().astype("datetime64[D]")
    closes = calendar.closes.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    return Calendar(code, str(calendar.tz), days, closes)


def _library_version() -> str:
    from importlib.metadata import version

    return version("exchange_calendars")


def _cache_dir() -> Path | None:
    """data_dir/cache, where the demo source keeps its state too; None when no setting says where."""
    try:
        from stockpipe import config

        return config.data_dir() / "cache"
    except Exception:  # noqa: BLE001 - no cache then: the calendar is built from the library
        return None


def _cache_path(code: str) -> Path | None:
    directory = _cache_dir()
    return None if directory is None else directory / f"calendar-{code}-{CALENDAR_START}.json"


def _read_cache(path: Path, code: str, today: dt.date) -> Calendar | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        built = dt.date.fromisoformat(saved["built_on"])
        if saved["version"] != _library_version() or not built <= today < built + dt.timedelta(days=REFRESH_DAYS):
            return None
        steps = np.array(saved["day_steps"], np.int64)
        days = np.datetime64(saved["first"], "D") + np.cumsum(steps)
        closes = days.astype("datetime64[s]") + np.array(saved["close_seconds"], np.int64)
        if saved["code"] != code or not len(days) or len(days) != len(closes) or (steps[1:] <= 0).any():
            return None
        return Calendar(code, saved["tz"], days, closes)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, stale, or not ours: built again


def _write_cache(path: Path, calendar: Calendar, today: dt.date) -> None:
    steps = np.diff(calendar.days.astype(np.int64), prepend=calendar.days[0].astype(np.int64))
    saved = {
        "code": calendar.code, "tz": calendar.tz, "version": _library_version(), "built_on": today.isoformat(),
        "first": str(calendar.days[0]), "day_steps": steps.tolist(),
        "close_seconds": (calendar.closes - calendar.days.astype("datetime64[s]")).astype(np.int64).tolist(),
    }
    # Unique per writer (containers sharing data_dir may all be pid 1), renamed whole: a reader in
    # another process sees the old file or the new one.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(saved), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        log.info("calendar %s not cached in %s (%s): it is built from exchange-calendars each time", calendar.code,
                 path, exc)
    finally:
        temporary.unlink(missing_ok=True)


@lru_cache(maxsize=8)
def _calendar(code: str) -> Calendar:
    path = _cache_path(code)
    today = dt.date.today()
    if path is not None:
        cached = _read_cache(path, code, today)
        if cached is not None:
            return cached
    calendar = _library_calendar(code)
    if path is not None:
        _write_cache(path, calendar, today)
    return calendar


def sessions(code: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """Sessions from start to end inclusive."""
    if end < start:
        return []
    calendar = _calendar(code)
    calendar.check_bounds(start)
    calendar.check_bounds(end)
    days = calendar.days
    first = np.searchsorted(days, np.datetime64(start, "D"), side="left")
    last = np.searchsorted(days, np.datetime64(end, "D"), side="right")
    return days[first:last].tolist()


def is_session(code: str, day: dt.date) -> bool:
    return _calendar(code).is_session(day)


def sessions_back(code: str, day: dt.date, count: int) -> dt.date:
    """The session `count` sessions before `day` (day itself is counted if it is a session)."""
    calendar = _calendar(code)
    calendar.check_bounds(day)
    return calendar.days[max(0, calendar.index(day) - count)].item()


def first_session(code: str) -> dt.date:
    return _calendar(code).first


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.timezone.utc)


def local_today(code: str, now: dt.datetime | None = None) -> dt.date:
    """The exchange's own date right now (Seoul's date is not New York's)."""
    from zoneinfo import ZoneInfo

    return _now(now).astimezone(ZoneInfo(_calendar(code).tz)).date()


def not_happened(code: str, day: dt.date, now: dt.datetime | None = None) -> str | None:
    """Why `day` cannot be stored yet (its session has not closed, or the date is still ahead in the
    exchange's time zone), or None when it has happened. A source asked for such a date either
    invents bars (demo) or returns a session still trading as if it were final (live sources)."""
    from zoneinfo import ZoneInfo

    calendar = _calendar(code)
    now = _now(now)
    today = local_today(code, now)
    if day > today or day > calendar.last:
        return f"{day} has not happened yet (today is {today} in {calendar.tz})"
    if day >= calendar.first and calendar.is_session(day):
        close = calendar.close(calendar.index(day))
        if now < close:
            local = close.astimezone(ZoneInfo(calendar.tz))
            return (f"the {code} session of {day} has not closed yet (it closes at {local:%H:%M} {calendar.tz}, "
                    f"{close:%H:%M} UTC): run it after the close")
    return None


def last_closed_session(code: str, now: dt.datetime | None = None) -> dt.date:
    """The most recent session whose close has passed: what a nightly job should run."""
    calendar = _calendar(code)
    now = _now(now)
    anchor = calendar.index(local_today(code, now))
    if now < calendar.close(anchor):
        anchor -= 1
    return calendar.days[anchor].item()


def is_known_calendar(code: str) -> bool:
    """Whether exchange-calendars knows `code`. The calendar is read (or built) once for it and
    kept for the questions the task asks next, rather than its cache file parsed twice."""
    try:
        _calendar(code)
    except Exception:
        import exchange_calendars

        if code in exchange_calendars.get_calendar_names():
            raise  # a calendar the library knows failed to build: that error, not "unknown"
        return False
    return True


def bounds(code: str) -> tuple[dt.date, dt.date]:
    """The first and last sessions the calendar knows."""
    calendar = _calendar(code)
    return calendar.first, calendar.last
