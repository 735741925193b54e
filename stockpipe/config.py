"""Configuration: one luigi.Config class per luigi.cfg section.

Class names are the section names (Luigi's own convention, as in its `core` and `retcode` sections).
Secrets never live in luigi.cfg: use ${ENV} interpolation there, or the STOCKPIPE_* variables read here.
"""

from __future__ import annotations

import os
from pathlib import Path

import luigi

# Environment variables that win over luigi.cfg, so a DSN with a password never needs to be written down.
ENV_STORE_URL = "STOCKPIPE_STORE_URL"
ENV_SOURCE = "STOCKPIPE_SOURCE"
ENV_REDIS_URL = "STOCKPIPE_REDIS_URL"

PACKAGE_DEFAULTS = Path(__file__).with_name("defaults.cfg")


def install_package_defaults() -> None:
    """Read stockpipe's defaults.cfg before every other Luigi config file.

    Luigi reads /etc/luigi/luigi.cfg, ./luigi.cfg and $LUIGI_CONFIG_PATH, later files winning. A user
    running from their own directory with their own file must still get what the package relies on
    ([retcode] above all: without it a failed run exits 0), so those settings ship with the package
    at the lowest priority and any user file overrides them.
    """
    from luigi.configuration import LuigiConfigParser, get_config

    paths = LuigiConfigParser._config_paths
    if str(PACKAGE_DEFAULTS) in paths:
        return
    paths.insert(0, str(PACKAGE_DEFAULTS))
    parser = get_config()
    if isinstance(parser, LuigiConfigParser):
        # Re-reading every path in order keeps the user's files above the defaults just inserted.
        parser.reload()


install_package_defaults()


