"""Bars from the user's own CSV files (another vendor, a Korean market export).

`[csv] path` is a directory of long-format files `symbol,date,open,high,low,close,volume` (header
names case-insensitive, any column order, one or many files), plus an optional `symbols.csv` (see
universe_file). Every bar keeps its file and line, so a rejected bar or a bad value names both.

Files are streamed in blocks (memory stays bounded by a block and the rows asked for, whatever the
file's size). A malformed cell or a short row rejects that row only, named by file, line and value;
the file's other rows are ingested. A file that is not text at all is refused, by name.
"""

from __future__ import annotations

import codecs
import datetime as dt
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stockpipe.sources.base import BarFetch, Source, SourceError, empty_bars
from stockpipe.sources.universe_file import read_universe
from stockpipe.validation import RejectedBar

log = logging.getLogger("stockpipe.sources.csv")

COLUMNS = ("symbol", "date", "open", "high", "low", "close", "volume")
_NUMBER = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$"
# Larger blocks make Arrow's streaming reader hold more than the block (measured: peak RSS grows
# with the file at 8 MB blocks, stays ~140 MB at 1 MB for a 300 MB file).
_BLOCK_BYTES = 1 << 20
_SNIFF_BYTES = 64 << 10


def _printable(text: str, limit: int = 60) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _refuse_binary(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        text = b"\0" not in head
    except UnicodeDecodeError:
        text = False
    if not text:
        raise SourceError(f"{path}: not a text CSV file (binary content); remove it from the [csv] path directory")


def _header(path: Path) -> list[str]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as handle:
        try:
            return next(csv.reader(handle))
        except StopIteration:
            return []


def scan_bar_file(path: Path, file_id: int = 0) -> Iterator[tuple[pa.Table, list[RejectedBar]]]:
    """One file's bars, a block at a time, with `file` (file_id) and `line` columns, and the rows
    rejected in that block (malformed values, short or long rows) with their line and value."""
    path = Path(path)
    _refuse_binary(path)
    header = _header(path)
    names = {n.strip().lower(): n for n in header}
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise SourceError(f"{path} line 1: missing column(s) {', '.join(missing)} (found {', '.join(map(_printable, header))})")
    invalid: list[RejectedBar] = []
    skipped_lines: list[int] = []

    def on_invalid_row(row) -> str:
        line = row.number if row.number is not None else 0
        skipped_lines.append(line)
        first = _printable((row.text or "").split(",", 1)[0], 20) or "?"
        invalid.append(RejectedBar(first, "?", f"row has {row.actual_columns} fields, the header {row.expected_columns}",
                                   f"{path.name}:{line or '?'}", kind="malformed"))
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES, encoding="utf8"),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in header}, strings_can_be_null=False,
                                                 include_columns=[names[c] for c in COLUMNS]),
        )
        seen = 0
        for batch in reader:
            lines = np.arange(seen, seen + batch.num_rows, dtype=np.int64) + 2
            for skipped in sorted(skipped_lines):
                lines[lines >= skipped] += 1
            seen += batch.num_rows
            table, rejected = _convert(batch, names, lines, path.name, file_id)
            yield table, invalid + rejected
            invalid = []
        if invalid:
            yield _empty(), invalid
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read as CSV: {_printable(str(exc), 200)}") from None


def _empty() -> pa.Table:
    return empty_bars().append_column("file", pa.array([], pa.int32())).append_column("line", pa.array([], pa.int64()))


def _convert(batch: pa.RecordBatch, names: dict[str, str], lines: np.ndarray, file_name: str,
             file_id: int) -> tuple[pa.Table, list[RejectedBar]]:
    text = {c: pc.utf8_trim_whitespace(batch.column(names[c])) for c in COLUMNS}
    blank = np.ones(batch.num_rows, dtype=bool)
    for column in text.values():
        blank &= (pc.utf8_length(column).to_numpy(zero_copy_only=False) == 0)
    columns = {"symbol": text["symbol"]}
    problems: dict[int, list[str]] = {}
    parsed = pc.strptime(text["date"], format="%Y-%m-%d", unit="s", error_is_null=True)
    columns["date"] = pc.cast(parsed, pa.date32())
    checks = [("date", parsed, "is not a YYYY-MM-DD date")]
    for name in COLUMNS[2:]:
        empty_as_null = pc.if_else(pc.equal(text[name], ""), pa.scalar(None, pa.string()), text[name])
        try:
            columns[name] = pc.cast(empty_as_null, pa.float64())  # the usual case: every cell parses
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            valid = pc.match_substring_regex(text[name], _NUMBER)
            columns[name] = pc.cast(pc.if_else(valid, text[name], pa.scalar(None, pa.string())), pa.float64())
        checks.append((name, columns[name], "is not a number"))
    for name, converted, why in checks:
        present = pc.utf8_length(text[name]).to_numpy(zero_copy_only=False) > 0
        failed = present & pc.is_null(converted).to_numpy(zero_copy_only=False) & ~blank
        for index in np.flatnonzero(failed):
            problems.setdefault(int(index), []).append(f"{name} {_printable(text[name][int(index)].as_py())!r} {why}")
    rejected = []
    for index, why in sorted(problems.items()):
        symbol = _printable(text["symbol"][index].as_py()) or "?"
        day = text["date"][index].as_py()
        rejected.append(RejectedBar(symbol, _printable(day) or "?", "; ".join(why), f"{file_name}:{lines[index]}", kind="malformed"))
    keep = ~blank
    if problems:
        keep[list(problems)] = False
    columns["file"] = pa.array(np.full(batch.num_rows, file_id, dtype=np.int32))
    columns["line"] = pa.array(lines)
    for name in ("symbol",):
        columns[name] = pc.if_else(pc.equal(columns[name], ""), pa.scalar(None, pa.string()), columns[name])
    return pa.table(columns).filter(pa.array(keep)), rejected


