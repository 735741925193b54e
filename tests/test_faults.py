"""Faults injected into real `luigi` runs on real stores, each followed by the same command again.

After every fault the store must hold no duplicate (symbol, date), lose no row, and equal (every
bar, indicator, symbol, watchlist row and marker, exactly) a store built by the same commands
without the fault. Kill points are chosen by waiting for a log line of the run (or for a file it
writes to appear), never by sleeping. Each test takes a copy of a seed store on which one Daily
already ran, so there are rows to lose.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pytest
from sqlalchemy.engine import make_url

from stockpipe.indicators import indicator_rows
from stockpipe.services.indicators import chunk
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store import open_store
from tests.conftest import _pg_admin, luigi_command, mounted_tmpfs, pg_url_for, run_luigi, write_luigi_cfg

pytestmark = pytest.mark.slow

DAY0, DAY = "2025-10-09", "2025-10-10"
START = "2025-09-29"
SETTINGS = {"demo": {"tickers": 30}, "stockpipe": {"chunk_size": 10, "daily_chunk_size": 10}}
TABLES = ("schema_version", "symbols", "bars", "indicators", "task_markers", "daily_watchlist", "task_runs",
          "run_plans", "run_chunk_failures", "run_reports")


# -- running and killing the real command ----------------------------------------------------------
def configure(directory: Path, url: str, **sections) -> Path:
    merged = {k: dict(v) for k, v in SETTINGS.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return write_luigi_cfg(directory, url, **merged)


def run_ok(directory: Path, *args: str) -> str:
    code, output = run_luigi(directory, *args, "--local-scheduler")
    assert code == 0, output
    return output


def kill_at(directory: Path, trigger: str, *args: str, workers: int = 1, whole_group: bool = True) -> tuple[str, int]:
    """Start `luigi *args` and SIGKILL it (its process group, or only the luigi process) the moment
    it logs a line matching `trigger`, or, for `file:<glob>`, the moment a file matching the glob
    (under `directory`) exists. Returns the output up to then and the process group's id."""
    process = luigi_command(directory, *args, "--local-scheduler", "--workers", str(workers), start_new_session=True)
    seen: list[str] = []
    fired = threading.Event()

    def read() -> None:
        for line in process.stdout:
            seen.append(line)
            if not trigger.startswith("file:") and re.search(trigger, line):
                fired.set()
        fired.set()  # the run ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not fired.is_set() and time.monotonic() < deadline:
        if trigger.startswith("file:") and any(directory.glob(trigger[5:])):
            break
        fired.wait(0.002)
    if process.poll() is not None or time.monotonic() >= deadline:
        reap_group(process.pid, timeout=0)
        pytest.fail(f"the run never reached {trigger!r}:\n" + "".join(seen))
    if whole_group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    reader.join(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen), process.pid


def reap_group(pgid: int, timeout: float = 10) -> list[str]:
    """Wait for what is left of a killed run's process group to exit, then kill the rest; returns
    the command lines of the processes that had to be killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        time.sleep(0.05)
    left = subprocess.run(["ps", "-o", "args=", "-g", str(pgid)], capture_output=True, text=True).stdout.splitlines()
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return left


def failures(output: str) -> dict[str, str]:
    """Each failed task's final exception line (the error it is reported with), as Luigi logged it."""
    found = {}
    for match in re.finditer(r"failed\s+(\w+)\(.*?\)\n(.*?)\nINFO: Informed scheduler", output, re.S):
        errors = re.findall(r"^[A-Za-z_][\w.]*(?:Error|Exception)\b.*$", match[2], re.M)
        found[match[1]] = errors[-1] if errors else ""
    return found


# -- what a store holds ------------------------------------------------------------------------------
def contents(url: str) -> dict[str, object]:
    store = open_store(url)
    try:
        return {
            "bars": store.read_bars(),
            "indicators": store.read_indicators().drop(["created_at"]),
            "symbols": store.read_symbols(active_only=False).drop(["updated_at"]),
            "watchlist": store.read_watchlist(),
            "markers": sorted(m["marker_id"] for m in store.markers()),
        }
    finally:
        store.close()


