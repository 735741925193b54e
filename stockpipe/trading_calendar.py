"""Trading sessions from a real exchange calendar (exchange-calendars), never guessed from weekdays.

pandas and exchange-calendars are imported on first use: a rebuild never needs them, and they
are half a second of every `luigi` start.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache


@lru_cache(maxsize=8)
def _calendar(code: str):
    import exchange_calendars  # slow to import; most commands never need it

    return exchange_calendars.get_calendar(code, start="2000-01-01")


def sessions(code: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """Sessions from start to end inclusive."""
    import pandas as pd

    if end < start:
        return []
    found = _calendar(code).sessions_in_range(pd.Timestamp(start), pd.Timestamp(end))
    return [ts.date() for ts in found]


def is_session(code: str, day: dt.date) -> bool:
    import pandas as pd

    return bool(_calendar(code).is_session(pd.Timestamp(day)))


def sessions_back(code: str, day: dt.date, count: int) -> dt.date:
    """The session `count` sessions before `day` (day itself is counted if it is a session)."""
    import pandas as pd

    calendar = _calendar(code)
    stamp = pd.Timestamp(day)
    anchor = stamp if calendar.is_session(stamp) else calendar.date_to_session(stamp, direction="previous")
    position = calendar.sessions.get_loc(anchor)
    return calendar.sessions[max(0, position - count)].date()


def first_session(code: str) -> dt.date:
    return _calendar(code).first_session.date()


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.timezone.utc)


def local_today(code: str, now: dt.datetime | None = None) -> dt.date:
    """The exchange's own date right now (Seoul's date is not New York's)."""
    return _now(now).astimezone(_calendar(code).tz).date()


def not_happened(code: str, day: dt.date, now: dt.datetime | None = None) -> str | None:
    """Why `day` cannot be stored yet (its session has not closed, or the date is still ahead in the
    exchange's time zone), or None when it has happened. A source asked for such a date either
    invents bars (demo) or returns a session still trading as if it were final (live sources)."""
    import pandas as pd

    calendar = _calendar(code)
    now = _now(now)
    today = local_today(code, now)
    if day > today or day > calendar.last_session.date():
        return f"{day} has not happened yet (today is {today} in {calendar.tz})"
    if day >= calendar.first_session.date() and calendar.is_session(pd.Timestamp(day)):
        close = calendar.session_close(pd.Timestamp(day))
        if pd.Timestamp(now) < close:
            local = close.tz_convert(calendar.tz)
            return (f"the {code} session of {day} has not closed yet (it closes at {local:%H:%M} {calendar.tz}, "
                    f"{close:%H:%M} UTC): run it after the close")
    return None


def last_closed_session(code: str, now: dt.datetime | None = None) -> dt.date:
    """The most recent session whose close has passed: what a nightly job should run."""
    import pandas as pd

    calendar = _calendar(code)
    now = _now(now)
    today = pd.Timestamp(local_today(code, now))
    anchor = today if calendar.is_session(today) else calendar.date_to_session(today, direction="previous")
    if pd.Timestamp(now) < calendar.session_close(anchor):
        anchor = calendar.previous_session(anchor)
    return anchor.date()


def is_known_calendar(code: str) -> bool:
    import exchange_calendars

    return code in exchange_calendars.get_calendar_names()


def bounds(code: str) -> tuple[dt.date, dt.date]:
    """The first and last sessions the calendar knows."""
    calendar = _calendar(code)
    return calendar.first_session.date(), calendar.last_session.date()
