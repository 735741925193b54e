"""Watchlist rules are data: a rule is conditions, an order, a limit and a priority, evaluated over
one date's frame of bars, indicators and symbols. No SQL is pasted per rule.

A condition is written `left op right`, where each side is a column or a number, optionally scaled:
`rsi_14 < 30`, `market_cap > 500e6`, `volume > 1.5 * avg_volume_30`, `close <= bb_lower * 1.02`.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = rf"(?:(?P<{{n}}f1>{_NUMBER})\s*\*\s*)?(?P<{{n}}v>[A-Za-z_]\w*|{_NUMBER})(?:\s*\*\s*(?P<{{n}}f2>{_NUMBER}))?"
_CONDITION = re.compile(
    r"^\s*" + _TERM.format(n="l") + r"\s*(?P<op><=|>=|==|<|>)\s*" + _TERM.format(n="r") + r"\s*$"
)

# Columns a rule may use besides the frame's own: derived once per scan.
DERIVED = {
    "volume_ratio": lambda f: f["volume"] / f["avg_volume_30"],
    "band_ratio": lambda f: f["close"] / f["bb_lower"],
}


@dataclass(frozen=True)
class Term:
    name: str | None  # a column, or None for a constant
    factor: float = 1.0

    def values(self, frame: pd.DataFrame) -> Any:
        if self.name is None:
            return self.factor
        return frame[self.name].astype("float64") * self.factor


@dataclass(frozen=True)
class Condition:
    left: Term
    op: str
    right: Term
    text: str

    @classmethod
    def parse(cls, text: str) -> "Condition":
        match = _CONDITION.match(text)
        if not match:
            raise ValueError(f"watchlist condition {text!r} is not `left op right` (e.g. `volume > 1.5 * avg_volume_30`)")
        return cls(_term(match, "l"), match["op"], _term(match, "r"), text.strip())

    def columns(self) -> set[str]:
        return {t.name for t in (self.left, self.right) if t.name}

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        result = _OPERATORS[self.op](self.left.values(frame), self.right.values(frame))
        return pd.Series(result, index=frame.index).fillna(False).astype(bool)


def _term(match: re.Match, side: str) -> Term:
    value = match[f"{side}v"]
    factor = float(match[f"{side}f1"] or 1.0) * float(match[f"{side}f2"] or 1.0)
    if re.fullmatch(_NUMBER, value):
        return Term(None, float(value) * factor)
    return Term(value, factor)


@dataclass(frozen=True)
class Rule:
    name: str
    priority: int
    conditions: tuple[Condition, ...]
    order_by: str
    descending: bool
    limit: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Rule":
        try:
            order = str(data["order_by"]).split()
            return cls(
                name=str(data["name"]),
                priority=int(data["priority"]),
                conditions=tuple(Condition.parse(c) for c in data["conditions"]),
                order_by=order[0],
                descending=len(order) > 1 and order[1].lower() == "desc",
                limit=int(data["limit"]),
            )
        except KeyError as exc:
            raise ValueError(f"watchlist rule {data.get('name', data)!r} lacks {exc.args[0]!r}") from exc

    def hits(self, frame: pd.DataFrame) -> pd.DataFrame:
        mask = pd.Series(True, index=frame.index)
        for condition in self.conditions:
            mask &= condition.mask(frame)
        chosen = frame[mask].sort_values([self.order_by, "symbol"], ascending=[not self.descending, True], kind="stable")
        chosen = chosen.head(self.limit).copy()
        chosen["scan_reason"] = self.name
        chosen["priority"] = self.priority
        chosen["rank"] = np.arange(1, len(chosen) + 1)
        return chosen


DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"name": "rsi_oversold", "priority": 1, "limit": 20, "order_by": "market_cap desc",
     "conditions": ["rsi_14 < 30", "market_cap > 500e6", "volume > 1.5 * avg_volume_30"]},
    {"name": "bollinger_lower_touch", "priority": 2, "limit": 15, "order_by": "band_ratio asc",
     "conditions": ["close <= bb_lower * 1.02", "market_cap > 1e9"]},
    {"name": "high_volume_breakout", "priority": 3, "limit": 10, "order_by": "volume_ratio desc",
     "conditions": ["volume > 3 * avg_volume_30", "close > open * 1.02"]},
)


def parse_rules(data: Iterable[dict[str, Any]]) -> list[Rule]:
    rules = [Rule.from_dict(d) for d in data]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"watchlist rule names repeat: {names}")
    return rules


def market_cap_tier(market_cap: pd.Series) -> pd.Series:
    return pd.Series(np.select([market_cap >= 50e9, market_cap >= 10e9], [1, 2], 3), index=market_cap.index)


WATCHLIST_COLUMNS = ["scan_date", "symbol", "name", "sector", "market_cap", "market_cap_tier", "scan_reason",
                     "priority", "close", "volume", "rsi_14", "bb_position", "volume_ratio"]


def scan(frame: pd.DataFrame, rules: Sequence[Rule], scan_date) -> pd.DataFrame:
    """Hits of every rule; a symbol hit by several keeps its highest-priority (lowest number) hit."""
    frame = frame.copy()
    for name, derive in DERIVED.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            frame[name] = derive(frame)
    missing = {c for r in rules for cond in r.conditions for c in cond.columns()} - set(frame.columns)
    missing |= {r.order_by for r in rules} - set(frame.columns)
    if missing:
        raise ValueError(f"watchlist rules use unknown column(s): {', '.join(sorted(missing))}")
    hits = [rule.hits(frame) for rule in rules]
    hits = [h for h in hits if len(h)]
    if not hits:
        return pd.DataFrame(columns=WATCHLIST_COLUMNS)
    combined = pd.concat(hits).sort_values(["priority", "rank"], kind="stable")
    best = combined.drop_duplicates("symbol", keep="first").copy()
    best["scan_date"] = scan_date
    best["market_cap_tier"] = market_cap_tier(best["market_cap"]).astype("int32")
    best["priority"] = best["priority"].astype("int32")
    return best[WATCHLIST_COLUMNS].reset_index(drop=True)
