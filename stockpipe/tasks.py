"""Luigi tasks: parameters, requires, output, and a run that calls one service function.

Whatever runs these tasks also gets, on importing them, the metrics and alert handlers
(`stockpipe.events`), forked helpers that die with the run (`stockpipe.lifecycle`) and stockpipe's
log lines on stderr (`stockpipe.logs`): the package itself stays light (see `stockpipe/__init__.py`).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import time
from pathlib import Path

import luigi
import luigi.scheduler

from stockpipe import TASKS, config, execution, logs, markers, outcome, preflight, targets, trading_calendar
from stockpipe import events as _events  # noqa: F401 - registers the metrics and alert handlers
from stockpipe import lifecycle as _lifecycle  # noqa: F401 - forked helpers die with the run
from stockpipe.engines import ChunkRef, open_engine
from stockpipe.progress import luigi_progress
from stockpipe.services import cleanup as cleanup_service
from stockpipe.services import indicators as indicator_service
from stockpipe.services import ingest as ingest_service
from stockpipe.services import rebuild as rebuild_service
from stockpipe.services import redis_sync
from stockpipe.services import replica as replica_service
from stockpipe.services import report as report_service
from stockpipe.services import symbols as symbol_service
from stockpipe.services import watchlist as watchlist_service
from stockpipe.sources import open_source, waits_on_outside
from stockpipe.store import open_store

log = logging.getLogger("stockpipe.tasks")
outcome.install()  # exit 0 when the job's target is complete, whoever ran its tasks (see outcome.py)
execution.install()  # one worker process runs its tasks itself, under an in-process timeout (see execution.py)
logs.configure()  # stockpipe's log lines visible under the `luigi` command


def _once_per_store(run):
    """A task's run under its marker's lock in the store: of two runs of the same task at once (two
    overlapping Dailies, on any machines) one does the work, the other waits and then reports that
    it was done meanwhile. This, not Luigi's pid lock, is the overlap protection."""

    @functools.wraps(run)
    def exclusive_run(self):
        output = self.output()
        if not isinstance(output, targets.MarkerTarget):
            return run(self)
        store = self.store()
        with store.run_lock(output.marker_id):
            if store.completed([output.marker_id]):
                self.skipped = True
                message = "done by another run meanwhile: nothing to do"
                log.info("%s %s", self.task_id, message)
                self.set_status_message(message)
                output.record_done()
                return None
            return run(self)

    return exclusive_run


class StockpipeTask(luigi.Task):
    """What every stockpipe task shares: its store, its source, progress, a marker target and a timeout.

    Created, a task checks the configuration and its own parameters (stockpipe.preflight): Luigi
    creates the root task before scheduling, so a mistake is refused before any work.
    """

    timeout_setting = "rebuild"  # which [timeouts] entry bounds this family's run
    # Tasks that wait on the outside world (a source, Redis) always run in a child process that the
    # worker terminates at its timeout: a call blocked in a C library may never return to Python,
    # where the in-process timeout of the other tasks acts (stockpipe/execution.py).
    isolated = False
    in_worker_process = False  # set while the worker creates this task's process to run it itself
    # Set when the worker runs this task in its own process and every later task of its kind too (a
    # worker of one process): what a chunk reads or computes ahead for the next ones is used.
    later_chunks_here = False
    # Under --workers N on a store that takes several writers, tasks of a family whose instances run
    # side by side (a plan's chunks) may go to child processes; every other task runs in the worker's.
    side_by_side = False

    @property
    def worker_timeout(self) -> int | None:
        # Luigi runs a task with a timeout in a child process and terminates it when time is up; a
        # task the worker runs itself has its timeout enforced there instead (execution.py).
        if self.in_worker_process:
            return None
        return getattr(config.timeouts(), self.timeout_setting) or None

    # Tasks that read no trading calendar need not pay for importing one to check its name.
    uses_calendar = True
    # A task storing one session's data refuses a non-trading day instead of storing nothing as done.
    needs_session = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            preflight.check_config(calendar=self.uses_calendar)
            self.preflight()
        except preflight.UserError as exc:
            preflight.refuse(exc)

    def preflight(self) -> None:
        """Refuse dates that have not happened (and non-trading days where a session is needed)."""
        for name, value in self.param_kwargs.items():
            if isinstance(value, dt.date) and name in ("date", "end_date"):
                preflight.check_happened(value, f"{self.get_task_family()} --{name.replace('_', '-')} {value}")
                if self.needs_session:
                    preflight.check_session(value, f"{self.get_task_family()} --{name.replace('_', '-')} {value}")

    skipped = False  # set when another run did this task's work meanwhile (reported, not counted)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        # Tasks with dynamic dependencies are re-entered per batch of them; their chunks and final
        # marker writes are claimed one by one instead.
        if run is not None and not inspect.isgeneratorfunction(run):
            cls.run = _once_per_store(run)

    def store(self):
        return open_store(config.store_url())

    def source(self):
        return open_source(config.source_name())

    def engine(self):
        return open_engine(config.engine_name())

    def progress(self):
        return luigi_progress(self, log)

    def marker_target(self, marker_id: str) -> targets.MarkerTarget:
        """This task's completion marker (`marker_id` from `stockpipe.markers`)."""
        return targets.MarkerTarget(marker_id)

    def run_marker(self):
        """The marker to write with this run's data (stats are added by the service)."""
        return self.output().marker(self)


