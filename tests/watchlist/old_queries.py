"""The old system's SQL, verbatim: the specification the built-in rules and the views are held to."""

PROGRESS = (
    "SELECT date, COUNT(DISTINCT ticker) AS ticker_count, COUNT(*) AS indicator_count "
    "FROM technical_indicators WHERE date >= '2025-09-29' GROUP BY date ORDER BY date"
)
_SELECT = (
    "SELECT s.symbol, s.name, s.sector, s.market_cap, t.rsi_14, d.close, d.volume "
    "FROM stock_data d JOIN technical_indicators t ON d.ticker=t.ticker AND d.date=t.date "
    "JOIN nasdaq_symbols s ON s.symbol=d.ticker "
)
# name -> (priority, query)
OLD_QUERIES = {
    "rsi_oversold": _SELECT + "WHERE d.date = :scan_date AND t.rsi_14 < 30 AND s.market_cap > 500000000 "
    "AND d.volume > s.avg_volume_30 * 1.5 ORDER BY s.market_cap DESC LIMIT 20",
    "bollinger_lower_touch": _SELECT + "WHERE d.date = :scan_date AND d.close <= t.bb_lower * 1.02 "
    "AND s.market_cap > 1000000000 ORDER BY (t.bb_lower - d.close) DESC LIMIT 15",
    "high_volume_breakout": _SELECT + "WHERE d.date = :scan_date AND d.volume > s.avg_volume_30 * 3 "
    "AND d.close > d.open * 1.02 ORDER BY d.volume / s.avg_volume_30 DESC LIMIT 10",
}
PRIORITY = {"rsi_oversold": 1, "bollinger_lower_touch": 2, "high_volume_breakout": 3}


def with_tiebreak(sql: str) -> str:
    """The old ORDER BY plus stockpipe's defined tiebreak (symbol ascending)."""
    head, limit = sql.rsplit(" LIMIT ", 1)
    return f"{head}, s.symbol ASC LIMIT {limit}"
