"""The daily report, opened in a real headless browser (Debian's chromium), checked against counts
computed from the store with our own SQL."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from stockpipe import cli, tasks
from stockpipe.services import report as report_service
from tests.conftest import IN_CI, service_missing

DAY = dt.date(2025, 10, 10)
WATCHLIST_ROWS = 12
# One rule that always takes the 12 highest volumes: a watchlist of known size from any demo market.
RULES = json.dumps([{"name": "most_traded", "priority": 1, "limit": WATCHLIST_ROWS, "order_by": "volume desc",
                     "conditions": ["close > 0"]}])
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        service_missing("chromium", "not on PATH; install it with `apt-get install -y chromium`")
    return found


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)


class _Dom(HTMLParser):
    """Elements with an id or data-* attributes, and which figure each <img> sits in."""

    def __init__(self):
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.rows: dict[str, list[dict]] = {}
        self.figures: dict[str, list[dict]] = {}
        self._table: str | None = None
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.by_id[attributes["id"]] = attributes
        if tag == "table":
            self._table = attributes.get("id")
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table and any(k.startswith("data-") for k in attributes):
            self.rows[self._table].append(attributes)
        elif tag == "figure" and "data-symbol" in attributes:
            self._figure = attributes["data-symbol"]
            self.figures[self._figure] = []
        elif tag == "img" and self._figure:
            self.figures[self._figure].append(attributes)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "figure":
            self._figure = None


def parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


def _not_blank(image: Image.Image) -> tuple[int, float]:
    """Distinct colours and the share of pixels that are not the background's colour."""
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return len(colours), 1.0 - counts.max() / counts.sum()


def _sql(store, sql, **params):
    return store.query(sql, params).to_pylist()


def _damage_the_day(store):
    """A hole the report must show: one symbol loses its bar of DAY, another its indicators of DAY,
    and the ingest marker records rejected bars, failed tickers and a split."""
    symbols = store.active_symbols()
    with store.session() as session:
        session.execute("DELETE FROM bars WHERE symbol = :s AND date = :d", {"s": symbols[-1], "d": DAY})
        session.execute("DELETE FROM indicators WHERE symbol = :s AND date = :d", {"s": symbols[-2], "d": DAY})
        stats = json.loads(session.fetch("SELECT stats FROM task_markers WHERE marker_id = :m",
                                         {"m": f"IngestDate/{DAY}"})[0][0])
        stats.update(bars_rejected=2, rejected_by_reason={"high": 1, "negative": 1},
                     rejected=[{"symbol": symbols[0], "date": str(DAY), "reason": "high 9 below low 10"},
                               {"symbol": symbols[1], "date": str(DAY), "reason": "negative volume -5"}],
                     failed_fetches=1, failures=[{"symbol": "GONE", "start": "2025-10-03", "end": str(DAY),
                                                  "reason": "delisted <script>"}],
                     splits_detected=[symbols[2]])
        session.execute("UPDATE task_markers SET stats = :s WHERE marker_id = :m",
                        {"s": json.dumps(stats), "m": f"IngestDate/{DAY}"})


@pytest.fixture
def reported(pipeline):
    """A Daily of the demo market (its Report included), then the day damaged and the report rebuilt
    through `stockpipe report`."""
    pipeline.configure("watchlist", rules=RULES)
    assert pipeline.build(tasks.Daily(date=DAY))
    path = report_service.report_path(pipeline.store_dir, DAY)
    assert path.exists(), "Daily did not write its report"
    assert pipeline.store.read_marker(f"Report/{DAY}")["stats"]["charts"] == WATCHLIST_ROWS
    _damage_the_day(pipeline.store)
    out = io.StringIO()
    assert cli.main(["report", "--date", str(DAY)], out=out) == 0
    assert str(path) in out.getvalue()
    return pipeline, path


