"""Temporaries of killed writers are removed by the next writer; live or foreign ones are left alone."""

from __future__ import annotations

import subprocess
import sys

from stockpipe.tempfiles import discard_orphans, temporary_for


def test_only_the_temporaries_of_dead_processes_of_this_host_are_discarded(tmp_path):
    target = tmp_path / "replica.duckdb"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = temporary_for(target)
        host = mine.name.split(".")[-2].rsplit("-", 1)[0]
        dead = tmp_path / f".replica.duckdb.{host}-{dead_pid}.tmp"
        dead_wal = tmp_path / f".replica.duckdb.{host}-{dead_pid}.tmp.wal"
        living = tmp_path / f".replica.duckdb.{host}-{alive.pid}.tmp"
        elsewhere = tmp_path / f".replica.duckdb.otherhost-{dead_pid}.tmp"
        other_file = tmp_path / f".replica.previous.duckdb.{host}-{dead_pid}.tmp"
        for path in (mine, dead, dead_wal, living, elsewhere, other_file):
            path.write_text("x")

        removed = discard_orphans(target)

        assert sorted(removed) == sorted([dead, dead_wal])
        assert all(p.exists() for p in (mine, living, elsewhere, other_file))
    finally:
        alive.kill()
        alive.wait()
