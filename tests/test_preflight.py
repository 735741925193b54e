"""Mistakes refused before any work, in one line naming the culprit: settings, dates that have not
happened, non-trading days, a rebuild of an empty store. Through the real `luigi` command, from a
directory without the project's luigi.cfg, and through luigi.build."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest

from stockpipe import tasks, trading_calendar
from stockpipe.preflight import UserError
from stockpipe.store import open_store
from tests.conftest import write_luigi_cfg

DAY = dt.date(2025, 10, 10)
SATURDAY = dt.date(2025, 10, 11)
UTC = dt.timezone.utc


def luigi_elsewhere(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    """`luigi --module stockpipe ...` run from a directory of its own, with the config file elsewhere
    (LUIGI_CONFIG_PATH), as a cron job or a container runs it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "LUIGI_"))}
    environment["LUIGI_CONFIG_PATH"] = str(tmp_path / "luigi.cfg")
    environment.update(env or {})
    done = subprocess.run(["luigi", "--module", "stockpipe", *args, "--local-scheduler"], cwd=elsewhere, env=environment,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_one_line_refusal(code: int, stdout: str, stderr: str, *fragments: str) -> None:
    assert code == 2, stdout + stderr
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("stockpipe: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("section", "key", "value", "fragments"),
    [
        ("stockpipe", "warmup_bars", "-1", ("[stockpipe] warmup_bars = -1 is refused", "at least 500")),
        ("stockpipe", "chunk_size", "0", ("[stockpipe] chunk_size = 0 is refused",)),
        ("stockpipe", "chunk_size", "ten", ("[stockpipe] chunk_size = 'ten' is not valid",)),
        ("stockpipe", "source", "yahooo", ("[stockpipe] source = 'yahooo' is not a source", "did you mean 'yahoo'?")),
        ("stockpipe", "calendar", "XNYSS", ("[stockpipe] calendar = 'XNYSS' is not an exchange-calendars code",)),
        ("stockpipe", "duckdb_memory_limit", "lots", ("[stockpipe] duckdb_memory_limit = 'lots' is not a size", "512MB")),
        ("watchlist", "rules", "[{", ("[watchlist] rules is not valid JSON",)),
    ],
)
def test_a_bad_setting_is_one_line_exit_2_and_nothing_runs(tmp_path, section, key, value, fragments):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url, **{section: {key: value}})
    code, out, err = luigi_elsewhere(tmp_path, "Daily", "--date", str(DAY))
    assert_one_line_refusal(code, out, err, *fragments, f"settings read from {tmp_path / 'luigi.cfg'}")
    assert not (tmp_path / "store.duckdb").exists(), "no work may start on a refused configuration"


@pytest.mark.slow
def test_an_unknown_source_from_the_environment_names_the_variable(tmp_path):
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}")
    code, out, err = luigi_elsewhere(tmp_path, "RebuildFrom", "--start-date", "2025-09-29",
                                     env={"STOCKPIPE_SOURCE": "yahooo"})
    assert_one_line_refusal(code, out, err, "STOCKPIPE_SOURCE = 'yahooo' is not a source")


def test_settings_are_checked_when_a_task_is_created(pipeline):
    pipeline.configure("stockpipe", chunk_size=0, warmup_bars=100)
    with pytest.raises(UserError) as refused:
        tasks.RebuildFrom(start_date=DAY)
    assert "chunk_size = 0" in str(refused.value) and "warmup_bars = 100" in str(refused.value)
    pipeline.configure("stockpipe", chunk_size=10, warmup_bars=0)  # 0 = the whole history: accepted
    tasks.Daily(date=DAY)


def test_status_needs_no_valid_source(pipeline, monkeypatch):
    from tests.test_cli import run_cli

    assert pipeline.build(tasks.Daily(date=DAY))
    monkeypatch.setenv("STOCKPIPE_SOURCE", "yahooo")
    code, text = run_cli("status", "--since", "2025-10-06")
    assert code == 0, text
    assert "2025-10-10" in text


# -- dates that have not happened -----------------------------------------------------------------
def test_a_session_counts_as_happened_only_after_its_close():
    monday = dt.date(2026, 11, 23)
    assert "has not closed yet (it closes at 16:00 America/New_York" in trading_calendar.not_happened(
        "XNYS", monday, dt.datetime(2026, 11, 23, 20, 59, tzinfo=UTC))
    assert trading_calendar.not_happened("XNYS", monday, dt.datetime(2026, 11, 23, 21, 0, tzinfo=UTC)) is None
    # Seoul's session of the 24th closes at 15:30 KST = 06:30 UTC on the 24th.
    assert "has not closed yet" in trading_calendar.not_happened("XKRX", dt.date(2026, 11, 24),
                                                                  dt.datetime(2026, 11, 23, 22, 0, tzinfo=UTC))
    assert "2026-12-01 has not happened yet (today is 2026-11-23" in trading_calendar.not_happened(
        "XNYS", dt.date(2026, 12, 1), dt.datetime(2026, 11, 23, 12, tzinfo=UTC))
    # A weekend day has happened once it is that day in New York.
    assert trading_calendar.not_happened("XNYS", dt.date(2026, 11, 28), dt.datetime(2026, 11, 28, 3, tzinfo=UTC))
    assert trading_calendar.not_happened("XNYS", dt.date(2026, 11, 28), dt.datetime(2026, 11, 28, 6, tzinfo=UTC)) is None
    assert trading_calendar.last_closed_session("XNYS", dt.datetime(2026, 11, 23, 15, tzinfo=UTC)) == dt.date(2026, 11, 20)
    assert trading_calendar.last_closed_session("XNYS", dt.datetime(2026, 11, 23, 22, tzinfo=UTC)) == monday


