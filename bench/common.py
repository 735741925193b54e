"""What the bench scripts share: demo stores built through the real tasks, their luigi.cfg, one `luigi`
command measured (wall seconds and the process tree's peak memory), run reports, and medians.

Every store lives under a name of its own (a directory for DuckDB, a database per store for
PostgreSQL), so several people can run benchmarks on one machine at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the stockpipe of this checkout, also for the processes started below

DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CALENDAR = "XNYS"
SESSIONS_A_YEAR = 252


def luigi_cfg(directory: Path, store_url: str, tickers: int, engine: str = "numpy", spark_master: str = "local[2]",
              path: Path | None = None) -> Path:
    """The benchmark's settings (demo source, chunks of 50 symbols, the settings earlier figures were
    measured with), written to `path` (directory/luigi.cfg)."""
    path = path or directory / "luigi.cfg"
    path.write_text(
        "[core]\nautoload_range = false\n[worker]\ncache_task_completion = true\n"
        "[retcode]\ntask_failed = 30\nscheduling_error = 35\nunhandled_exception = 40\nmissing_data = 20\n"
        f"[stockpipe]\nstore_url = {store_url}\nsource = demo\ndata_dir = {directory / 'data'}\n"
        f"chunk_size = 50\nmin_symbols = 100\nbackfill_batch = 250\nengine = {engine}\n[demo]\ntickers = {tickers}\n"
        f"[spark]\nmaster = {spark_master}\ndriver_memory = 2g\n"
        "[timeouts]\nrebuild = 3600\ndaily = 3600\n"
    )
    return path


def runs_dir(directory: Path, store_url: str) -> Path:
    """Where a store's run directories (backups, Spark's staged rows) live: its own directory under data_dir."""
    from stockpipe.config import store_slug

    return directory / "data" / store_slug(store_url) / "runs"


def run_report(store_url: str, plan_id: str) -> dict[str, Any] | None:
    """The final report of run `plan_id` (a rebuild, a daily run), as the pipeline stored it in the
    store (None while unfinished). The one place that knows where reports are kept."""
    from stockpipe.services.rebuild import final_report
    from stockpipe.store import open_store

    store = open_store(store_url)
    try:
        return final_report(store, plan_id)
    finally:
        store.close()  # a DuckDB file is the next luigi command's to open


def luigi_env(cfg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
    env["LUIGI_CONFIG_PATH"] = str(cfg)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def measure_command(command: list[str], cwd: Path, env: dict[str, str], grep: str | None = None) -> dict[str, Any]:
    """Wall seconds and peak memory of `command` and every process it starts (bench/measure.py).
    A failure stops the benchmark with the command's output."""
    wrapper = [sys.executable, str(HERE / "measure.py"), *(["--grep", grep] if grep else []), *command]
    process = subprocess.Popen(wrapper, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        output, _ = process.communicate()
    except BaseException:  # Ctrl-C: measure.py stops the command's processes (its own session) too
        process.terminate()
        process.wait()
        raise
    if process.returncode != 0:
        raise SystemExit(f"bench/measure.py {' '.join(command)} failed (exit {process.returncode})")
    result = json.loads(output)
    if result.pop("returncode") != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result['stderr_tail']}")
    result.pop("stderr_tail")
    return result


