"""The daily report: one self-contained HTML file that a trader and an operator open in a browser.

`<data_dir>/reports/YYYY-MM-DD.html` shows
  - the watchlist, one row per symbol, and a chart per symbol (6 months of candles with SMA 20/50 and
    Bollinger bands, volume, RSI with its 30/70 lines, MACD with signal and histogram);
  - data health: symbols and bars per session for the last sessions, active symbols missing a bar or
    indicators on the date, the ingest marker's rejected bars, failed tickers and splits;
  - the run: every task of the date from `task_runs`, the slowest chunks, and what failed.
Images are PNGs embedded as base64: the file opens offline and travels as one mail attachment.
Everything is read through the Store: the watchlist symbols' months of bars and indicators and
per-date aggregates, never the whole bars table.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from stockpipe import markers, trading_calendar
from stockpipe.progress import Progress, silent
from stockpipe.services import rebuild as rebuild_service
from stockpipe.store import Marker, Store

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("stockpipe.report")

REPORTS_DIR = "reports"
INDICATOR_COLUMNS = ["sma_20", "sma_50", "bb_upper", "bb_middle", "bb_lower", "rsi_14", "macd", "macd_signal", "macd_hist"]


def report_path(data_dir: Path, day: dt.date) -> Path:
    return Path(data_dir) / REPORTS_DIR / f"{day:%Y-%m-%d}.html"


# -- gathering (store reads) ------------------------------------------------------------------------
def chart_frames(store: Store, symbols: Sequence[str], day: dt.date, months: int) -> dict[str, pd.DataFrame]:
    """Each symbol's bars and indicators of the `months` before `day` (two reads for all symbols)."""
    import pandas as pd  # here, not at import: every task module imports this one (a rebuild never needs pandas)

    if not symbols:
        return {}
    start = (pd.Timestamp(day) - pd.DateOffset(months=months)).date()
    bars = store.read_bars(list(symbols), start=start, end=day).to_pandas()
    indicators = store.read_indicators(list(symbols), start=start, end=day).select(
        ["symbol", "date", *INDICATOR_COLUMNS]).to_pandas()
    merged = bars.merge(indicators, on=["symbol", "date"], how="left")
    merged = merged.rename(columns={"open": "Open", "high": "High", "low": "Low", "close": "Close", "volume": "Volume"})
    merged["date"] = pd.to_datetime(merged["date"])
    return {symbol: rows.set_index("date").drop(columns="symbol").astype(float)
            for symbol, rows in merged.groupby("symbol", sort=False)}


def health(store: Store, day: dt.date, calendar: str, sessions: int) -> dict[str, Any]:
    """Per-session counts of the last `sessions` sessions up to `day` (a session with nothing stored
    shows zeros: a hole), the symbols missing on `day`, and the ingest marker's data quality."""
    first = trading_calendar.sessions_back(calendar, day, sessions - 1)
    counts = {r["date"]: r for r in store.session_counts(first, day).to_pylist()}
    days = sorted(set(trading_calendar.sessions(calendar, first, day)) | set(counts))
    empty = {"bar_symbols": 0, "bar_rows": 0, "indicator_symbols": 0, "indicator_rows": 0}
    per_session = [{"date": d, **{k: int(counts.get(d, empty)[k]) for k in empty}} for d in days]
    ingest = store.read_marker(markers.ingest_date(day))
    stats = (ingest or {}).get("stats", {})
    return {
        "sessions": per_session,
        "active_symbols": len(store.active_symbols()),
        **store.missing_on(day),
        "ingest_found": ingest is not None,
        "bars_stored": stats.get("bars_stored"),
        "bars_rejected": int(stats.get("bars_rejected", 0) or 0),
        "rejected_by_reason": stats.get("rejected_by_reason", {}),
        "rejected": stats.get("rejected", []),
        "failed_fetches": int(stats.get("failed_fetches", 0) or 0),
        "failures": stats.get("failures", []),
        "splits": stats.get("splits_detected", []),
    }


