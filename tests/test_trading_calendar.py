"""The exchange calendar is read from exchange-calendars once and then from a file under
data_dir/cache: every answer must be the library's, and a stale or foreign file is built again."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import exchange_calendars
import pandas as pd
import pytest

from stockpipe import trading_calendar

UTC = dt.timezone.utc


@pytest.fixture
def cache(tmp_path, pipeline_settings):
    trading_calendar._calendar.cache_clear()
    yield tmp_path / "data" / "cache"
    trading_calendar._calendar.cache_clear()


@pytest.fixture
def pipeline_settings(tmp_path):
    import luigi.configuration

    config = luigi.configuration.get_config()
    if not config.has_section("stockpipe"):
        config.add_section("stockpipe")
    config.set("stockpipe", "data_dir", str(tmp_path / "data"))


@pytest.mark.parametrize("code", ["XNYS", "XKRX"])
def test_the_cached_calendar_answers_as_the_library_does(cache, code):
    library = exchange_calendars.get_calendar(code, start=trading_calendar.CALENDAR_START)
    built = trading_calendar.bounds(code)  # built from the library, and written
    assert (cache / f"calendar-{code}-{trading_calendar.CALENDAR_START}.json").exists()
    trading_calendar._calendar.cache_clear()
    assert trading_calendar.bounds(code) == built == (library.first_session.date(), library.last_session.date())
    first, last = built
    assert trading_calendar.sessions(code, first, last) == [t.date() for t in library.sessions]
    closes = trading_calendar._calendar(code).closes
    assert [pd.Timestamp(c, tz="UTC") for c in closes] == list(library.closes)
    for day in (dt.date(2025, 11, 28), dt.date(2025, 12, 25), dt.date(2024, 12, 31), dt.date(2026, 1, 2)):
        assert trading_calendar.is_session(code, day) == library.is_session(pd.Timestamp(day)), day
        anchor = library.date_to_session(pd.Timestamp(day), direction="previous")
        expected = library.sessions[library.sessions.get_loc(anchor) - 3].date()
        assert trading_calendar.sessions_back(code, day, 3) == expected, day
    with pytest.raises(ValueError, match=f"outside the {code} calendar"):
        trading_calendar.is_session(code, dt.date(1999, 6, 1))


def test_an_early_close_and_the_last_closed_session_come_from_the_cached_closes(cache):
    trading_calendar.bounds("XNYS")
    trading_calendar._calendar.cache_clear()
    black_friday = dt.date(2025, 11, 28)  # the NYSE closes at 13:00 New York time
    assert "closes at 13:00 America/New_York, 18:00 UTC" in trading_calendar.not_happened(
        "XNYS", black_friday, dt.datetime(2025, 11, 28, 17, 59, tzinfo=UTC))
    assert trading_calendar.not_happened("XNYS", black_friday, dt.datetime(2025, 11, 28, 18, 0, tzinfo=UTC)) is None
    assert trading_calendar.last_closed_session("XNYS", dt.datetime(2025, 11, 28, 17, tzinfo=UTC)) == dt.date(2025, 11, 26)
    assert trading_calendar.last_closed_session("XNYS", dt.datetime(2025, 11, 29, 1, tzinfo=UTC)) == black_friday


def test_a_process_reading_the_cache_does_not_import_exchange_calendars(cache, tmp_path):
    trading_calendar.bounds("XNYS")
    config = tmp_path / "luigi.cfg"
    config.write_text(f"[stockpipe]\ndata_dir = {tmp_path / 'data'}\n")
    script = ("import sys, datetime as dt; from stockpipe import trading_calendar as t; "
              "print(t.sessions_back('XNYS', dt.date(2025, 10, 10), 5), t.is_known_calendar('XNYS'), "
              "'exchange_calendars' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={"LUIGI_CONFIG_PATH": str(config), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2025-10-03", "True", "False"]


@pytest.mark.parametrize("spoil", ["stale", "other version", "garbled", "empty", "unsorted"])
def test_a_stale_or_foreign_cache_file_is_built_again(cache, spoil):
    trading_calendar.bounds("XNYS")
    path = cache / f"calendar-XNYS-{trading_calendar.CALENDAR_START}.json"
    saved = json.loads(path.read_text())
    if spoil == "stale":
        saved["built_on"] = str(dt.date.today() - dt.timedelta(days=trading_calendar.REFRESH_DAYS))
        saved["day_steps"] = saved["day_steps"][:-200]  # a calendar that ends earlier, as last month's did
        saved["close_seconds"] = saved["close_seconds"][:-200]
        path.write_text(json.dumps(saved))
    elif spoil == "other version":
        saved["version"] = "0.0.1"
        saved["day_steps"][5] += 1  # what another release might have said
        path.write_text(json.dumps(saved))
    elif spoil == "empty":
        path.write_text(json.dumps({**saved, "day_steps": [], "close_seconds": []}))
    elif spoil == "unsorted":
        saved["day_steps"][100] = -3
        path.write_text(json.dumps(saved))
    else:
        path.write_text('{"code": "XNYS", "day_st')
    trading_calendar._calendar.cache_clear()
    library = exchange_calendars.get_calendar("XNYS", start=trading_calendar.CALENDAR_START)
    assert trading_calendar.sessions("XNYS", library.first_session.date(), library.last_session.date()) == [
        t.date() for t in library.sessions]
    rewritten = json.loads(path.read_text())
    assert rewritten["built_on"] == str(dt.date.today()) and rewritten["version"] == exchange_calendars.__version__


def test_sessions_outside_the_calendar_are_refused_as_the_library_refused_them(cache):
    first, last = trading_calendar.bounds("XNYS")
    for start, end in ((dt.date(1999, 12, 1), dt.date(2000, 2, 1)), (last - dt.timedelta(days=10), last + dt.timedelta(days=40))):
        with pytest.raises(ValueError, match="outside the XNYS calendar"):
            trading_calendar.sessions("XNYS", start, end)
    assert trading_calendar.sessions("XNYS", dt.date(2000, 1, 1), dt.date(1999, 1, 1)) == []