class stockpipe(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section
    store_url = luigi.Parameter(
        default="duckdb:///data/stockpipe.duckdb",
        description="duckdb:///relative.duckdb, duckdb:////absolute.duckdb or postgresql+psycopg2://user@host/db",
    )
    # A plain Parameter, checked by stockpipe.preflight: a ChoiceParameter would make every read of
    # [stockpipe] (even `stockpipe status`, which needs no source) fail with a traceback on a typo.
    source = luigi.Parameter(default="demo", description="demo, csv or yahoo")
    data_dir = luigi.Parameter(
        default="data", description="each store's plans, backups, reports and replica, in a subdirectory per store"
    )
    chunk_size = luigi.IntParameter(default=50, description="symbols per IndicatorChunk task of a rebuild")
    # A Daily chunk reads each symbol's last `warmup_bars` bars, a fifth of a ten-year rebuild
    # chunk's per symbol: 500 symbols read about what 100 do in a rebuild, and the work per task,
    # not Luigi's and the store's cost per task, is then what a Daily spends its time on.
    daily_chunk_size = luigi.IntParameter(default=500, description="symbols per IndicatorChunk task of a Daily")
    calendar = luigi.Parameter(default="XNYS", description="exchange-calendars code of the market's sessions")
    min_symbols = luigi.IntParameter(default=10, description="CollectSymbols fails below this many symbols")
    days_back = luigi.IntParameter(default=5, description="sessions re-fetched before each ingest date")
    backfill_sessions = luigi.IntParameter(default=500, description="history fetched on an empty store")
    backfill_batch = luigi.IntParameter(default=250, description="symbols fetched and written per batch")
    warmup_bars = luigi.IntParameter(
        default=500,
        description="bars of history read before a rebuild's first date; 0 reads the whole history",
    )
    duckdb_memory_limit = luigi.Parameter(
        default="1GB",
        description="most memory a DuckDB store's connection uses (e.g. 512MB, 4GB; empty = DuckDB's own, 80% of RAM)",
    )
    engine = luigi.ChoiceParameter(
        choices=["numpy", "spark"], default="numpy",
        description="indicator engine: numpy (in each chunk task) or spark (one Spark job per plan, see [spark])",
    )


class timeouts(luigi.Config):  # noqa: N801
    """Seconds each task family may run before its worker stops it (0 = no limit).

    A task in a child process is terminated by Luigi when its `worker_timeout` is up; a task the
    worker runs in its own process (stockpipe/execution.py) is stopped by an in-process deadline.
    Either way the stop is recorded in task_runs and alerted like any failure.
    """

    collect_symbols = luigi.IntParameter(default=900, description="CollectSymbols: one universe download")
    ingest = luigi.IntParameter(default=3600, description="IngestDate: every active symbol's recent bars")
    backfill = luigi.IntParameter(default=6 * 3600, description="Backfill: years of history in batches")
    plan = luigi.IntParameter(default=1800, description="PlanRebuild: status report and backup")
    chunk = luigi.IntParameter(default=1800, description="IndicatorChunk: one chunk of symbols")
    rebuild = luigi.IntParameter(default=900, description="RebuildFrom/DailyIndicators: planning and the final report")
    scan = luigi.IntParameter(default=600, description="ScanWatchlist")
    replicate = luigi.IntParameter(default=1800, description="Replicate: export, verify and swap the replica")
    redis = luigi.IntParameter(default=300, description="RedisSync, RedisHealthCheck, RedisCleanup")
    report = luigi.IntParameter(default=600, description="Report: the day's charts and HTML")
    cleanup = luigi.IntParameter(default=600, description="CleanupOldFiles: deleting old files")
    daily = luigi.IntParameter(default=300, description="Daily's own step (its dependencies have their own)")
    pg_connect = luigi.IntParameter(default=10, description="PostgreSQL: seconds to establish a connection")
    pg_statement = luigi.IntParameter(default=900, description="PostgreSQL: seconds one statement may run (0 = no limit)")


class spark(luigi.Config):  # noqa: N801
    """The Spark engine's session, in luigi.contrib.spark's SparkConfig keys (see README "Spark engine")."""

    master = luigi.Parameter(default="local[*]", description="local[N], spark://host:7077 or sc://host:15002 (Spark Connect)")
    deploy_mode = luigi.Parameter(default="", description="client (the only mode a library session can use)")
    app_name = luigi.Parameter(default="stockpipe-indicators", description="the application's name in Spark's UI")
    driver_memory = luigi.Parameter(default="", description="spark.driver.memory, e.g. 2g")
    driver_cores = luigi.Parameter(default="", description="spark.driver.cores")
    driver_java_options = luigi.Parameter(default="", description="spark.driver.extraJavaOptions")
    driver_class_path = luigi.Parameter(default="", description="spark.driver.extraClassPath")
    executor_memory = luigi.Parameter(default="", description="spark.executor.memory, e.g. 2g")
    executor_cores = luigi.Parameter(default="", description="spark.executor.cores")
    total_executor_cores = luigi.Parameter(default="", description="spark.cores.max (standalone)")
    num_executors = luigi.Parameter(default="", description="spark.executor.instances")
    jars = luigi.Parameter(default="", description="spark.jars (comma separated)")
    packages = luigi.Parameter(default="", description="spark.jars.packages (Maven coordinates)")
    py_files = luigi.Parameter(default="", description="spark.submit.pyFiles: .py/.zip/.egg shipped to executors")
    files = luigi.Parameter(default="", description="spark.files")
    archives = luigi.Parameter(default="", description="spark.archives")
    conf = luigi.Parameter(default="", description="any Spark settings as k=v|k=v (spark.sql.shuffle.partitions=8|...)")
    startup_timeout = luigi.IntParameter(
        default=60, description="seconds to wait for the master to answer and for executors to register",
    )
    symbols_per_job = luigi.IntParameter(
        default=1000, description="symbols (whole chunks) per Spark job: a job's bars and rows pass through the driver's memory",
    )


class demo(luigi.Config):  # noqa: N801
    tickers = luigi.IntParameter(default=100, description="size of the synthetic universe")
    seed = luigi.IntParameter(default=20240101, description="changes every synthetic price")


class csv(luigi.Config):  # noqa: N801
    path = luigi.Parameter(default="", description="directory of long-format bar files (+ optional symbols.csv)")


def _setting(section: type[luigi.Config], name: str):
    """One setting of a section, looked up as creating the section's luigi.Config would (command
    line, then config file, then default), without evaluating each of its other parameters twice as
    that does: the store URL is asked for several times by each task, and a rebuild has hundreds."""
    return getattr(section, name).task_value(section.get_task_family(), name)


def store_url() -> str:
    return os.environ.get(ENV_STORE_URL) or _setting(stockpipe, "store_url")


def source_name() -> str:
    return os.environ.get(ENV_SOURCE) or _setting(stockpipe, "source")


SOURCES = ("demo", "csv", "yahoo")


def duckdb_memory_limit() -> str:
    return _setting(stockpipe, "duckdb_memory_limit").strip()


def engine_name() -> str:
    return _setting(stockpipe, "engine")


def data_dir() -> Path:
    return Path(_setting(stockpipe, "data_dir"))


def store_dir(url: str | None = None) -> Path:
    """This store's own directory under data_dir: its runs and replica never mix with another store's."""
    return data_dir() / store_slug(url or store_url())


def store_slug(url: str) -> str:
    """A readable, stable directory name for a store: its file or database name and a short hash of
    where it lives (an absolute path, or user@host:port/db; never the password)."""
    import hashlib
    import re

    if url.startswith("duckdb:"):
        path = url.split("duckdb:///", 1)[1] if url.startswith("duckdb:///") else url.split("duckdb:", 1)[1]
        where = os.path.abspath(os.path.expanduser(path))
        name = Path(where).stem
    else:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        where = f"{parsed.drivername.split('+')[0]}://{parsed.username or ''}@{parsed.host or ''}:{parsed.port or ''}/{parsed.database or ''}"
        name = parsed.database or "postgres"
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "store"
    return f"{readable}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def config_files() -> list[str]:
    """The user's configuration files Luigi read (not the package's defaults), lowest priority first,
    for error messages."""
    from luigi.configuration.cfg_parser import LuigiConfigParser

    return [p for p in LuigiConfigParser._config_paths
            if os.path.isfile(p) and Path(p).resolve() != PACKAGE_DEFAULTS.resolve()]


class watchlist(luigi.Config):  # noqa: N801
    rules = luigi.Parameter(
        default="",
        description="JSON list of rules ({name, priority, conditions, order_by, limit}); empty = the built-in three",
    )

    def parsed_rules(self):
        import json

        from stockpipe.watchlist.rules import DEFAULT_RULES, parse_rules

        try:
            return parse_rules(json.loads(self.rules) if self.rules.strip() else DEFAULT_RULES)
        except json.JSONDecodeError as exc:
            raise ValueError(f"[watchlist] rules is not valid JSON: {exc}") from exc


class replica(luigi.Config):  # noqa: N801
    path = luigi.Parameter(default="", description="read-only DuckDB replica; empty = <data_dir>/<store>/replica.duckdb")


class redis(luigi.Config):  # noqa: N801
    url = luigi.Parameter(default="", description="redis:// or rediss:// URL; empty = no Redis steps")
    prefix = luigi.Parameter(default="stockpipe:", description="every key stockpipe writes starts with this")
    full_days = luigi.IntParameter(default=30, description="scan dates a full sync rewrites")
    retention_days = luigi.IntParameter(default=7, description="RedisCleanup removes scan dates older than this")
    list_length = luigi.IntParameter(default=1000, description="length cap of the task_runs and alerts lists")


class alerts(luigi.Config):  # noqa: N801
    urls = luigi.Parameter(
        default="",
        description="apprise URLs for failure alerts and the Daily summary, space separated "
        "(slack://..., discord://..., json://host/path); use ${ENV} for their secrets",
    )
    notify_success = luigi.BoolParameter(default=True, description="send the one-line Daily summary too")


def redis_url() -> str:
    return os.environ.get(ENV_REDIS_URL) or redis().url


def replica_path() -> Path:
    return Path(replica().path) if replica().path else store_dir() / "replica.duckdb"


class yahoo(luigi.Config):  # noqa: N801
    universe = luigi.Parameter(
        default="nasdaq",
        description="nasdaq (NASDAQ directory + screener) or the path of a universe CSV (e.g. KRX codes)",
    )
    batch_size = luigi.IntParameter(default=100, description="tickers per yf.download call")
    pause_seconds = luigi.FloatParameter(default=1.0, description="pause between batches")
    max_attempts = luigi.IntParameter(default=5, description="attempts for rate-limited tickers before failing")
    backoff_seconds = luigi.FloatParameter(default=2.0, description="exponential backoff base (with jitter)")
    min_market_cap = luigi.FloatParameter(default=100e6, description="screener filter; ETFs are kept")
    timeout_seconds = luigi.FloatParameter(default=20.0, description="per-request connect/read timeout of yf.download")
    nasdaq_listed_url = luigi.Parameter(default="https://www.nasdaqtrader.com/dynamic/SymDir/nasdaqlisted.txt")
    other_listed_url = luigi.Parameter(default="https://www.nasdaqtrader.com/dynamic/SymDir/otherlisted.txt")
    screener_url = luigi.Parameter(
        default="https://api.nasdaq.com/api/screener/stocks?tableonly=true&limit=25&offset=0&download=true",
        description="empty = no screener (no market caps, no market-cap filter)",
    )


class report(luigi.Config):  # noqa: N801
    sessions = luigi.IntParameter(default=30, description="sessions shown in the report's data health")
    chart_months = luigi.IntParameter(default=6, description="months of bars in each watchlist symbol's chart")
    slowest_chunks = luigi.IntParameter(default=10, description="indicator chunks listed as the slowest")
    link_base = luigi.Parameter(
        default="",
        description="URL the reports directory is served under, linked from the Daily summary; empty = the file's path",
    )


class cleanup(luigi.Config):  # noqa: N801
    """Days each kind of file is kept (by modification time); 0 keeps that kind for ever."""

    runs_days = luigi.IntParameter(default=60, description="rebuild and daily run directories under <data_dir>/runs")
    backups_days = luigi.IntParameter(default=30, description="a run's backup.parquet (the undo of a rebuild)")
    reports_days = luigi.IntParameter(default=90, description="HTML reports under <data_dir>/reports")
    replica_days = luigi.IntParameter(default=7, description="the replica's previous copy (replica.previous.duckdb)")
    logs_days = luigi.IntParameter(default=30, description="files in log_dir")
    log_dir = luigi.Parameter(default="logs", description="directory of the cron job's logs (relative to the working directory)")
    changes_days = luigi.IntParameter(
        default=30, description="rows of the store's change log (store_changes); a replica older than this is exported whole")

    def days(self) -> dict[str, int]:
        return {"runs": self.runs_days, "backups": self.backups_days, "reports": self.reports_days,
                "replica": self.replica_days, "logs": self.logs_days}