def run_summary(store: Store, day: dt.date, slowest: int) -> dict[str, Any]:
    """The date's task runs (each task's last attempt and how many it took), the slowest chunks of
    its indicator plan, every failed attempt and every chunk failure recorded in the store."""
    runs = store.task_runs_of_day(day).to_pylist()
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:  # oldest first: the last one seen is the task's latest attempt
        latest[run["task_id"]] = {**run, "attempts": latest.get(run["task_id"], {}).get("attempts", 0) + 1}
    tasks = [r for r in latest.values() if r["task_family"] != "IndicatorChunk"]
    chunks = [r for r in latest.values() if r["task_family"] == "IndicatorChunk"]
    chunks.sort(key=lambda r: -(r["duration_seconds"] or 0))
    chunk_failures = list(rebuild_service.failures(store, markers.daily_plan_id(day)).values())
    return {
        "tasks": tasks,
        "chunks": len(chunks),
        "chunk_seconds": round(sum(r["duration_seconds"] or 0 for r in chunks), 3),
        "slowest_chunks": chunks[:slowest],
        "failed_runs": [r for r in runs if r["status"] != "DONE"],
        "chunk_failures": chunk_failures,
    }


# -- rendering (pure) -------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#212121;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e0e0e0;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px} .muted{color:#757575;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{background:#fafafa} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e7d32} .bad{color:#c62828;font-weight:600} .chart{margin:12px 0 20px} .chart img{max-width:100%;height:auto}
.kpis{display:flex;gap:18px;flex-wrap:wrap;margin:8px 0} .kpi{background:#f5f5f5;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:20px} details{margin:6px 0} figure{margin:0} figcaption{font-size:14px;margin:4px 0}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(730px,1fr));gap:8px 24px}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else _esc(value)


def _table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int] = frozenset(),
           row_attrs: Iterable[dict[str, Any]] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    attrs = list(row_attrs) if row_attrs is not None else None
    body = []
    for i, row in enumerate(rows):
        extra = "".join(f' data-{k}="{_esc(v)}"' for k, v in (attrs[i] if attrs else {}).items())
        cells = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{extra}>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _kpi(label: str, value: Any, key: str, bad: bool = False) -> str:
    return (f'<div class="kpi"><span class="muted">{_esc(label)}</span>'
            f'<b id="{key}" class="{"bad" if bad else "ok"}" data-value="{_esc(value)}">{_num(value)}</b></div>')


