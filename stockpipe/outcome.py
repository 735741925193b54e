"""The exit code says whether the job's own target is complete, whoever ran its tasks.

Luigi's `luigi` command (`luigi.retcodes.run_with_retcodes`) classifies tasks by what *this* worker
saw. A chunk that another worker (a `stockpipe assist` machine) was running when this worker asked for
work is filed as "run by another worker" (exit `already_running`, 10) even after it finished, and a
root task finished by another worker as "not run" (25): a cron job would report a failure for a
complete job, and no `[retcode]` setting can tell the two apart.

So stockpipe corrects the classification where Luigi computes it, `luigi.execution_summary._summary_dict`
(used by both the printed summary and the exit code): a stockpipe task Luigi left pending (run by
another worker, not run, waiting on dependencies) whose output exists when the run ends counts as
already done. Failed tasks and scheduling errors are left as Luigi filed them, so their exit codes
stand, and a job that is really unfinished still exits 10, 20 or 25.
"""

from __future__ import annotations

import logging
import time

import luigi.execution_summary

log = logging.getLogger("stockpipe.outcome")

# Where Luigi files tasks this worker did not finish for a reason that may since have gone away.
# A task whose dynamic dependencies (a rebuild's chunks) another worker finished, and which that
# worker then completed, is last seen here as pending and not runnable: "missing external
# dependencies" (exit 20). Missing external data itself is never complete, so it stays missing.
_RECONSIDERED = ("run_by_other_worker", "upstream_run_by_other_worker", "not_run", "still_pending_not_ext",
                 "still_pending_ext", "upstream_missing_dependency")


def _finished_elsewhere(tasks) -> set:
    from stockpipe import targets
    from stockpipe.tasks import StockpipeTask

    ours = [t for t in tasks if isinstance(t, StockpipeTask)]
    if not ours:
        return set()
    targets.forget()  # the answer must come from the store now, not from this run's earlier checks
    by_store: dict[str, list[str]] = {}
    for task in ours:
        output = task.output()
        if isinstance(output, targets.MarkerTarget):
            by_store.setdefault(output.store_url, []).append(output.marker_id)
    for url, ids in by_store.items():
        targets.prefetch(url, ids)  # one query instead of one per task
    found = set()
    for task in ours:
        try:
            if task.complete():
                found.add(task)
        except Exception as exc:  # noqa: BLE001 - an unreadable target keeps Luigi's verdict
            log.warning("could not check whether %s finished elsewhere: %s", task, exc)
    return found


def _await_other_workers(worker, set_tasks) -> None:
    """A scheduling worker leaves as soon as everything left of its job is running on other workers
    (its `keep_alive` counts only pending tasks), often while one of them finishes the root task.
    Wait while the scheduler shows the root task in progress elsewhere, so the verdict is about the
    finished job: the wait ends when it is done or failed, or when the scheduler forgets a dead worker's
    tasks."""
    root = luigi.execution_summary._root_task(worker)
    if root in set_tasks["completed"] or not (set_tasks["run_by_other_worker"] or
                                                          set_tasks["upstream_run_by_other_worker"]):
        return
    from stockpipe import targets
    from stockpipe.tasks import StockpipeTask

    if not isinstance(root, StockpipeTask):
        return
    deadline = time.monotonic() + _MAX_WAIT_SECONDS
    announced = 0.0
    while time.monotonic() < deadline:
        targets.forget()
        if root.complete():
            return
        try:
            # PENDING too: a rebuild another worker runs is PENDING while its chunks run.
            state = (worker._scheduler.dep_graph(root.task_id).get(root.task_id) or {}).get("status")
        except Exception as exc:  # noqa: BLE001 - no scheduler to ask: keep Luigi's verdict
            log.warning("could not ask the scheduler about %s: %s", root, exc)
            return
        if state not in ("PENDING", "RUNNING"):
            return
        if time.monotonic() - announced > 30:
            announced = time.monotonic()
            log.info("%s is %s with other workers: waiting for it to finish", root, state.lower())
        time.sleep(_POLL_SECONDS)


def summary_dict(worker):
    set_tasks = _luigi_summary_dict(worker)
    if id(worker) not in _awaited:  # Luigi asks twice: for the printed summary, then for the exit code
        _awaited.add(id(worker))
        _await_other_workers(worker, set_tasks)
    candidates = set().union(*(set_tasks[name] for name in _RECONSIDERED))
    done = _finished_elsewhere(candidates)
    if done:
        for name in _RECONSIDERED:
            set_tasks[name] -= done
        set_tasks["already_done"] |= done
        log.info("%d task(s) were finished by other workers (e.g. `stockpipe assist`): counted as done", len(done))
    return set_tasks


_luigi_summary_dict = luigi.execution_summary._summary_dict
_awaited: set[int] = set()
_POLL_SECONDS = 0.5
_MAX_WAIT_SECONDS = 3600.0  # a task hung elsewhere is ended by its own timeout long before this


def install() -> None:
    """Route Luigi's summary (and so the `luigi` command's exit code) through `summary_dict`."""
    luigi.execution_summary._summary_dict = summary_dict
