"""The Spark engine on a real Spark: a local session, a standalone master + worker started from
pyspark's own bin/spark-class, and the luigi command end to end. One session per module, small data.

Parity: every stored value equals the numpy engine's (1e-12 relative; in practice bit for bit, as both
run the same kernels on the same chunk) and the independent reference (1e-9), including warm-up,
short histories, a healed gap and a split's full-history recompute.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stockpipe.engines import ChunkRef, EngineError, open_engine, spark_job
from stockpipe.indicators import FIRST_VALID, INDICATOR_COLUMNS, indicator_rows
from stockpipe.services import indicators as indicator_service
from stockpipe.store import Marker, open_store
from stockpipe.store.schema import BARS
from tests.conftest import free_port, luigi_command, prepared_store, run_luigi, service_missing, write_luigi_cfg
from tests.indicators import reference

pytestmark = pytest.mark.spark

WARMUP = 500
START = dt.date(2023, 6, 1)
CHUNKS = [["GAP", "LONG", "MID"], ["SHORT", "SPLIT", "YOUNG"]]
FULL_HISTORY = ["SPLIT"]


def _spark_engine(master: str, **conf: str):
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        service_missing("pyspark", str(exc))
    from stockpipe.engines.spark_engine import SparkEngine, SparkSettings, find_java

    try:
        find_java()
    except EngineError as exc:
        service_missing("Java 17", str(exc))
    # Generous start-up bound: a shared CI machine may take minutes to start a JVM.
    engine = SparkEngine(SparkSettings(master=master, conf={"spark.sql.shuffle.partitions": "2", **conf}, startup_timeout=300))
    try:
        engine.session()
    except EngineError as exc:
        service_missing("Spark", str(exc))
    return engine


@pytest.fixture(scope="module")
def local_engine():
    engine = _spark_engine("local[2]", **{"spark.stockpipe.probe": "reached"})
    yield engine
    engine.close()


# -- a small market with every case a chunk meets ------------------------------------------------
def _sessions(first: dt.date, count: int) -> list[dt.date]:
    days = np.busday_offset(np.datetime64(first, "D"), np.arange(count), roll="forward")
    return [d.astype(dt.date) for d in days]


CALENDAR = _sessions(dt.date(2019, 1, 2), 1600)  # weekdays to 2025
HISTORY = {  # symbol -> (first session index, bars)
    "LONG": (0, 1300),  # 1,100 bars before START: warm-up trimmed to 500
    "MID": (850, 450),  # fewer than 500 bars before START: read in full
    "GAP": (0, 1300),  # stored indicators stop long before START: healed from there
    "SHORT": (1290, 10),  # ten bars, every indicator NULL but the first ones
    "SPLIT": (100, 1200),  # recomputed from its first bar
    "YOUNG": (1260, 40),  # listed after START: no stored rows, whole history
}


def _bars() -> pa.Table:
    rng = np.random.default_rng(42)
    frames = []
    for symbol, (first, count) in sorted(HISTORY.items()):
        close = np.round(50 * np.exp(np.cumsum(rng.normal(0, 0.02, count))), 2)
        if symbol == "MID":
            close[100:130] = close[100]  # a flat stretch: zero-width bands
        frames.append(pa.table({
            "symbol": [symbol] * count,
            "date": pa.array(CALENDAR[first:first + count], pa.date32()),
            "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
            "volume": pa.array(rng.integers(1_000, 3_000_000, count), pa.int64()),
        }))
    return pa.concat_tables(frames).cast(BARS.schema)


def _market(url: str):
    """Bars, plus the indicators an earlier run left: all but GAP's last 500 sessions and YOUNG."""
    store = open_store(url)
    bars = _bars()
    store.write_bars(bars)
    rows = indicator_rows(bars)
    gap_end = CALENDAR[700]
    keep = pc.and_(pc.not_equal(rows.column("symbol"), "YOUNG"),
                   pc.or_(pc.not_equal(rows.column("symbol"), "GAP"), pc.less(rows.column("date"), pa.scalar(gap_end, pa.date32()))))
    store.replace_indicators(sorted(HISTORY), dt.date.min, rows.filter(keep))
    return store


