"""Rule semantics on crafted frames: boundaries, ordering, limits, priorities, tiers."""

from __future__ import annotations

import datetime as dt
import re

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


# -- the old system's queries as the independent reference ----------------------------------------
import duckdb  # noqa: E402
import numpy as np  # noqa: E402

from stockpipe import config  # noqa: E402
from stockpipe.store.base import translate_placeholders  # noqa: E402
from stockpipe.watchlist.expressions import parse_condition, parse_expression  # noqa: E402
from stockpipe.watchlist.rules import ALTERNATIVE_RULES, RULE_COLUMNS  # noqa: E402
from tests.watchlist.old_queries import OLD_QUERIES, PRIORITY, with_tiebreak  # noqa: E402


def old_system(frame: pd.DataFrame, queries: dict[str, str] | None = None) -> tuple[dict[str, list[str]], list[tuple]]:
    """The frame loaded into the old schema in DuckDB and the old SQL run over it: each query's picks,
    then the priority dedupe and tiers as the old DAG did them."""
    queries = queries or {name: with_tiebreak(sql) for name, sql in OLD_QUERIES.items()}
    con = duckdb.connect()
    try:
        f = frame.assign(date=DAY)
        con.register("f", f)
        con.execute("CREATE TABLE nasdaq_symbols AS SELECT symbol, name, sector, market_cap, avg_volume_30 FROM f")
        con.execute("CREATE TABLE stock_data AS SELECT symbol AS ticker, date, open, close, CAST(volume AS BIGINT) AS volume FROM f")
        con.execute("CREATE TABLE technical_indicators AS SELECT symbol AS ticker, date, rsi_14, bb_lower FROM f")
        picks = {name: [r[0] for r in con.execute(translate_placeholders(sql, "dollar"), {"scan_date": DAY}).fetchall()]
                 for name, sql in queries.items()}
        kept, seen = [], set()
        for name in sorted(picks, key=lambda n: PRIORITY.get(n, 2)):
            for symbol in picks[name]:
                if symbol not in seen:
                    seen.add(symbol)
                    cap = con.execute("SELECT CASE WHEN market_cap >= 50e9 THEN 1 WHEN market_cap >= 10e9 THEN 2 "
                                      "ELSE 3 END FROM nasdaq_symbols WHERE symbol = $s", {"s": symbol}).fetchone()[0]
                    kept.append((symbol, name, PRIORITY.get(name, 2), cap))
        return picks, kept
    finally:
        con.close()


def random_frame(seed: int, n: int = 160) -> pd.DataFrame:
    """Values from coarse grids, so ties, exact boundaries (30, 1.02x, 3x) and NULLs are common."""
    rng = np.random.default_rng(seed)

    def pick(values, nulls=0.0):
        out = rng.choice(np.asarray(values, dtype=float), n)
        out[rng.random(n) < nulls] = np.nan
        return out

    open_ = pick([10.0, 20.0, 50.0, 100.0])
    bb_lower = open_ * pick([0.9, 0.98, 1.0, 1.05]) * np.where(rng.random(n) < 0.1, np.nan, 1.0)
    close = open_ * pick([0.9, 0.95, 1.0, 1.02, 1.021, 1.05])
    return pd.DataFrame({
        "symbol": [f"S{i:03d}" for i in rng.permutation(n)],
        "name": "X", "sector": "Tech",
        "market_cap": pick([4e8, 5e8, 5e8 + 1, 1e9, 2e9, 1e10, 5e10, 9e10], nulls=0.05),
        "open": open_, "high": np.fmax(open_, close) * 1.01, "low": np.fmin(open_, close) * 0.99, "close": close,
        "volume": rng.choice([0, 1000, 1500, 1501, 3000, 3001, 10000], n).astype("int64"),
        "avg_volume_30": pick([0.0, 1000.0, 2000.0], nulls=0.1),
        "rsi_14": pick([10.0, 25.0, 29.99, 30.0, 70.0], nulls=0.1),
        "bb_lower": bb_lower, "bb_position": 0.5,
    })


@pytest.mark.parametrize("seed", range(25))
def test_built_in_rules_are_the_old_queries_exactly_on_frames_with_ties_and_nulls(seed):
    frame = random_frame(seed)
    picks, kept = old_system(frame)
    for rule in RULES:
        assert list(rule.hits(frame)["symbol"]) == picks[rule.name], rule.name
    hits = scan(frame, RULES, DAY)
    assert list(zip(hits["symbol"], hits["scan_reason"], hits["priority"], hits["market_cap_tier"])) == kept
    assert sum(len(p) for p in picks.values()) > len(kept) > 0  # some symbols were hit twice


