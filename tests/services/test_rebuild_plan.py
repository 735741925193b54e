"""Rebuild plans created by the service directly (no Luigi): the fixed chunks, the backup of exactly
what will be replaced, reuse on resume, and the refusal to plan a started run again. Plans live in
the store (table run_plans); only the backup is a file."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest

from stockpipe import markers
from stockpipe.engines import open_engine
from stockpipe.services import rebuild
from stockpipe.services.indicators import compute_chunk
from stockpipe.services.ingest import ingest_date
from stockpipe.services.symbols import collect_symbols
from stockpipe.sources.demo import DemoSource
from stockpipe.store import Marker, open_store

DAY = dt.date(2025, 10, 10)
START = dt.date(2025, 9, 29)  # 10 sessions before DAY, inclusive
PLAN_ID = f"rebuild-{START}"


@pytest.fixture
def store(tmp_path):
    """A DuckDB store with 12 demo symbols' bars (80 sessions) and their indicators."""
    opened = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}")
    opened.ensure_schema()
    source = DemoSource(tickers=12, seed=11)
    collect_symbols(opened, source, DAY, 5, None)
    ingest_date(opened, source, DAY, days_back=5, backfill_sessions=80, marker=None)
    compute_chunk(opened, opened.active_symbols(), dt.date.min, engine=open_engine("numpy"), warmup_bars=500, marker=None)
    yield opened
    opened.close()


def plan(store, directory, symbols=None, **options):
    settings = {"plan_id": PLAN_ID, "kind": "rebuild", "start": START, "chunk_size": 5, "backup": True}
    settings.update(options)
    return rebuild.create_plan(store, directory, symbols=store.active_symbols() if symbols is None else symbols, **settings)


def test_a_plan_fixes_sorted_chunks_and_backs_up_exactly_the_rows_it_replaces(store, tmp_path):
    directory = tmp_path / "runs" / PLAN_ID
    symbols = store.active_symbols()
    made = plan(store, directory, symbols=list(reversed(symbols)))
    assert made.chunks == [sorted(symbols)[0:5], sorted(symbols)[5:10], sorted(symbols)[10:12]]
    assert made.start == START and made.kind == "rebuild" and made.backup == str((directory / rebuild.BACKUP_FILE).resolve())
    replaced = store.read_indicators(start=START)
    assert made.replaces["rows"] == replaced.num_rows == 12 * 10
    assert (made.replaces["first_date"], made.replaces["last_date"]) == (str(START), str(DAY))

    backup = pq.read_table(directory / rebuild.BACKUP_FILE)
    assert backup.select(replaced.column_names).sort_by([("symbol", "ascending"), ("date", "ascending")]).equals(replaced)
    footer = json.loads(pq.ParquetFile(directory / rebuild.BACKUP_FILE).metadata.metadata[b"stockpipe"])
    assert footer == {"plan_id": PLAN_ID, "start_date": str(START), "end_date": str(DAY), "symbols": sorted(symbols)}
    stored = rebuild.load_plan(store, PLAN_ID)
    assert stored.chunks == made.chunks and stored.backup == made.backup and stored.created_at == made.created_at


def test_a_resumed_run_reuses_its_plan_and_backup_even_if_the_universe_changed(store, tmp_path):
    directory = tmp_path / "runs" / PLAN_ID
    first = plan(store, directory)
    backup = (directory / rebuild.BACKUP_FILE).read_bytes()
    # One chunk replaced its rows, and the universe lost a symbol, before the run was resumed.
    compute_chunk(store, first.chunks[0], START, engine=open_engine("numpy"), warmup_bars=500,
                  marker=Marker(markers.indicator_chunk(PLAN_ID, 0), "IndicatorChunk"))
    again = plan(store, directory, symbols=store.active_symbols()[1:], chunk_size=3)
    assert again.chunks == first.chunks and again.created_at == first.created_at
    assert (directory / rebuild.BACKUP_FILE).read_bytes() == backup


def test_a_started_run_whose_plan_is_gone_is_refused_and_its_backup_kept(store, tmp_path):
    directory = tmp_path / "runs" / PLAN_ID
    first = plan(store, directory)
    compute_chunk(store, first.chunks[1], START, engine=open_engine("numpy"), warmup_bars=500,
                  marker=Marker(markers.indicator_chunk(PLAN_ID, 1), "IndicatorChunk"))
    backup = (directory / rebuild.BACKUP_FILE).read_bytes()
    with store.session() as session:
        session.execute("DELETE FROM run_plans WHERE plan_id = :p", {"p": PLAN_ID})
    with pytest.raises(rebuild.RebuildError, match=r"the plan of run rebuild-2025-09-29 is missing from .* already started "
                                                   r"\(its backup .*, 1 finished chunk\(s\) exist\).*stockpipe restore"):
        plan(store, directory)
    assert (directory / rebuild.BACKUP_FILE).read_bytes() == backup
    assert store.read_run_plan(PLAN_ID) is None, "a started run was planned again"


def test_a_plan_with_nothing_to_replace_has_an_empty_backup_and_a_daily_plan_none(store, tmp_path):
    later = dt.date(2025, 10, 13)  # after the last bar: no indicator row from there on
    empty = plan(store, tmp_path / "runs" / "rebuild-later", plan_id="rebuild-later", start=later)
    assert empty.replaces["rows"] == 0
    assert pq.read_table(tmp_path / "runs" / "rebuild-later" / rebuild.BACKUP_FILE).num_rows == 0
    daily = plan(store, tmp_path / "runs" / "daily-x", plan_id="daily-x", kind="daily", start=DAY, backup=False,
                 full_history=["ZZZ", store.active_symbols()[0], store.active_symbols()[0]])
    assert daily.backup is None and not (tmp_path / "runs" / "daily-x" / rebuild.BACKUP_FILE).exists()
    assert daily.full_history == sorted({"ZZZ", store.active_symbols()[0]})


def test_a_garbled_plan_is_named_with_what_to_do(store, tmp_path):
    directory = tmp_path / "runs" / PLAN_ID
    plan(store, directory)
    with store.session() as session:
        session.execute("UPDATE run_plans SET plan = :garbled WHERE plan_id = :p",
                        {"p": PLAN_ID, "garbled": '{"plan_id": "rebuild-2025-09-29", "chun'})
    with pytest.raises(rebuild.RebuildError, match=rf"cannot read rebuild plan {PLAN_ID} \(table run_plans of .*\): .*"
                                                   rf"`stockpipe restore {(directory / rebuild.BACKUP_FILE).resolve()}`"):
        rebuild.open_plan(store, PLAN_ID)