def _run_chunks(store, engine, staging: Path) -> list[dict]:
    indicator_service.prepare_chunks(store, engine, CHUNKS, range(len(CHUNKS)), START, warmup_bars=WARMUP,
                                     staging=staging, full_history=FULL_HISTORY)
    return [
        indicator_service.compute_chunk(store, symbols, START, engine=engine, warmup_bars=WARMUP,
                                        marker=Marker(f"IndicatorChunk/t/{i}", "IndicatorChunk"),
                                        full_history=FULL_HISTORY, chunk=ChunkRef(staging, i))
        for i, symbols in enumerate(CHUNKS)
    ]


def _stored(store) -> pa.Table:
    return store.read_indicators().drop_columns(["created_at"])


def _assert_close(actual: pa.Table, expected: pa.Table, rtol: float) -> None:
    """Equal rows, NULL where the other is NULL, values within `rtol` of the column's scale."""
    assert actual.column("symbol").equals(expected.column("symbol"))
    assert actual.column("date").equals(expected.column("date"))
    for name in INDICATOR_COLUMNS:
        a = actual.column(name).to_numpy(zero_copy_only=False).astype(float)
        b = expected.column(name).to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        # Relative to the column's scale: MACD crosses zero, where a relative error means nothing.
        scale = float(np.nanmax(np.abs(b))) if (~np.isnan(b)).any() else 0.0
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=rtol, atol=rtol * scale, err_msg=name)


# -- parity -----------------------------------------------------------------------------------------
def test_spark_stores_what_numpy_stores(local_engine, tmp_path):
    with_numpy = _market(f"duckdb:///{tmp_path / 'numpy.duckdb'}")
    with_spark = _market(f"duckdb:///{tmp_path / 'spark.duckdb'}")
    numpy_stats = _run_chunks(with_numpy, open_engine("numpy"), tmp_path / "numpy-staged")
    spark_stats = _run_chunks(with_spark, local_engine, tmp_path / "staged")

    assert [s["computed_by"] for s in numpy_stats] == ["numpy", "numpy"]
    assert [s["computed_by"] for s in spark_stats] == ["spark", "spark"]  # staged rows used, not recomputed
    assert spark_stats[0]["healed_symbols"] == ["GAP"] and spark_stats[1]["full_history_symbols"] == ["SPLIT"]
    assert [s["rows_saved"] for s in spark_stats] == [s["rows_saved"] for s in numpy_stats]
    _assert_close(_stored(with_spark), _stored(with_numpy), rtol=1e-12)
    assert not list((tmp_path / "staged").glob("*.arrow"))  # each chunk dropped its staged rows once stored


def test_a_plan_is_computed_in_jobs_of_whole_chunks(local_engine, tmp_path, monkeypatch):
    import dataclasses

    from stockpipe.engines.spark_engine import job_groups

    wanted = pa.table({"chunk_id": pa.array([0, 0, 0, 1, 1, 2, 2, 2, 2], pa.int32()), "symbol": list("abcdefghi")})
    assert job_groups(wanted, 5) == [[0, 1], [2]] and job_groups(wanted, 1) == [[0], [1], [2]]
    assert job_groups(wanted, 100) == [[0, 1, 2]]

    monkeypatch.setattr(local_engine, "settings", dataclasses.replace(local_engine.settings, symbols_per_job=3))
    store = _market(f"duckdb:///{tmp_path / 'spark.duckdb'}")
    staging = tmp_path / "staged"
    stats = indicator_service.prepare_chunks(store, local_engine, CHUNKS, [0, 1], START, warmup_bars=WARMUP,
                                             staging=staging, full_history=FULL_HISTORY)
    assert stats["jobs"] == 2 and stats["staged_chunks"] == 2
    assert sorted(p.name for p in staging.iterdir()) == ["chunk-0.arrow", "chunk-1.arrow"]  # no snapshot left
    expected = _market(f"duckdb:///{tmp_path / 'numpy.duckdb'}")
    _run_chunks(expected, open_engine("numpy"), tmp_path / "numpy-staged")
    chunks = [indicator_service.compute_chunk(store, symbols, START, engine=local_engine, warmup_bars=WARMUP, marker=None,
                                              full_history=FULL_HISTORY, chunk=ChunkRef(staging, i))
              for i, symbols in enumerate(CHUNKS)]
    assert [c["computed_by"] for c in chunks] == ["spark", "spark"]
    _assert_close(_stored(store), _stored(expected), rtol=1e-12)


