"""On PostgreSQL a rebuild that replaces every indicator row writes into a build table of its own and
swaps it in with its completion (Store.begin_build, Store.finish_run): readers see the old rows until
then, rows other runs write meanwhile are carried over, and a swap that cannot tell what they wrote
gives up cleanly. The table it replaces is its backup (backup.table names it; one kept per store).
DuckDB replaces in place. Through the services (no Luigi)."""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest

from stockpipe import markers
from stockpipe.engines import open_engine
from stockpipe.services import rebuild
from stockpipe.services.indicators import compute_chunk
from stockpipe.services.ingest import ingest_date
from stockpipe.services.symbols import collect_symbols
from stockpipe.sources.demo import DemoSource
from stockpipe.store import Marker, StoreError
from stockpipe.store.base import backup_table_name

DAY = dt.date(2025, 10, 10)
NEXT_DAY = dt.date(2025, 10, 13)
SEED = 11
ENGINE = open_engine("numpy")


@pytest.fixture
def loaded(postgres_url):
    from stockpipe.store import open_store

    return load(open_store(postgres_url))


def load(store):
    """12 demo symbols' bars (80 sessions to DAY) and their indicators, computed from the first bar."""
    store.ensure_schema()
    source = DemoSource(tickers=12, seed=SEED)
    collect_symbols(store, source, DAY, 5, None)
    ingest_date(store, source, DAY, days_back=5, backfill_sessions=80, marker=None)
    # In the chunks the rebuilds below use (the same symbols together give the same last bits).
    symbols = sorted(store.active_symbols())
    for first in range(0, len(symbols), 5):
        compute_chunk(store, symbols[first:first + 5], dt.date.min, engine=ENGINE, warmup_bars=500, marker=None)
    return store


def values(store) -> pa.Table:
    return store.read_indicators().drop(["created_at"])


def spoil(store) -> None:
    """Make every stored value wrong, so rows a rebuild did not write are told apart."""
    with store.session() as session:
        session.execute("UPDATE indicators SET sma_20 = -1")


def full_plan(store, directory, plan_id="rebuild-full"):
    return rebuild.create_plan(store, directory, plan_id=plan_id, kind="rebuild", start=dt.date(2000, 1, 3),
                               symbols=store.active_symbols(), chunk_size=5, backup=True)


def run_chunk(store, plan, index):
    compute_chunk(store, plan.chunks[index], plan.start, engine=ENGINE, warmup_bars=500,
                  marker=Marker(markers.indicator_chunk(plan.plan_id, index), "IndicatorChunk"),
                  into=rebuild.chunk_target(store, plan))


def run_chunks(store, plan, first=0):
    for index in range(first, len(plan.chunks)):
        run_chunk(store, plan, index)


def finish(store, plan):
    return rebuild.write_final_report(store, plan, marker=Marker(markers.rebuild_from(plan.plan_id), "RebuildFrom"))


def build_tables(store) -> list[str]:
    names = store.query("SELECT CAST(table_name AS VARCHAR) AS table_name FROM information_schema.tables WHERE starts_with(CAST(table_name AS VARCHAR), 'indicators')")
    return sorted(names.column("table_name").to_pylist())


def backup_values(store, plan) -> pa.Table:
    """The rows of run `plan`'s backup table, as `values` reads the indicators table."""
    rows = store.query(f"SELECT * FROM {backup_table_name(plan.plan_id)} ORDER BY symbol, date").drop(["created_at"])
    return rows.cast(values(store).schema)


