"""Watchlist rules are data: a rule is conditions, an order, a limit and a priority, evaluated over
one date's frame of bars, indicators and symbols. No SQL is pasted per rule: conditions and orderings
are parsed by `expressions` into trees over the known columns and evaluated with numpy.

The built-in rules are the old system's three queries, exactly (see README "Watchlist rules"):

    WHERE t.rsi_14 < 30 AND s.market_cap > 500000000 AND d.volume > s.avg_volume_30 * 1.5
    ORDER BY s.market_cap DESC LIMIT 20
    WHERE d.close <= t.bb_lower * 1.02 AND s.market_cap > 1000000000
    ORDER BY (t.bb_lower - d.close) DESC LIMIT 15
    WHERE d.volume > s.avg_volume_30 * 3 AND d.close > d.open * 1.02
    ORDER BY d.volume / s.avg_volume_30 DESC LIMIT 10

Ties in an ordering are broken by symbol ascending (the old queries left them to the database), and
NULL order keys come last in either direction (DuckDB's default), so a scan is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from stockpipe.indicators.spec import INDICATOR_COLUMNS
from stockpipe.watchlist.expressions import ExpressionError, Node, parse_condition, parse_expression

if TYPE_CHECKING:
    import pandas as pd  # imported where a scan runs: parsing rules (every task module) needs no pandas

# Numeric columns of the scan frame (Store.scan_frame) a rule may use.
RULE_COLUMNS: tuple[str, ...] = ("market_cap", "open", "high", "low", "close", "volume", *INDICATOR_COLUMNS)

# Names kept from the first rule format, now shorthands for their expressions.
MACROS: dict[str, Node] = {
    "volume_ratio": parse_expression("volume / avg_volume_30", RULE_COLUMNS),
    "band_ratio": parse_expression("close / bb_lower", RULE_COLUMNS),
}

_DIRECTIONS = {"asc": False, "ascending": False, "desc": True, "descending": True}
_REQUIRED_KEYS = ("name", "priority", "conditions", "order_by", "limit")
_OPTIONAL_KEYS = ("description",)


@dataclass(frozen=True)
class Condition:
    text: str
    tree: Node

    @classmethod
    def parse(cls, text: str) -> "Condition":
        if not isinstance(text, str):
            raise ExpressionError(f"condition {text!r} is not a string such as \"volume > avg_volume_30 * 1.5\"")
        return cls(text.strip(), parse_condition(text, RULE_COLUMNS, MACROS))

    def columns(self) -> set[str]:
        return self.tree.columns()

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        return self.tree.evaluate(frame)


@dataclass(frozen=True)
class OrderKey:
    text: str
    tree: Node
    descending: bool

    @classmethod
    def parse(cls, text: str) -> "OrderKey":
        words = text.split()
        descending = False
        if len(words) > 1 and words[-1].lower() in _DIRECTIONS:
            descending = _DIRECTIONS[words[-1].lower()]
            text = text.rstrip()[: -len(words[-1])]
        try:
            tree = parse_expression(text, RULE_COLUMNS, MACROS)
        except ExpressionError as exc:
            raise ExpressionError(f"{exc} (an ordering is an expression, then asc, desc, ascending or descending)") from None
        return cls(text.strip(), tree, descending)


def parse_order_by(text: Any) -> tuple[OrderKey, ...]:
    """`"bb_lower - close desc"`, or several keys separated by commas; ascending unless said."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"order_by {text!r} is not a string such as \"market_cap desc\"")
    return tuple(OrderKey.parse(part) for part in text.split(","))


