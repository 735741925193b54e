"""Rule semantics on crafted frames: boundaries, ordering, limits, priorities, tiers."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from stockpipe.watchlist.rules import DEFAULT_RULES, Condition, parse_rules, scan

DAY = dt.date(2025, 10, 10)
RULES = parse_rules(DEFAULT_RULES)


def frame(*rows: dict) -> pd.DataFrame:
    base = {"name": "X", "sector": "Tech", "market_cap": 2e9, "open": 100.0, "high": 110.0, "low": 90.0,
            "close": 100.0, "volume": 1000, "rsi_14": 50.0, "bb_lower": 50.0, "bb_upper": 150.0,
            "bb_position": 0.5, "avg_volume_30": 1000.0}
    return pd.DataFrame([{**base, **row} for row in rows])


def reasons(hits: pd.DataFrame) -> dict[str, str]:
    return dict(zip(hits["symbol"], hits["scan_reason"]))


def test_rsi_boundary_is_strict_and_needs_cap_and_volume():
    hits = scan(frame(
        {"symbol": "AT30", "rsi_14": 30.0, "volume": 2000},
        {"symbol": "BELOW", "rsi_14": 29.99, "volume": 2000},
        {"symbol": "SMALL", "rsi_14": 20.0, "volume": 2000, "market_cap": 500e6},
        {"symbol": "QUIET", "rsi_14": 20.0, "volume": 1500},
    ), RULES, DAY)
    assert reasons(hits) == {"BELOW": "rsi_oversold"}


def test_band_touch_includes_exactly_two_percent_above_the_lower_band():
    hits = scan(frame(
        {"symbol": "EXACT", "bb_lower": 100.0, "close": 102.0, "open": 103.0},
        {"symbol": "ABOVE", "bb_lower": 100.0, "close": 102.01, "open": 103.0},
        {"symbol": "SMALLCAP", "bb_lower": 100.0, "close": 95.0, "market_cap": 1e9},
    ), RULES, DAY)
    assert reasons(hits) == {"EXACT": "bollinger_lower_touch"}


def test_breakout_excludes_exactly_two_percent_and_exactly_three_times_volume():
    hits = scan(frame(
        {"symbol": "EXACT2", "open": 100.0, "close": 102.0, "volume": 4000},
        {"symbol": "EXACT3X", "open": 100.0, "close": 105.0, "volume": 3000},
        {"symbol": "GO", "open": 100.0, "close": 102.5, "volume": 3001},
    ), RULES, DAY)
    assert reasons(hits) == {"GO": "high_volume_breakout"}


def test_a_symbol_hit_by_several_rules_keeps_the_highest_priority_and_gets_a_tier():
    hits = scan(frame(
        {"symbol": "BOTH", "rsi_14": 10.0, "volume": 5000, "close": 51.0, "bb_lower": 50.0, "market_cap": 60e9},
        {"symbol": "MID", "close": 51.0, "bb_lower": 50.0, "market_cap": 10e9},
        {"symbol": "SMALL", "close": 51.0, "bb_lower": 50.0, "market_cap": 9.99e9},
    ), RULES, DAY)
    rows = hits.set_index("symbol")
    assert rows.loc["BOTH", "scan_reason"] == "rsi_oversold" and rows.loc["BOTH", "priority"] == 1
    assert list(rows["market_cap_tier"]) == [1, 2, 3]
    assert rows.loc["BOTH", "volume_ratio"] == 5.0
    assert (hits["scan_date"] == DAY).all()


def test_order_and_limit_follow_the_rule():
    rows = [{"symbol": f"S{i:02d}", "rsi_14": 10.0, "volume": 5000, "market_cap": 1e9 * (i + 1)} for i in range(25)]
    hits = scan(frame(*rows), RULES, DAY)
    oversold = hits[hits["scan_reason"] == "rsi_oversold"]
    assert len(oversold) == 20
    assert list(oversold["symbol"]) == [f"S{i:02d}" for i in range(24, 4, -1)]  # largest cap first


def test_lower_band_orders_furthest_below_first():
    hits = scan(frame(
        {"symbol": "NEAR", "bb_lower": 100.0, "close": 101.0},
        {"symbol": "FAR", "bb_lower": 100.0, "close": 90.0},
        {"symbol": "MID", "bb_lower": 100.0, "close": 99.0},
    ), RULES, DAY)
    assert list(hits["symbol"]) == ["FAR", "MID", "NEAR"]


def test_missing_average_volume_never_counts_as_a_spike():
    hits = scan(frame({"symbol": "NEW", "rsi_14": 10.0, "volume": 5000, "avg_volume_30": float("nan"),
                       "open": 100, "close": 110}), RULES, DAY)
    assert hits.empty


def test_rules_are_configurable_data_and_bad_ones_are_named():
    custom = parse_rules([{"name": "cheap", "priority": 1, "limit": 5, "order_by": "close asc", "conditions": ["close < 10"]}])
    assert list(scan(frame({"symbol": "A", "close": 9.0}, {"symbol": "B", "close": 11.0}), custom, DAY)["symbol"]) == ["A"]
    with pytest.raises(ValueError, match="'close <<< 3'"):
        Condition.parse("close <<< 3")
    with pytest.raises(ValueError, match="unknown column.*eps"):
        scan(frame({"symbol": "A"}), parse_rules([{"name": "x", "priority": 1, "limit": 1, "order_by": "close",
                                                   "conditions": ["eps > 1"]}]), DAY)
