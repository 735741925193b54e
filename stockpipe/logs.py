"""Make stockpipe's log lines visible under the `luigi` command, which only configures its own loggers."""

from __future__ import annotations

import logging
import sys


def configure() -> None:
    logger = logging.getLogger("stockpipe")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: [pid %(process)d] %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