def render_html(day: dt.date, watchlist: list[dict[str, Any]], charts: dict[str, bytes], health_png: bytes | None,
                state: dict[str, Any], run: dict[str, Any], generated_at: dt.datetime) -> str:
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>stockpipe {day}</title>'
             f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head><body>',
             f"<h1>stockpipe daily report {day}</h1>",
             f'<p class="muted">generated {generated_at:%Y-%m-%d %H:%M:%S} UTC · {len(watchlist)} watchlist symbols · '
             f'{state["active_symbols"]:,} active symbols</p>']

    # -- watchlist
    parts.append(f'<h2 id="watchlist">Watchlist ({len(watchlist)})</h2>')
    parts.append(_table(
        "watchlist-table",
        ["#", "symbol", "name", "rule", "priority", "tier", "close", "RSI 14", "band position", "volume ratio"],
        ([i, f'<a href="#chart-{_esc(r["symbol"])}">{_esc(r["symbol"])}</a>', _esc(r["name"]), _esc(r["scan_reason"]),
          _num(r["priority"]), _num(r["market_cap_tier"]), _num(r["close"]), _num(r["rsi_14"], 1),
          _num(r["bb_position"]), _num(r["volume_ratio"])] for i, r in enumerate(watchlist, 1)),
        numeric={0, 4, 5, 6, 7, 8, 9},
        row_attrs=({"symbol": r["symbol"]} for r in watchlist),
    ))

    # -- data health
    sessions = state["sessions"]
    today = next((s for s in sessions if s["date"] == day), None)
    parts.append('<h2 id="health">Data health</h2><div class="kpis">')
    parts.append(_kpi(f"symbols with a bar on {day}", today["bar_symbols"] if today else 0, "health-bar-symbols"))
    parts.append(_kpi(f"bars stored on {day}", today["bar_rows"] if today else 0, "health-bar-rows"))
    parts.append(_kpi("active symbols without a bar", len(state["without_bars"]), "health-missing-bars",
                      bad=bool(state["without_bars"])))
    parts.append(_kpi("symbols without indicators", len(state["without_indicators"]), "health-missing-indicators",
                      bad=bool(state["without_indicators"])))
    parts.append(_kpi("rejected bars", state["bars_rejected"], "health-rejected", bad=bool(state["bars_rejected"])))
    parts.append(_kpi("failed tickers", state["failed_fetches"], "health-failed", bad=bool(state["failed_fetches"])))
    parts.append(_kpi("splits", len(state["splits"]), "health-splits"))
    parts.append("</div>")
    if not state["ingest_found"]:
        parts.append(f'<p class="bad">no IngestDate marker for {day}: the ingest of this date did not complete</p>')
    if health_png is not None:
        parts.append(f'<div class="chart" id="health-chart">{_img(health_png, "bars and symbols per session")}</div>')
    parts.append(f"<details><summary>the last {len(sessions)} sessions</summary>")
    parts.append(_table(
        "health-sessions", ["date", "symbols with bars", "bars", "symbols with indicators", "indicator rows"],
        ([_esc(s["date"]), _num(s["bar_symbols"]), _num(s["bar_rows"]), _num(s["indicator_symbols"]),
          _num(s["indicator_rows"])] for s in sessions),
        numeric={1, 2, 3, 4},
        row_attrs=({"date": s["date"], "symbols": s["bar_symbols"], "bars": s["bar_rows"],
                    "indicator-symbols": s["indicator_symbols"], "indicators": s["indicator_rows"]} for s in sessions),
    ))
    parts.append("</details>")
    for title, key in (("Active symbols without a bar", "without_bars"), ("Symbols without indicators", "without_indicators")):
        names = state[key]
        parts.append(f'<h3>{title} on {day}: {len(names)}</h3><p id="{key.replace("_", "-")}" '
                     f'data-count="{len(names)}">{_esc(", ".join(names[:200]))}{" …" if len(names) > 200 else ""}</p>')
    reasons = ", ".join(f"{_esc(k)} {v}" for k, v in state["rejected_by_reason"].items())
    parts.append(f"<h3>Rejected bars: {state['bars_rejected']}{f' ({reasons})' if reasons else ''}</h3>")
    parts.append(_table("rejected-bars", ["symbol", "date", "reason", "origin"],
                        ([_esc(r.get("symbol")), _esc(r.get("date")), _esc(r.get("reason")), _esc(r.get("origin"))]
                         for r in state["rejected"])))
    parts.append(f"<h3>Failed tickers: {state['failed_fetches']}</h3>")
    parts.append(_table("failed-tickers", ["symbol", "from", "to", "reason"],
                        ([_esc(f.get("symbol")), _esc(f.get("start")), _esc(f.get("end")), _esc(f.get("reason"))]
                         for f in state["failures"])))
    parts.append(f'<h3>Splits handled: {len(state["splits"])}</h3><p id="splits">{_esc(", ".join(state["splits"])) or "none"}</p>')

    # -- the run
    parts.append('<h2 id="run">The run</h2>')
    parts.append(_table(
        "run-tasks", ["task", "parameters", "status", "attempts", "started (UTC)", "seconds", "host"],
        ([_esc(r["task_family"]), _esc(_params_text(r["params"])),
          f'<span class="{"ok" if r["status"] == "DONE" else "bad"}">{_esc(r["status"])}</span>', _num(r["attempts"]),
          _esc(f'{r["started_at"]:%H:%M:%S}' if r["started_at"] else ""), _num(r["duration_seconds"], 3), _esc(r["host"])]
         for r in run["tasks"]),
        numeric={3, 5},
        row_attrs=({"task": r["task_family"], "status": r["status"]} for r in run["tasks"]),
    ))
    parts.append(f"<h3>Slowest of {run['chunks']} indicator chunks ({run['chunk_seconds']:.1f} s in all)</h3>")
    parts.append(_table("slowest-chunks", ["chunk", "status", "seconds", "host"],
                        ([_esc(_params_of(r["params"]).get("chunk_id")), _esc(r["status"]), _num(r["duration_seconds"], 3),
                          _esc(r["host"])] for r in run["slowest_chunks"]), numeric={2}))
    failed = len(run["failed_runs"]) + len(run["chunk_failures"])
    parts.append(f'<h3>Failures: <span id="failure-count" class="{"bad" if failed else "ok"}">{failed}</span></h3>')
    parts.append(_table("failures", ["what", "when (UTC)", "error"],
                        [*([_esc(f'{r["task_family"]} {_params_text(r["params"])} (attempt {r["attempt"]})'),
                            _esc(f'{r["finished_at"]:%H:%M:%S}' if r["finished_at"] else ""), _esc(r["error"])]
                           for r in run["failed_runs"]),
                         *([_esc(f'chunk {f.get("chunk_id")} of {markers.daily_plan_id(day)}'), _esc(f.get("at", "")), _esc(f.get("error"))]
                           for f in run["chunk_failures"])]))
    parts.append(f'<h2 id="charts">Charts ({len(charts)})</h2>')
    if watchlist:
        parts.append('<p class="muted">Candles with <span style="color:#1f77b4">SMA 20</span>, '
                     '<span style="color:#ff7f0e">SMA 50</span> and <span style="color:#9e9e9e">Bollinger bands '
                     '(20, 2)</span>; volume; RSI 14 with its 30/70 lines; MACD (12, 26, 9) with its '
                     '<span style="color:#ff7f0e">signal</span> and histogram.</p>')
    parts.append('<div class="charts">')
    for row in watchlist:
        symbol = row["symbol"]
        caption = (f'<figcaption><b>{_esc(symbol)}</b> {_esc(row["name"])} · {_esc(row["scan_reason"])} '
                   f'(priority {_num(row["priority"])}) · close {_num(row["close"])}</figcaption>')
        if symbol in charts:
            body = _img(charts[symbol], f"{symbol} chart")
        else:
            body = '<p class="bad">no bars stored for the last months</p>'
        parts.append(f'<figure class="chart" id="chart-{_esc(symbol)}" data-symbol="{_esc(symbol)}">{caption}{body}</figure>')
    parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _params_of(text: str | None) -> dict[str, Any]:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {}


