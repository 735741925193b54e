"""Progress reporting that services can call without knowing about Luigi."""

from __future__ import annotations

import logging
from typing import Callable, Protocol


class Progress(Protocol):
    def __call__(self, percent: float, message: str) -> None: ...


def silent(percent: float, message: str) -> None:
    """For callers that do not report progress (tests, the CLI)."""


def luigi_progress(task, logger: logging.Logger) -> Callable[[float, str], None]:
    """Status message and percentage in luigid's visualiser, plus a log line."""

    def report(percent: float, message: str) -> None:
        task.set_status_message(message)
        task.set_progress_percentage(max(0, min(100, int(round(percent)))))
        logger.info("%s %s", task.task_id, message)

    return report
