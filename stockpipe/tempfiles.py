"""Files written under a temporary name and renamed into place, so a reader never sees half a file.

A temporary is `.<name>.<host>-<pid>.tmp` (plus any side file its writer adds, such as DuckDB's
`.wal`). A writer killed before its rename (SIGKILL, out of memory, power loss) leaves it behind;
the next writer of the same file removes those of processes that are gone, so crashes do not pile
up replica-sized files. Only this host's are judged: a data_dir shared with other machines may hold
their writers' temporaries, alive or not, which their own next run removes.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
from pathlib import Path

log = logging.getLogger("stockpipe.tempfiles")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temporary_for(path: Path) -> Path:
    """This process's temporary name for `path`, in the same directory (so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}-{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard_orphans(path: Path) -> list[Path]:
    """Remove the temporaries of `path` (and their side files) left by dead processes of this host."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}-(\d+)\.tmp")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        match = pattern.match(candidate.name)
        if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def discard_orphans_in(directory: Path) -> list[Path]:
    """Remove every temporary in `directory` left by a dead process of this host (any target)."""
    directory = Path(directory)
    pattern = re.compile(rf"^\..+\.{re.escape(_host())}-(\d+)\.tmp")
    removed = []
    for candidate in directory.glob(".*.tmp*"):
        match = pattern.match(candidate.name)
        if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        log.info("removed %d temporary file(s) of killed runs in %s: %s", len(removed), directory,
                 ", ".join(p.name for p in removed))
    return removed
