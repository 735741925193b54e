"""Run one command and print, as JSON, its wall seconds and the peak memory of its whole process tree.

    python measure.py [--grep TEXT] [--interval SECONDS] command ...
        --grep: also return the stderr lines containing TEXT
        --interval: how often the process tree is sampled (0.1 s)

Luigi runs each task in a forked worker process and the Spark engine starts a JVM as a child of its
task, so the memory that counts is that of every process the command starts, not of the command
alone. The tree (the command's session, plus any descendant that left it) is sampled every
`--interval` and its proportional set sizes (PSS: a page shared by a forked worker and its parent
counts once, split between them) are added up:

- peak_mb: the largest such sum, or the largest single process's peak RSS if that is larger (a
  spike shorter than the interval is still counted through the kernel's own per-process peak);
- peak_largest_process_mb: the largest peak RSS of any one process (what earlier figures reported);
- processes: the most processes seen at once.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # the command name may contain spaces and parentheses
    return int(fields[1]), int(fields[3])


def tree(root: int) -> list[int]:
    """The processes of `root`'s session (it is started as a session leader) and its descendants."""
    parents: dict[int, int] = {}
    members = {root}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                parents[int(entry)] = found[0]
                if found[1] == root:
                    members.add(int(entry))
    grew = True
    while grew:  # descendants that called setsid() are still the command's
        grown = {pid for pid, parent in parents.items() if parent in members} - members
        members |= grown
        grew = bool(grown)
    return [pid for pid in members if pid in parents]


def resident_kib(pid: int) -> int:
    """A process's proportional set size in KiB (its resident size where PSS is not readable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0  # exited between listing and reading


def run(arguments: list[str], grep: str | None = None, interval: float = 0.1) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               errors="replace", start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    peak_kib, most = 0, 0
    try:
        while process.poll() is None:
            members = tree(process.pid)
            peak_kib = max(peak_kib, sum(resident_kib(pid) for pid in members))
            most = max(most, len(members))
            time.sleep(interval)
    except BaseException:
        os.killpg(process.pid, 9)
        raise
    returncode = process.wait()
    seconds = time.perf_counter() - started
    reader.join()
    largest_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    stderr = "".join(lines)
    result = {"returncode": returncode, "seconds": round(seconds, 3),
              "peak_mb": round(max(peak_kib, largest_kib) / 1024, 1),
              "peak_largest_process_mb": round(largest_kib / 1024, 1), "processes": most,
              "stderr_tail": stderr[-3000:] if returncode else ""}
    if grep is not None:
        result["matched"] = [line for line in stderr.splitlines() if grep in line]
    return result


def _stop(signum, frame):
    raise SystemExit(128 + signum)  # run() then kills the command's whole process group


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    arguments = sys.argv[1:]
    grep, interval = None, 0.1
    while arguments[:1] in (["--grep"], ["--interval"]):
        if arguments[0] == "--grep":
            grep = arguments[1]
        else:
            interval = float(arguments[1])
        arguments = arguments[2:]
    print(json.dumps(run(arguments, grep, interval)))


if __name__ == "__main__":
    main()