def _params_text(text: str | None) -> str:
    return " ".join(f"{k}={v}" for k, v in _params_of(text).items())


# -- the service ------------------------------------------------------------------------------------
def build_report(
    store: Store,
    day: dt.date,
    data_dir: Path,
    *,
    calendar: str,
    sessions: int = 30,
    chart_months: int = 6,
    slowest_chunks: int = 10,
    marker: Marker | None = None,
    progress: Progress = silent,
) -> dict[str, Any]:
    """Write `<data_dir>/reports/<day>.html` (atomically: a reader never sees half a file), then the
    marker; returns the stats."""
    from stockpipe import charts  # Pillow is imported only by the report

    started = time.monotonic()
    watchlist = store.read_watchlist(since=day, until=day).to_pylist()
    symbols = [r["symbol"] for r in watchlist]
    frames = chart_frames(store, symbols, day, chart_months)
    progress(5, f"read {sum(len(f) for f in frames.values())} bars of {len(frames)} watchlist symbols")
    rendered: dict[str, bytes] = {}
    chart = charts.SymbolChart()
    # A thread encodes each chart while the next is drawn (a third of a chart's time); one at a time.
    encoding: tuple[str, Future[bytes]] | None = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="stockpipe-png") as pool:
            for number, symbol in enumerate(symbols, 1):
                frame = frames.get(symbol)
                if frame is not None and len(frame):
                    image = chart.draw(frame)
                    if encoding is not None:
                        rendered[encoding[0]] = encoding[1].result()
                    encoding = (symbol, pool.submit(charts.encode, image))
                if number % 10 == 0 or number == len(symbols):
                    progress(5 + 80 * number / len(symbols), f"charts {number}/{len(symbols)}")
            if encoding is not None:
                rendered[encoding[0]] = encoding[1].result()
    finally:
        chart.close()
    state = health(store, day, calendar, sessions)
    health_png = charts.health_chart([s["date"] for s in state["sessions"]], [s["bar_rows"] for s in state["sessions"]],
                                     [s["bar_symbols"] for s in state["sessions"]])
    run = run_summary(store, day, slowest_chunks)
    from stockpipe.store.base import utcnow

    text = render_html(day, watchlist, rendered, health_png, state, run, utcnow())
    path = report_path(data_dir, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    stats = {"path": str(path), "bytes": len(text.encode()), "watchlist": len(symbols), "charts": len(rendered),
             "missing_bars": len(state["without_bars"]), "missing_indicators": len(state["without_indicators"]),
             "failures": len(run["failed_runs"]) + len(run["chunk_failures"]),
             "seconds": round(time.monotonic() - started, 3)}
    if marker is not None:
        store.touch(Marker(marker.marker_id, marker.task_family, marker.params, stats))
    progress(100, f"report {path}: {len(rendered)} charts, {stats['bytes'] / 1e6:.1f} MB")
    log.info("report %s: %d charts, %d bytes, %.2f s", path, len(rendered), stats["bytes"], stats["seconds"])
    return stats


__all__ = ["build_report", "chart_frames", "health", "render_html", "report_path", "run_summary"]