class SourceTask(StockpipeTask):
    """A task that reads the configured source."""

    @property
    def isolated(self) -> bool:
        # A source that waits on a server or files needs the child process; the synthetic demo
        # source only computes, so its tasks run in the worker's process like the store's (a fork,
        # and on DuckDB the file let go, reopened and checkpointed around it, cost more than its work).
        return waits_on_outside(config.source_name())


class CollectSymbols(SourceTask):
    timeout_setting = "collect_symbols"

    date = luigi.DateParameter()

    def output(self):
        return self.marker_target(markers.collect_symbols(self.date))

    def run(self):
        symbol_service.collect_symbols(
            self.store(), self.source(), self.date, config.stockpipe().min_symbols, self.run_marker()
        )


class IngestDate(SourceTask):
    needs_session = True
    timeout_setting = "ingest"

    date = luigi.DateParameter()

    def requires(self):
        return CollectSymbols(self.date)

    def output(self):
        return self.marker_target(markers.ingest_date(self.date))

    def run(self):
        settings = config.stockpipe()
        ingest_service.ingest_date(
            self.store(),
            self.source(),
            self.date,
            days_back=settings.days_back,
            backfill_sessions=settings.backfill_sessions,
            marker=self.run_marker(),
            progress=self.progress(),
        )


class Backfill(SourceTask):
    timeout_setting = "backfill"

    start_date = luigi.DateParameter()
    end_date = luigi.DateParameter()

    def requires(self):
        return CollectSymbols(self.end_date)

    def output(self):
        return self.marker_target(markers.backfill(self.start_date, self.end_date))

    def preflight(self):
        if self.end_date < self.start_date:
            raise preflight.UserError(f"Backfill --end-date {self.end_date} is before --start-date {self.start_date}")
        super().preflight()

    def run(self):
        ingest_service.backfill(
            self.store(),
            self.source(),
            self.start_date,
            self.end_date,
            batch_size=config.stockpipe().backfill_batch,
            marker=self.run_marker(),
            progress=self.progress(),
        )