def test_spark_values_match_the_reference_definitions(local_engine, tmp_path):
    store = _market(f"duckdb:///{tmp_path / 'spark.duckdb'}")
    _run_chunks(store, local_engine, tmp_path / "staged")
    stored = _stored(store)
    bars = store.read_bars()
    for symbol in HISTORY:
        mine = bars.filter(pc.equal(bars.column("symbol"), symbol))
        expected = reference.all_indicators(mine.column("close").to_pylist(), mine.column("volume").to_pylist())
        rows = stored.filter(pc.equal(stored.column("symbol"), symbol))
        assert rows.column("date").equals(mine.column("date")), symbol  # no hole: every bar has its row
        for name in INDICATOR_COLUMNS:
            got = rows.column(name).to_numpy(zero_copy_only=False).astype(float)
            want = np.array(expected[name], dtype=float)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{symbol}.{name}")
            if len(got) > FIRST_VALID[name]:
                np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-9, atol=1e-10,
                                           err_msg=f"{symbol}.{name}")


def test_staged_rows_of_changed_bars_are_recomputed_not_stored(local_engine, tmp_path):
    store = _market(f"duckdb:///{tmp_path / 'spark.duckdb'}")
    staging = tmp_path / "staged"
    indicator_service.prepare_chunks(store, local_engine, CHUNKS, [0, 1], START, warmup_bars=WARMUP, staging=staging,
                                     full_history=FULL_HISTORY)
    # A late correction lands between the Spark job and the chunk task.
    corrected = store.read_bars(["LONG"], start=CALENDAR[1200], end=CALENDAR[1200])
    store.write_bars(corrected.set_column(5, "close", pc.multiply(corrected.column("close"), 1.5)))
    again = indicator_service.prepare_chunks(store, local_engine, CHUNKS, [0, 1], START, warmup_bars=WARMUP,
                                             staging=staging, full_history=FULL_HISTORY)
    assert again == {"chunks": 2, "reused": 2}  # a second attempt reuses what is staged: no second job
    stats = [indicator_service.compute_chunk(store, symbols, START, engine=local_engine, warmup_bars=WARMUP,
                                             marker=None, full_history=FULL_HISTORY, chunk=ChunkRef(staging, i))
             for i, symbols in enumerate(CHUNKS)]
    assert [s["computed_by"] for s in stats] == ["numpy", "spark"]
    expected = indicator_rows(store.read_bars(["LONG"]))
    stored = store.read_indicators(["LONG"]).drop_columns(["created_at"])
    _assert_close(stored, expected, rtol=1e-12)


def test_a_chunk_taken_where_nothing_is_staged_is_computed_with_numpy(tmp_path, caplog):
    """An assistant on another machine (or with another data_dir) runs a chunk of a Spark-planned run:
    the staged directory is not there. It computes the chunk itself with the numpy kernels, says so,
    and stores the same values; no Spark session is started for it."""
    from stockpipe.engines.spark_engine import SparkEngine, SparkSettings

    store = _market(f"duckdb:///{tmp_path / 'spark.duckdb'}")
    engine = SparkEngine(SparkSettings(master="local[1]"))
    elsewhere = tmp_path / "another-data-dir" / "runs" / "rebuild-2023-06-01" / "staged"
    with caplog.at_level("WARNING", logger="stockpipe"):
        stats = indicator_service.compute_chunk(store, CHUNKS[0], START, engine=engine, warmup_bars=WARMUP, marker=None,
                                                full_history=FULL_HISTORY, chunk=ChunkRef(elsewhere, 0))
    assert stats["computed_by"] == "numpy"
    assert f"chunk 0: no rows staged by Spark in {elsewhere}: computing them here" in caplog.text
    assert engine._session is None and not elsewhere.exists()
    expected = indicator_rows(store.read_bars(["LONG"]))
    _assert_close(store.read_indicators(["LONG"]).drop_columns(["created_at"]), expected, rtol=1e-12)


