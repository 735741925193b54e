"""The tasks end to end through Luigi (in-process scheduler), on DuckDB; a Daily and a rebuild that
resumes after a failed chunk also on PostgreSQL."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stockpipe import markers, tasks
from stockpipe.preflight import UserError
from stockpipe.indicators import INDICATOR_COLUMNS, indicator_rows
from stockpipe.services import rebuild as rebuild_service
from tests.indicators.test_parity import ATOL, RTOL

DAY = dt.date(2025, 10, 10)
REBUILD_FROM = dt.date(2025, 9, 29)


def indicator_frame(store):
    rows = store.read_indicators().drop(["created_at"])
    return rows.sort_by([("symbol", "ascending"), ("date", "ascending")])


def assert_same_indicators(actual: pa.Table, expected: pa.Table, exact: bool = False) -> None:
    """Equal within the indicator standard (1e-9 relative, 1e-10 floor for values crossing zero),
    or bit for bit when `exact`."""
    assert actual.num_rows == expected.num_rows
    assert actual.column("symbol").equals(expected.column("symbol"))
    assert actual.column("date").equals(expected.column("date"))
    for name in INDICATOR_COLUMNS:
        a = actual.column(name).to_numpy(zero_copy_only=False).astype(float)
        b = expected.column(name).to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0 if exact else RTOL, atol=0 if exact else ATOL, err_msg=name)


@pytest.mark.both_stores
def test_daily_runs_symbols_bars_indicators(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    assert len(store.active_symbols()) == 30
    first, last, count = store.bars_extent()
    assert last == DAY and count > 30 * 500
    on_day = store.read_indicators(start=DAY, end=DAY)
    assert on_day.num_rows == pc.count_distinct(store.read_bars(start=DAY, end=DAY).column("symbol")).as_py()
    assert pc.all(pc.is_valid(on_day.column("rsi_14"))).as_py()
    ingest = store.read_marker(f"IngestDate/{DAY}")["stats"]
    assert ingest["bars_rejected"] == 0 and ingest["bars_stored"] == count
    # Every stored bar has its indicator row: nothing left as a hole.
    assert store.read_indicators().num_rows == count
    assert_same_indicators(indicator_frame(store), indicator_rows(store.read_bars()))


def test_daily_on_a_holiday_does_nothing_and_says_so(pipeline, capfd):
    holiday = dt.date(2025, 7, 4)
    assert pipeline.build(tasks.Daily(date=holiday))
    assert pipeline.store.bars_extent()[2] == 0
    assert pipeline.store.read_marker(f"Daily/{holiday}")["stats"] == {"trading_day": False}
    # The task ran in its worker's child process (it has a timeout): its log line is on stderr.
    assert "not a XNYS trading day" in capfd.readouterr().err


def test_second_daily_only_refetches_the_overlap(pipeline):
    assert pipeline.build(tasks.Daily(date=dt.date(2025, 10, 9)))
    assert pipeline.build(tasks.Daily(date=DAY))
    stats = pipeline.store.read_marker(f"IngestDate/{DAY}")["stats"]
    assert stats["from_dates"] == {"2025-10-03": 30}
    assert_same_indicators(indicator_frame(pipeline.store), indicator_rows(pipeline.store.read_bars()))


def test_rebuild_from_date_equals_full_recompute(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    full = indicator_rows(store.read_bars())
    before = store.read_indicators(start=REBUILD_FROM)
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    assert_same_indicators(indicator_frame(store), full)
    directory = rebuild_service.run_dir(pipeline.store_dir, f"rebuild-{REBUILD_FROM}")
    report = rebuild_service.final_report(store, f"rebuild-{REBUILD_FROM}")
    assert report["replaced_rows"] == before.num_rows
    assert report["saved_rows"] == before.num_rows
    assert report["chunks"] == 3 and report["chunks_done"] == 3 and report["failed_chunks"] == []
    plan = rebuild_service.load_plan(store, f"rebuild-{REBUILD_FROM}")
    assert [s for c in plan.chunks for s in c] == sorted(store.active_symbols())
    assert plan.backup == str((directory / "backup.parquet").resolve())  # the backup stays on disk, named in the store
    backup = pa.parquet.read_table(plan.backup)
    assert backup.num_rows == before.num_rows


def test_a_dailys_chunks_follow_daily_chunk_size_and_a_rebuilds_chunk_size(pipeline):
    pipeline.configure("stockpipe", daily_chunk_size=20)
    assert pipeline.build(tasks.Daily(date=DAY))
    daily = rebuild_service.load_plan(pipeline.store, markers.daily_plan_id(DAY))
    assert [len(c) for c in daily.chunks] == [20, 10]
    assert len(pipeline.store.markers(prefix=f"IndicatorChunk/{markers.daily_plan_id(DAY)}/")) == 2
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    rebuild = rebuild_service.load_plan(pipeline.store, f"rebuild-{REBUILD_FROM}")
    assert [len(c) for c in rebuild.chunks] == [10, 10, 10]


def test_rerun_skips_finished_chunks_and_run_id_rebuilds_again(pipeline):
    assert pipeline.build(tasks.Daily(date=DAY))
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    first = {m["marker_id"]: m["completed_at"] for m in pipeline.store.markers(prefix="IndicatorChunk/rebuild-")}
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    assert {m["marker_id"]: m["completed_at"] for m in pipeline.store.markers(prefix="IndicatorChunk/rebuild-")} == first
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM, run_id="again"))
    again = pipeline.store.markers(prefix=f"IndicatorChunk/rebuild-{REBUILD_FROM}-again/")
    assert len(again) == 3


@pytest.mark.both_stores
def test_failed_chunk_is_reported_and_the_rerun_redoes_only_it(pipeline, monkeypatch):
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    expected = indicator_frame(store)
    original = type(store).replace_indicators
    plan_id = f"rebuild-{REBUILD_FROM}"

    def database_fails_for_chunk_1(self, symbols, start, rows, marker=None, **options):
        if marker is not None and marker.marker_id.endswith(f"{plan_id}/1"):
            raise RuntimeError("connection lost while writing chunk 1")
        return original(self, symbols, start, rows, marker, **options)

    monkeypatch.setattr(type(store), "replace_indicators", database_fails_for_chunk_1)
    assert not pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    assert rebuild_service.failures(store, plan_id)[1]["error"] == "connection lost while writing chunk 1"
    done = {m["marker_id"]: m["completed_at"] for m in store.markers(prefix=f"IndicatorChunk/{plan_id}/")}
    assert sorted(done) == [f"IndicatorChunk/{plan_id}/0", f"IndicatorChunk/{plan_id}/2"]
    # Nothing is missing meanwhile: chunk 1 still has its previous rows.
    assert_same_indicators(indicator_frame(store), expected)

    monkeypatch.setattr(type(store), "replace_indicators", original)
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    after = {m["marker_id"]: m["completed_at"] for m in store.markers(prefix=f"IndicatorChunk/{plan_id}/")}
    assert {k: after[k] for k in done} == done
    report = rebuild_service.final_report(store, plan_id)
    assert report["failed_chunks"] == [{"chunk_id": 1, "error": "connection lost while writing chunk 1", "redone": True}]
    assert_same_indicators(indicator_frame(store), expected)


def test_restore_puts_back_what_a_rebuild_replaced(pipeline):
    from stockpipe.services.rebuild import restore

    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    with store.session() as session:
        session.execute("UPDATE indicators SET rsi_14 = 1.5 WHERE date >= :d", {"d": REBUILD_FROM})
    marked = indicator_frame(store)
    assert pipeline.build(tasks.RebuildFrom(start_date=REBUILD_FROM))
    assert not pc.any(pc.equal(store.read_indicators(start=REBUILD_FROM).column("rsi_14"), 1.5)).as_py()
    result = restore(store, rebuild_service.run_dir(pipeline.store_dir, f"rebuild-{REBUILD_FROM}") / "backup.parquet")
    assert result["rows_restored"] == store.read_indicators(start=REBUILD_FROM).num_rows
    assert_same_indicators(indicator_frame(store), marked, exact=True)
    assert store.markers(prefix=f"IndicatorChunk/rebuild-{REBUILD_FROM}/") == []


def test_collect_symbols_below_minimum_fails_clearly(pipeline):
    pipeline.configure("stockpipe", min_symbols=1000)
    assert not pipeline.build(tasks.CollectSymbols(date=DAY))
    assert pipeline.store.active_symbols() == []
    (failed,) = pipeline.store.query("SELECT error FROM task_runs WHERE task_family = 'CollectSymbols' AND status = 'FAILED'").to_pylist()
    assert "source 'demo' returned 30 symbols" in failed["error"] and "fewer than the minimum 1000 ([stockpipe] min_symbols)" in failed["error"]


def test_the_repositorys_csv_sample_below_min_symbols_says_what_to_set(tmp_path):
    from pathlib import Path

    from stockpipe.services.symbols import TooFewSymbolsError, collect_symbols
    from stockpipe.sources.csv_source import CsvSource
    from stockpipe.store import open_store

    sample = Path(__file__).parent / "samples" / "csv_bars"
    store = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}")
    with pytest.raises(TooFewSymbolsError, match=r"returned 2 symbols .* fewer than the minimum 100 \(\[stockpipe\] "
                                                 r"min_symbols\): refusing it as a possibly truncated universe; if the "
                                                 r"universe really is this small, set min_symbols = 2 or lower"):
        collect_symbols(store, CsvSource(str(sample)), DAY, 100, None)
    assert len(collect_symbols(store, CsvSource(str(sample)), DAY, 2, None)) and len(store.active_symbols()) == 2


def test_warmup_below_exact_minimum_is_refused_before_any_work(pipeline):
    from stockpipe.indicators import WARMUP_BARS

    for refused in (300, WARMUP_BARS - 1):
        pipeline.configure("stockpipe", warmup_bars=refused)
        for make in (lambda: tasks.IngestDate(date=DAY), lambda: tasks.RebuildFrom(start_date=REBUILD_FROM)):
            with pytest.raises(UserError, match=rf"\[stockpipe\] warmup_bars = {refused} is refused: use 0 .* or at least {WARMUP_BARS}"):
                make()
    # The minimum itself and 0 (the whole history) are accepted: the refusal is exactly below it.
    for accepted in (WARMUP_BARS, 0):
        pipeline.configure("stockpipe", warmup_bars=accepted)
        tasks.IngestDate(date=DAY)
    assert not pipeline.store_dir.exists(), "a refused setting must stop every task before it creates anything"


def test_backfill_fetches_history_in_batches_and_bulk_complete_answers_in_one_query(pipeline):
    pipeline.configure("stockpipe", backfill_batch=7)
    assert pipeline.build(tasks.Backfill(start_date=dt.date(2025, 1, 2), end_date=dt.date(2025, 3, 31)))
    store = pipeline.store
    first, last, count = store.bars_extent()
    assert (first, last) == (dt.date(2025, 1, 2), dt.date(2025, 3, 31))
    stats = store.read_marker("Backfill/2025-01-02/2025-03-31")["stats"]
    assert stats["bars_stored"] == count and stats["symbols_requested"] == 30
    assert pipeline.build(tasks.RebuildFrom(start_date=dt.date(2025, 3, 3)))
    plan_id = "rebuild-2025-03-03"
    queried = [(dt.date(2025, 3, 3), plan_id, i) for i in range(5)]
    assert tasks.IndicatorChunk.bulk_complete(queried) == queried[:3]  # 30 symbols / 10 per chunk
