"""The goals of issue 12 beside each figure, and whether a figure meets them.

Absolute goals are for the reference size, 2,500 demo symbols x 10 years on the 2-core machine; on
another size they are printed but not judged. Relative goals (against 1 worker, against the raw
floor, against the size after the first rebuild) are judged at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

REFERENCE = {"tickers": 2500, "years": 10}


@dataclass(frozen=True)
class Goal:
    text: str
    met: Callable[[dict[str, Any], "Figures"], bool | None]
    absolute: bool = True
    from_workers: int = 1  # the issue sets some goals only for the runs with more workers


class Figures:
    """All rows of one benchmark, to look up the figure a relative goal compares with."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def find(self, job: str, store: str, engine: str | None = None,
             workers: int | None = None) -> dict[str, Any] | None:
        for found in self.rows:
            if found["job"] == job and found["store"] == store and engine in (None, found["engine"]) \
                    and workers in (None, found["workers"]):
                return found
        return None


def at_most_seconds(limit: float, from_workers: int = 1) -> Goal:
    return Goal(f"≤ {limit:g} s", lambda r, _: r["seconds"] <= limit, from_workers=from_workers)


def at_most_mb(limit: float) -> Goal:
    text = f"≤ {limit / 1000:g} GB" if limit >= 1000 else f"≤ {limit:g} MB"
    return Goal(text, lambda r, _: r["peak_mb"] <= limit)


def _one_worker(r: dict[str, Any], figures: Figures) -> dict[str, Any] | None:
    return figures.find(r["job"], r["store"], r["engine"], 1) if r["workers"] and r["workers"] > 1 else None


def not_slower_than_one_worker() -> Goal:
    def met(r, figures):
        one = _one_worker(r, figures)
        return None if one is None else r["seconds"] <= one["seconds"]
    return Goal("≤ workers 1", met, absolute=False)


def faster_than_one_worker() -> Goal:
    def met(r, figures):
        one = _one_worker(r, figures)
        return None if one is None else r["seconds"] < one["seconds"]
    return Goal("< workers 1", met, absolute=False)


def within_floor(factor: float, from_workers: int = 1) -> Goal:
    def met(r, figures):
        floor = figures.find("floor", r["store"])
        return None if floor is None else r["seconds"] <= factor * floor["seconds"]
    return Goal(f"≤ {factor:g}× floor", met, absolute=False, from_workers=from_workers)


def no_bloat(factor: float) -> Goal:
    def met(r, _):
        backups = r.get("backup_mb") or [0] * len(r["sizes_mb"])
        return r["sizes_mb"][-1] - backups[-1] <= factor * (r["sizes_mb"][0] - backups[0])
    return Goal(f"last ≤ {factor:g}× first, less the one backup table kept (no unbounded bloat)", met, absolute=False)


FULL = {"duckdb": [within_floor(2, from_workers=2)], "postgres": [at_most_seconds(22), at_most_mb(1500)]}
GOALS: dict[tuple[str, str], list[Goal]] = {
    ("rebuild_13", "duckdb"): [at_most_seconds(3, from_workers=2)],
    ("rebuild_13", "postgres"): [at_most_seconds(4)],
    ("full_fresh", "duckdb"): FULL["duckdb"],
    ("full_fresh", "postgres"): FULL["postgres"],
    ("full_replacing", "duckdb"): FULL["duckdb"],
    ("full_replacing", "postgres"): FULL["postgres"],
    ("daily", "duckdb"): [at_most_seconds(4), at_most_mb(800)],
    ("daily", "postgres"): [at_most_seconds(10), at_most_mb(800)],
    ("size", "duckdb"): [no_bloat(1.2)],
    ("size", "postgres"): [no_bloat(1.2)],
}
# Must hold 1: more workers are never slower, and on PostgreSQL (several writers) faster.
MORE_WORKERS = {"duckdb": not_slower_than_one_worker(), "postgres": faster_than_one_worker()}
WORKER_JOBS = {"rebuild_13", "full_fresh", "full_replacing", "daily"}


def goals_of(r: dict[str, Any]) -> list[Goal]:
    goals = [g for g in GOALS.get((r["job"], r["store"]), []) if (r["workers"] or 1) >= g.from_workers]
    if r["job"] in WORKER_JOBS and r["workers"] and r["workers"] > 1:
        goals.insert(0, MORE_WORKERS[r["store"]])
    return goals


def judge(rows: list[dict[str, Any]], tickers: int, years: int) -> None:
    """Add to each row its goal (text) and whether it is met: True, False, or None (not judged)."""
    figures = Figures(rows)
    reference = {"tickers": tickers, "years": years} == REFERENCE
    for r in rows:
        goals = goals_of(r)
        verdicts = [g.met(r, figures) if reference or not g.absolute else None for g in goals]
        r["goal"] = ", ".join(g.text for g in goals)
        judged = [v for v in verdicts if v is not None]
        r["met"] = all(judged) if judged else None