@pytest.mark.slow
def test_daily_for_a_date_that_has_not_happened_is_refused_and_stores_nothing(tmp_path):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url)
    ahead = trading_calendar.local_today("XNYS") + dt.timedelta(days=30)
    code, out, err = luigi_elsewhere(tmp_path, "Daily", "--date", str(ahead))
    assert_one_line_refusal(code, out, err, f"Daily --date {ahead}: {ahead} has not happened yet")
    assert not (tmp_path / "store.duckdb").exists()


def test_every_dated_task_refuses_the_future(pipeline):
    ahead = trading_calendar.local_today("XNYS") + dt.timedelta(days=40)
    for make in (tasks.CollectSymbols, tasks.IngestDate, tasks.DailyIndicators, tasks.ScanWatchlist,
                 tasks.Replicate, tasks.Daily, tasks.RedisSync):
        with pytest.raises(UserError, match="has not happened yet"):
            make(date=ahead)
    with pytest.raises(UserError, match="Backfill --end-date .* has not happened yet"):
        tasks.Backfill(start_date=DAY, end_date=ahead)


def test_ingest_itself_refuses_an_unclosed_session_the_demo_source_would_invent(pipeline):
    from stockpipe.services.ingest import backfill, ingest_date
    from stockpipe.sources import open_source

    assert pipeline.build(tasks.CollectSymbols(date=DAY))
    source = open_source("demo")
    ahead = trading_calendar.local_today("XNYS") + dt.timedelta(days=30)
    invented = source.bars(pipeline.store.active_symbols()[:2], ahead - dt.timedelta(days=7), ahead)
    assert invented.rows.num_rows > 0, "the demo source makes up bars for any date: the guard is what stops them"
    with pytest.raises(ValueError, match="has not happened yet"):
        ingest_date(pipeline.store, source, ahead, days_back=5, backfill_sessions=10, marker=None)
    with pytest.raises(ValueError, match="has not happened yet"):
        backfill(pipeline.store, source, DAY, ahead, batch_size=10, marker=None)
    assert pipeline.store.bars_extent()[2] == 0


# -- non-trading days ------------------------------------------------------------------------------
@pytest.mark.slow
def test_ingest_date_for_a_saturday_is_refused_in_one_line(tmp_path):
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}")
    code, out, err = luigi_elsewhere(tmp_path, "IngestDate", "--date", str(SATURDAY))
    assert_one_line_refusal(code, out, err, "IngestDate --date 2025-10-11: 2025-10-11 (Saturday) is not a XNYS trading day",
                            "the session before it is 2025-10-10")
    assert not (tmp_path / "store.duckdb").exists()


def test_session_tasks_refuse_a_non_trading_day_while_daily_completes_doing_nothing(pipeline):
    for make in (tasks.IngestDate, tasks.DailyIndicators, tasks.ScanWatchlist, tasks.Replicate):
        with pytest.raises(UserError, match="is not a XNYS trading day"):
            make(date=SATURDAY)
    with pytest.raises(UserError, match="2026-01-01 \\(Thursday\\) is not a XNYS trading day"):
        tasks.ScanWatchlist(date=dt.date(2026, 1, 1))
    assert pipeline.build(tasks.Daily(date=SATURDAY))
    assert pipeline.store.read_marker(f"Daily/{SATURDAY}")["stats"] == {"trading_day": False}
    assert pipeline.store.bars_extent()[2] == 0
    assert pipeline.store.query("SELECT count(*) AS n FROM daily_watchlist").column("n")[0].as_py() == 0


# -- rebuilds ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rebuild_of_an_empty_store_is_refused_in_one_line(tmp_path):
    write_luigi_cfg(tmp_path, f"duckdb:///{tmp_path / 'store.duckdb'}")
    code, out, err = luigi_elsewhere(tmp_path, "RebuildFrom", "--start-date", "2025-09-29")
    assert_one_line_refusal(code, out, err, "is empty: run Daily or Backfill first")


def test_rebuild_after_the_last_bar_or_of_an_empty_store_is_refused(pipeline):
    with pytest.raises(UserError, match=r"RebuildFrom: store .* is empty: run Daily or Backfill first"):
        tasks.RebuildFrom(start_date=dt.date(2025, 9, 29))
    assert pipeline.build(tasks.IngestDate(date=DAY))
    with pytest.raises(UserError, match="the store's latest bar is 2025-10-10, so there is nothing to rebuild"):
        tasks.RebuildFrom(start_date=dt.date(2025, 10, 13))
    assert not (pipeline.store_dir / "runs" / "rebuild-2025-10-13").exists()


def test_backfill_with_its_dates_reversed_is_refused(pipeline):
    with pytest.raises(UserError, match="Backfill --end-date 2025-01-02 is before --start-date 2025-03-31"):
        tasks.Backfill(start_date=dt.date(2025, 3, 31), end_date=dt.date(2025, 1, 2))


# -- saying what happened ---------------------------------------------------------------------------
@pytest.mark.slow
def test_first_daily_says_there_was_nothing_to_replace_and_that_redis_was_skipped(tmp_path):
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    write_luigi_cfg(tmp_path, url)
    code, out, err = luigi_elsewhere(tmp_path, "Daily", "--date", str(DAY))
    assert code == 0, out + err
    assert "daily-2025-10-10: no indicator rows stored from 2025-10-03 yet, nothing to replace" in err
    assert "None..None" not in err
    assert "Daily 2025-10-10: Redis steps skipped: no [redis] url or STOCKPIPE_REDIS_URL is configured" in err
    assert open_store(url).read_marker("Daily/2025-10-10")["stats"]["redis"] is False
