"""Temporary files left by killed processes (`.<name>.<pid>.tmp`): removed by the next run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("stockpipe.litter")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_pid(path: Path) -> int | None:
    """The pid in `.<name>.<pid>.tmp` (or `.<name>.<pid>.tmp.wal`, DuckDB's log of it)."""
    parts = path.name.split(".")
    while parts and parts[-1] != "tmp":
        parts.pop()
    try:
        return int(parts[-2]) if len(parts) >= 3 else None
    except ValueError:
        return None


def remove_litter(directory: Path, pattern: str = ".*.tmp*") -> list[Path]:
    """Remove the temporary files matching `pattern` in `directory` whose process is dead."""
    removed = []
    for path in Path(directory).glob(pattern):
        pid = owner_pid(path)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove %s, left by killed process %d: %s", path, pid, exc)
            continue
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of killed runs in %s: %s", len(removed), directory,
                 ", ".join(p.name for p in removed))
    return removed
