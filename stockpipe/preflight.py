"""Checks made before any work, so a mistake costs one line naming its culprit and nothing runs.

Every stockpipe task checks, when it is created: the configuration (once per process and
configuration) and its own parameters (a date that has not happened, a non-trading day where a
session's data is needed, a rebuild of an empty store). Luigi creates the root task from the
command line before it schedules anything, so a refusal stops the run before any work.

Under the `luigi` command (and `stockpipe daily`) a refusal prints one line and exits 2 (`EXIT_USAGE`),
Luigi's own answer to a bad command line (argparse), instead of a traceback and exit 40. Called from
Python (`luigi.build`), it raises `UserError`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import sys

import luigi
from luigi.cmdline_parser import CmdlineParser

from stockpipe import config, trading_calendar

EXIT_USAGE = 2
MIN_WARMUP_BARS = 500  # below this the seed of EMA/RSI still shows in the values (README)


class UserError(ValueError):
    """A mistake in the configuration, the command line or the order of runs: the message names the
    setting, file or date at fault and what to do next."""


class UsageExit(SystemExit):
    """Leaves the `luigi` command with EXIT_USAGE; a SystemExit like Luigi's own PidLockAlreadyTakenExit,
    so Luigi's catch-all for unhandled exceptions does not turn it into a traceback and exit 40."""


def refuse(error: UserError) -> None:
    """One line on stderr and exit 2 under a command line; the exception itself under luigi.build."""
    if CmdlineParser.get_instance() is None:
        raise error
    print(f"stockpipe: {error}", file=sys.stderr, flush=True)
    raise UsageExit(EXIT_USAGE)


# -- configuration --------------------------------------------------------------------------------
def _sections() -> list[type[luigi.Config]]:
    return [v for v in vars(config).values() if isinstance(v, type) and issubclass(v, luigi.Config) and v.__module__ == config.__name__]


def where() -> str:
    files = config.config_files()
    if files:
        return "settings read from " + ", ".join(files)
    return "no luigi.cfg read (none in the working directory, LUIGI_CONFIG_PATH unset)"


def config_problems(*, calendar: bool = True) -> list[str]:
    """Every mistake in stockpipe's settings, each naming its section and key."""
    problems = []
    parser = luigi.configuration.get_config()
    for section in _sections():
        for name, parameter in section.get_params():
            raw = parser.get(section.__name__, name, None)
            if raw is None:
                continue
            try:
                parameter.parse(raw)
            except (ValueError, TypeError) as exc:
                problems.append(f"[{section.__name__}] {name} = {raw!r} is not valid: {exc}")
    if problems:
        return problems  # the checks below would only repeat them
    settings = config.stockpipe()
    if settings.warmup_bars != 0 and settings.warmup_bars < MIN_WARMUP_BARS:
        problems.append(f"[stockpipe] warmup_bars = {settings.warmup_bars} is refused: use 0 (the whole history) or at "
                        f"least {MIN_WARMUP_BARS} (fewer bars leave EMA/RSI/MACD seeded wrongly)")
    for name, least in (("chunk_size", 1), ("daily_chunk_size", 1), ("backfill_batch", 1), ("backfill_sessions", 1), ("days_back", 0), ("min_symbols", 0)):
        value = getattr(settings, name)
        if value < least:
            problems.append(f"[stockpipe] {name} = {value} is refused: it must be at least {least}")
    limit = config.duckdb_memory_limit()
    if limit and not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", limit, re.IGNORECASE):
        problems.append(f"[stockpipe] duckdb_memory_limit = {limit!r} is not a size: write e.g. 512MB or 4GB "
                        "(empty: DuckDB's own limit, 80% of RAM)")
    source = config.source_name()
    if source not in config.SOURCES:
        origin = config.ENV_SOURCE if os.environ.get(config.ENV_SOURCE) else "[stockpipe] source"
        near = difflib.get_close_matches(source, config.SOURCES, n=1)
        problems.append(f"{origin} = {source!r} is not a source: choose {', '.join(config.SOURCES)}"
                        + (f" (did you mean {near[0]!r}?)" if near else ""))
    url = config.store_url()
    if not url.startswith(("duckdb:", "postgresql:", "postgresql+psycopg2:", "postgres:")):
        origin = config.ENV_STORE_URL if os.environ.get(config.ENV_STORE_URL) else "[stockpipe] store_url"
        problems.append(f"{origin} = {url.split('@')[-1]!r} is not a store URL: use duckdb:///path/file.duckdb "
                        "or postgresql+psycopg2://user@host/db")
    if calendar and not trading_calendar.is_known_calendar(settings.calendar):
        near = difflib.get_close_matches(settings.calendar, ["XNYS", "XKRX", "XNAS", "XLON", "XTKS"], n=1)
        problems.append(f"[stockpipe] calendar = {settings.calendar!r} is not an exchange-calendars code (XNYS, XKRX, ...)"
                        + (f"; did you mean {near[0]!r}?" if near else ""))
    try:
        config.watchlist().parsed_rules()
    except (ValueError, TypeError, KeyError) as exc:
        text = str(exc)
        problems.append(text if text.startswith("[watchlist]") else f"[watchlist] rules: {text}")
    return problems


_valid: set[tuple] = set()


def _fingerprint(calendar: bool) -> tuple:
    parser = luigi.configuration.get_config()
    sections = tuple((s.__name__, tuple(sorted(parser.items(s.__name__, raw=True))) if parser.has_section(s.__name__) else ())
                     for s in _sections())
    environment = tuple(os.environ.get(k) for k in (config.ENV_STORE_URL, config.ENV_SOURCE, config.ENV_REDIS_URL))
    return calendar, sections, environment


def check_config(*, calendar: bool = True) -> None:
    """Raise UserError naming every mistake in the settings; checked once per configuration."""
    key = _fingerprint(calendar)
    if key in _valid:
        return
    problems = config_problems(calendar=calendar)
    if problems:
        raise UserError("; ".join(problems) + f" ({where()})")
    _valid.add(key)


# -- dates ----------------------------------------------------------------------------------------
def check_happened(day: dt.date, what: str) -> None:
    """Refuse a date whose session has not closed: a source would invent it or return it unfinished."""
    code = config.stockpipe().calendar
    reason = trading_calendar.not_happened(code, day)
    if reason:
        raise UserError(f"{what}: {reason}")


def check_session(day: dt.date, what: str) -> None:
    """Refuse a non-trading day for a task that stores one session's data."""
    code = config.stockpipe().calendar
    if trading_calendar.is_session(code, day):
        return
    before = trading_calendar.sessions_back(code, day, 0)
    raise UserError(f"{what}: {day} ({day:%A}) is not a {code} trading day, so there is nothing to store; the session "
                    f"before it is {before} (`Daily --date {day}` does nothing on such a day and says so)")