def test_a_whole_table_rebuild_is_built_aside_and_swapped_in_with_its_completion(loaded, tmp_path):
    expected = values(loaded)
    spoil(loaded)
    spoiled = values(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    assert plan.built_aside and rebuild.load_plan(loaded, plan.plan_id).built_aside
    build = loaded.build_table(plan.plan_id)
    assert build is not None and build_tables(loaded) == sorted(["indicators", build])
    from stockpipe.cli import rebuilds

    assert [r["state"] for r in rebuilds(loaded)] == [f"in progress, its rows in {build} until it finishes"]

    for index in range(len(plan.chunks)):
        run_chunk(loaded, plan, index)
        assert values(loaded).equals(spoiled)  # readers see the old rows until the swap
    report, wrote = finish(loaded, plan)

    assert wrote and report["saved_rows"] == expected.num_rows and report["built_aside"] is True
    assert values(loaded).equals(expected)
    # The table it replaced is its backup, no file of rows: backup.table names it.
    assert build_tables(loaded) == ["indicators", backup_table_name(plan.plan_id)]
    assert backup_values(loaded, plan).equals(spoiled)
    assert plan.backup == str(tmp_path / "run" / "backup.table") and not (tmp_path / "run" / "backup.parquet").exists()
    # The compatibility views read the new table (PostgreSQL binds a view to a table, not a name).
    assert loaded.query("SELECT count(*) AS n FROM technical_indicators WHERE sma_20 = -1")["n"][0].as_py() == 0
    assert loaded.query("SELECT count(*) AS n FROM technical_indicators")["n"][0].as_py() == expected.num_rows
    # Done once: finishing again changes nothing.
    assert finish(loaded, plan)[1] is False and values(loaded).equals(expected)


def test_what_other_runs_write_during_the_build_is_in_the_table_swapped_in(loaded, tmp_path):
    plan = full_plan(loaded, tmp_path / "run")
    run_chunk(loaded, plan, 0)
    # A Daily for the next session, after the first chunk read its bars: without it, the build
    # would have no row of that session for that chunk's symbols.
    source = DemoSource(tickers=12, seed=SEED)
    ingest_date(loaded, source, NEXT_DAY, days_back=5, backfill_sessions=80, marker=None)
    for first in range(0, 12, 5):  # in the plan's chunks: the same symbols together give the same last bits
        compute_chunk(loaded, sorted(loaded.active_symbols())[first:first + 5], DAY, engine=ENGINE, warmup_bars=500,
                      marker=None)
    daily = loaded.read_indicators(start=NEXT_DAY).drop(["created_at"])
    assert set(plan.chunks[0]) <= set(daily.column("symbol").to_pylist())
    run_chunks(loaded, plan, first=1)
    finish(loaded, plan)

    assert loaded.read_indicators(start=NEXT_DAY).drop(["created_at"]).equals(daily)
    assert values(loaded).column("date").to_pylist().count(NEXT_DAY) == 12


def test_a_write_of_a_few_symbols_during_the_build_leaves_the_others_rebuilt(loaded, tmp_path):
    expected = values(loaded)
    spoil(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    run_chunks(loaded, plan)
    # A short rebuild of the first and the last symbol, in place, before the swap: the symbols
    # between them (in its code-point range) keep the build's rows, not the live table's spoiled ones.
    symbols = sorted(loaded.active_symbols())
    compute_chunk(loaded, [symbols[0], symbols[-1]], dt.date(2025, 9, 1), engine=ENGINE, warmup_bars=500, marker=None)
    finish(loaded, plan)
    assert values(loaded).column("sma_20").to_pylist().count(-1) == 0
    assert values(loaded).filter(pa.compute.is_in(values(loaded).column("symbol"), pa.array(symbols[1:-1]))).equals(
        expected.filter(pa.compute.is_in(expected.column("symbol"), pa.array(symbols[1:-1]))))


def test_a_rebuild_of_part_of_the_table_replaces_rows_in_place(loaded, tmp_path):
    plan = rebuild.create_plan(loaded, tmp_path / "run", plan_id="rebuild-part", kind="rebuild",
                               start=dt.date(2025, 9, 29), symbols=loaded.active_symbols(), chunk_size=5, backup=True)
    assert not plan.built_aside and loaded.build_table(plan.plan_id) is None
    some = rebuild.create_plan(loaded, tmp_path / "run2", plan_id="rebuild-some", kind="rebuild",
                               start=dt.date(2000, 1, 3), symbols=loaded.active_symbols()[:6], chunk_size=5,
                               backup=True)
    assert not some.built_aside and build_tables(loaded) == ["indicators"]


def test_a_view_of_the_users_made_during_the_build_makes_the_swap_give_up_and_the_rerun_go_in_place(loaded, tmp_path):
    expected = values(loaded)
    spoil(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    run_chunks(loaded, plan)
    with loaded.session() as session:  # a dashboard's own view: a swap would drop it with the old table
        session.execute("CREATE VIEW dash_rows AS SELECT symbol, date FROM indicators")

    with pytest.raises(StoreError, match=r"rebuild-full: the indicators table has view .*dash_rows.* run the same "
                                         r"command again to redo them in place"):
        finish(loaded, plan)
    assert build_tables(loaded) == ["indicators"]
    assert not loaded.markers(prefix=markers.chunks_of(plan.plan_id))
    spoiled = values(loaded)
    assert spoiled.column("sma_20").to_pylist().count(-1) > 0  # nothing swapped in

    run_chunks(loaded, plan)  # the rerun, in place, with the table it replaces kept first
    assert backup_values(loaded, plan).equals(spoiled)
    assert finish(loaded, plan)[1] and values(loaded).equals(expected)
    assert loaded.query("SELECT count(*) AS n FROM dash_rows")["n"][0].as_py() == expected.num_rows
    rebuild.restore(loaded, plan.backup)
    assert values(loaded).equals(spoiled)


def test_a_build_table_left_by_a_finished_or_unknown_run_is_never_swapped_in_and_dropped_by_the_next(loaded, tmp_path):
    from stockpipe.store.base import _build_name

    part = rebuild.create_plan(loaded, tmp_path / "run", plan_id="rebuild-part", kind="rebuild",
                               start=dt.date(2025, 9, 29), symbols=loaded.active_symbols(), chunk_size=5, backup=True)
    leftovers = sorted(_build_name(plan_id) for plan_id in ("rebuild-part", "rebuild-gone"))
    with loaded.session() as session:  # as if left by earlier attempts that died
        for name in leftovers:
            session.execute(f"CREATE TABLE {name} AS SELECT * FROM indicators WHERE 1 = 0")
    run_chunks(loaded, part)
    finish(loaded, part)
    assert not part.built_aside and values(loaded).num_rows == 12 * 80  # its empty namesake was not swapped in
    assert build_tables(loaded) == sorted(["indicators", *leftovers])

    plan = full_plan(loaded, tmp_path / "run2")  # not held back by them: their runs are not under way
    assert plan.built_aside and build_tables(loaded) == sorted(["indicators", _build_name(plan.plan_id)])


def test_restoring_a_run_that_builds_aside_drops_its_build_with_its_chunks(loaded, tmp_path):
    expected = values(loaded)
    spoil(loaded)
    spoiled = values(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    run_chunk(loaded, plan, 0)
    result = rebuild.restore(loaded, plan.backup)
    # Nothing of the run's was in the indicators table: its build goes, nothing is copied yet.
    assert result["rows_restored"] == 0 and result["markers_forgotten"] == 1 and values(loaded).equals(spoiled)
    assert not loaded.markers(prefix=markers.chunks_of(plan.plan_id))
    assert build_tables(loaded) == ["indicators"] and rebuild.build_target(loaded, plan) is None
    run_chunk(loaded, plan, 0)  # rerun, in place: its first chunk keeps the table it writes into first
    assert build_tables(loaded) == ["indicators", backup_table_name(plan.plan_id)]
    assert backup_values(loaded, plan).equals(spoiled)
    run_chunks(loaded, plan, first=1)
    assert finish(loaded, plan)[1] and values(loaded).equals(expected)

    assert rebuild.restore(loaded, plan.backup)["rows_restored"] == spoiled.num_rows
    assert values(loaded).equals(spoiled)


def test_restoring_a_finished_run_puts_back_the_table_it_replaced(loaded, tmp_path):
    expected = values(loaded)
    spoil(loaded)
    spoiled = values(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    run_chunks(loaded, plan)
    finish(loaded, plan)
    # A later Daily's rows, after the range the backup covers, stand.
    source = DemoSource(tickers=12, seed=SEED)
    ingest_date(loaded, source, NEXT_DAY, days_back=5, backfill_sessions=80, marker=None)
    for first in range(0, 12, 5):
        compute_chunk(loaded, sorted(loaded.active_symbols())[first:first + 5], DAY, engine=ENGINE, warmup_bars=500,
                      marker=None)
    daily = loaded.read_indicators(start=NEXT_DAY).drop(["created_at"])
    mark = loaded.change_mark()

    result = rebuild.restore(loaded, plan.backup)
    assert result["rows_restored"] == spoiled.num_rows and result["backup_table"] == backup_table_name(plan.plan_id)
    assert values(loaded).filter(pa.compute.less_equal(values(loaded).column("date"), DAY)).equals(spoiled)
    assert loaded.read_indicators(start=NEXT_DAY).drop(["created_at"]).equals(daily)
    assert not loaded.markers(prefix=markers.chunks_of(plan.plan_id))
    assert not loaded.markers(exact=markers.rebuild_from(plan.plan_id))
    assert loaded.changes_since(mark)  # the replica copies the rows put back
    assert build_tables(loaded) == ["indicators"]  # its backup table is gone with the undo
    assert rebuild.restore(loaded, plan.backup)["rows_restored"] == 0  # again: nothing of the run's is stored
    assert values(loaded).filter(pa.compute.less_equal(values(loaded).column("date"), DAY)).equals(spoiled)

    run_chunks(loaded, plan)  # rerun: in place (its build is gone), keeping the table it replaces first
    assert finish(loaded, plan)[1]
    assert values(loaded).filter(pa.compute.less_equal(values(loaded).column("date"), DAY)).equals(expected)
    assert build_tables(loaded) == ["indicators", backup_table_name(plan.plan_id)]


def test_a_swap_keeps_the_newest_finished_runs_backup_table_and_those_of_runs_to_redo(loaded, tmp_path):
    first = full_plan(loaded, tmp_path / "run1", plan_id="rebuild-first")
    run_chunks(loaded, first)
    finish(loaded, first)
    with loaded.session() as session:  # the users' own table, named alike: never taken for a backup
        session.execute("CREATE TABLE indicators_backup_2025 AS SELECT * FROM indicators")
    # A run undone while building, then started again in place: its backup table is what it replaces.
    cancelled = full_plan(loaded, tmp_path / "run2", plan_id="rebuild-cancelled")
    rebuild.restore(loaded, cancelled.backup)
    run_chunk(loaded, cancelled, 0)
    assert build_tables(loaded) == sorted(["indicators", "indicators_backup_2025", backup_table_name("rebuild-first"),
                                           backup_table_name("rebuild-cancelled")])
    spoil(loaded)
    spoiled = values(loaded)
    third = full_plan(loaded, tmp_path / "run3", plan_id="rebuild-third")
    run_chunks(loaded, third)
    finish(loaded, third)
    assert build_tables(loaded) == sorted(["indicators", "indicators_backup_2025", backup_table_name("rebuild-cancelled"),
                                           backup_table_name("rebuild-third")])
    assert backup_values(loaded, third).equals(spoiled)

    now = values(loaded)
    with pytest.raises(StoreError, match=r"run rebuild-first: its backup table indicators_backup_\w+ is gone .* "
                                         r"nothing changed"):
        rebuild.restore(loaded, first.backup)
    assert values(loaded).equals(now) and loaded.markers(exact=markers.rebuild_from("rebuild-first"))


def test_a_run_restored_before_its_finish_commits_is_not_finished(loaded, tmp_path):
    """The restore won the race: its chunks are forgotten, so the finish writes nothing."""
    spoil(loaded)
    spoiled = values(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    run_chunks(loaded, plan)
    rebuild.restore(loaded, plan.backup)
    with pytest.raises(StoreError, match=r"run rebuild-full: 0 of its 3 chunks are done .* run the same command again"):
        finish(loaded, plan)
    assert not loaded.markers(exact=markers.rebuild_from(plan.plan_id)) and values(loaded).equals(spoiled)
    assert rebuild.final_report(loaded, plan.plan_id) is None


def test_a_run_planned_with_a_backup_file_drops_the_table_it_swaps_out(loaded, tmp_path):
    """Plans made before backups were tables: built aside, with a backup.parquet."""
    plan = full_plan(loaded, tmp_path / "run")
    run_chunks(loaded, plan)
    assert loaded.finish_run(plan.plan_id, "{}", dt.datetime(2025, 10, 10), built_aside=True, keep_replaced=False)
    assert build_tables(loaded) == ["indicators"]


def test_cleanup_drops_a_backup_table_with_the_file_that_names_it(loaded, tmp_path):
    import os
    import time

    from stockpipe.services import cleanup

    data = tmp_path / "data"
    plan = full_plan(loaded, data / "runs" / "rebuild-full")
    run_chunks(loaded, plan)
    finish(loaded, plan)
    days = {"runs": 60, "backups": 30, "reports": 90, "replica": 7, "logs": 30}
    kwargs = dict(data_dir=data, replica_path=data / "replica.duckdb", log_dir=tmp_path / "logs", days=days)
    from stockpipe.services.check import recovery_advice

    assert f"`stockpipe restore {plan.backup}`" in recovery_advice(loaded, data, data / "replica.duckdb")
    kept = cleanup.clean(loaded, **kwargs)["kept_items"]
    held = [i for i in kept if i["path"] == plan.backup]
    assert held and held[0]["bytes"] > 8192 and loaded.has_backup_table(plan.plan_id)

    # Aged from the run's finish (when its table was made), not from the file (written at planning).
    stamp = time.time() - 40 * 86400
    os.utime(plan.backup, (stamp, stamp))
    assert not cleanup.clean(loaded, **kwargs)["items"]
    done = cleanup.clean(loaded, **kwargs, now=time.time() + 40 * 86400)
    assert [i["path"] for i in done["items"]] == [plan.backup] and done["by_kind"]["backups"]["bytes"] > 8192
    assert not loaded.has_backup_table(plan.plan_id) and build_tables(loaded) == ["indicators"]
    assert (data / "runs" / "rebuild-full").is_dir()  # the newest run of its start date stays
    assert "stockpipe restore" not in recovery_advice(loaded, data, data / "replica.duckdb")


def test_postgres_keeps_grants_and_leaves_a_table_its_users_depend_on_in_place(loaded, tmp_path):
    role = f"stockpipe_dash_{uuid.uuid4().hex[:8]}"
    with loaded.session() as session:
        session.execute(f"CREATE ROLE {role}")
        session.execute(f"GRANT SELECT ON indicators TO {role}")
    try:
        plan = full_plan(loaded, tmp_path / "run")
        run_chunks(loaded, plan)
        finish(loaded, plan)
        granted = loaded.query(f"SELECT has_table_privilege('{role}', 'indicators', 'SELECT') AS ok")
        assert plan.built_aside and granted["ok"][0].as_py() is True
        assert loaded.query("SELECT conname FROM pg_constraint WHERE conrelid = 'indicators'::regclass")[
            "conname"].to_pylist() == ["indicators_pkey"]

        with loaded.session() as session:  # a dashboard's own view: a swap would drop it with the old table
            session.execute("CREATE VIEW dash_latest AS SELECT symbol, max(date) AS latest FROM indicators GROUP BY symbol")
        again = full_plan(loaded, tmp_path / "run2", plan_id="rebuild-again")
        assert not again.built_aside
        run_chunks(loaded, again)
        finish(loaded, again)
        assert loaded.query("SELECT count(*) AS n FROM dash_latest")["n"][0].as_py() == 12
    finally:
        with loaded.session() as session:
            session.execute("DROP VIEW IF EXISTS dash_latest")
            session.execute(f"REVOKE ALL ON indicators FROM {role}")
            session.execute(f"DROP ROLE {role}")


def test_duckdb_replaces_every_row_in_place(duckdb_url, tmp_path):
    from stockpipe.store import open_store

    store = load(open_store(duckdb_url))
    expected = values(store)
    spoil(store)
    plan = full_plan(store, tmp_path / "run")
    assert not plan.built_aside and build_tables(store) == ["indicators"]
    run_chunks(store, plan)
    assert finish(store, plan)[1] and values(store).equals(expected)


def test_a_swap_behind_a_long_reader_gives_up_with_nothing_changed(loaded, tmp_path, monkeypatch):
    import psycopg2

    from stockpipe.store import postgres_store

    monkeypatch.setattr(postgres_store, "_SWAP_LOCK_SECONDS", 1)
    spoil(loaded)
    spoiled = values(loaded)
    plan = full_plan(loaded, tmp_path / "run")
    run_chunks(loaded, plan)
    reader = psycopg2.connect(loaded.url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        reader.cursor().execute("SELECT count(*) FROM indicators")  # holds its lock until it ends
        with pytest.raises(StoreError, match=r"waited 1 s for other sessions .* run the same command again"):
            finish(loaded, plan)
    finally:
        reader.close()
    assert values(loaded).equals(spoiled) and loaded.build_table(plan.plan_id) is not None
    assert finish(loaded, plan)[1] and values(loaded).column("sma_20").to_pylist().count(-1) == 0