def read_bar_file(path: Path) -> pa.Table:
    """A whole file's bars with an `origin` column (`file:line`); the first bad row raises, naming
    file, line and value (for small files and tools; ingest streams with `scan_bar_file`)."""
    path = Path(path)
    parts = []
    for table, rejected in scan_bar_file(path):
        if rejected:
            first = rejected[0]
            raise SourceError(f"{path} line {first.origin.rsplit(':', 1)[1]}: {first.reason}")
        parts.append(table)
    table = pa.concat_tables(parts) if parts else _empty()
    origin = pa.array([f"{path.name}:{n}" for n in table.column("line").to_pylist()], pa.string())
    return table.drop(["file", "line"]).append_column("origin", origin)


class CsvSource(Source):
    name = "csv"

    def __init__(self, path: str, calendar: str = "XNYS"):
        if not path:
            raise SourceError("source = csv needs [csv] path = a directory of bar files")
        self.directory = Path(path)
        if not self.directory.is_dir():
            raise SourceError(f"[csv] path {self.directory} is not a directory")
        self.calendar = calendar
        self._universe: set[str] | None = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.csv") if p.name.lower() != "symbols.csv")

    def _scan(self) -> Iterator[tuple[list[Path], pa.Table, list[RejectedBar]]]:
        files = self.files()
        if not files:
            raise SourceError(f"{self.directory}: no *.csv bar files")
        for file_id, path in enumerate(files):
            for table, rejected in scan_bar_file(path, file_id):
                yield files, table, rejected

    def symbols(self, as_of: dt.date) -> pa.Table:
        listed = self.directory / "symbols.csv"
        if listed.exists():
            return read_universe(listed)
        from stockpipe.sources.base import symbols_table

        names: set[str] = set()
        for _, table, _ in self._scan():
            names.update(pc.unique(table.column("symbol")).to_pylist())
        return symbols_table({"symbol": sorted(names - {None, ""})})

    def _listed(self) -> set[str] | None:
        """symbols.csv's symbols, to count rows of symbols it does not list (None without it)."""
        listed = self.directory / "symbols.csv"
        if not listed.exists():
            return None
        if self._universe is None:
            self._universe = set(read_universe(listed).column("symbol").to_pylist())
        return self._universe

    def bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarFetch:
        wanted = pa.array(sorted(set(symbols)), pa.string())
        listed = self._listed()
        known = pa.array(sorted(listed), pa.string()) if listed is not None else None
        first, last = pa.scalar(start, pa.date32()), pa.scalar(end, pa.date32())
        chosen, rejected, files = [], [], []
        unknown = 0
        for files, table, bad in self._scan():
            for reject in bad:
                # A malformed row is reported by the ingest it concerns (or any, if it names no symbol).
                if reject.symbol in ("?", "") or reject.symbol in set(symbols):
                    rejected.append(reject)
            if known is not None:
                unknown += table.num_rows - pc.sum(pc.is_in(table.column("symbol"), known)).as_py() if table.num_rows else 0
            mask = pc.and_(pc.is_in(table.column("symbol"), wanted),
                           pc.and_(pc.greater_equal(table.column("date"), first), pc.less_equal(table.column("date"), last)))
            chosen.append(table.filter(pc.fill_null(mask, False)))
        rows = pa.concat_tables(chosen) if chosen else _empty()
        rows = rows.sort_by([("symbol", "ascending"), ("date", "ascending")])
        names = [p.name for p in files]
        origin = pa.array([f"{names[f]}:{n}" for f, n in zip(rows.column("file").to_pylist(), rows.column("line").to_pylist())],
                          pa.string())
        skipped = {"unknown_symbol": int(unknown)} if unknown else {}
        if unknown:
            log.warning("%s: %d row(s) of symbols that symbols.csv does not list were skipped", self.directory, unknown)
        return BarFetch(rows.drop(["file", "line"]).append_column("origin", origin), rejected=rejected, skipped=skipped)
