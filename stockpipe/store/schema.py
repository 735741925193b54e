"""The public tables: names, columns and types are a contract users query directly.

One definition serves both stores: each column has an Arrow type (for bulk I/O) and a SQL type that
DuckDB and PostgreSQL both accept.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from stockpipe.indicators.spec import INDICATOR_COLUMNS

# Bump when a table's or view's layout changes, and add the upgrade step to MIGRATIONS.
SCHEMA_VERSION = 3

_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.date32(): "DATE",
    pa.float64(): "DOUBLE PRECISION",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us"): "TIMESTAMP",
}


@dataclass(frozen=True)
class Table:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    not_null: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def ddl(self, declare_key: bool = True) -> str:
        lines = []
        for field in self.schema:
            null = " NOT NULL" if field.name in self.key or field.name in self.not_null else ""
            lines.append(f"    {field.name} {_SQL_TYPES[field.type]}{null}")
        if self.key and declare_key:
            lines.append(f"    PRIMARY KEY ({', '.join(self.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n" + ",\n".join(lines) + "\n)"

    def conform(self, data: pa.Table) -> pa.Table:
        """Columns in table order with table types; a missing column is a caller bug, named here."""
        missing = [c for c in self.columns if c not in data.column_names]
        if missing:
            raise ValueError(f"{self.name}: rows lack column(s) {', '.join(missing)}")
        return pa.table([data.column(c).cast(self.schema.field(c).type) for c in self.columns], schema=self.schema)


_f = pa.float64()

SYMBOLS = Table(
    "symbols",
    pa.schema(
        [
            ("symbol", pa.string()),
            ("name", pa.string()),
            ("exchange", pa.string()),
            ("sector", pa.string()),
            ("industry", pa.string()),
            ("market_cap", _f),
            ("is_etf", pa.bool_()),
            ("is_active", pa.bool_()),
            ("avg_volume_30", _f),
            ("updated_at", pa.timestamp("us")),
        ]
    ),
    key=("symbol",),
    not_null=("is_active",),
)

BARS = Table(
    "bars",
    pa.schema(
        [
            ("symbol", pa.string()),
            ("date", pa.date32()),
            ("open", _f),
            ("high", _f),
            ("low", _f),
            ("close", _f),
            ("volume", pa.int64()),
        ]
    ),
    key=("symbol", "date"),
    not_null=("open", "high", "low", "close", "volume"),
)

INDICATORS = Table(
    "indicators",
    pa.schema(
        [("symbol", pa.string()), ("date", pa.date32())]
        + [(name, _f) for name in INDICATOR_COLUMNS]
        + [("created_at", pa.timestamp("us"))]
    ),
    key=("symbol", "date"),
)

TASK_MARKERS = Table(
    "task_markers",
    pa.schema(
        [
            ("marker_id", pa.string()),
            ("task_family", pa.string()),
            ("params", pa.string()),
            ("stats", pa.string()),
            ("completed_at", pa.timestamp("us")),
        ]
    ),
    key=("marker_id",),
    not_null=("task_family", "completed_at"),
)

DAILY_WATCHLIST = Table(
    "daily_watchlist",
    pa.schema(
        [
            ("scan_date", pa.date32()),
            ("symbol", pa.string()),
            ("name", pa.string()),
            ("sector", pa.string()),
            ("market_cap", _f),
            ("market_cap_tier", pa.int32()),
            ("scan_reason", pa.string()),
            ("priority", pa.int32()),
            ("close", _f),
            ("volume", pa.int64()),
            ("rsi_14", _f),
            ("bb_position", _f),
            ("volume_ratio", _f),
        ]
    ),
    key=("scan_date", "symbol"),
)

TASK_RUNS = Table(
    "task_runs",
    pa.schema(
        [
            ("task_id", pa.string()),
            ("task_family", pa.string()),
            ("params", pa.string()),
            ("status", pa.string()),
            ("attempt", pa.int32()),
            ("started_at", pa.timestamp("us")),
            ("finished_at", pa.timestamp("us")),
            ("duration_seconds", _f),
            ("error", pa.string()),
            ("host", pa.string()),
        ]
    ),
    key=(),
)

# What each write of bars or indicators touched (a symbol range and a date range, NULL: unbounded),
# written in the write's own transaction, numbered in commit order: the replica copies only what
# changed since the newest change it holds (stockpipe/store/changes.py).
STORE_CHANGES = Table(
    "store_changes",
    pa.schema(
        [
            ("change_id", pa.int64()),
            ("table_name", pa.string()),
            ("symbol_from", pa.string()),
            ("symbol_to", pa.string()),
            ("date_from", pa.date32()),
            ("date_to", pa.date32()),
            ("changed_at", pa.timestamp("us")),
        ]
    ),
    key=("change_id",),
    not_null=("table_name", "changed_at"),
)

SCHEMA_VERSION_TABLE = Table(
    "schema_version",
    pa.schema([("version", pa.int32()), ("applied_at", pa.timestamp("us"))]),
    key=(),
    not_null=("version", "applied_at"),
)

TABLES: tuple[Table, ...] = (SYMBOLS, BARS, INDICATORS, TASK_MARKERS, DAILY_WATCHLIST, TASK_RUNS, STORE_CHANGES)

# Tables rewritten in bulk, chunk by chunk. Their (symbol, date) key is kept by every write (delete
# then insert, in one transaction, under the writer lock); DuckDB's declared-key index would make each
# chunk replace ~5x slower (0.57 s vs 0.11 s for 124k rows), so only PostgreSQL declares it.
BULK_TABLES = frozenset({"bars", "indicators"})


@dataclass(frozen=True)
class View:
    """A read-only view over the tables, in SQL both stores (and the DuckDB replica) accept."""

    name: str
    select: str

    def ddl(self) -> str:
        # CREATE OR REPLACE: the same statement creates and upgrades. (PostgreSQL refuses to replace
        # a view whose existing columns change: such a change needs DROP VIEW in its migration.)
        return f"CREATE OR REPLACE VIEW {self.name} AS {self.select}"


# The old system's tables, as views over ours, so its dashboards and operators' queries run unchanged
# (README "Coming from the old system"). Views, not copies: nothing to keep in sync. Its fourth table,
# daily_watchlist, is ours under the same name.
NASDAQ_SYMBOLS = View(
    "nasdaq_symbols",
    "SELECT s.symbol, s.name, s.exchange, s.sector, s.industry, s.market_cap, s.is_etf, s.is_active, "
    # The old row kept the symbol's latest 30-day average volume; read it from the latest indicator
    # row (an index seek on PostgreSQL's (symbol, date) key), so it can never disagree with it.
    "(SELECT i.avg_volume_30 FROM indicators i WHERE i.symbol = s.symbol ORDER BY i.date DESC LIMIT 1) "
    "AS avg_volume_30, s.updated_at FROM symbols s",
)
STOCK_DATA = View(
    "stock_data",
    "SELECT symbol AS ticker, date, open, high, low, close, volume FROM bars",
)
TECHNICAL_INDICATORS = View(
    "technical_indicators",
    f"SELECT symbol AS ticker, date, {', '.join(INDICATOR_COLUMNS)}, created_at FROM indicators",
)

VIEWS: tuple[View, ...] = (NASDAQ_SYMBOLS, STOCK_DATA, TECHNICAL_INDICATORS)

# version -> statements that upgrade a database from version-1 to version.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: tuple(view.ddl() for view in VIEWS),
    3: (STORE_CHANGES.ddl(),),
}
