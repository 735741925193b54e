"""The benchmark judges each figure against issue 12's goals: relative goals at any size, absolute
ones (seconds, memory) only at the reference size they were set for."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from goals import judge  # noqa: E402


def figure(job, store, workers, seconds, peak_mb=100.0, engine="numpy"):
    return {"job": job, "store": store, "engine": engine, "workers": workers, "seconds": seconds, "peak_mb": peak_mb}


def test_more_workers_must_not_be_slower_and_on_postgres_faster():
    rows = [figure("rebuild_13", "duckdb", 1, 3.0), figure("rebuild_13", "duckdb", 2, 3.0),
            figure("rebuild_13", "postgres", 1, 3.0), figure("rebuild_13", "postgres", 2, 3.0)]
    judge(rows, tickers=200, years=2)
    assert [r["met"] for r in rows] == [None, True, None, False]
    assert rows[1]["goal"] == "≤ workers 1, ≤ 3 s"
    assert rows[3]["goal"].startswith("< workers 1")


def test_absolute_goals_are_judged_only_at_the_reference_size():
    rows = [figure("daily", "postgres", 1, 12.0, peak_mb=900)]
    judge(rows, tickers=200, years=2)
    assert rows[0]["met"] is None
    judge(rows, tickers=2500, years=10)
    assert rows[0]["met"] is False
    rows = [figure("daily", "postgres", 1, 9.0, peak_mb=700)]
    judge(rows, tickers=2500, years=10)
    assert rows[0]["met"] is True


def test_full_rebuild_against_the_raw_floor_and_store_growth():
    rows = [figure("floor", "duckdb", None, 5.0), figure("full_fresh", "duckdb", 1, 9.0),
            figure("full_fresh", "duckdb", 2, 11.0),
            {"job": "size", "store": "postgres", "engine": "numpy", "workers": 1, "sizes_mb": [100.0, 130.0]}]
    judge(rows, tickers=200, years=2)
    assert rows[0]["met"] is None and rows[1]["met"] is None  # no goal for the floor, none for 1 worker on DuckDB
    assert rows[2]["goal"] == "≤ workers 1, ≤ 2× floor" and rows[2]["met"] is False
    assert rows[3]["met"] is False