def measure(directory: Path, *args: str, workers: int = 1, cfg: Path | None = None,
            grep: str | None = None) -> dict[str, Any]:
    """One `luigi --module stockpipe ...` run with the local scheduler, as its own process."""
    cfg = cfg or directory / "luigi.cfg"
    command = [sys.executable, "-m", "luigi", "--module", "stockpipe", *args,
               "--local-scheduler", "--workers", str(workers)]
    result = measure_command(command, directory, luigi_env(cfg), grep)
    result["workers"] = workers
    return result


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of repeated measurements (seconds and peak memory each), with every run kept."""
    figures: dict[str, Any] = {"seconds": round(statistics.median(r["seconds"] for r in runs), 3),
                               "peak_mb": round(statistics.median(r["peak_mb"] for r in runs), 1)}
    if len(runs) > 1:
        figures["runs"] = runs
        if all(r.get("spark") for r in runs):  # where a Spark run's time went, phase by phase
            figures["spark"] = {k: round(statistics.median(r["spark"][k] for r in runs), 3) for k in runs[0]["spark"]}
    else:
        figures.update({k: v for k, v in runs[0].items() if k not in figures})
    return figures


@dataclass(frozen=True)
class Dates:
    """The benchmark's calendar: a history of `years` ending on `end`, and what comes after it."""

    start: dt.date
    end: dt.date
    rebuild_13: dt.date  # first of the last 13 sessions
    following: tuple[dt.date, ...]  # sessions after `end`, one per Daily

    @classmethod
    def of(cls, end: dt.date, years: int, dailies: int = 10) -> "Dates":
        from stockpipe import trading_calendar

        start = trading_calendar.sessions_back(CALENDAR, end, SESSIONS_A_YEAR * years - 1)
        after = end + dt.timedelta(days=1)
        following = trading_calendar.sessions(CALENDAR, after, after + dt.timedelta(days=2 * dailies + 10))
        return cls(start, end, trading_calendar.sessions_back(CALENDAR, end, 12), tuple(following[:dailies]))


