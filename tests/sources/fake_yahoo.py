"""Yahoo Finance's chart API, answered offline in its recorded format at requests' transport layer
(`responses`), so the real yf.download parsing runs. yfinance must use its requests backend:
YF_DISABLE_CURL_CFFI=1 is set in tests/conftest.py before yfinance is imported.

Responses follow recorded v8/finance/chart payloads: `meta` (currency, exchangeTimezoneName,
instrumentType, priceHint, validRanges...), `timestamp` (the session open in UTC), `indicators.quote`
and `adjclose`, `events.splits`; unknown symbols get Yahoo's 404 error body; rate limiting is a 429.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import zoneinfo
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

import responses

from stockpipe import trading_calendar

CHART = re.compile(r"https://query[12]\.finance\.yahoo\.com/v8/finance/chart/(?P<symbol>[^?]+)")


@dataclass
class Listing:
    symbol: str
    calendar: str = "XNYS"
    timezone: str = "America/New_York"
    currency: str = "USD"
    open_time: dt.time = dt.time(9, 30)
    base: float = 100.0
    split_on: dt.date | None = None  # a 4:1 split: once it happened, Yahoo divides every earlier price by 4
    nan_on: dt.date | None = None  # a bar Yahoo returns with null prices (fetched before the open)
    volume_override: dict = field(default_factory=dict)
    rate_limited_calls: int = 0  # the first N chart calls answer 429


SAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "samples"


class FakeYahoo:
    """Also serves the NASDAQ directory and screener from the committed samples (or given texts)."""

    def __init__(self, listings: list[Listing], nasdaq: dict[str, str] | None = None):
        self.listings = {l.symbol: l for l in listings}
        self.calls: dict[str, int] = {}
        self.nasdaq = nasdaq or {
            "nasdaqlisted.txt": (SAMPLES / "nasdaqlisted.txt").read_text(),
            "otherlisted.txt": (SAMPLES / "otherlisted.txt").read_text(),
            "screener": (SAMPLES / "screener.json").read_text(),
        }
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)

    def __enter__(self) -> "FakeYahoo":
        self.mock.start()
        self.mock.add(responses.GET, re.compile(r"https://fc\.yahoo\.com.*"), status=404, body="")
        self.mock.add(responses.GET, re.compile(r"https://query[12]\.finance\.yahoo\.com/v1/test/getcrumb.*"),
                      body="fakecrumb123", status=200)
        self.mock.add_callback(responses.GET, CHART, callback=self._chart)
        self.mock.add_callback(responses.GET, re.compile(r"https://query[12]\.finance\.yahoo\.com/v10/finance/quoteSummary/.*"),
                               callback=self._quote_summary)
        # yfinance's fallbacks for a symbol without a chart (its timezone from `info`): Yahoo knows nothing.
        self.mock.add(responses.GET, re.compile(r"https://query[12]\.finance\.yahoo\.com/v7/finance/quote.*"),
                      json={"quoteResponse": {"result": [], "error": None}})
        self.mock.add(responses.GET, re.compile(r"https://guce\.yahoo\.com/.*"), status=404, body="")
        for name in ("nasdaqlisted.txt", "otherlisted.txt"):
            self.mock.add(responses.GET, f"https://www.nasdaqtrader.com/dynamic/SymDir/{name}", body=self.nasdaq[name],
                          content_type="text/plain")
        self.mock.add(responses.GET, re.compile(r"https://api\.nasdaq\.com/api/screener/stocks.*"),
                      body=self.nasdaq["screener"], content_type="application/json")
        # Anything else yfinance tries for a symbol Yahoo does not know (fundamentals, ...): its 404 body.
        self.mock.add(responses.GET, re.compile(r"https://query[12]\.finance\.yahoo\.com/(?!v8/finance/chart|v1/test/getcrumb|v10/finance/quoteSummary|v7/finance/quote).*"), status=404,
                      json={"finance": {"result": None, "error": {"code": "Not Found", "description": "Not Found"}}})
        return self

    def _quote_summary(self, request):
        symbol = request.url.split("/quoteSummary/")[1].split("?")[0]
        body = {"quoteSummary": {"result": None, "error": {"code": "Not Found", "description": f"Quote not found for symbol: {symbol}"}}}
        return 404, {"Content-Type": "application/json"}, json.dumps(body)

    def __exit__(self, *exc) -> None:
        self.mock.stop()
        self.mock.reset()

    @staticmethod
    def price(listing: Listing, day: dt.date) -> float:
        # Deterministic, gently trending prices in cents.
        ordinal = day.toordinal() - 738000
        return round(listing.base * (1 + 0.0005 * ordinal) + (ordinal % 7) * 0.37, 2)

    def _chart(self, request):
        symbol = CHART.match(request.url).group("symbol")
        self.calls[symbol] = self.calls.get(symbol, 0) + 1
        listing = self.listings.get(symbol)
        if listing is None:
            body = {"chart": {"result": None, "error": {"code": "Not Found",
                                                        "description": "No data found, symbol may be delisted"}}}
            return 404, {"Content-Type": "application/json"}, json.dumps(body)
        if self.calls[symbol] <= listing.rate_limited_calls:
            return 429, {"Content-Type": "text/plain"}, "Too Many Requests"
        query = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
        zone = zoneinfo.ZoneInfo(listing.timezone)
        if "period1" in query:
            first = dt.datetime.fromtimestamp(int(query["period1"]), dt.timezone.utc).astimezone(zone).date()
            last = dt.datetime.fromtimestamp(int(query["period2"]), dt.timezone.utc).astimezone(zone).date()
            days = [d for d in trading_calendar.sessions(listing.calendar, first, last)
                    if dt.datetime.combine(d, listing.open_time, zone).timestamp() < int(query["period2"])]
        else:  # range=1d: the timezone probe
            days = trading_calendar.sessions(listing.calendar, dt.date(2025, 10, 6), dt.date(2025, 10, 10))[-1:]
        stamps, quote, splits = [], {"open": [], "high": [], "low": [], "close": [], "volume": []}, {}
        split_happened = listing.split_on is not None and bool(days) and days[-1] >= listing.split_on
        for day in days:
            close = self.price(listing, day)
            if split_happened and day < listing.split_on:
                close = round(close / 4, 4)  # Yahoo rescales history before a split
            stamps.append(int(dt.datetime.combine(day, listing.open_time, zone).timestamp()))
            if listing.nan_on == day:
                for key in quote:
                    quote[key].append(None)
                continue
            quote["open"].append(round(close * 0.995, 4))
            quote["high"].append(round(close * 1.01, 4))
            quote["low"].append(round(close * 0.985, 4))
            quote["close"].append(close)
            quote["volume"].append(listing.volume_override.get(day, 1_000_000 + day.toordinal() % 1000))
            if listing.split_on == day:
                splits[str(stamps[-1])] = {"date": stamps[-1], "numerator": 4, "denominator": 1, "splitRatio": "4:1"}
        offset = int(zone.utcoffset(dt.datetime(2025, 10, 10)).total_seconds())
        meta = {
            "currency": listing.currency, "symbol": symbol, "exchangeName": "NMS" if listing.currency == "USD" else "KSC",
            "fullExchangeName": "NasdaqGS" if listing.currency == "USD" else "KSE", "instrumentType": "EQUITY",
            "firstTradeDate": 345479400, "regularMarketTime": stamps[-1] if stamps else 0, "hasPrePostMarketData": True,
            "gmtoffset": offset, "timezone": "EDT" if listing.currency == "USD" else "KST",
            "exchangeTimezoneName": listing.timezone, "regularMarketPrice": quote["close"][-1] if quote["close"] else None,
            "chartPreviousClose": quote["close"][0] if quote["close"] else None, "priceHint": 2,
            "currentTradingPeriod": {}, "dataGranularity": "1d", "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
        }
        result = {"meta": meta, "timestamp": stamps,
                  "indicators": {"quote": [quote], "adjclose": [{"adjclose": list(quote["close"])}]}}
        if splits:
            result["events"] = {"splits": splits}
        return 200, {"Content-Type": "application/json"}, json.dumps({"chart": {"result": [result], "error": None}})