def duplicates(url: str) -> dict[str, list]:
    store = open_store(url)
    try:
        return {
            table: store.query(f"SELECT symbol, date, count(*) AS n FROM {table} GROUP BY symbol, date HAVING count(*) > 1").to_pylist()
            for table in ("bars", "indicators")
        }
    finally:
        store.close()


def assert_tables_equal(a: pa.Table, e: pa.Table, name: str) -> None:
    assert a.num_rows == e.num_rows, f"{name}: {a.num_rows} rows, expected {e.num_rows}"
    assert a.column_names == e.column_names, name
    for column in a.column_names:
        x, y = a.column(column).to_pylist(), e.column(column).to_pylist()
        if x != y:
            first = next(i for i in range(len(x)) if x[i] != y[i])
            pytest.fail(f"{name}.{column} differs at row {first} ({a.column('symbol')[first] if 'symbol' in a.column_names else ''}): "
                        f"{x[first]!r} != {y[first]!r}")


def assert_same(actual: dict, expected: dict) -> None:
    assert actual["markers"] == expected["markers"]
    for name in ("bars", "indicators", "symbols", "watchlist"):
        assert_tables_equal(actual[name], expected[name], name)


def assert_whole_and_exact(url: str, expected: dict) -> None:
    assert duplicates(url) == {"bars": [], "indicators": []}
    assert_same(contents(url), expected)


def scan_every_table(url: str) -> dict[str, int]:
    """Open the store and read every row of every table (a corrupt block fails here)."""
    store = open_store(url)
    try:
        with store.session(write=False) as session:
            return {t: len(session.fetch(f"SELECT * FROM {t}")) for t in TABLES}
    finally:
        store.close()


# -- stores: a seed per kind (one Daily already run), cloned per test ---------------------------------
class Seeds:
    """Stores on which Daily DAY0 has run, and the contents a clean run of each command leaves."""

    def __init__(self, root: Path):
        self.root = root
        self.databases: list[str] = []
        self._seeds: dict[str, tuple[Path, str]] = {}
        self.expected: dict[str, dict] = {}

    def seed(self, kind: str) -> tuple[Path, str]:
        if kind not in self._seeds:
            directory = self.root / f"seed-{kind}"
            directory.mkdir()
            if kind == "duckdb":
                url = f"duckdb:///{directory / 'store.duckdb'}"
            else:
                url = pg_url_for(self.create_database())
            configure(directory, url)
            run_ok(directory, "Daily", "--date", DAY0)
            self._seeds[kind] = (directory, url)
        return self._seeds[kind]

    def create_database(self, template: str | None = None, options: str = "") -> str:
        admin = _pg_admin()
        name = f"stockpipe_test_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "") + options)
        admin.close()
        self.databases.append(name)
        return name

    def clone(self, kind: str, directory: Path, home: Path | None = None, **sections) -> str:
        """A copy of the seed store and its data_dir, configured in `directory` (the DuckDB file and
        the data_dir in `home`, by default `directory` too)."""
        seed_dir, seed_url = self.seed(kind)
        home = home or directory
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(seed_dir / "data", home / "data")
        if kind == "duckdb":
            for name in ("store.duckdb", "store.duckdb.wal"):
                if (seed_dir / name).exists():
                    shutil.copy(seed_dir / name, home / name)
            url = f"duckdb:///{home / 'store.duckdb'}"
        else:
            url = pg_url_for(self.create_database(template=make_url(seed_url).database))
        sections.setdefault("stockpipe", {}).setdefault("data_dir", str(home / "data"))
        configure(directory, url, **sections)
        return url

    def clean(self, *command: str) -> dict:
        """What `command` leaves on a copy of the seed when nothing goes wrong."""
        key = " ".join(command)
        if key not in self.expected:
            directory = self.root / f"clean-{len(self.expected)}"
            url = self.clone("duckdb", directory)
            run_ok(directory, *command)
            self.expected[key] = contents(url)
        return self.expected[key]

    def drop_all(self) -> None:
        if not self.databases:
            return
        admin = _pg_admin()
        with admin.cursor() as cursor:
            for name in self.databases:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    found = Seeds(tmp_path_factory.mktemp("seeds"))
    yield found
    found.drop_all()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request):
    if request.param == "postgres":
        _pg_admin().close()  # fails in CI, skips on a laptop, when the server is missing
    return request.param