def test_report_renders_in_headless_chromium_with_every_chart_and_the_stores_counts(reported, tmp_path):
    pipeline, path = reported
    store = pipeline.store

    # 1. A real browser paints it: the screenshot is not blank.
    screenshot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2400", path.as_uri())
    assert screenshot.exists(), f"chromium took no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(screenshot) as image:
        assert image.size == (1280, 2400)
        colours, inked = _not_blank(image)
    assert colours > 200 and inked > 0.05, f"screenshot looks blank: {colours} colours, {inked:.1%} non-background"

    # 2. The DOM after the browser loaded it: every embedded image decoded by the browser itself.
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace(
        "</body>", "<script>addEventListener('load', () => document.querySelectorAll('img').forEach("
        "i => i.setAttribute('data-decoded', i.naturalWidth + 'x' + i.naturalHeight)));</script></body>"),
        encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = parse(result.stdout)

    watchlist = [r["symbol"] for r in _sql(store, "SELECT symbol FROM daily_watchlist WHERE scan_date = :d "
                                                  "ORDER BY priority, symbol", d=DAY)]
    assert len(watchlist) == WATCHLIST_ROWS
    assert [r["data-symbol"] for r in dom.rows["watchlist-table"]] == watchlist
    assert sorted(dom.figures) == sorted(watchlist)
    for symbol in watchlist:
        (img,) = dom.figures[symbol]
        assert img["src"].startswith("data:image/png;base64,")
        width, height = map(int, img["data-decoded"].split("x"))
        assert width >= 600 and height >= 400, f"{symbol}: the browser decoded a {width}x{height} chart"
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as chart:
            colours, inked = _not_blank(chart)
        assert colours > 20 and inked > 0.05, f"{symbol}'s chart is blank"
    assert dom.by_id["health-chart"] is not None
    assert not any("http://" in v or "https://" in v for a in dom.by_id.values() for v in a.values() if v), \
        "the report must open offline"

    # 3. Health numbers equal the store's, counted here with our own SQL.
    sessions = _sql(store, "SELECT date, count(DISTINCT symbol) AS symbols, count(*) AS n FROM bars "
                           "WHERE date <= :d GROUP BY date ORDER BY date DESC LIMIT 30", d=DAY)
    shown = {r["data-date"]: r for r in dom.rows["health-sessions"]}
    assert len(shown) == 30 and len(sessions) == 30
    for row in sessions:
        assert int(shown[str(row["date"])]["data-symbols"]) == row["symbols"]
        assert int(shown[str(row["date"])]["data-bars"]) == row["n"]
    indicator_rows = _sql(store, "SELECT count(*) AS n FROM indicators WHERE date = :d", d=DAY)[0]["n"]
    assert int(shown[str(DAY)]["data-indicators"]) == indicator_rows
    without_bars = _sql(store, "SELECT count(*) AS n FROM symbols s WHERE is_active AND symbol NOT IN "
                               "(SELECT symbol FROM bars WHERE date = :d)", d=DAY)[0]["n"]
    without_indicators = _sql(store, "SELECT count(*) AS n FROM bars b WHERE date = :d AND symbol NOT IN "
                                     "(SELECT symbol FROM indicators WHERE date = :d)", d=DAY)[0]["n"]
    assert without_bars == 1 and without_indicators == 1
    assert int(dom.by_id["health-missing-bars"]["data-value"]) == without_bars
    assert int(dom.by_id["without-bars"]["data-count"]) == without_bars
    assert int(dom.by_id["health-missing-indicators"]["data-value"]) == without_indicators
    assert int(dom.by_id["health-bar-symbols"]["data-value"]) == sessions[0]["symbols"]
    ingest = json.loads(_sql(store, "SELECT stats FROM task_markers WHERE marker_id = :m", m=f"IngestDate/{DAY}")[0]["stats"])
    assert int(dom.by_id["health-rejected"]["data-value"]) == ingest["bars_rejected"] == 2
    assert int(dom.by_id["health-failed"]["data-value"]) == ingest["failed_fetches"] == 1
    page = result.stdout
    assert "negative volume -5" in page and "delisted &lt;script&gt;" in page and "<script>\"" not in page

    # 4. The run: one row per task of the day (chunks apart), as task_runs recorded them.
    runs = _sql(store, "SELECT task_id, task_family, status FROM task_runs WHERE task_family <> 'IndicatorChunk'")
    assert sorted(r["data-task"] for r in dom.rows["run-tasks"]) == sorted(r["task_family"] for r in runs)
    assert {r["data-status"] for r in dom.rows["run-tasks"]} == {"DONE"}
    assert {"CollectSymbols", "IngestDate", "DailyIndicators", "ScanWatchlist", "Replicate", "Report",
            "CleanupOldFiles", "Daily"} == {r["task_family"] for r in runs}


def test_report_lists_failed_attempts_and_chunk_failures(duckdb_pipeline):
    pipeline = duckdb_pipeline
    pipeline.configure("watchlist", rules=RULES)
    assert pipeline.build(tasks.Daily(date=DAY))
    store = pipeline.store
    with store.session() as session:
        session.execute(
            "INSERT INTO task_runs (task_id, task_family, params, status, attempt, started_at, finished_at, "
            "duration_seconds, error, host) VALUES ('IndicatorChunk_x', 'IndicatorChunk', :p, 'FAILED', 1, "
            ":t, :t, 2.5, 'MemoryError: out of memory', 'h1')",
            {"p": json.dumps({"chunk_id": "1", "date": "2025-10-03", "plan_id": f"daily-{DAY}"}, sort_keys=True),
             "t": dt.datetime(2025, 10, 10, 22, 0)})
    store.record_chunk_failure(f"daily-{DAY}", 1, "disk full", "OSError", "h1")
    stats = report_service.build_report(store, DAY, pipeline.store_dir, calendar="XNYS")
    dom = parse(report_service.report_path(pipeline.store_dir, DAY).read_text(encoding="utf-8"))
    assert stats["failures"] == 2
    assert dom.by_id["failure-count"] is not None
    text = report_service.report_path(pipeline.store_dir, DAY).read_text(encoding="utf-8")
    assert "MemoryError: out of memory" in text and "disk full" in text


def test_chromium_is_required_in_ci(monkeypatch):
    """In CI a missing browser fails the browser test instead of skipping it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    if IN_CI:
        with pytest.raises(pytest.fail.Exception):
            chromium_binary()
    else:
        with pytest.raises(pytest.skip.Exception):
            chromium_binary()
