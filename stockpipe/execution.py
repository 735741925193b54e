"""Where a Luigi worker runs each stockpipe task, and how the task's timeout is enforced.

Luigi runs a task in a child process of its worker when the task has a `worker_timeout` or the worker
has several processes, and terminates that child when the timeout expires. Since every task family
has a timeout, every task ran in a child of its own: a fork, and on DuckDB an open, a checkpoint and
a close of the database file per task, plus the parent reopening the file to check what is complete.
A 13-session rebuild of 1,000 symbols spent most of its time there, and `--workers 2` was slower
still: its processes only took turns at the file's write lock, each paying its own open and checkpoint.

So on a store that one process at a time may write (`Store.single_writer_process`: DuckDB):
- `--workers N` runs the run's tasks in one worker process (N is logged and set to 1);
- a worker of one process (on any store) runs the tasks that only compute and use the store in its own process (no fork) under
  an in-process timeout (stockpipe/deadline.py): SIGALRM on the main thread raises `TaskTimeout` in
  the task, which ends a DuckDB query, a numpy computation, a file or lock wait (never a checkpoint); Luigi files the task as failed ("... timed
  out after N seconds"), the events record and alert it, its transaction rolls back, and a rerun
  redoes it. The worker keeps its connection across tasks (handed over after any transaction during
  which another process started waiting, released when the worker has no task to run or asks the
  scheduler for work while someone waits, checkpointed and closed by the main thread when the run ends);
- tasks that wait on the outside world (`StockpipeTask.isolated`: a source, Redis) still run in a
  child process that the worker terminates at their timeout: a call blocked inside a C library may
  never come back to Python, where an in-process timeout acts. (The demo source waits on nothing:
  its tasks run in the worker's process.)

On PostgreSQL, several processes write at once. With `--workers 1` the worker runs the store's tasks
in its own process as on DuckDB, with its pooled connections: a child per task cost a 13-session
rebuild's 50 chunks more than their work (a fork, a new connection, cold caches). With `--workers N`
(N > 1) a plan's chunks run N at a time, N - 1 in child processes that their timeout terminates (as
Luigi does) and one in the worker's own process; every other task runs in the worker's process one
after another, as with one worker (forking each made a Daily slower with 2 workers than with 1). A statement
waiting inside libpq does not return to Python for the signal, so when the timeout expires a watchdog
thread also cancels this process's running statements (`Store.interrupt`); the task then fails as timed
out and its transaction rolls back.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterator

import luigi.worker

from stockpipe.deadline import TaskTimeout, deadline  # noqa: F401 - TaskTimeout is what a stopped task fails with

log = logging.getLogger("stockpipe.execution")


def runs_in_worker_process(worker: luigi.worker.Worker, task: luigi.Task) -> bool:
    """Whether `worker` runs `task` in its own process (under an in-process timeout).

    With several processes, only tasks that run side by side (a plan's chunks) go to children, and
    only while fewer than N - 1 children run: the worker's own process runs the Nth at the same time.
    Every other task runs one after another in the worker, as with one process.
    """
    from stockpipe.tasks import StockpipeTask

    if not (isinstance(task, StockpipeTask) and not task.isolated and not worker._config.force_multiprocessing
            and threading.current_thread() is threading.main_thread()):  # signals reach the main thread only
        return False
    if worker.worker_processes == 1 or not task.side_by_side:
        return True
    children = sum(1 for p in worker._running_tasks.values() if p.use_multiprocessing and p.is_alive())
    return children >= worker.worker_processes - 1


# What the store's tasks import on first use (a chunk's group_by loads Arrow's query engine): imported
# once by a worker that forks a child per task, not again in each child (~30 ms of a 13-session
# chunk's 0.2 s). A worker running its tasks itself imports them when first used, or never (a run
# finding everything done; pandas alone is 0.3 s).
_TASK_MODULES = ("pyarrow.acero", "pyarrow.pandas_compat", "stockpipe.engines.numpy_engine",
                 "stockpipe.services.indicators", "stockpipe.services.rebuild")


def _worker_init(self, *args, **kwargs):
    import importlib

    _luigi_worker_init(self, *args, **kwargs)
    self._stockpipe_single_writer = _single_writer_store()
    if self.worker_processes > 1 and self._stockpipe_single_writer:
        log.info("the store takes one writing process at a time: --workers %d runs its tasks in this process "
                 "(README: what --workers does per store)", self.worker_processes)
        self.worker_processes = 1
    if self.worker_processes > 1 or self._config.force_multiprocessing:
        for name in _TASK_MODULES:
            importlib.import_module(name)


def _set_worker_processes(self, n):
    # luigid's "set workers" message asks the same of a running worker.
    _luigi_set_worker_processes(self, 1 if getattr(self, "_stockpipe_single_writer", False) else n)


def _single_writer_store() -> bool:
    from stockpipe import config
    from stockpipe.store import open_store

    try:
        return open_store(config.store_url()).single_writer_process
    except Exception:  # noqa: BLE001 - a bad URL is reported by the task that uses it, not here
        return False


def _create_task_process(self, task):
    from stockpipe.store import interrupt_all

    if not runs_in_worker_process(self, task):
        task.later_chunks_here = False
        return _luigi_create_task_process(self, task)
    seconds = task.worker_timeout
    task.in_worker_process = True  # its worker_timeout is now None: Luigi runs it here, no fork
    task.later_chunks_here = self.worker_processes == 1  # no chunk of its plan goes to a child
    try:
        process = _luigi_create_task_process(self, task)
    finally:
        task.in_worker_process = False
    process.use_multiprocessing = False  # Luigi forks every task of a worker of several processes
    run_steps = process._run_get_new_deps

    def run_steps_in_time():
        with deadline(seconds, f"Task {task.task_id} timed out after {seconds} seconds and was stopped.",
                      interrupt=interrupt_all):
            return run_steps()

    process._run_get_new_deps = run_steps_in_time
    return process


def _get_work(self):
    from stockpipe.store import close_all, release_waited_for

    if not getattr(self, "_stockpipe_single_writer", False):
        return _luigi_get_work(self)
    release_waited_for()  # asking luigid may take a while: nobody waits for the file meanwhile
    response = _luigi_get_work(self)
    if response.task_id is None:
        close_all()  # nothing to run now (an assistant may idle for hours): the file is free
    return response


def _worker_run(self):
    from stockpipe.services.indicators import forget_read_ahead

    try:
        with _connections_kept_by(self):
            return _luigi_worker_run(self)
    finally:
        forget_read_ahead()


def _worker_enter(self):
    # Scheduling (every task's complete()) and the run share the worker's one connection.
    self._stockpipe_kept = _connections_kept_by(self)
    self._stockpipe_kept.__enter__()
    return _luigi_worker_enter(self)


def _worker_exit(self, *exc_info):
    try:
        return _luigi_worker_exit(self, *exc_info)
    finally:
        self._stockpipe_kept.__exit__(None, None, None)


@contextmanager
def _connections_kept_by(worker) -> Iterator[None]:
    from stockpipe.store import connections_kept

    if not getattr(worker, "_stockpipe_single_writer", False):
        yield
        return
    with connections_kept():
        yield


_luigi_worker_init = luigi.worker.Worker.__init__
_luigi_worker_enter = luigi.worker.Worker.__enter__
_luigi_worker_exit = luigi.worker.Worker.__exit__
_luigi_create_task_process = luigi.worker.Worker._create_task_process
_luigi_get_work = luigi.worker.Worker._get_work
_luigi_set_worker_processes = luigi.worker.Worker.set_worker_processes
_luigi_worker_run = luigi.worker.Worker.run


def install() -> None:
    """Route Luigi's worker through this module's choices (idempotent)."""
    worker = luigi.worker.Worker
    if worker.run is _worker_run:
        return
    worker.__init__ = _worker_init
    worker._create_task_process = _create_task_process
    worker._get_work = _get_work
    worker.run = _worker_run
    worker.__enter__ = _worker_enter
    worker.__exit__ = _worker_exit
    worker.set_worker_processes = _set_worker_processes