class IndicatorChunk(StockpipeTask):
    """Indicators of one chunk of a plan's symbols from `date` to the latest bar."""

    uses_calendar = False
    timeout_setting = "chunk"
    side_by_side = True

    date = luigi.DateParameter(description="first date whose indicator rows are replaced")
    plan_id = luigi.Parameter(description="run whose stored plan lists the chunk's symbols")
    chunk_id = luigi.IntParameter()

    def output(self):
        return targets.MarkerTarget(markers.indicator_chunk(self.plan_id, self.chunk_id),
                                     advisory_prefix=markers.chunks_of(self.plan_id))

    def preflight(self):
        """Checked by the rebuild or daily run that planned the chunk."""

    def run_dir(self):
        return rebuild_service.run_dir(config.store_dir(), self.plan_id)

    def run(self):
        # From the store, not the run directory: an assistant on another machine has none.
        plan = rebuild_service.load_plan(self.store(), self.plan_id)
        staging = rebuild_service.staging_dir(self.run_dir())
        if not 0 <= self.chunk_id < len(plan.chunks):
            raise ValueError(f"{self.plan_id} has chunks 0..{len(plan.chunks) - 1}, not {self.chunk_id}")
        stats = indicator_service.compute_chunk(
            self.store(),
            plan.chunks[self.chunk_id],
            self.date,
            engine=self.engine(),
            warmup_bars=config.stockpipe().warmup_bars,
            marker=self.run_marker(),
            label=f"[chunk {self.chunk_id + 1}/{len(plan.chunks)}]",
            progress=self.progress(),
            full_history=plan.full_history,
            into=rebuild_service.chunk_target(self.store(), plan),
            chunk=ChunkRef(staging, self.chunk_id),
            # Read and compute ahead only where the next chunks will run: a forked child's work dies
            # with it, and a worker that forks some chunks would hand them work done for nothing.
            upcoming=[indicator_service.Upcoming(markers.indicator_chunk(self.plan_id, i), plan.chunks[i],
                                                 ChunkRef(staging, i))
                      for i in range(self.chunk_id + 1, len(plan.chunks))] if self.later_chunks_here else (),
        )
        self.skipped = bool(stats.get("skipped"))
        self.output().record_done()
        self.report_to_parent(plan)

    def report_to_parent(self, plan) -> None:
        """The rebuild (or daily run) waits as PENDING in luigid while its chunks run, so each chunk that
        finishes, on whichever worker or machine, updates the parent's message and percentage there,
        counted from the store's markers."""
        scheduler = getattr(getattr(self.set_status_message, "__self__", None), "_scheduler", None)
        if scheduler is None or isinstance(scheduler, luigi.scheduler.Scheduler):
            # Not run by a Luigi worker, or by one with --local-scheduler: that scheduler lives in
            # this process and shows nobody the parent's message, so a query per chunk would be waste.
            return
        ids = [markers.indicator_chunk(plan.plan_id, i) for i in range(len(plan.chunks))]
        try:
            done = len(self.store().completed(ids))
            parent = parent_task_id(plan)
            scheduler.set_task_status_message(parent, f"{done}/{len(ids)} chunks done")
            scheduler.set_task_progress_percentage(parent, int(100 * done / max(len(ids), 1)))
        except Exception as exc:  # noqa: BLE001 - progress display must never fail the chunk it reports
            log.warning("could not report %s's progress to its parent: %s", self.plan_id, exc)

    def on_failure(self, exception):
        rebuild_service.record_failure(self.store(), self.plan_id, self.chunk_id, exception)
        return super().on_failure(exception)

    @classmethod
    def bulk_complete(cls, parameter_tuples):
        """Those of `parameter_tuples` (date, plan_id, chunk_id) whose marker exists: one query."""
        tuples = list(parameter_tuples)
        tasks = [cls(*t) if isinstance(t, (list, tuple)) else cls(**t) for t in tuples]
        done = targets.prefetch(config.store_url(), [t.output().marker_id for t in tasks])
        return [p for p, t in zip(tuples, tasks) if t.output().marker_id in done]


def parent_task_id(plan) -> str:
    """The task id of the RebuildFrom or DailyIndicators that planned `plan`, without creating it."""
    if plan.kind == "daily":
        return luigi.task.task_id_str("DailyIndicators", {"date": markers.daily_plan_date(plan.plan_id)})
    run_id = markers.rebuild_run_id(plan.plan_id, plan.start_date)
    return luigi.task.task_id_str("RebuildFrom", {"run_id": run_id, "start_date": plan.start_date})


def _chunk_tasks(plan) -> list[IndicatorChunk]:
    chunks = [IndicatorChunk(date=plan.start, plan_id=plan.plan_id, chunk_id=i) for i in range(len(plan.chunks))]
    # One query answers every chunk's complete() that Luigi is about to ask.
    targets.prefetch(config.store_url(), [c.output().marker_id for c in chunks])
    return chunks


def _prepare_chunks(task: StockpipeTask, plan, directory, chunks: list[IndicatorChunk]) -> None:
    """Let the engine compute the unfinished chunks ahead of their tasks (once per plan and attempt;
    nothing for an engine that computes in the chunk task, or when every chunk is done)."""
    engine = task.engine()
    try:
        indicator_service.prepare_chunks(
            task.store(), engine, plan.chunks, [c.chunk_id for c in chunks if not c.complete()], plan.start,
            warmup_bars=config.stockpipe().warmup_bars, staging=rebuild_service.staging_dir(directory),
            full_history=plan.full_history, progress=task.progress(),
        )
    finally:
        engine.close()  # e.g. a Spark session: not held while the chunks run


class PlanRebuild(StockpipeTask):
    """Status report, backup and chunk plan of a rebuild (written once; a resumed run reuses them)."""

    uses_calendar = False
    timeout_setting = "plan"

    start_date = luigi.DateParameter()
    run_id = luigi.Parameter(default="")

    def preflight(self):
        """Checked by RebuildFrom."""

    @property
    def plan_id(self) -> str:
        return markers.rebuild_plan_id(self.start_date, self.run_id)

    def output(self):
        return targets.PlanTarget(self.plan_id)

    def run(self):
        store = self.store()
        rebuild_service.create_plan(
            store,
            rebuild_service.run_dir(config.store_dir(), self.plan_id),
            plan_id=self.plan_id,
            kind="rebuild",
            start=self.start_date,
            symbols=store.bar_symbols(),
            chunk_size=config.stockpipe().chunk_size,
            backup=True,
        )


