"""Importing a kernel is pure (no Luigi, no tasks, no handlers), while Luigi's command line still finds
every task, the event handlers and the log handler (issue 11 part 2). Each check runs a fresh
interpreter: this test process has long imported everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

LUIGI_SIDE = ("stockpipe.tasks", "stockpipe.events", "stockpipe.lifecycle", "stockpipe.outcome", "stockpipe.config")

REPORT = """
import json, logging, sys
import luigi
from luigi.task_register import Register
callbacks = luigi.Task._event_callbacks.get(luigi.Task, {})
print(json.dumps({
    "families": sorted(n for n, c in Register._get_reg().items() if c.__module__ == "stockpipe.tasks"),
    "on_success": sorted(f.__name__ for f in callbacks.get(luigi.Event.SUCCESS, ())),
    "on_failure": sorted(f.__name__ for f in callbacks.get(luigi.Event.FAILURE, ())),
    "handlers": [type(h).__name__ for h in logging.getLogger("stockpipe").handlers],
    "lifecycle": "stockpipe.lifecycle" in sys.modules,
}))
"""


def fresh_python(code: str, tmp_path) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "LUIGI_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_kernels_engine_and_watchlist_loads_no_luigi_tasks_or_handlers(tmp_path):
    output = fresh_python(
        "import json, logging, sys\n"
        "import stockpipe.indicators.rsi, stockpipe.indicators, stockpipe.engines.numpy_engine, stockpipe.watchlist\n"
        "print(json.dumps({'modules': sorted(m for m in sys.modules if m == 'luigi' or m.startswith('luigi.')"
        f" or m in {LUIGI_SIDE!r}),"
        " 'handlers': len(logging.getLogger('stockpipe').handlers)}))\n",
        tmp_path,
    )
    assert json.loads(output.splitlines()[-1]) == {"modules": [], "handlers": 0}


def test_luigis_command_line_importing_the_package_registers_tasks_handlers_and_logging(tmp_path):
    """What `luigi --module stockpipe Daily ...` does, through Luigi's own entry point (`--help` stops
    it after the module is loaded and the task found)."""
    output = fresh_python(
        "from luigi.cmdline import luigi_run\n"
        "try:\n"
        "    luigi_run(['--module', 'stockpipe', 'Daily', '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n" + REPORT,
        tmp_path,
    )
    assert "--date" in output  # Luigi found Daily and listed its parameters
    report = json.loads(output.splitlines()[-1])
    import stockpipe

    assert set(stockpipe.TASKS) <= set(report["families"])
    assert report["on_success"] == ["_on_success"] and report["on_failure"] == ["_on_failure"]
    assert report["handlers"] == ["_CurrentStderr"] and report["lifecycle"]


def test_naming_a_task_on_the_package_loads_the_tasks_and_their_handlers(tmp_path):
    output = fresh_python("from stockpipe import Daily\nassert Daily.__name__ == 'Daily'\n" + REPORT, tmp_path)
    report = json.loads(output.splitlines()[-1])
    import stockpipe

    assert set(stockpipe.TASKS) <= set(report["families"])
    assert report["on_success"] == ["_on_success"] and report["handlers"] == ["_CurrentStderr"]