def _dsn(url: str) -> str:
    parsed = make_url(url)
    return f"host={parsed.host} port={parsed.port or 5432} user={parsed.username} dbname={parsed.database}"


# -- 1. SIGKILL at chosen points of Daily and RebuildFrom -----------------------------------------------
DAILY = ("Daily", "--date", DAY)
REBUILD = ("RebuildFrom", "--start-date", START)
FULL_REBUILD = ("RebuildFrom", "--start-date", "2023-01-03")
KILL_POINTS = {
    "daily-during-collect-symbols": (DAILY, r"running\s+CollectSymbols\("),
    "daily-during-ingest-writes": (DAILY, r"IngestDate_\S+ fetching \d+ symbols"),
    "daily-mid-chunks": (DAILY, r"\[chunk 2/3\] writing"),
    "daily-during-replicate": (DAILY, "file:data/*/.replica.duckdb.*.tmp"),
    # PostgreSQL's backup is written in one quick call: the line logged just before it starts.
    "rebuild-during-backup": (REBUILD, {"duckdb": "file:data/*/runs/*/.backup.parquet.*.tmp",
                                        "postgres": r"will replace \d+ indicator rows"}),
    "rebuild-mid-chunks": (REBUILD, r"\[chunk 2/3\] writing"),
    # From before the first bar: on PostgreSQL it is built aside, and the rerun resumes its build table.
    "full-rebuild-mid-chunks": (FULL_REBUILD, r"\[chunk 2/3\] writing"),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_the_same_command_completes_exactly(point, kind, seeds, tmp_path):
    command, trigger = KILL_POINTS[point]
    url = seeds.clone(kind, tmp_path / "run")
    killed, _ = kill_at(tmp_path / "run", trigger[kind] if isinstance(trigger, dict) else trigger, *command)
    scan_every_table(url)  # a killed run leaves a store that opens and reads in full
    final = f"{command[0]}/{'rebuild-' + command[2] if command[0] == 'RebuildFrom' else DAY}"
    assert open_store(url).read_marker(final) is None, "the kill came after the run finished"
    run_ok(tmp_path / "run", *command)
    assert_whole_and_exact(url, seeds.clean(*command))
    if command == FULL_REBUILD and kind == "postgres":
        assert "swapped in at the end" in killed  # built aside; the rerun swapped in the same build table
        assert open_store(url).has_backup_table(f"rebuild-{command[2]}")
    leftovers = [str(p.relative_to(tmp_path)) for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name]
    assert leftovers == [], "the killed run's temporary files are never cleaned up"


def test_sigkill_of_only_the_luigi_process_with_two_workers(seeds, tmp_path):
    # The forked worker running chunk 2 is orphaned, not killed: it finishes on its own while the
    # rerun starts, a second writer of the DuckDB file that the store must keep out of the way.
    url = seeds.clone("duckdb", tmp_path / "run")
    _, group = kill_at(tmp_path / "run", r"\[chunk 2/3\] reading bars", *REBUILD, workers=2, whole_group=False)
    try:
        run_ok(tmp_path / "run", *REBUILD)
    finally:
        left = reap_group(group, timeout=30)
    assert left == [], "the orphaned worker never finished"
    assert_whole_and_exact(url, seeds.clean(*REBUILD))


def hold_first_symbol_of_chunk_2(connection) -> None:
    """Lock the row chunk 2 (symbols 10..19) updates after its DELETE and COPY, so that it waits
    there mid-transaction. (FOR UPDATE with OFFSET would lock the skipped rows too.)"""
    with connection.cursor() as cursor:
        cursor.execute("SELECT symbol FROM symbols WHERE symbol = (SELECT symbol FROM symbols ORDER BY symbol "
                       "OFFSET 10 LIMIT 1) FOR UPDATE")


def test_sigkill_inside_an_open_chunk_transaction_on_postgresql(seeds, tmp_path):
    """Deterministically mid-transaction: the chunk has deleted and copied its rows and waits for a
    row lock the test holds when the whole luigi process group is killed."""
    url = seeds.clone("postgres", tmp_path / "run")
    before = contents(url)
    holder = psycopg2.connect(_dsn(url))
    admin = psycopg2.connect(_dsn(url))
    admin.autocommit = True
    hold_first_symbol_of_chunk_2(holder)
    process = luigi_command(tmp_path / "run", *REBUILD, "--local-scheduler", start_new_session=True)
    try:
        waiting = None
        deadline = time.monotonic() + 60
        while waiting is None and time.monotonic() < deadline:
            with admin.cursor() as cursor:
                cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE symbols%%'")
                waiting = cursor.fetchone()
            time.sleep(0.02)
        assert waiting is not None, "the chunk never reached its symbols update"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        holder.rollback()
        holder.close()
    # The server notices the dead client once the lock is free and rolls the chunk back.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with admin.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", waiting)
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.05)
    admin.close()
    after = contents(url)
    assert f"IndicatorChunk/rebuild-{START}/1" not in after["markers"]
    chunk2 = set(after["symbols"].column("symbol").to_pylist()[10:20])
    old = before["indicators"].filter(pa.compute.is_in(before["indicators"].column("symbol"), pa.array(sorted(chunk2))))
    now = after["indicators"].filter(pa.compute.is_in(after["indicators"].column("symbol"), pa.array(sorted(chunk2))))
    assert now.equals(old), "the killed chunk's transaction must leave its previous rows"
    run_ok(tmp_path / "run", *REBUILD)
    assert_whole_and_exact(url, seeds.clean(*REBUILD))