@dataclass(frozen=True)
class Rule:
    name: str
    priority: int
    conditions: tuple[Condition, ...]
    order: tuple[OrderKey, ...]
    limit: int
    description: str = ""

    @classmethod
    def from_dict(cls, data: Any, position: int = 1) -> "Rule":
        """A rule from its JSON object; every error is one line naming the rule."""
        if not isinstance(data, dict):
            raise ValueError(f"watchlist rule #{position} is not a JSON object: {json.dumps(data, default=str)[:80]}")
        label = repr(data["name"]) if isinstance(data.get("name"), str) and data["name"].strip() else f"#{position}"

        def refuse(message: str) -> ValueError:
            return ValueError(f"watchlist rule {label}: {message}")

        unknown = sorted(set(data) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            raise refuse(f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)})")
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise refuse(f"lacks {', '.join(map(repr, missing))}")
        name = data["name"]
        if not isinstance(name, str) or not name.strip():
            raise refuse(f"'name' must be a non-empty string, got {name!r}")
        priority, limit = data["priority"], data["limit"]
        if not _is_int(priority):
            raise refuse(f"'priority' must be a whole number (1 is the highest), got {priority!r}")
        if not _is_int(limit) or limit < 1:
            raise refuse(f"'limit' must be a whole number >= 1, got {limit!r}")
        conditions = data["conditions"]
        if not isinstance(conditions, list):
            raise refuse(f"'conditions' must be a list of strings such as [\"rsi_14 < 30\"], got {conditions!r}")
        parsed = []
        for text in conditions:
            try:
                parsed.append(Condition.parse(text))
            except ExpressionError as exc:
                raise refuse(f"condition {text!r}: {exc}") from None
        try:
            order = parse_order_by(data["order_by"])
        except ExpressionError as exc:
            raise refuse(f"order_by {data['order_by']!r}: {exc}") from None
        description = data.get("description", "")
        if not isinstance(description, str):
            raise refuse(f"'description' must be a string, got {description!r}")
        return cls(name.strip(), int(priority), tuple(parsed), order, int(limit), description)

    def columns(self) -> set[str]:
        found = set()
        for part in (*self.conditions, *self.order):
            found |= part.tree.columns()
        return found

    def hits(self, frame: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        mask = np.ones(len(frame), dtype=bool)
        for condition in self.conditions:
            mask &= condition.mask(frame)
        chosen = frame[mask]
        keys = pd.DataFrame({f"_key{i}": key.tree.evaluate(chosen) for i, key in enumerate(self.order)}, index=chosen.index)
        keys["_symbol"] = chosen["symbol"]
        ordered = keys.sort_values(
            list(keys.columns), ascending=[not key.descending for key in self.order] + [True],
            na_position="last", kind="stable",
        )
        chosen = chosen.loc[ordered.index[: self.limit]].copy()
        chosen["scan_reason"] = self.name
        chosen["priority"] = self.priority
        chosen["rank"] = np.arange(1, len(chosen) + 1)
        return chosen


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The old system's queries, term for term (module docstring).
DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"name": "rsi_oversold", "priority": 1, "limit": 20, "order_by": "market_cap desc",
     "conditions": ["rsi_14 < 30", "market_cap > 500000000", "volume > avg_volume_30 * 1.5"]},
    {"name": "bollinger_lower_touch", "priority": 2, "limit": 15, "order_by": "bb_lower - close desc",
     "conditions": ["close <= bb_lower * 1.02", "market_cap > 1000000000"]},
    {"name": "high_volume_breakout", "priority": 3, "limit": 10, "order_by": "volume / avg_volume_30 desc",
     "conditions": ["volume > avg_volume_30 * 3", "close > open * 1.02"]},
)

# Documented alternatives to paste into [watchlist] rules in place of a built-in rule.
ALTERNATIVE_RULES: dict[str, dict[str, Any]] = {
    # stockpipe's first ordering: relative distance below the band (a $10 stock 5% below ranks above
    # a $500 stock 1% below), where the old system ranked by distance in price units.
    "bollinger_lower_touch_relative": {
        "name": "bollinger_lower_touch_relative", "priority": 2, "limit": 15, "order_by": "close / bb_lower asc",
        "conditions": ["close <= bb_lower * 1.02", "market_cap > 1000000000"],
        "description": "bollinger_lower_touch ranked by close / bb_lower, furthest below the band in percent first",
    },
}


def parse_rules(data: Any) -> list[Rule]:
    """Every rule of a JSON list, validated; the first error is raised as a one-line ValueError."""
    if isinstance(data, dict) or not isinstance(data, (list, tuple)):
        raise ValueError(f"watchlist rules must be a JSON list of rule objects, got {type(data).__name__}")
    rules = [Rule.from_dict(d, i) for i, d in enumerate(data, 1)]
    names = [r.name for r in rules]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"watchlist rule name(s) repeat: {', '.join(repeated)}")
    return rules


def market_cap_tier(market_cap: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.Series(np.select([market_cap >= 50e9, market_cap >= 10e9], [1, 2], 3), index=market_cap.index)


WATCHLIST_COLUMNS = ["scan_date", "symbol", "name", "sector", "market_cap", "market_cap_tier", "scan_reason",
                     "priority", "close", "volume", "rsi_14", "bb_position", "volume_ratio"]


def scan(frame: pd.DataFrame, rules: Sequence[Rule], scan_date) -> pd.DataFrame:
    """Hits of every rule (each limited on its own); a symbol hit by several keeps its
    highest-priority (lowest number) hit, the rule listed first on equal priorities."""
    import pandas as pd

    for rule in rules:
        missing = rule.columns() - set(frame.columns)
        if missing:
            raise ValueError(f"watchlist rule {rule.name!r} uses column(s) the scan frame lacks: {', '.join(sorted(missing))}")
    hits = [h for h in (rule.hits(frame) for rule in rules) if len(h)]
    if not hits:
        return pd.DataFrame(columns=WATCHLIST_COLUMNS)
    for order, h in enumerate(hits):
        h["_rule_order"] = order
    combined = pd.concat(hits).sort_values(["priority", "_rule_order", "rank"], kind="stable")
    best = combined.drop_duplicates("symbol", keep="first").copy()
    best["scan_date"] = scan_date
    best["market_cap_tier"] = market_cap_tier(best["market_cap"]).astype("int32")
    best["priority"] = best["priority"].astype("int32")
    with np.errstate(divide="ignore", invalid="ignore"):
        best["volume_ratio"] = best["volume"].astype("float64") / best["avg_volume_30"].astype("float64")
    return best[WATCHLIST_COLUMNS].reset_index(drop=True)

