"""The in-process deadline of tasks a worker runs itself (stockpipe/deadline.py)."""

from __future__ import annotations

import fcntl
import time

import duckdb
import pytest

from stockpipe.deadline import TaskTimeout, deadline, uninterruptible


def test_a_deadline_stops_a_duckdb_query_and_reports_the_timeout_not_the_interruption():
    connection = duckdb.connect()
    with pytest.raises(TaskTimeout, match="chunk 7 timed out") as raised:
        with deadline(0.5, "chunk 7 timed out"):
            connection.execute("SELECT count(*) FROM range(100000000000) a").fetchall()
    assert "interrupted" in str(raised.value.__cause__).lower()
    assert connection.execute("SELECT 42").fetchall() == [(42,)], "the connection is usable afterwards"


def test_a_deadline_stops_a_lock_wait(tmp_path):
    path = tmp_path / "lock"
    with open(path, "a+") as holder, open(path, "a+") as waiter:
        fcntl.flock(holder, fcntl.LOCK_EX)
        # flock locks belong to the open file: the second one waits, even in this process.
        with pytest.raises(TaskTimeout, match="waited too long"):
            with deadline(0.5, "waited too long"):
                fcntl.flock(waiter, fcntl.LOCK_EX)


def test_a_deadline_that_expires_in_an_uninterruptible_section_fires_when_it_ends():
    finished = []
    with pytest.raises(TaskTimeout):
        with deadline(0.2, "too late"):
            with uninterruptible():
                time.sleep(0.6)  # the signal arrives meanwhile; the sleep is resumed, not cut short
                finished.append("section")
            finished.append("after the section")
    assert finished == ["section"]


def test_no_deadline_is_left_armed_after_the_block():
    with deadline(5, "never"):
        pass
    time.sleep(0.01)
    with uninterruptible():
        pass  # nothing pending, nothing raised


@pytest.mark.postgres
def test_a_deadline_cancels_a_postgresql_statement_that_no_signal_brings_back(postgres_url):
    """A statement waiting inside libpq (here pg_sleep; in a task, a lock) only returns to Python
    when the server answers: the deadline's interrupt cancels it, and the timeout is raised then."""
    from stockpipe.store import interrupt_all, open_store

    store = open_store(postgres_url)
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="chunk 3 timed out"):
        with deadline(0.5, "chunk 3 timed out", interrupt=interrupt_all):
            with store.session() as session:
                session.execute("SELECT pg_sleep(30)")
    assert time.monotonic() - started < 10
    with store.session(write=False) as session:
        assert session.fetch("SELECT 42") == [(42,)], "the store is usable afterwards"


def test_a_deadline_never_interrupts_after_its_block_ended():
    calls = []
    with deadline(0.3, "never", interrupt=lambda: calls.append(time.monotonic())):
        pass
    time.sleep(0.6)
    assert calls == []