# -- 2. the server ends the store's connections mid-chunk -------------------------------------------------
@pytest.mark.postgres
def test_pg_terminate_backend_of_every_store_connection_mid_chunk(seeds, tmp_path):
    url = seeds.clone("postgres", tmp_path / "run")
    before = contents(url)
    database = make_url(url).database
    holder = psycopg2.connect(_dsn(url))
    hold_first_symbol_of_chunk_2(holder)
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        holder_pid = cursor.fetchone()[0]
    admin = _pg_admin()
    process = luigi_command(tmp_path / "run", *REBUILD, "--local-scheduler", start_new_session=True)
    try:
        terminated = []
        deadline = time.monotonic() + 60
        while not terminated and time.monotonic() < deadline:
            with admin.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
                               "AND query ILIKE 'UPDATE symbols%%'", (database,))
                if cursor.fetchone():
                    # Every connection the run holds on the test database, busy or pooled.
                    cursor.execute("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                   "AND pid NOT IN (pg_backend_pid(), %s)", (database, holder_pid))
                    terminated = cursor.fetchall()
            time.sleep(0.02)
        holder.rollback()
        output, _ = process.communicate(timeout=120)
    finally:
        holder.close()
        admin.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert terminated, "the chunk never reached its symbols update"
    assert process.returncode == 30, output
    assert "terminating connection due to administrator command" in output or "server closed the connection" in output
    after = contents(url)
    done = {m for m in after["markers"] if m.startswith(f"IndicatorChunk/rebuild-{START}/")}
    # The chunk whose connection died failed; the others got fresh connections and finished.
    assert done == {f"IndicatorChunk/rebuild-{START}/0", f"IndicatorChunk/rebuild-{START}/2"}, output
    chunk2 = sorted(before["symbols"].column("symbol").to_pylist()[10:20])
    keep = lambda t: t.filter(pa.compute.is_in(t.column("symbol"), pa.array(chunk2)))  # noqa: E731
    assert keep(after["indicators"]).equals(keep(before["indicators"])), "the failed chunk must keep the old rows"
    # The failure was recorded on a fresh connection, in a transaction of its own: the chunk's rollback kept it.
    failed = rebuild_service.failures(open_store(url), f"rebuild-{START}")
    assert list(failed) == [1], failed
    assert "administrator command" in failed[1]["error"] or "server closed" in failed[1]["error"]

    run_ok(tmp_path / "run", *REBUILD)
    assert_whole_and_exact(url, seeds.clean(*REBUILD))


# -- 3. disk full ----------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", 24) as disk:
        yield disk


def fill(disk: Path, leave: int) -> Path:
    """Use all of the disk's space but `leave` bytes."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    wanted = stats.f_bavail * stats.f_frsize - leave if leave else None
    block = b"\0" * 65536
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        written = 0
        while wanted is None or written < wanted:
            written += os.write(descriptor, block if wanted is None else block[: min(len(block), wanted - written)])
    except OSError as exc:
        assert exc.errno == 28 and wanted is None, exc
    finally:
        os.close(descriptor)
    return filler


DISK_FULL = {
    # The store and the data_dir on a disk with no byte left: the first write fails.
    "store-full": ({}, 0, "store.duckdb"),
    # The store has room, the replica's disk has none.
    "replica-disk-full": ({"replica": "disk"}, 0, "replica.duckdb"),
}


@pytest.mark.parametrize("case", DISK_FULL)
def test_disk_full_fails_naming_the_file_keeps_the_store_and_a_rerun_completes(case, seeds, small_disk, tmp_path):
    where, leave, failing_file = DISK_FULL[case]
    if where.get("replica") == "disk":
        url = seeds.clone("duckdb", tmp_path / "run", replica={"path": str(small_disk / "replica.duckdb")})
    else:
        url = seeds.clone("duckdb", tmp_path / "run", home=small_disk)
    filler = fill(small_disk, leave)

    code, output = run_luigi(tmp_path / "run", *DAILY, "--local-scheduler")
    assert code == 30, output
    failed = failures(output)
    assert failed, output
    task, error = next(iter(failed.items()))
    # The error a task fails with (and task_runs and the alert repeat) says what and which file.
    assert "No space left on device" in error and str(small_disk) in error and failing_file in error, (task, error)
    scan_every_table(url)

    filler.unlink()
    run_ok(tmp_path / "run", *DAILY)
    assert_whole_and_exact(url, seeds.clean(*DAILY))
    leftovers = [p.name for p in small_disk.rglob("*") if ".tmp" in p.name]
    assert leftovers == [], "a failed write left its temporary files"


# -- 4. a source that never answers --------------------------------------------------------------------------
def session_dates(first: str, last: str) -> list[dt.date]:
    from stockpipe import trading_calendar

    return list(trading_calendar.sessions("XNYS", dt.date.fromisoformat(first), dt.date.fromisoformat(last)))


def write_bars_csv(path: Path, symbols: list[str], first: str = "2025-06-02", last: str = DAY) -> list[dict]:
    """Plausible bars (low <= open, close <= high) for `symbols`, written with csv's quoting."""
    rng = np.random.default_rng(7)
    rows = []
    for number, symbol in enumerate(symbols):
        price = 20.0 + 3 * number
        for day in session_dates(first, last):
            open_ = round(price, 2)
            price = max(1.0, price * float(np.exp(rng.normal(0, 0.02))))
            close = round(price, 2)
            rows.append({"symbol": symbol, "date": day.isoformat(), "open": open_, "high": round(max(open_, close) * 1.01, 2),
                         "low": round(min(open_, close) * 0.99, 2), "close": close, "volume": int(rng.integers(1e5, 1e6))})
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_a_source_that_hangs_is_killed_by_the_worker_timeout_and_a_rerun_completes(tmp_path):
    source = tmp_path / "csv"
    source.mkdir()
    (source / "symbols.csv").write_text("symbol,name\nAAA,Aaa Corp\nBBB,Bbb Inc\n", encoding="utf-8")
    os.mkfifo(source / "bars.csv")  # nobody ever writes it: opening it blocks for ever
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    configure(tmp_path, url, stockpipe={"source": "csv", "min_symbols": 1}, csv={"path": str(source)},
              timeouts={"ingest": 5})
    started = time.monotonic()
    process = luigi_command(tmp_path, *DAILY, "--local-scheduler", start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    assert process.returncode == 30, output
    assert elapsed < 60, f"the hung run took {elapsed:.0f} s to give up"
    assert re.search(r"IngestDate\S* timed out after 5(\.0)? seconds", output), output
    assert reap_group(process.pid) == [], "a process of the run is still blocked on the FIFO"
    runs = open_store(url).query("SELECT task_family, status, error FROM task_runs WHERE status <> 'DONE'").to_pylist()
    open_store(url).close()
    assert [(r["task_family"], r["status"]) for r in runs] == [("IngestDate", "FAILED")], runs
    assert "timed out" in runs[0]["error"]

    (source / "bars.csv").unlink()
    rows = write_bars_csv(source / "bars.csv", ["AAA", "BBB"])
    run_ok(tmp_path, *DAILY)
    stored = open_store(url).read_bars()
    open_store(url).close()
    assert stored.num_rows == len(rows)
    assert stored.column("close").to_pylist() == [r["close"] for r in sorted(rows, key=lambda r: (r["symbol"], r["date"]))]


# -- 5. hostile symbols and rule text -------------------------------------------------------------------------
HOSTILE_SYMBOLS = [
    "X'; DROP TABLE bars; --",
    "Robert'); DROP TABLE symbols;--",
    'QUO"TE',
    "SEMI;COLON",
    "COMMA,SEP",
    ":s",  # a placeholder of the store's own SQL
    ":d",
    "%(s)s",
    "$1",
    "\\N",  # PostgreSQL COPY's NULL marker
    "\\.",  # and its end-of-data marker
    "NULL",
    "삼성전자",
    "Ünïcødé-ß",
    "🚀MOON",
    "L" + "o" * 1500 + "NG",
]


def test_hostile_symbols_are_stored_exactly_and_never_executed(kind, tmp_path):
    source = tmp_path / "csv"
    source.mkdir()
    rows = write_bars_csv(source / "bars.csv", HOSTILE_SYMBOLS)
    if kind == "duckdb":
        url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    else:
        seeds = Seeds(tmp_path)
        # Production servers often sort text by a language's rules, not by code point as Python does.
        url = pg_url_for(seeds.create_database("template0", " LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"))
    try:
        configure(tmp_path, url, stockpipe={"source": "csv", "min_symbols": 1, "chunk_size": 5, "daily_chunk_size": 5}, csv={"path": str(source)})
        run_ok(tmp_path, *DAILY)
        store = open_store(url)
        assert scan_every_table(url)["bars"] == len(rows)
        assert sorted(store.read_symbols().column("symbol").to_pylist()) == sorted(HOSTILE_SYMBOLS)
        bars = store.read_bars().sort_by([("symbol", "ascending"), ("date", "ascending")])
        expected = sorted(rows, key=lambda r: (r["symbol"], r["date"]))
        assert bars.column("symbol").to_pylist() == [r["symbol"] for r in expected]
        assert bars.column("close").to_pylist() == [r["close"] for r in expected]
        assert duplicates(url) == {"bars": [], "indicators": []}
        first = store.read_indicators().sort_by([("symbol", "ascending"), ("date", "ascending")])
        # The engine on the stored bars, chunk by chunk as the run computed them (a matrix of other
        # widths may round a last bit differently).
        chunks = [pa.array(c, pa.string()) for c in chunk(sorted(HOSTILE_SYMBOLS), 5)]
        recomputed = pa.concat_tables(
            [indicator_rows(bars.filter(pa.compute.is_in(bars.column("symbol"), c))) for c in chunks]
        )
        assert_tables_equal(first.drop(["created_at"]), recomputed, "indicators")

        # A rebuild backs the rows up (symbols in the backup's metadata) and a restore puts them back.
        run_ok(tmp_path, *REBUILD)
        backup = next((tmp_path / "data").glob(f"*/runs/rebuild-{START}/backup.parquet"))  # the store's own directory
        import pyarrow.parquet as pq

        meta = json.loads(pq.ParquetFile(backup).metadata.metadata[b"stockpipe"])  # the file footer
        assert sorted(meta["symbols"]) == sorted(HOSTILE_SYMBOLS)
        store.close()
        restored = subprocess.run(["stockpipe", "restore", str(backup)], cwd=tmp_path, capture_output=True, text=True,
                                  env={**os.environ, "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")}, timeout=120)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert duplicates(url) == {"bars": [], "indicators": []}
        restored_rows = open_store(url).read_indicators().sort_by([("symbol", "ascending"), ("date", "ascending")])
        assert_tables_equal(restored_rows.drop(["created_at"]), recomputed, "indicators")
    finally:
        open_store(url).close()
        if kind == "postgres":
            seeds.drop_all()


SNEAKY_RULES = {
    "statement-after-condition": {"conditions": ["rsi_14 < 30", "close > 0; DROP TABLE bars; --"]},
    "statement-in-order": {"conditions": ["close > 0"], "order_by": "market_cap; DROP TABLE bars --"},
}


def _rescan(seeds: Seeds, directory: Path, rules: list[dict]) -> tuple[str, int, str]:
    url = seeds.clone("duckdb", directory, watchlist={"rules": json.dumps(rules)})
    store = open_store(url)
    store.delete_markers([f"ScanWatchlist/{DAY0}"])  # the seed's scan is redone with these rules
    store.close()
    code, output = run_luigi(directory, "ScanWatchlist", "--date", DAY0, "--local-scheduler")
    return url, code, output


@pytest.mark.parametrize("case", SNEAKY_RULES)
def test_rule_text_with_sql_is_refused_naming_the_rule(case, seeds, tmp_path):
    rule = {"name": "sneaky_rule", "priority": 1, "limit": 5, "order_by": "market_cap desc", **SNEAKY_RULES[case]}
    before = contents(seeds.seed("duckdb")[1])
    url, code, output = _rescan(seeds, tmp_path / "run", [rule])
    # Refused before any work: one line naming the rule, exit 2 (a settings mistake, not a failed task).
    assert code == 2, output
    assert "stockpipe: [watchlist] rules: watchlist rule 'sneaky_rule'" in output, output
    assert "Traceback" not in output
    after = contents(url)
    for name in ("bars", "indicators", "symbols"):
        assert after[name].equals(before[name]), name
    assert f"ScanWatchlist/{DAY0}" not in after["markers"]
    assert after["watchlist"].equals(before["watchlist"]), "a refused rule must leave the previous scan"


def test_a_rule_named_with_sql_is_data(seeds, tmp_path):
    name = "x'; DROP TABLE daily_watchlist; --"
    rule = {"name": name, "priority": 1, "limit": 3, "order_by": "market_cap desc", "conditions": ["close > 0"]}
    url, code, output = _rescan(seeds, tmp_path / "run", [rule])
    assert code == 0, output
    scan = contents(url)["watchlist"].filter(pa.compute.equal(pa.compute.field("scan_date"), pa.scalar(dt.date(2025, 10, 9))))
    assert scan.num_rows == 3
    assert set(scan.column("scan_reason").to_pylist()) == {name}
