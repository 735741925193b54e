"""Watchlist rules as data, and the scan that applies them to one date's frame."""

from stockpipe.watchlist.rules import DEFAULT_RULES, Condition, Rule, parse_rules, scan

__all__ = ["Condition", "DEFAULT_RULES", "Rule", "parse_rules", "scan"]