class BenchStore:
    """A store the benchmark owns: created, copied and dropped by it."""

    kind = ""
    url = ""
    label = ""

    def copy(self, label: str) -> "BenchStore":
        """A new store holding exactly this one's data (a freshly loaded database, no history)."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def size_bytes(self) -> int:
        """What the store takes on disk (the DuckDB file, the PostgreSQL database)."""
        raise NotImplementedError

    def backup_bytes(self) -> int:
        """Of `size_bytes`, what the backup table of the newest rebuild built aside takes (one is kept)."""
        return 0


class DuckDBBench(BenchStore):
    kind = "duckdb"

    def __init__(self, directory: Path, label: str):
        self.directory, self.label = directory, label
        self.path = directory / f"{label}.duckdb"
        self.url = f"duckdb:///{self.path}"

    def copy(self, label: str) -> "DuckDBBench":
        other = DuckDBBench(self.directory, label)
        other.drop()
        # Every `luigi` run checkpoints and closes its connections, so the file alone is the store.
        shutil.copyfile(self.path, other.path)
        return other

    def drop(self) -> None:
        for path in self.directory.glob(f"{self.label}.duckdb*"):
            path.unlink()

    def exists(self) -> bool:
        return self.path.exists()

    def size_bytes(self) -> int:
        files = self.directory.glob(f"{self.label}.duckdb*")  # the file and its WAL, not the lock files
        return sum(p.stat().st_size for p in files if not p.name.endswith((".lock", ".wait")))


class PostgresBench(BenchStore):
    kind = "postgres"

    def __init__(self, admin_url: str, prefix: str, label: str):
        self.admin_url, self.prefix, self.label = admin_url, prefix, label
        self.database = f"{prefix}_{label}".lower()[:63]
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        self.url = f"{base}/{self.database}"

    def _admin(self, sql: str, *params: Any) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(self.admin_url, connect_timeout=5)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def create(self) -> "PostgresBench":
        self.drop()
        self._admin(f'CREATE DATABASE "{self.database}"')
        return self

    def copy(self, label: str) -> "PostgresBench":
        other = PostgresBench(self.admin_url, self.prefix, label)
        other.drop()
        # A template copy is a new database file by file: no dead rows, no history, like a fresh load.
        self._admin(f'CREATE DATABASE "{other.database}" TEMPLATE "{self.database}"')
        return other

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def exists(self) -> bool:
        return bool(self._admin("SELECT 1 FROM pg_database WHERE datname = %s", self.database))

    def size_bytes(self) -> int:
        return int(self._admin("SELECT pg_database_size(%s)", self.database)[0][0])

    def backup_bytes(self) -> int:
        import psycopg2

        connection = psycopg2.connect(self.url.replace("postgresql+psycopg2://", "postgresql://", 1), connect_timeout=5)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class "
                               "WHERE relkind = 'r' AND relname ~ '^indicators_backup_[0-9a-f]{12}$'")
                return int(cursor.fetchone()[0])
        finally:
            connection.close()


def new_store(kind: str, directory: Path, pg_admin: str, pg_prefix: str, label: str) -> BenchStore:
    if kind == "duckdb":
        directory.mkdir(parents=True, exist_ok=True)
        return DuckDBBench(directory, label)
    return PostgresBench(pg_admin, pg_prefix, label)


def check_postgres(admin_url: str) -> None:
    import psycopg2

    try:
        psycopg2.connect(admin_url, connect_timeout=5).close()
    except psycopg2.Error as exc:
        raise SystemExit(f"PostgreSQL at {admin_url} does not answer ({str(exc).strip()}): start it or pass --pg-admin")


def task_seconds(store: BenchStore, day: dt.date) -> dict[str, float]:
    """Seconds each task family of `day`'s pipeline took (the store's task_runs), chunks added up."""
    from stockpipe.store import open_store

    opened = open_store(store.url)
    try:
        runs = opened.task_runs_of_day(day).to_pylist()
    finally:
        opened.close()
    seconds: dict[str, float] = {}
    for run in runs:
        if run.get("duration_seconds") is not None:
            family = run["task_family"]
            seconds[family] = round(seconds.get(family, 0.0) + float(run["duration_seconds"]), 3)
    return seconds


@dataclass
class Bench:
    """One store kind's benchmark: its workspace directory (DuckDB files, data_dir, luigi.cfg files),
    the demo universe and calendar, how many times each figure is measured, and where progress goes."""

    directory: Path
    tickers: int
    years: int
    dates: Dates
    repeats: int = 3
    spark_master: str = "local[2]"
    keep: bool = False

    def cfg(self, store: BenchStore, engine: str = "numpy") -> Path:
        return luigi_cfg(self.directory, store.url, self.tickers, engine, self.spark_master,
                         path=self.directory / f"luigi-{store.label}-{engine}.cfg")

    def __post_init__(self) -> None:
        self.made: list[BenchStore] = []

    def copy(self, store: BenchStore, label: str) -> BenchStore:
        """A copy of `store` that `discard_all` drops even if a measurement fails."""
        made = store.copy(label)
        self.made.append(made)
        return made

    def discard_all(self) -> None:
        for store in self.made:
            self.discard(store)

    def discard(self, store: BenchStore) -> None:
        """Drop a store and its runs (plans, backups, reports, replica), unless --keep."""
        if self.keep:
            return
        from stockpipe.config import store_slug

        store.drop()
        shutil.rmtree(self.directory / "data" / store_slug(store.url), ignore_errors=True)

    def say(self, text: str) -> None:
        print(f"[{dt.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)

    def measured(self, store: BenchStore, engine: str, workers: int, what: str, result: dict[str, Any]) -> None:
        self.say(f"{store.kind} {engine} workers {workers}: {what} {result['seconds']} s, {result['peak_mb']} MB")


def row(job: str, store: BenchStore, engine: str, workers: int | None, runs: list[dict[str, Any]],
        **extra: Any) -> dict[str, Any]:
    """One line of the benchmark's table: the median of `runs`, and what it was measured on."""
    return {**median(runs), "job": job, "store": store.kind, "engine": engine, "workers": workers, **extra}


def backfilled(bench: Bench, kind: str, pg_admin: str, pg_prefix: str) -> tuple[BenchStore, dict[str, Any] | None]:
    """The store every figure starts from: the demo universe's history loaded by `Backfill` (bars,
    no indicators), and that Backfill's measurement. With --keep a matching one is reused (None)."""
    base = new_store(kind, bench.directory, pg_admin, pg_prefix, "base")
    stamp = bench.directory / "base.json"
    wanted = {"tickers": bench.tickers, "years": bench.years, "end": str(bench.dates.end), "url": base.url}
    if bench.keep and base.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        bench.say(f"{kind}: reusing the backfilled store {base.url}")
        return base, None
    stamp.unlink(missing_ok=True)
    if isinstance(base, PostgresBench):
        base.create()
    else:
        base.drop()
    result = measure(bench.directory, "Backfill", "--start-date", str(bench.dates.start),
                     "--end-date", str(bench.dates.end), cfg=bench.cfg(base))
    stamp.write_text(json.dumps(wanted))
    bench.say(f"{kind}: Backfill {result['seconds']} s, {result['peak_mb']} MB")
    return base, result