def test_ties_are_broken_by_symbol_ascending_including_at_the_limit():
    rows = [{"symbol": s, "rsi_14": 10.0, "volume": 5000, "market_cap": 2e9} for s in ("ZED", "ABC", "MID")]
    rows += [{"symbol": f"Q{i:02d}", "rsi_14": 10.0, "volume": 5000, "market_cap": 1e9} for i in range(20, 0, -1)]
    hits = scan(frame(*rows), RULES, DAY)
    oversold = list(hits[hits["scan_reason"] == "rsi_oversold"]["symbol"])
    assert oversold == ["ABC", "MID", "ZED"] + [f"Q{i:02d}" for i in range(1, 18)]  # Q18..Q20 beyond the limit
    assert oversold == old_system(frame(*rows))[0]["rsi_oversold"]


def test_nulls_never_satisfy_a_condition_and_sort_last_either_way():
    crafted = frame(
        {"symbol": "NORSI", "rsi_14": float("nan"), "volume": 5000},
        {"symbol": "NOBAND", "bb_lower": float("nan"), "close": 1.0},
        {"symbol": "NOCAP", "market_cap": float("nan"), "rsi_14": 10.0, "volume": 5000, "bb_lower": 200.0},
    )
    assert scan(crafted, RULES, DAY).empty
    assert old_system(crafted)[1] == []
    different = parse_rules([{"name": "ne", "priority": 1, "limit": 9, "order_by": "rsi_14", "conditions": ["rsi_14 != 50"]}])
    assert list(scan(frame({"symbol": "A", "rsi_14": float("nan")}, {"symbol": "B", "rsi_14": 10.0}), different, DAY)["symbol"]) == ["B"]
    for direction in ("asc", "desc"):
        everyone = parse_rules([{"name": "all", "priority": 1, "limit": 9, "order_by": f"rsi_14 {direction}", "conditions": []}])
        ordered = list(scan(frame({"symbol": "N", "rsi_14": float("nan")}, {"symbol": "A", "rsi_14": 10.0},
                                  {"symbol": "B", "rsi_14": 20.0}), everyone, DAY)["symbol"])
        assert ordered == (["A", "B", "N"] if direction == "asc" else ["B", "A", "N"])


def test_band_touch_ranks_by_price_distance_and_the_relative_order_is_an_alternative():
    crafted = frame(
        {"symbol": "CHEAP", "bb_lower": 10.0, "close": 9.0},  # 10% below, $1
        {"symbol": "DEAR", "bb_lower": 500.0, "close": 495.0, "open": 500.0},  # 1% below, $5
        {"symbol": "TIE", "bb_lower": 500.0, "close": 495.0, "open": 500.0},
    )
    assert list(scan(crafted, RULES, DAY)["symbol"]) == ["DEAR", "TIE", "CHEAP"]
    relative = parse_rules([ALTERNATIVE_RULES["bollinger_lower_touch_relative"]])
    assert list(scan(crafted, relative, DAY)["symbol"]) == ["CHEAP", "DEAR", "TIE"]
    sql = with_tiebreak(OLD_QUERIES["bollinger_lower_touch"].replace("ORDER BY (t.bb_lower - d.close) DESC", "ORDER BY d.close / t.bb_lower ASC"))
    for seed in range(10):
        random = random_frame(seed)
        picks, _ = old_system(random, {"bollinger_lower_touch_relative": sql})
        assert list(relative[0].hits(random)["symbol"]) == picks["bollinger_lower_touch_relative"]


def test_expressions_follow_arithmetic_precedence_and_sql_nulls():
    f = pd.DataFrame({"close": [10.0, 4.0, np.nan, 5.0], "open": [4.0, 0.0, 1.0, 0.0], "volume": [1, 2, 3, 0]})
    columns = ("close", "open", "volume")
    np.testing.assert_array_equal(parse_expression("close - open * 2", columns).evaluate(f), [2.0, 4.0, np.nan, 5.0])
    np.testing.assert_array_equal(parse_expression("(close - open) * 2", columns).evaluate(f), [12.0, 8.0, np.nan, 10.0])
    np.testing.assert_array_equal(parse_expression("-close / -2 + 1", columns).evaluate(f), [6.0, 3.0, np.nan, 3.5])
    np.testing.assert_array_equal(parse_expression("close / open", columns).evaluate(f), [2.5, np.inf, np.nan, np.inf])
    np.testing.assert_array_equal(parse_expression("volume / open", columns).evaluate(f), [0.25, np.inf, 3.0, np.nan])
    assert list(parse_condition("close / open - 1 = 1.5", columns).evaluate(f)) == [True, False, False, False]
    assert list(parse_condition("close != 10", columns).evaluate(f)) == [False, True, False, True]
    assert list(parse_condition("close <> 10", columns).evaluate(f)) == [False, True, False, True]
    assert list(parse_condition("2e0 * open >= close - 2", columns).evaluate(f)) == [True, False, False, False]


