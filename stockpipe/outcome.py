"""The exit code says whether the job's own target is complete, whoever ran its tasks.

Luigi's `luigi` command (`luigi.retcodes.run_with_retcodes`) classifies tasks by what *this* worker
saw. A chunk that another worker (a `stockpipe assist` machine) was running when this worker asked for
work is filed as "run by another worker" (exit `already_running`, 10) even after it finished, and a
root task finished by another worker as "not run" (25): a cron job would report a failure for a
complete job, and no `[retcode]` setting can tell the two apart.

So stockpipe corrects the classification where Luigi computes it, `luigi.execution_summary._summary_dict`
(used by both the printed summary and the exit code): a stockpipe task filed as run by another
worker, not run, or pending behind one, whose output exists when the run ends, counts as already
done. Failed tasks, missing external data and scheduling errors are left as Luigi filed them, so
their exit codes stand; a job that is really unfinished still exits 10 or 25.
"""

from __future__ import annotations

import logging

import luigi.execution_summary

log = logging.getLogger("stockpipe.outcome")

# Where Luigi files tasks this worker did not finish for a reason that may since have gone away.
_RECONSIDERED = ("run_by_other_worker", "upstream_run_by_other_worker", "not_run", "still_pending_not_ext")


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


def summary_dict(worker):
    set_tasks = _luigi_summary_dict(worker)
    candidates = set().union(*(set_tasks[name] for name in _RECONSIDERED))
    done = _finished_elsewhere(candidates)
    if done:
        for name in _RECONSIDERED:
            set_tasks[name] -= done
        set_tasks["already_done"] |= done
        log.info("%d task(s) were finished by other workers (e.g. `stockpipe assist`): counted as done", len(done))
    return set_tasks


_luigi_summary_dict = luigi.execution_summary._summary_dict


def install() -> None:
    """Route Luigi's summary (and so the `luigi` command's exit code) through `summary_dict`."""
    luigi.execution_summary._summary_dict = summary_dict