def test_every_conf_setting_reaches_the_session(local_engine):
    assert local_engine.session().conf.get("spark.stockpipe.probe") == "reached"
    assert local_engine.session().conf.get("spark.sql.shuffle.partitions") == "2"


def test_a_local_driver_jvm_runs_without_the_optimising_compiler(local_engine):
    jvm = local_engine.session().sparkContext._jvm
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in arguments  # reached the JVM itself, not only the session's conf


def _python_workers() -> list[int]:
    """Spark's Python workers under this process: forks of a `pyspark.daemon` (they carry its name)."""
    parents, names = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            names[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return [pid for pid in mine if b"pyspark.daemon" in names.get(pid, b"")
            and b"pyspark.daemon" in names.get(parents.get(pid, 0), b"")]


def test_a_worker_killed_mid_job_fails_the_job_clearly_and_a_rerun_completes(local_engine, tmp_path):
    store = open_store(f"duckdb:///{tmp_path / 'big.duckdb'}")
    rng = np.random.default_rng(3)
    symbols, count = [f"S{i:03d}" for i in range(300)], 1500
    close = np.round(20 * np.exp(np.cumsum(rng.normal(0, 0.02, (len(symbols), count)), axis=1)), 2).reshape(-1)
    store.write_bars(pa.table({
        "symbol": np.repeat(symbols, count), "date": pa.array(CALENDAR[:count] * len(symbols), pa.date32()),
        "open": close, "high": close, "low": close, "close": close,
        "volume": pa.array(rng.integers(1_000, 100_000, close.size), pa.int64()),
    }).cast(BARS.schema))
    staging = tmp_path / "staged"
    outcome: dict = {}

    def prepare() -> None:
        try:
            outcome["stats"] = indicator_service.prepare_chunks(store, local_engine, [symbols], [0], CALENDAR[1400],
                                                                warmup_bars=WARMUP, staging=staging)
        except EngineError as exc:
            outcome["error"] = exc

    import threading

    job = threading.Thread(target=prepare)
    job.start()
    killed = 0
    while job.is_alive():
        for pid in _python_workers():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    job.join()
    assert killed, "no Python worker was seen to kill"
    assert "error" in outcome, outcome
    message = str(outcome["error"])
    assert message.startswith("spark job on local[2] failed: ") and len(message) > len("spark job on local[2] failed: ") + 10
    assert "Traceback" not in message and "\tat " not in message  # Spark's reason, not its stack
    for staged in staging.glob("chunk-*.arrow"):  # whatever is staged is whole (written, then renamed)
        assert spark_job.read_staged(staging, int(staged.stem.split("-")[1]))[0].num_rows == len(symbols) * count

    # The same step again (what a rerun does) completes, and the chunk stores Spark's rows.
    indicator_service.prepare_chunks(store, local_engine, [symbols], [0], CALENDAR[1400], warmup_bars=WARMUP, staging=staging)
    stats = indicator_service.compute_chunk(store, symbols, CALENDAR[1400], engine=local_engine, warmup_bars=WARMUP,
                                            marker=None, chunk=ChunkRef(staging, 0))
    assert stats["computed_by"] == "spark" and stats["rows_saved"] == len(symbols) * count


# -- configuration refused before any work ------------------------------------------------------------
def test_bad_settings_are_named(monkeypatch):
    import luigi.configuration

    from stockpipe.engines.spark_engine import SparkEngine, SparkSettings, parse_conf

    with pytest.raises(EngineError, match=r"conf entry 'spark.executor.cores' is not key=value"):
        parse_conf("spark.sql.shuffle.partitions=4|spark.executor.cores")
    with pytest.raises(EngineError, match=r"master = 'localhost\[2\]' is not a Spark master URL"):
        SparkEngine(SparkSettings(master="localhost[2]"))
    config = luigi.configuration.get_config()
    config.add_section("spark")
    config.set("spark", "executor_memory", "3g")
    config.set("spark", "conf", "spark.sql.shuffle.partitions=3|spark.eventLog.enabled=false")
    settings = SparkSettings.from_config()
    assert settings.conf == {"spark.executor.memory": "3g", "spark.sql.shuffle.partitions": "3", "spark.eventLog.enabled": "false"}
    config.set("spark", "deploy_mode", "cluster")
    with pytest.raises(EngineError, match="deploy_mode = cluster.*only client mode"):
        SparkSettings.from_config()


def test_no_java_is_named(monkeypatch, tmp_path):
    from stockpipe.engines.spark_engine import SparkEngine, SparkSettings

    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(EngineError, match=r"needs Java 17 or newer: JAVA_HOME=.*no-jdk has no bin/java"):
        SparkEngine(SparkSettings(master="local[1]")).session()


def test_a_master_that_does_not_answer_is_named_quickly():
    from stockpipe.engines.spark_engine import SparkEngine, SparkSettings

    port = free_port()
    started = time.monotonic()
    with pytest.raises(EngineError, match=rf"Spark master spark://127.0.0.1:{port} does not answer at 127.0.0.1:{port}"):
        SparkEngine(SparkSettings(master=f"spark://127.0.0.1:{port}", startup_timeout=5)).session()
    assert time.monotonic() - started < 30


def test_spark_connect_is_used_or_refused_clearly():
    from stockpipe.engines.spark_engine import SparkEngine, SparkSettings

    port = free_port()  # nothing listens there
    with pytest.raises(EngineError, match=rf"(Spark Connect, whose client libraries are missing|does not answer at 127.0.0.1:{port})"):
        SparkEngine(SparkSettings(master=f"sc://127.0.0.1:{port}", startup_timeout=5)).session()


# -- a standalone cluster: pyspark's own master and worker ---------------------------------------------
def _elsewhere(hidden: Path, witness: Path) -> list[str]:
    """A command prefix that runs a process as if on another machine, as far as files go: in its own
    mount namespace, where `hidden` (this test session's temporary directory, so every run directory
    and store) is an empty filesystem of its own. Nothing it writes there reaches this process.
    `witness`, a file under `hidden`, must be out of its sight."""
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs elsewhere "$0" && cd / && exec "$@"', str(hidden)]
    try:
        probe = subprocess.run([*prefix, "test", "!", "-e", str(witness)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        service_missing("a mount namespace (unshare) for the Spark worker", str(exc))
    if probe.returncode != 0:
        service_missing("a mount namespace (unshare) for the Spark worker", probe.stderr.strip() or "the probe saw the directory")
    return prefix


@pytest.fixture(scope="module")
def standalone_master(tmp_path_factory):
    """A master, and a worker that cannot see the driver's files: its executors compute where no
    run directory, snapshot or store of this test exists, as on another machine without a shared
    filesystem."""
    try:
        import pyspark
    except ImportError as exc:
        service_missing("pyspark", str(exc))
    home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("spark-standalone")
    (logs / "witness").touch()
    elsewhere = _elsewhere(tmp_path_factory.getbasetemp(), logs / "witness")
    port, ui, worker_ui = free_port(), free_port(), free_port()
    environment = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(logs),
                   "SPARK_WORKER_DIR": str(logs / "work")}
    spark_class = str(home / "bin" / "spark-class")
    processes = [
        subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                          "--port", str(port), "--webui-port", str(ui)],
                         env=environment, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
        # The worker's own directories lie inside the hidden one: it creates them in its empty view.
        subprocess.Popen([*elsewhere, spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                          "--host", "127.0.0.1", "--webui-port", str(worker_ui), "--cores", "2", "--memory", "2g"],
                         env=environment, stdout=open(logs / "worker.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as answer:
                    if json.load(answer).get("aliveworkers", 0) >= 1:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                service_missing("a standalone Spark master and worker", (logs / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_standalone_cluster_whose_executors_cannot_see_the_run_directory_computes_the_same_rows(
        standalone_master, local_engine, tmp_path):
    local_engine.close()  # one SparkContext per process: the local one makes way (reopened on demand)
    engine = _spark_engine(standalone_master, **{"spark.driver.host": "127.0.0.1", "spark.executor.memory": "1g",
                                                  "spark.cores.max": "2"})
    staging = tmp_path / "staged"
    try:
        with_numpy = _market(f"duckdb:///{tmp_path / 'numpy.duckdb'}")
        on_cluster = _market(f"duckdb:///{tmp_path / 'cluster.duckdb'}")
        _run_chunks(with_numpy, open_engine("numpy"), tmp_path / "numpy-staged")
        where = str(tmp_path)
        # The premise: this directory (the store, the run's staging) does not exist where executors run.
        seen = engine.session().sparkContext.parallelize([where], 1).map(os.path.exists).collect()
        stats = _run_chunks(on_cluster, engine, staging)
        executors = engine.session().sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    finally:
        engine.close()
    assert seen == [False] and tmp_path.exists()
    assert [s["computed_by"] for s in stats] == ["spark", "spark"]  # the staged rows reached the chunk tasks
    assert len(executors) >= 2  # the driver and at least one executor of the worker
    _assert_close(_stored(on_cluster), _stored(with_numpy), rtol=1e-12)
    assert not list(staging.glob("*.arrow"))


# -- the luigi command: failure, SIGKILL mid-Spark, resume -----------------------------------------------
def _spark_cfg(directory: Path, url: str, master: str) -> None:
    write_luigi_cfg(directory, url, stockpipe={"engine": "spark"},
                    spark={"master": master, "conf": "spark.sql.shuffle.partitions=2", "startup_timeout": 10})


def test_rebuild_under_spark_fails_clearly_survives_sigkill_and_resumes(tmp_path, duckdb_url):
    _spark_engine("local[1]").close()  # Java and pyspark present (else skip/fail with the reason)
    store = prepared_store(tmp_path, duckdb_url, stockpipe={"engine": "spark"},
                           spark={"master": "local[1]", "conf": "spark.sql.shuffle.partitions=2"})
    daily = store.markers(prefix="IndicatorChunk/daily-2025-10-10/")
    assert daily and {m["stats"]["computed_by"] for m in daily} == {"spark"}
    before = _stored(store)

    # A master that does not answer: the run fails saying so, and nothing is written.
    _spark_cfg(tmp_path, duckdb_url, f"spark://127.0.0.1:{free_port()}")
    code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler")
    assert code == 30, output
    assert "does not answer at 127.0.0.1" in output
    assert store.markers(prefix="IndicatorChunk/rebuild-2025-09-29/") == []
    _assert_close(_stored(store), before, rtol=0)

    # SIGKILL while Spark computes, then the same command again.
    _spark_cfg(tmp_path, duckdb_url, "local[1]")
    process = luigi_command(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler",
                            start_new_session=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "spark: computing" in line:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert store.markers(prefix="IndicatorChunk/rebuild-2025-09-29/") == []  # no chunk marked without its rows
    code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--local-scheduler")
    assert code == 0, output
    chunks = store.markers(prefix="IndicatorChunk/rebuild-2025-09-29/")
    assert len(chunks) == 3 and {m["stats"]["computed_by"] for m in chunks} == {"spark"}
    expected = indicator_rows(store.read_bars())
    _assert_close(_stored(store), expected, rtol=1e-12)
