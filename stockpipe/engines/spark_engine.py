"""The Spark engine: one Spark session per plan computes every unfinished chunk with the numpy kernels.

How Spark and the chunk tasks meet (README "Spark engine"):
1. `prepare` runs once per rebuild or daily run, in the RebuildFrom/DailyIndicators task before it
   yields its chunks. It starts one session (one JVM per plan, never per chunk) and computes the
   chunks in jobs of whole chunks (`symbols_per_job`): the store exports the bars a job's chunks will
   read (with their warm-up) as a Parquet snapshot on this machine, each chunk's bars travel inside
   the job as one Arrow IPC value (one row per chunk), the executors run `stockpipe.indicators` on
   them (`mapInArrow`) and return each chunk's rows as the bytes of an Arrow IPC stream tagged with a
   digest of the bars they came from, and this process writes them to `<run dir>/staged/`,
   atomically. Executors touch no file: a cluster needs no shared filesystem.
2. Each `IndicatorChunk` task then reads its bars as always, and uses the staged rows only if their
   digest matches what it read (otherwise it computes them itself with the same kernels: correctness
   first); it replaces its rows and writes its marker in one transaction through the store's bulk
   path. A chunk is never marked done without its rows, a rerun skips finished chunks, and a killed
   run reuses whatever was staged.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stockpipe.engines import spark_job
from stockpipe.engines.base import EngineError, IndicatorEngine, label
from stockpipe.indicators.table import indicator_rows

log = logging.getLogger("stockpipe.engines.spark")

_MASTER = re.compile(r"^(local(\[(\*|\d+)(,\d+)?\])?|spark://[^/]+|sc://.+|yarn|k8s://.+)$")
# luigi.contrib.spark's SparkConfig keys -> the Spark settings they stand for.
_SETTINGS = {
    "driver_memory": "spark.driver.memory",
    "driver_cores": "spark.driver.cores",
    "driver_java_options": "spark.driver.extraJavaOptions",
    "driver_class_path": "spark.driver.extraClassPath",
    "executor_memory": "spark.executor.memory",
    "executor_cores": "spark.executor.cores",
    "total_executor_cores": "spark.cores.max",
    "num_executors": "spark.executor.instances",
    "jars": "spark.jars",
    "packages": "spark.jars.packages",
    "py_files": "spark.submit.pyFiles",
    "files": "spark.files",
    "archives": "spark.archives",
}


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    app_name: str = "stockpipe-indicators"
    conf: dict[str, str] = field(default_factory=dict)
    startup_timeout: int = 60
    # Symbols per Spark job: a job's bars and rows pass through the driver's memory at once.
    symbols_per_job: int = 1000

    @classmethod
    def from_config(cls) -> "SparkSettings":
        from stockpipe import config

        section = config.spark()
        conf = parse_conf(section.conf)
        for key, setting in _SETTINGS.items():
            value = str(getattr(section, key)).strip()
            if value:
                conf.setdefault(setting, value)
        if section.deploy_mode.strip() not in ("", "client"):
            raise EngineError(
                f"[spark] deploy_mode = {section.deploy_mode}: the Spark engine's driver runs inside the stockpipe "
                "task that prepares the chunks, so only client mode is possible"
            )
        return cls(master=section.master.strip(), app_name=section.app_name, conf=conf,
                   startup_timeout=int(section.startup_timeout), symbols_per_job=int(section.symbols_per_job)).checked()

    def checked(self) -> "SparkSettings":
        if not _MASTER.match(self.master):
            raise EngineError(
                f"[spark] master = {self.master!r} is not a Spark master URL: use local[N], local[*], "
                "spark://host:7077 (standalone), sc://host:15002 (Spark Connect), yarn or k8s://..."
            )
        if self.startup_timeout <= 0:
            raise EngineError(f"[spark] startup_timeout = {self.startup_timeout}: must be a positive number of seconds")
        if self.symbols_per_job <= 0:
            raise EngineError(f"[spark] symbols_per_job = {self.symbols_per_job}: must be a positive number of symbols")
        return self


def job_groups(wanted: pa.Table, symbols_per_job: int) -> list[list[int]]:
    """The chunk ids of `wanted` (one row per chunk and symbol) in jobs of whole chunks, each of
    about `symbols_per_job` symbols (at least one chunk)."""
    counts = wanted.group_by("chunk_id", use_threads=False).aggregate([("symbol", "count")]).sort_by("chunk_id")
    jobs: list[list[int]] = []
    size = 0
    for chunk_id, symbols in zip(counts.column("chunk_id").to_pylist(), counts.column("symbol_count").to_pylist()):
        if not jobs or size + symbols > symbols_per_job:
            jobs.append([])
            size = 0
        jobs[-1].append(chunk_id)
        size += symbols
    return jobs


def parse_conf(text: str) -> dict[str, str]:
    """`k=v|k=v` (luigi.contrib.spark's format) into a dict; an entry without `=` is named."""
    conf: dict[str, str] = {}
    for entry in (e.strip() for e in text.split("|")):
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            raise EngineError(f"[spark] conf entry {entry!r} is not key=value (entries are separated by '|')")
        conf[key.strip()] = value.strip()
    return conf


class SparkEngine(IndicatorEngine):
    name = "spark"

    def __init__(self, settings: SparkSettings):
        self.settings = settings.checked()
        self._session = None

    @classmethod
    def from_config(cls) -> "SparkEngine":
        return cls(SparkSettings.from_config())

    # -- the job ----------------------------------------------------------------------------------
    def prepare(self, store, chunks, requests, progress):
        started = time.monotonic()
        staging = Path(chunks[0].staging)
        # Chunks staged by an earlier, interrupted attempt are kept: their tasks check each one
        # against the bars they read.
        todo = sorted(c.chunk_id for c in chunks if not spark_job.staged_path(staging, c.chunk_id).exists())
        stats: dict[str, Any] = {"chunks": len(chunks), "reused": len(chunks) - len(todo)}
        if not todo:
            log.info("spark: the %d unfinished chunks are already staged in %s", len(chunks), staging)
            return stats
        wanted = requests()
        wanted = wanted.filter(pc.is_in(wanted.column("chunk_id"), pa.array(todo, pa.int32())))
        progress(5, f"spark: starting a session on {self.settings.master}")
        session = self.session()
        stats["start_seconds"] = round(time.monotonic() - started, 3)
        jobs = job_groups(wanted, self.settings.symbols_per_job)
        progress(10, f"spark: computing {len(todo)} chunks in {len(jobs)} jobs on {self.settings.master}")
        stats.update(export_seconds=0.0, job_seconds=0.0, write_seconds=0.0, bars=0, staged_rows=0, staged_chunks=0,
                     jobs=len(jobs))
        for number, job in enumerate(jobs, 1):
            clock = time.monotonic()
            mine = wanted.filter(pc.is_in(wanted.column("chunk_id"), pa.array(job, pa.int32())))
            shipped, bars = self._job_input(store, staging, mine)
            stats["export_seconds"] += time.monotonic() - clock
            if shipped.num_rows:
                clock = time.monotonic()
                results = self._compute(session, shipped)
                stats["job_seconds"] += time.monotonic() - clock
                clock = time.monotonic()
                # Written here as each job returns, not by the executors (which may run on machines
                # that do not see this directory); a run killed later keeps these chunks.
                staged = results.column("staged")
                for i, chunk_id in enumerate(results.column("chunk_id").to_pylist()):
                    spark_job.write_staged(staging, chunk_id, staged[i].as_buffer())
                stats["write_seconds"] += time.monotonic() - clock
                stats["staged_rows"] += sum(results.column("rows").to_pylist())
                stats["staged_chunks"] += results.num_rows
            stats["bars"] += bars
            progress(10 + 90 * number / len(jobs), f"spark: staged {stats['staged_chunks']} of {len(todo)} chunks "
                     f"(job {number}/{len(jobs)})")
        # A chunk none of whose symbols has a bar to read has no row to ship: its task has nothing to compute.
        stats["chunks_without_bars"] = len(todo) - stats["staged_chunks"]
        for key in ("export_seconds", "job_seconds", "write_seconds"):
            stats[key] = round(stats[key], 3)
        stats["seconds"] = round(time.monotonic() - started, 3)
        # What the driver's memory had to hold (a job's bars and rows at once): see symbols_per_job.
        stats["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        log.info("spark: staged %d chunks (%d rows from %d bars) of %s in %.1f s (export %.1f s, session %.1f s, job %.1f s, "
                 "%d jobs, writing staged rows %.1f s, driver peak RSS %.0f MB)",
                 stats["staged_chunks"], stats["staged_rows"], stats["bars"], staging.parent.name, stats["seconds"],
                 stats["export_seconds"], stats["start_seconds"], stats["job_seconds"], len(jobs), stats["write_seconds"],
                 stats["driver_peak_rss_mb"])
        return stats

    def _job_input(self, store, staging: Path, wanted: pa.Table) -> tuple[pa.Table, int]:
        """One job's rows: per chunk, its bars (exported by the store to a Parquet snapshot on this
        machine, read back here) as one Arrow IPC payload. `createDataFrame` spreads the rows over
        the session's default parallelism (a partition per core), whole chunks each."""
        snapshot = staging / f".snapshot-{uuid.uuid4().hex[:12]}"
        snapshot.mkdir(parents=True)
        try:
            parts = []
            groups = wanted.group_by(["read_start", "warmup_bars"], use_threads=False).aggregate([("symbol", "list")])
            for i, group in enumerate(groups.to_pylist()):
                path = snapshot / f"bars-{i}.parquet"
                if store.export_bars(path, group["symbol_list"], group["read_start"], group["warmup_bars"]):
                    parts.append(pq.read_table(path))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
        if not parts:
            return spark_job.JOB_SCHEMA.empty_table(), 0
        bars = pa.concat_tables(parts)
        where = pc.index_in(bars.column("symbol"), wanted.column("symbol"))
        bars = bars.append_column("keep_from", wanted.column("keep_from").take(where))
        chunk_ids = wanted.column("chunk_id").take(where).combine_chunks()
        order = pc.sort_indices(chunk_ids)
        bars, chunk_ids = bars.take(order), chunk_ids.take(order)
        runs = pc.run_end_encode(chunk_ids)
        ends = runs.run_ends.to_numpy()
        batches = [pa.RecordBatch.from_arrays([pa.array([chunk_id], pa.int32()),
                                               pa.array([spark_job.pack_bars(bars.slice(begin, end - begin))], pa.binary())],
                                              schema=spark_job.JOB_SCHEMA)
                   for chunk_id, begin, end in zip(runs.values.to_pylist(), [0, *ends[:-1]], ends)]
        return pa.Table.from_batches(batches, spark_job.JOB_SCHEMA), bars.num_rows

    def _compute(self, session, shipped: pa.Table) -> pa.Table:
        try:
            chunks = session.createDataFrame(shipped)
            if self.settings.master.startswith("sc://"):
                # Spark Connect ships local data as one relation: spread it, a partition per chunk.
                chunks = chunks.repartition(shipped.num_rows)
            return chunks.mapInArrow(spark_job.compute_chunks, spark_job.RESULT_SCHEMA).toArrow()
        except Exception as exc:  # noqa: BLE001 - py4j/pyspark raise many types; the message is what matters
            raise EngineError(f"spark job on {self.settings.master} failed: {_reason(exc)}") from exc

    def compute(self, bars, from_dates=None, *, chunk=None):
        if chunk is not None:
            staged = spark_job.read_staged(chunk.staging, chunk.chunk_id)
            if staged is None:
                log.warning("chunk %d: no rows staged by Spark in %s: computing them here", chunk.chunk_id, chunk.staging)
            elif staged[1] != spark_job.fingerprint(bars, from_dates):
                log.warning("chunk %d: the bars changed since Spark computed its rows: computing them here", chunk.chunk_id)
            else:
                return label(staged[0], self.name)
        return label(indicator_rows(bars, from_dates), "numpy")

    def release(self, chunk):
        spark_job.staged_path(chunk.staging, chunk.chunk_id).unlink(missing_ok=True)

    # -- the session ------------------------------------------------------------------------------
    def session(self):
        if self._session is None:
            self._session = self._start()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            try:
                session.stop()
            except Exception as exc:  # noqa: BLE001 - stopping must not hide the work's own outcome
                log.warning("spark: stopping the session failed: %s", exc)

    def _start(self):
        master = self.settings.master
        try:
            import pyspark  # noqa: F401
        except ImportError as exc:
            raise EngineError(f"[stockpipe] engine = spark needs pyspark ({exc}): pip install 'stockpipe[spark]'") from exc
        if master.startswith("sc://"):
            return self._connect(master)
        java = find_java()
        if master.startswith("spark://"):
            for host, port in _hosts(master):
                _probe(master, host, port, min(self.settings.startup_timeout, 15))
        _register_kernels_by_value()
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        active = SparkContext._active_spark_context
        if active is not None and active.master != master:
            # getOrCreate() would hand back that session, silently on the wrong master.
            raise EngineError(f"this process already runs a Spark session on {active.master}, not {master}: close it first")
        builder = SparkSession.builder.master(master).appName(self.settings.app_name)
        # Executors on this machine run this interpreter (numpy/pyarrow as the driver's); another
        # cluster sets spark.pyspark.python in [spark] conf.
        defaults = {"spark.pyspark.python": sys.executable, "spark.ui.showConsoleProgress": "false"}
        if master.startswith("local"):
            # A local job needs no outside address (and a host name resolving to loopback would warn),
            # nor a web UI to start with the session (luigid shows the run's progress).
            defaults.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                             "spark.ui.enabled": "false"})
            # The local JVM lives for one plan and mostly copies bytes between Python and Arrow:
            # the optimising JIT (C2) competed for the machine's cores more than it paid back
            # (2 cores, full 10-year rebuild: session start and first job ~30% shorter with C1 alone).
            # driver_java_options / conf replace it.
            defaults["spark.driver.extraJavaOptions"] = "-XX:TieredStopAtLevel=1"
        for key, value in {**defaults, **self.settings.conf}.items():
            builder = builder.config(key, value)
        environment = {"JAVA_HOME": str(Path(java).resolve().parent.parent)} if not os.environ.get("JAVA_HOME") else {}
        if not os.environ.get("PYSPARK_PYTHON"):
            # PySpark starts local workers with PYSPARK_PYTHON (else `python3` on PATH), not the conf:
            # a venv's `luigi` run by its path (cron) had workers on the system Python, refused as
            # another minor version.
            environment["PYSPARK_PYTHON"] = str({**defaults, **self.settings.conf}["spark.pyspark.python"])
        started = time.monotonic()
        saved = {k: os.environ.get(k) for k in environment}
        os.environ.update(environment)
        try:
            session = builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"Spark could not start with master {master}: {_reason(exc)}") from exc
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
        session.sparkContext.setLogLevel("WARN")
        if master.startswith("spark://"):
            self._wait_for_executors(session, started)
        log.info("spark: session on %s started in %.1f s", master, time.monotonic() - started)
        return session

    def _wait_for_executors(self, session, started: float) -> None:
        tracker = session.sparkContext._jsc.sc().statusTracker()
        while len(tracker.getExecutorInfos()) < 2:  # the driver counts as one
            if time.monotonic() - started > self.settings.startup_timeout:
                session.stop()
                raise EngineError(
                    f"no Spark executor registered with {self.settings.master} within {self.settings.startup_timeout} s "
                    "([spark] startup_timeout): is a worker running there, with the memory and cores asked for "
                    f"(executor memory {self.settings.conf.get('spark.executor.memory', '1g')})?"
                )
            time.sleep(0.2)

    def _connect(self, master: str):
        try:
            from pyspark.sql.connect.utils import check_dependencies

            check_dependencies("pyspark.sql.connect")
        except Exception as exc:  # noqa: BLE001 - an ImportError or pyspark's own dependency error
            raise EngineError(
                f"[spark] master = {master} is Spark Connect, whose client libraries are missing ({_reason(exc)}): "
                "pip install 'pyspark[connect]', or use local[N] / spark://host:7077"
            ) from exc
        for host, port in _hosts(master):
            _probe(master, host, port, min(self.settings.startup_timeout, 15))
        _register_kernels_by_value()
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.remote(master).appName(self.settings.app_name)
        for key, value in self.settings.conf.items():
            builder = builder.config(key, value)
        try:
            return builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"Spark Connect server {master} refused the session: {_reason(exc)}") from exc