class RebuildFrom(StockpipeTask):
    """Recompute every indicator from `start_date`, in resumable chunks.

    Rerunning the same command after a crash or a failed chunk redoes only unfinished chunks. To
    rebuild the same date again on purpose, pass a new `--run-id` (a new plan, backup and markers).
    """

    uses_calendar = False
    start_date = luigi.DateParameter()
    run_id = luigi.Parameter(default="", description="name a deliberate repeat of a rebuild of the same date")

    def preflight(self):
        store = self.store()
        last = store.last_bar_date()
        if last is None:
            raise preflight.UserError(f"RebuildFrom: store {store.redacted_url()} is empty: run Daily or Backfill first")
        if self.start_date > last:
            raise preflight.UserError(f"RebuildFrom --start-date {self.start_date}: the store's latest bar is {last}, "
                                      "so there is nothing to rebuild")

    def requires(self):
        return PlanRebuild(start_date=self.start_date, run_id=self.run_id)

    def output(self):
        return self.marker_target(markers.rebuild_from(self.requires().plan_id))

    def run(self):
        plan_id = self.requires().plan_id
        directory = rebuild_service.run_dir(config.store_dir(), plan_id)
        started = rebuild_service.attempt_started(self.store(), plan_id)
        plan = rebuild_service.open_plan(self.store(), plan_id)
        rebuild_service.remove_litter(directory)
        chunks = _chunk_tasks(plan)
        done = sum(1 for c in chunks if c.complete())
        self.set_status_message(f"{done}/{len(chunks)} chunks done")
        self.set_progress_percentage(int(100 * done / max(len(chunks), 1)))
        _prepare_chunks(self, plan, directory, chunks)
        yield chunks
        self.set_status_message(f"{len(chunks)}/{len(chunks)} chunks done")
        self.set_progress_percentage(100)
        _, wrote = rebuild_service.write_final_report(
            self.store(), plan, started, marker=self.run_marker(),
            marker_stats=("symbols", "chunks", "replaced_rows", "saved_rows", "seconds"))
        self.skipped = not wrote


class DailyIndicators(StockpipeTask):
    """Indicators for the day: every active symbol recomputed from the ingest overlap on."""

    needs_session = True
    date = luigi.DateParameter()

    @property
    def plan_id(self) -> str:
        return markers.daily_plan_id(self.date)

    def requires(self):
        return IngestDate(self.date)

    def output(self):
        return self.marker_target(markers.daily_indicators(self.date))

    def run(self):
        settings = config.stockpipe()
        directory = rebuild_service.run_dir(config.store_dir(), self.plan_id)
        store = self.store()
        plan = rebuild_service.create_plan(
            store,
            directory,
            plan_id=self.plan_id,
            kind="daily",
            start=trading_calendar.sessions_back(settings.calendar, self.date, settings.days_back),
            symbols=store.active_symbols(),
            chunk_size=settings.daily_chunk_size,
            backup=False,
            full_history=(store.read_marker(self.input().marker_id) or {"stats": {}})["stats"].get("splits_detected", []),
        )
        chunks = _chunk_tasks(plan)
        _prepare_chunks(self, plan, directory, chunks)
        yield chunks
        _, wrote = rebuild_service.write_final_report(store, plan, marker=self.run_marker(),
                                                      marker_stats=("symbols", "chunks", "saved_rows"))
        self.skipped = not wrote


class ScanWatchlist(StockpipeTask):
    """The watchlist rules over `date`'s bars, indicators and symbols."""

    needs_session = True
    timeout_setting = "scan"

    date = luigi.DateParameter()

    def requires(self):
        return DailyIndicators(self.date)

    def output(self):
        return self.marker_target(markers.scan_watchlist(self.date))

    def run(self):
        watchlist_service.scan_watchlist(self.store(), self.date, config.watchlist().parsed_rules(), self.run_marker())


class Replicate(StockpipeTask):
    """A verified, read-only DuckDB replica of the store, swapped in atomically."""

    needs_session = True
    timeout_setting = "replicate"

    date = luigi.DateParameter()

    def requires(self):
        return ScanWatchlist(self.date)

    def output(self):
        return self.marker_target(markers.replicate(self.date))

    def run(self):
        stats = replica_service.publish_replica(self.store(), config.replica_path())
        self.store().touch(self.output().marker(self, stats))