@pytest.mark.parametrize("change, message", [
    ({"limit": -2}, "rule 'r': 'limit' must be a whole number >= 1, got -2"),
    ({"limit": 2.5}, "rule 'r': 'limit' must be a whole number >= 1"),
    ({"priority": "1"}, "rule 'r': 'priority' must be a whole number"),
    ({"orderby": "close"}, "rule 'r': unknown key(s) 'orderby'"),
    ({"order_by": "market_cap down"}, "rule 'r': order_by 'market_cap down': expected an operator (+ - * /) or the end but found 'down'"),
    ({"order_by": ""}, "rule 'r': order_by ''"),
    ({"conditions": ["close >> 3"]}, "rule 'r': condition 'close >> 3': expected a number, a column or '(' but found '>' at column 8"),
    ({"conditions": ["eps > 1"]}, "rule 'r': condition 'eps > 1': unknown column 'eps'"),
    ({"conditions": ["close > 3; DROP TABLE bars"]}, "rule 'r': condition 'close > 3; DROP TABLE bars': unknown token ';'"),
    ({"conditions": ["__import__('os') > 1"]}, "unknown token \"'os')\" at column 12"),
    ({"conditions": ["__class__ > 1"]}, "unknown column '__class__'"),
    ({"conditions": ["close"]}, "expected a comparison (< <= > >= = !=) but found the end"),
    ({"conditions": ["close < 1 < 2"]}, "expected an operator (+ - * /) or the end but found '<'"),
    ({"conditions": "close > 1"}, "rule 'r': 'conditions' must be a list"),
    ({"conditions": [3]}, "rule 'r': condition 3: condition 3 is not a string"),
])
def test_bad_rules_are_refused_in_one_line_naming_the_rule_and_the_token(change, message):
    rule = {"name": "r", "priority": 1, "limit": 3, "order_by": "close", "conditions": ["close > 1"], **change}
    with pytest.raises(ValueError) as error:
        parse_rules([rule])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("watchlist rule 'r': ")


def test_rules_config_is_validated_when_loaded(monkeypatch):
    section = luigi_config()
    assert [r.name for r in config.watchlist().parsed_rules()] == ["rsi_oversold", "bollinger_lower_touch", "high_volume_breakout"]
    section.set("watchlist", "rules", '[{"name": "big", "priority": 1, "limit": 2, "order_by": "market_cap descending", "conditions": []}]')
    [rule] = config.watchlist().parsed_rules()
    hits = scan(frame({"symbol": "A", "market_cap": 1e9}, {"symbol": "B", "market_cap": 3e9}, {"symbol": "C", "market_cap": 2e9}), [rule], DAY)
    assert list(hits["symbol"]) == ["B", "C"]  # descending, not silently ascending
    for bad, named in (('{"name": "x"}', "must be a JSON list"), ('[{"name": "x"}]', "watchlist rule 'x': lacks"),
                       ('[1]', "watchlist rule #1 is not a JSON object"), ("[", "not valid JSON"),
                       ('[{"priority": 1, "limit": 1, "order_by": "close", "conditions": [], "nam": "y"}]', "rule #1: unknown key(s) 'nam'")):
        section.set("watchlist", "rules", bad)
        with pytest.raises(ValueError, match=re.escape(named)):
            config.watchlist().parsed_rules()


def luigi_config():
    import luigi.configuration

    section = luigi.configuration.get_config()
    if not section.has_section("watchlist"):
        section.add_section("watchlist")
    section.set("watchlist", "rules", "")
    return section


@pytest.mark.both_stores
def test_every_rule_column_is_in_the_stores_scan_frame(store):
    frame = store.scan_frame(DAY)
    assert set(RULE_COLUMNS) <= set(frame.column_names)
