"""The incremental replica: caught up from the store's change log, equal row for row to a full
export, exported whole when the log cannot tell, and never damaged by a crash."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap

import duckdb
import pyarrow.compute as pc

from stockpipe import config, tasks, trading_calendar
from stockpipe.services.replica import publish_replica, restore_from_replica
from stockpipe.store.schema import SCHEMA_VERSION_TABLE, TABLES

DAY = dt.date(2025, 10, 10)
DAY_BEFORE = dt.date(2025, 10, 9)


def assert_same_tables(replica, fresh) -> None:
    """Every table of `fresh` in `replica` with exactly the same rows (as multisets), and no more."""
    connection = duckdb.connect()
    connection.execute(f"ATTACH '{replica}' AS a (READ_ONLY)")
    connection.execute(f"ATTACH '{fresh}' AS b (READ_ONLY)")
    for table in (SCHEMA_VERSION_TABLE, *TABLES):
        columns = ", ".join(table.columns)
        counts = [connection.execute(f"SELECT count(*) FROM {db}.{table.name}").fetchone()[0] for db in ("a", "b")]
        assert counts[0] == counts[1], f"{table.name}: {counts[0]} rows in the replica, {counts[1]} in a full export"
        for one, other in (("a", "b"), ("b", "a")):
            extra = connection.execute(f"SELECT count(*) FROM (SELECT {columns} FROM {one}.{table.name} "
                                       f"EXCEPT ALL SELECT {columns} FROM {other}.{table.name})").fetchone()[0]
            assert extra == 0, f"{table.name}: {extra} row(s) of {one} not in {other}"
    connection.close()


def fresh_export(store, path):
    counts = store.export_replica(path)
    return counts


def test_daily_rebuild_daily_replica_equals_a_full_export(pipeline, tmp_path):
    assert pipeline.build(tasks.Daily(date=DAY_BEFORE))
    assert pipeline.store.read_marker(f"Replicate/{DAY_BEFORE}")["stats"]["mode"] == "full"
    # Two workers: whichever way chunks reach the store, each write must log its change.
    assert pipeline.build(tasks.RebuildFrom(start_date=trading_calendar.sessions_back("XNYS", DAY_BEFORE, 12)),
                          workers=2)
    assert pipeline.build(tasks.Daily(date=DAY))
    stats = pipeline.store.read_marker(f"Replicate/{DAY}")["stats"]
    assert stats["mode"] == "incremental", stats
    path = config.replica_path()
    # The Daily's replica against the store as it was then: later tasks only added markers and runs.
    with duckdb.connect(str(path), read_only=True) as replica:
        assert replica.execute("SELECT count(*) FROM indicators WHERE date = ?", [DAY]).fetchone()[0] == 30
    again = publish_replica(pipeline.store, path)
    assert again["mode"] == "incremental"
    fresh_export(pipeline.store, tmp_path / "fresh.duckdb")
    assert_same_tables(path, tmp_path / "fresh.duckdb")


def test_each_change_since_the_replica_is_caught_up(pipeline, tmp_path):
    """Ingest, a rebuild, a restore of indicators and split symbols recomputed over their whole history."""
    store = pipeline.store
    assert pipeline.build(tasks.Daily(date=DAY_BEFORE))
    path = config.replica_path()
    symbols = store.active_symbols()
    bars = store.read_bars(symbols=symbols[3:5], start=DAY_BEFORE - dt.timedelta(days=40))
    doubled = bars.set_column(bars.schema.get_field_index("close"), "close", pc.multiply(bars.column("close"), 2.0))
    store.write_bars(doubled)
    old = store.read_indicators(symbols=symbols[:10], start=DAY_BEFORE - dt.timedelta(days=20))
    store.replace_indicators(symbols[:10], DAY_BEFORE - dt.timedelta(days=20), old.slice(0, 5),
                             whole_symbols=[symbols[0], symbols[7]])
    store.restore_indicators(old, symbols[:3], DAY_BEFORE - dt.timedelta(days=20))
    assert publish_replica(store, path)["mode"] == "incremental"
    fresh_export(store, tmp_path / "fresh.duckdb")
    assert_same_tables(path, tmp_path / "fresh.duckdb")


def test_a_damaged_or_missing_previous_replica_is_replaced_by_a_full_export(pipeline, tmp_path):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    path = config.replica_path()
    os.chmod(path, 0o644)
    with open(path, "r+b") as damaged:
        damaged.seek(0)
        damaged.write(b"\0" * 8192)
    stats = publish_replica(store, path)
    assert stats["mode"] == "full" and "cannot be read" in stats["full_because"]
    fresh_export(store, tmp_path / "fresh.duckdb")
    assert_same_tables(path, tmp_path / "fresh.duckdb")

    path.unlink()
    stats = publish_replica(store, path)
    assert stats["mode"] == "full" and stats["full_because"] == "no previous replica"
    assert publish_replica(store, path)["mode"] == "incremental"


def test_changes_the_log_did_not_record_fall_back_to_a_full_export(pipeline, tmp_path):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    path = config.replica_path()
    with store.session() as session:  # behind the store's back: no change logged
        session.execute("DELETE FROM bars WHERE date = :d", {"d": DAY})
    stats = publish_replica(store, path)
    assert stats["mode"] == "full" and "verification" in stats["full_because"] or "bars has" in stats["full_because"]
    fresh_export(store, tmp_path / "fresh.duckdb")
    assert_same_tables(path, tmp_path / "fresh.duckdb")


def test_a_store_restored_from_a_replica_gets_a_full_export(duckdb_pipeline, tmp_path):
    from stockpipe.store import open_store

    assert duckdb_pipeline.build(tasks.Daily(date=DAY))
    path = config.replica_path()
    restored = open_store(f"duckdb:///{tmp_path / 'restored.duckdb'}")
    restore_from_replica(restored, path)
    stats = publish_replica(restored, path)
    assert stats["mode"] == "full" and "every table" in stats["full_because"]
    fresh_export(restored, tmp_path / "fresh.duckdb")
    assert_same_tables(path, tmp_path / "fresh.duckdb")


def test_a_crash_while_catching_up_leaves_the_previous_replica(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY_BEFORE))
    path = config.replica_path()
    before = path.read_bytes()
    assert pipeline.build(tasks.ScanWatchlist(date=DAY))  # changes to catch up
    crash = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from stockpipe.services import replica
        from stockpipe.store import open_store

        def killed(path):  # the copy is caught up, not yet verified nor renamed
            os.kill(os.getpid(), signal.SIGKILL)

        replica.replica_file.add_views = killed
        replica.publish_replica(open_store({pipeline.store_url!r}), Path({str(path)!r}))
    """)], env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    assert path.read_bytes() == before
    stats = publish_replica(pipeline.store, path)  # the next refresh clears the leftover and catches up
    assert stats["mode"] == "incremental"
    with duckdb.connect(str(path), read_only=True) as replica:
        assert replica.execute("SELECT count(*) FROM bars WHERE date = ?", [DAY]).fetchone()[0] == 30


