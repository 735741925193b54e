"""Watchlist rules as data, and the scan that applies them to one date's frame."""

from stockpipe.watchlist.rules import ALTERNATIVE_RULES, DEFAULT_RULES, Condition, Rule, parse_rules, scan

__all__ = ["ALTERNATIVE_RULES", "Condition", "DEFAULT_RULES", "Rule", "parse_rules", "scan"]