# pyspark warns that it does not fully support pandas 3 whenever an Arrow UDF is declared; this
# engine moves Arrow tables end to end and never goes through pandas.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


def find_java() -> str:
    """The `java` Spark will start (JAVA_HOME's, else the PATH's), checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no java on PATH and JAVA_HOME is not set"
        raise EngineError(f"the Spark engine needs Java 17 or newer: {where}")
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"the Spark engine needs Java 17 or newer: {java} -version failed: {exc}") from exc
    found = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    major = int(found.group(1)) if found else 0
    major = int(found.group(2)) if major == 1 and found and found.group(2) else major
    if major < 17:
        raise EngineError(f"the Spark engine needs Java 17 or newer: {java} is {shown.splitlines()[0] if shown else 'unknown'}")
    return java


def _hosts(master: str) -> list[tuple[str, int]]:
    """host:port pairs of spark://h1:p1,h2:p2 or sc://host:port/;params."""
    scheme, _, rest = master.partition("://")
    rest = rest.split("/")[0].split(";")[0]
    default = 7077 if scheme == "spark" else 15002
    pairs = []
    for item in rest.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            pairs.append((host.strip("[]"), int(port) if port else default))
        except ValueError:
            raise EngineError(f"[spark] master = {master}: {item!r} is not host:port") from None
    return pairs


def _probe(master: str, host: str, port: int, timeout: float) -> None:
    """A master that does not answer fails now, with its address, instead of after Spark's retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise EngineError(f"Spark master {master} does not answer at {host}:{port} ({exc.strerror or exc}; waited up to {timeout:g} s)") from exc


def _register_kernels_by_value() -> None:
    """Ship the executor code by value so executors need numpy and pyarrow, not stockpipe itself."""
    from pyspark import cloudpickle

    import stockpipe.indicators

    for module in (stockpipe.indicators, spark_job):
        cloudpickle.register_pickle_by_value(module)


def _reason(exc: BaseException) -> str:
    """The line of a Spark/py4j error that says why, not its JVM stack."""
    text = str(exc)
    for pattern in (r"Job aborted due to stage failure: (.*)", r"(Python worker exited unexpectedly.*)",
                    r"(Java gateway process exited.*)", r"(JAVA_GATEWAY_EXITED.*)", r"(Lost executor.*)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()[:500]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b: ", line)]
    if raised:  # a Python traceback from a worker: its exception line
        return raised[-1][:500]
    return (lines[0] if lines else type(exc).__name__)[:500]
