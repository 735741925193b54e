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


def bounds(code: str) -> tuple[dt.date, dt.date]:
    """The first and last sessions the calendar knows."""
    calendar = _calendar(code)
    return calendar.first_session.date(), calendar.last_session.date()