def test_the_outgoing_previous_replica_is_caught_up_instead_of_a_copy_unless_a_reader_holds_it(pipeline, tmp_path):
    """Two refreshes in: the `.previous` file (older, same log) becomes the new replica, caught up
    over both days' changes, instead of a copy of the current one; a reader holding it open keeps
    its file, and the refresh copies the current replica instead."""
    assert pipeline.build(tasks.Daily(date=DAY_BEFORE))
    store = pipeline.store
    path = config.replica_path()
    previous = path.with_name(path.stem + ".previous" + path.suffix)
    assert publish_replica(store, path)["mode"] == "incremental"
    assert pipeline.build(tasks.ScanWatchlist(date=DAY))  # changes to catch up
    outgoing, older = path.stat().st_ino, previous.stat().st_ino
    assert publish_replica(store, path)["mode"] == "incremental"
    assert path.stat().st_ino == older and previous.stat().st_ino == outgoing
    fresh_export(store, tmp_path / "fresh.duckdb")
    assert_same_tables(path, tmp_path / "fresh.duckdb")

    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, duckdb
        connection = duckdb.connect({str(previous)!r}, read_only=True)
        print("open", flush=True)
        sys.stdin.read()
        print(connection.execute("SELECT count(*) FROM bars").fetchone()[0], flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        held = previous.stat().st_ino
        stats = publish_replica(store, path)
        assert stats["mode"] == "incremental" and path.stat().st_ino != held
        out, _ = reader.communicate("", timeout=60)
        assert int(out) > 0, "the reader's file changed under it"
    finally:
        reader.kill()
    assert_same_tables(path, tmp_path / "fresh.duckdb")


def test_cleanup_bounds_the_change_log_and_a_replica_left_behind_is_exported_whole(pipeline, tmp_path):
    from stockpipe.services.cleanup import clean

    store = pipeline.store
    assert pipeline.build(tasks.Daily(date=DAY_BEFORE))
    path = config.replica_path()
    behind = tmp_path / "behind.duckdb"
    behind.write_bytes(path.read_bytes())  # a replica last refreshed now, by another machine say
    assert pipeline.build(tasks.Daily(date=DAY))
    logged = store.query("SELECT change_id, changed_at FROM store_changes ORDER BY change_id").to_pylist()
    assert len(logged) > 2
    days = dict(config.cleanup().days())
    # 40 days later, with 30 days of log kept: everything but the newest row goes.
    later = max(r["changed_at"] for r in logged).replace(tzinfo=dt.timezone.utc).timestamp() + 40 * 86400
    result = clean(store, data_dir=tmp_path / "none", replica_path=path, log_dir=tmp_path / "none", days=days,
                   now=later, changes_days=30)
    assert result["changes_pruned"] == len(logged) - 1
    kept = store.query("SELECT change_id FROM store_changes").column("change_id").to_pylist()
    assert kept == [logged[-1]["change_id"]]
    # The replica holding the newest change still catches up; the one left behind is exported whole.
    assert publish_replica(store, path)["mode"] == "incremental"
    stats = publish_replica(store, behind)
    assert stats["mode"] == "full" and "does not hold the previous replica's newest change" in stats["full_because"]
    fresh_export(store, tmp_path / "fresh.duckdb")
    assert_same_tables(behind, tmp_path / "fresh.duckdb")
    # Numbering goes on after the newest row: the next write is logged after it.
    store.write_bars(store.read_bars(symbols=store.active_symbols()[:1], start=DAY))
    assert store.query("SELECT max(change_id) AS m FROM store_changes").column("m")[0].as_py() == kept[0] + 1
    # Nothing younger than the kept days goes.
    assert clean(store, data_dir=tmp_path / "none", replica_path=path, log_dir=tmp_path / "none", days=days,
                 changes_days=30)["changes_pruned"] == 0