class Report(StockpipeTask):
    """The day's HTML report (watchlist charts, data health, the run) in <data_dir>/reports/."""

    timeout_setting = "report"

    date = luigi.DateParameter()

    def requires(self):
        return Replicate(self.date)

    def output(self):
        return self.marker_target(markers.report(self.date))

    def run(self):
        settings = config.report()
        report_service.build_report(
            self.store(), self.date, config.store_dir(), calendar=config.stockpipe().calendar,
            sessions=settings.sessions, chart_months=settings.chart_months, slowest_chunks=settings.slowest_chunks,
            marker=self.run_marker(), progress=self.progress(),
        )


class CleanupOldFiles(StockpipeTask):
    """Retention of run directories, backups, reports, replica copies and logs ([cleanup])."""

    timeout_setting = "cleanup"

    date = luigi.DateParameter()

    def output(self):
        return self.marker_target(markers.cleanup_old_files(self.date))

    def run(self):
        settings = config.cleanup()
        cleanup_service.clean(self.store(), data_dir=config.store_dir(), replica_path=config.replica_path(),
                              log_dir=Path(settings.log_dir), days=settings.days(), marker=self.run_marker(),
                              changes_days=settings.changes_days)


class RedisTask(StockpipeTask):
    """Redis steps: they fail alone when Redis is down; everything else still completes."""

    timeout_setting = "redis"
    isolated = True

    def client(self):
        return redis_sync.connect(config.redis_url())


class RedisSync(RedisTask):
    date = luigi.DateParameter()
    force_full = luigi.BoolParameter(default=False, description="rewrite the last [redis] full_days days")

    def requires(self):
        return ScanWatchlist(self.date) if trading_calendar.is_session(config.stockpipe().calendar, self.date) else []

    @property
    def full(self) -> bool:
        return self.force_full or self.date.weekday() >= 5

    def output(self):
        return self.marker_target(markers.redis_sync(self.date, self.full))

    def run(self):
        settings = config.redis()
        stats = redis_sync.sync_watchlist(self.store(), self.client(), settings.prefix, self.date,
                                          full=self.full, full_days=settings.full_days)
        self.store().touch(self.output().marker(self, stats))


class RedisHealthCheck(RedisTask):
    date = luigi.DateParameter()

    def requires(self):
        return RedisSync(self.date)

    def output(self):
        return self.marker_target(markers.redis_health_check(self.date))

    def run(self):
        stats = redis_sync.health_check(self.client(), config.redis().prefix)
        self.store().touch(self.output().marker(self, stats))


class RedisCleanup(RedisTask):
    date = luigi.DateParameter()

    def output(self):
        return self.marker_target(markers.redis_cleanup(self.date))

    def run(self):
        settings = config.redis()
        stats = redis_sync.cleanup(self.client(), settings.prefix, self.date, settings.retention_days)
        self.store().touch(self.output().marker(self, stats))


class Daily(StockpipeTask):
    """The cron job: symbols -> bars -> indicators -> watchlist -> replica -> report -> Redis for
    `date`, and the retention of old files (every day).

    On a non-trading day it fetches and computes nothing and says so; on a weekend with Redis
    configured it runs the full Redis sync and the cleanup instead.
    """

    timeout_setting = "daily"

    date = luigi.DateParameter()

    def trading_day(self) -> bool:
        return trading_calendar.is_session(config.stockpipe().calendar, self.date)

    def requires(self):
        redis_on = bool(config.redis_url())
        housekeeping = [CleanupOldFiles(self.date)]
        if self.trading_day():
            steps = [Replicate(self.date), Report(self.date)]
            return steps + ([RedisHealthCheck(self.date), RedisCleanup(self.date)] if redis_on else []) + housekeeping
        if redis_on and self.date.weekday() >= 5:
            return [RedisSync(self.date), RedisCleanup(self.date)] + housekeeping
        return housekeeping

    def output(self):
        return self.marker_target(markers.daily(self.date))

    def run(self):
        started = time.monotonic()
        if not self.trading_day():
            message = f"{self.date} is not a {config.stockpipe().calendar} trading day: nothing to do"
            log.info(message)
            self.set_status_message(message)
            self.store().touch(self.output().marker(self, {"trading_day": False}))
            return
        if not config.redis_url():
            log.info("Daily %s: Redis steps skipped: no [redis] url or %s is configured", self.date, config.ENV_REDIS_URL)
        self.store().touch(self.output().marker(self, {"trading_day": True, "redis": bool(config.redis_url()),
                                                       "seconds": round(time.monotonic() - started, 3)}))


# The package names the tasks (stockpipe.TASKS) so that importing it need not import this module.
__all__ = list(TASKS)
