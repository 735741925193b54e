"""PostgreSQL store (SQLAlchemy 2 engine, psycopg2 COPY for bulk data).

Bulk writes are binary `COPY ... FROM STDIN` built from Arrow with numpy (pg_binary), bulk reads
are `COPY (query) TO STDOUT` CSV parsed by Arrow: no Python object per row (executemany was ~45x
slower here, CSV COPY in ~3x).
Writers of the same marker serialise on a transaction-scoped advisory lock, so two processes
started on the same rebuild never both write one chunk.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from stockpipe.redaction import encode_userinfo, scrub
from stockpipe.store import pg_binary
from stockpipe.store.base import Session, Store, StoreError, backup_table_name, translate_placeholders
from stockpipe.store.schema import INDICATORS, VIEWS, Table

_POOL_RECYCLE_SECONDS = 1800
# Up to this many symbols a writer locks each symbol (see lock_symbols); a chunk is 50 by default.
_FEW_SYMBOLS = 64
# Share of a table's rows replaced (or changed) since the last VACUUM (ANALYZE) that calls for one.
_RECLAIM_FRACTION = 0.1
# How long a rebuild's swap of the indicators table waits for readers and writers to finish.
_SWAP_LOCK_SECONDS = 120
_RECLAIM_MIN_DEAD = 10_000  # below this many dead rows a VACUUM mid-run is not worth its scan of the key index


def _connect_args(url: str) -> dict[str, Any]:
    """Timeouts so that an unreachable server or a stuck statement fails instead of hanging a worker.

    Settings already in the URL's query string win; PGOPTIONS (e.g. synchronous_commit=off) is kept,
    since passing `options` would otherwise replace it.
    """
    from stockpipe import config

    settings = config.timeouts()
    given = url.partition("?")[2]
    args: dict[str, Any] = {}
    if "connect_timeout=" not in given:
        args["connect_timeout"] = settings.pg_connect
    if "keepalives" not in given:
        # A server that vanished (a dropped network, not a closed socket) is noticed in ~1 minute.
        args.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    if "options=" not in given and settings.pg_statement:
        args["options"] = f"{os.environ.get('PGOPTIONS', '')} -c statement_timeout={settings.pg_statement * 1000}".strip()
    return args


class _PostgresSession(Session):
    def __init__(self, connection):
        self._con = connection
        self._cur = connection.cursor()

    def _sql(self, sql: str, params: dict[str, Any] | None) -> str:
        return self._cur.mogrify(translate_placeholders(sql, "pyformat"), params or {}).decode()

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        self._cur.execute(translate_placeholders(sql, "pyformat"), params or {})
        return self._cur.rowcount

    def fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        self._cur.execute(translate_placeholders(sql, "pyformat"), params or {})
        return self._cur.fetchall()

    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        return _parse_csv(*self._copy_out(sql, params), schema)

    def fetch_each(self, queries: Iterable[tuple[str, dict[str, Any]]], schema: pa.Schema | None = None,
                   rows: int = 262_144) -> Iterator[pa.RecordBatch]:
        # The server formats the next query's rows as text (most of a backup's time) while this
        # thread parses and stores the current one's: the two cores work at once. One query ahead
        # at most, so memory stays bounded by two results. The pool's exit waits for a COPY under
        # way (a deadline's interrupt cancels it), so the connection is idle when this returns.
        from concurrent.futures import ThreadPoolExecutor

        remaining = iter(queries)
        with ThreadPoolExecutor(1, thread_name_prefix="stockpipe-copy-out") as pool:
            def submit():
                query = next(remaining, None)
                return None if query is None else pool.submit(self._copy_out, *query)

            pending = submit()
            try:
                while pending is not None:
                    result = pending.result()
                    pending = submit()
                    # One batch per `rows`, not per block the CSV reader parsed (~5k rows): a
                    # backup written from those had 1,272 row groups for 6M rows and spent more
                    # on per-batch overhead (its writer, its checksum) than on the rows.
                    yield from _parse_csv(*result, schema).combine_chunks().to_batches(rows)
            finally:
                if pending is not None:
                    pending.cancel()

    def _copy_out(self, sql: str, params: dict[str, Any] | None) -> tuple[io.BytesIO, list[str] | None]:
        """A query's rows as CSV text, and its column names where the driver gives them."""
        buffer = io.BytesIO()
        # NULL as \N: with CSV's default empty NULL, a one-column NULL row is a blank line and vanishes.
        self._cur.copy_expert(
            f"COPY ({self._sql(sql, params)}) TO STDOUT WITH (FORMAT csv, HEADER true, NULL '\\N')", buffer
        )
        buffer.seek(0)
        return buffer, [d.name for d in self._cur.description] if self._cur.description else None

    def stage(self, name: str, data: pa.Table, like: Table) -> None:
        self._cur.execute(f"CREATE TEMPORARY TABLE {name} (LIKE {like.name}) ON COMMIT DROP")
        self._copy_in(name, data.column_names, data)

    def insert(self, table: Table, data: pa.Table) -> int:
        self._copy_in(table.name, table.columns, data)
        return data.num_rows

    def _copy_in(self, name: str, columns: list[str], data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        # Streamed: the server stores a piece while the next one is encoded.
        pieces = pg_binary.iter_encoded(data.select(columns))
        self._cur.copy_expert(f"COPY {name} ({', '.join(columns)}) FROM STDIN WITH (FORMAT binary)", pg_binary.Reader(pieces))

    def lock(self, key: str) -> None:
        self._cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%(k)s, 0))", {"k": key})

    def lock_symbols(self, table: str, symbols) -> None:
        # Symbols fall into 64 buckets per table, so a writer of thousands of symbols (an ingest, a
        # restore) takes few locks: it locks its buckets exclusively. A writer of a few symbols (a
        # chunk) locks its buckets shared and then each symbol exclusively: two chunks of disjoint
        # symbols, which share buckets almost always (50 symbols cover ~35 of 64), write at the same
        # time instead of one after the other, and still wait for a bulk writer of their symbols.
        # Buckets before symbols, each in key order: two writers never wait on each other in a cycle.
        if not symbols:
            return
        names = sorted(set(symbols))
        few = len(names) <= _FEW_SYMBOLS
        bucket_lock = "pg_advisory_xact_lock_shared" if few else "pg_advisory_xact_lock"
        params = {"t": f"stockpipe:{table}", "s": names}
        self._cur.execute(
            f"SELECT {bucket_lock}(hashtext(%(t)s), b) FROM "
            "(SELECT DISTINCT hashtext(s) & 63 AS b FROM unnest(CAST(%(s)s AS varchar[])) AS s ORDER BY 1) buckets",
            params,
        )
        if few:
            self._cur.execute(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(%(t)s || ':' || s, 0) AS k "
                "FROM unnest(CAST(%(s)s AS varchar[])) AS s ORDER BY 1) symbol_keys",
                params,
            )


class PostgresStore(Store):
    dialect = "postgresql"
    codepoint_collation = ' COLLATE "C"'
    symbol_ranges_prune = False

    def __init__(self, url: str):
        super().__init__(url)
        self._engine = None
        self._engine_pid = None
        # psycopg2 connections inside a session or a run lock now, for `interrupt` (another thread).
        self._busy: set = set()

    def _schema_filter(self) -> str:
        return " AND table_schema = current_schema()"

    def engine(self):
        from sqlalchemy import create_engine

        if self._engine is None or self._engine_pid != os.getpid():
            if self._engine is not None:
                # A forked Luigi worker must not reuse its parent's sockets.
                self._engine.dispose(close=False)
            url = encode_userinfo(self.url)
            url = url.replace("postgresql:", "postgresql+psycopg2:", 1) if url.startswith("postgresql:") else url
            url = url.replace("postgres:", "postgresql+psycopg2:", 1) if url.startswith("postgres:") else url
            self._engine = create_engine(url, pool_pre_ping=True, pool_recycle=_POOL_RECYCLE_SECONDS, pool_size=2,
                                         connect_args=_connect_args(url))
            self._engine_pid = os.getpid()
        return self._engine

    @contextmanager
    def _open_session(self, write: bool) -> Iterator[Session]:
        import psycopg2
        import sqlalchemy.exc

        try:
            connection = self.engine().raw_connection()
        except (sqlalchemy.exc.OperationalError, psycopg2.OperationalError) as exc:
            raise StoreError(scrub(f"cannot connect to {self.redacted_url()}: {exc}".strip(), self.url)) from None
        self._busy.add(connection.dbapi_connection)
        try:
            if not write:
                connection.set_session(readonly=True)
            session = _PostgresSession(connection)
            try:
                yield session
            except BaseException:
                try:
                    connection.rollback()
                except psycopg2.Error:
                    pass  # the server went away: nothing was committed
                raise
            connection.commit()
        finally:
            self._busy.discard(connection.dbapi_connection)
            if connection.dbapi_connection is None or connection.dbapi_connection.closed:
                # A dropped connection goes out of the pool without the pool's reset, whose
                # "connection already closed" traceback would be logged before the real error.
                connection.invalidate()
            else:
                try:
                    if not write:
                        connection.rollback()
                        connection.set_session(readonly=False)
                except psycopg2.Error:
                    pass
                connection.close()

    @contextmanager
    def run_lock(self, key: str) -> Iterator[None]:
        # A session-level advisory lock on a connection of its own, outside any transaction: held
        # for the task's whole run, released by the server if this process dies.
        import logging
        import time

        with self._autocommit_cursor() as cursor:
            lock_key = {"k": f"stockpipe-run:{key}"}
            cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%(k)s, 0))", lock_key)
            if not cursor.fetchone()[0]:
                logging.getLogger("stockpipe.store").info("%s: waiting for another run doing the same work", key)
                while True:
                    time.sleep(0.2)
                    cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%(k)s, 0))", lock_key)
                    if cursor.fetchone()[0]:
                        break
            try:
                yield
            finally:
                released = False
                try:
                    cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%(k)s, 0))", lock_key)
                    released = bool(cursor.fetchone()[0])
                except Exception:  # noqa: BLE001 - a dropped connection released it; keep the task's error
                    pass
                if not released:
                    cursor.connection.close()  # it may still hold the lock: the server lets go with the session

    def interrupt(self):
        # A statement waiting in libpq (a lock, a long COPY) returns only when the server answers,
        # so a deadline's signal handler would wait for it; a cancel request makes it answer now
        # ("canceling statement due to user request"), the transaction rolls back.
        import psycopg2

        for connection in list(self._busy):
            try:
                connection.cancel()
            except psycopg2.Error:
                pass  # closed meanwhile: nothing to stop

    def reclaim_during_run(self, table):
        # A rebuild replacing most of a table leaves each chunk's old rows dead until a VACUUM: done
        # only at the end, the table grew by all of them (1.5x after a second full rebuild). Once
        # a tenth of the table is dead, a VACUUM makes their space reusable by the chunks still to
        # come. SKIP_LOCKED: a VACUUM another worker is running does the same; never wait for it.
        with self._autocommit_cursor() as cursor:
            found = _table_stats(cursor, table)
            if found is None:
                return
            estimated_rows, dead, _ = found
            # The server counts dead rows with a delay (its statistics are sent about once a second):
            # what this process replaced since its last VACUUM is a floor.
            if max(dead, self.replaced_since_vacuum[table]) > max(_RECLAIM_FRACTION * estimated_rows, _RECLAIM_MIN_DEAD):
                cursor.execute(f"VACUUM (SKIP_LOCKED) {table}")
                self.replaced_since_vacuum[table] = 0

    @contextmanager
    def _autocommit_cursor(self):
        # Outside any transaction (VACUUM cannot run inside one; a run lock is held for a whole
        # task): a pooled connection in autocommit, which `interrupt` can cancel, back to the pool
        # after in transaction mode (a connection per use cost ~20 ms), unless it was closed.
        connection = self.engine().raw_connection()
        self._busy.add(connection.dbapi_connection)
        try:
            connection.dbapi_connection.autocommit = True
            yield connection.cursor()
        finally:
            self._busy.discard(connection.dbapi_connection)
            if connection.dbapi_connection.closed:
                connection.invalidate()
            else:
                connection.dbapi_connection.autocommit = False
                connection.close()

    def reclaim(self, table, replaced_rows):
        # VACUUM makes the replaced rows' space (and their index entries) reusable, so the next
        # rebuild writes into it instead of growing the files; ANALYZE keeps the plans of the
        # chunk reads and deletes right. Explicit, not left to autovacuum: a server may run
        # without it (this one does), and a rebuild must not depend on its timing. Like
        # autovacuum, only once a good part of the table is dead (a full rebuild: all of it; a
        # 13-session rebuild or a Daily: ~0.5%, left to add up, since each VACUUM scans the whole
        # key index). The server's dead-row count may not include this run's last chunks yet:
        # the run's own count is a floor.
        with self._autocommit_cursor() as cursor:
            found = _table_stats(cursor, table)
            if found is None:
                return
            estimated_rows, dead, changed = found
            live = max(estimated_rows, 0)
            if max(dead, replaced_rows) > _RECLAIM_FRACTION * live:
                cursor.execute(f"VACUUM (ANALYZE) {table}")
                self.replaced_since_vacuum[table] = 0
            elif estimated_rows < 0 or changed > _RECLAIM_FRACTION * live:  # never analyzed, or much changed
                cursor.execute(f"ANALYZE {table}")

    def latest_indicator_dates(self, symbols, before):
        if not symbols:
            return {}
        # One max() per symbol is a backward seek on the (symbol, date) key; the GROUP BY that suits
        # DuckDB aggregates every row of the chunk here (60 ms a chunk).
        with self.session(write=False) as session:
            rows = session.fetch(
                "SELECT x.symbol, (SELECT max(i.date) FROM indicators i WHERE i.symbol = x.symbol AND i.date < :d) "
                "FROM unnest(CAST(:s AS varchar[])) AS x(symbol)",
                {"s": sorted(symbols), "d": before},
            )
        return {r[0]: r[1] for r in rows if r[1] is not None}

    def _window_query(self, table, columns, where) -> str:
        # A window is a few dates of every symbol: without a date index that is a scan of the whole
        # table, unless the (symbol, date) key is probed per symbol. The symbols come from the key
        # itself, one probe each (a skip scan), so a symbol missing from `symbols` is not missed.
        return f"SELECT {columns} FROM {table.name} WHERE symbol = ANY(ARRAY({_key_symbols(table.name)})) AND {where}"

    # DISTINCT, max(date) and count(*) read every row of a table that has no date index; one
    # probe of the (symbol, date) key per symbol reads ~2,500 entries instead of ~6M rows.
    def bar_symbols(self):
        with self.session(write=False) as session:
            return sorted(r[0] for r in session.fetch(_key_symbols("bars")))  # by code point, as Python sorts

    def last_bar_date(self):
        with self.session(write=False) as session:
            return session.fetch(f"SELECT max((SELECT max(b.date) FROM bars b WHERE b.symbol = s.symbol)) "
                                 f"FROM ({_key_symbols('bars')}) s")[0][0]

    def _repeatable_reads(self, session) -> None:
        session.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def _snapshot(self, session) -> None:
        self._repeatable_reads(session)
        # Before the snapshot is taken (by the first query, not by LOCK): a rebuild's swap of the
        # indicators table (`_swap_in`) then either committed before it, or waits for this reader.
        # Without it, a snapshot taken before a swap would read the new table, and miss the rows
        # committed to it after the snapshot (those of the swap's own transaction among them).
        session.execute(f"LOCK TABLE {INDICATORS.name} IN ACCESS SHARE MODE")

    def _bar_dates(self, aggregate, symbols):
        # One probe of the key's index per symbol: GROUP BY read every bar of the table (0.6-1.5 s
        # for 6M bars, most of an ingest's own time).
        with self.session(write=False) as session:
            rows = session.fetch(f"SELECT s.symbol, (SELECT {aggregate}(b.date) FROM bars b WHERE b.symbol = s.symbol) "
                                 "FROM unnest(CAST(:s AS text[])) AS s(symbol)", {"s": list(symbols)})
        return {symbol: day for symbol, day in rows if day is not None}

    def _indicator_extent(self, session):
        symbols = [r[0] for r in session.fetch(_key_symbols("indicators"))]
        first = session.fetch("SELECT min((SELECT min(i.date) FROM indicators i WHERE i.symbol = s.symbol)) "
                              f"FROM ({_key_symbols('indicators')}) s")[0][0]
        return symbols, first

    def _build_blocker(self, session):
        # What a swap would leave behind on the old table (dropped with it) or break: the users'
        # own views, triggers, publications, foreign keys, policies and indexes.
        found = session.fetch(
            "WITH t AS (SELECT to_regclass('indicators') AS oid) "
            "SELECT 'view ' || v.oid::regclass::text FROM t, pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "JOIN pg_class v ON v.oid = r.ev_class WHERE d.classid = 'pg_rewrite'::regclass "
            "AND d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid AND v.oid <> t.oid "
            "AND NOT (v.relname = ANY(:ours) AND v.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = t.oid)) "
            "UNION ALL SELECT 'trigger ' || tgname FROM t, pg_trigger WHERE tgrelid = t.oid AND NOT tgisinternal "
            "UNION ALL SELECT 'publication ' || p.pubname FROM t, pg_publication_rel pr "
            "JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = t.oid "
            "UNION ALL SELECT 'foreign key ' || conname FROM t, pg_constraint WHERE confrelid = t.oid "
            "UNION ALL SELECT 'policy ' || polname FROM t, pg_policy WHERE polrelid = t.oid "
            "UNION ALL SELECT 'index ' || i.indexrelid::regclass::text FROM t, pg_index i "
            "WHERE i.indrelid = t.oid AND NOT i.indisprimary ORDER BY 1",
            {"ours": sorted({view.name for view in VIEWS})},
        )
        found += session.fetch(
            # Column grants are not carried over; and only the owner's role may rename and drop it.
            "SELECT 'column grants on ' || attname FROM pg_attribute WHERE attrelid = to_regclass('indicators') "
            "AND attacl IS NOT NULL UNION ALL SELECT 'owner ' || pg_get_userbyid(relowner) || ', a role this "
            "connection is not a member of' FROM pg_class WHERE oid = to_regclass('indicators') "
            "AND NOT pg_has_role(relowner, 'MEMBER')")
        if not found:
            return None
        names = ", ".join(r[0] for r in found[:5])
        return f"the indicators table has {names}{' and more' if len(found) > 5 else ''}, which a swap would not keep"

    def _tables_named(self, session, prefix):
        # pg_class, not information_schema: that lists only tables this role has a privilege on.
        return sorted(r[0] for r in session.fetch(
            "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace "
            "AND starts_with(relname::text, :p)", {"p": prefix}))

    def backup_table_bytes(self, plan_id):
        with self.session(write=False) as session:
            return int(session.fetch("SELECT coalesce(pg_total_relation_size(to_regclass(:t)), 0)",
                                     {"t": backup_table_name(plan_id)})[0][0])

    def _lock_for_swap(self, session):
        # Behind a long reader (a replica's export, `stockpipe check`) the swap gives up after a
        # while instead of queueing every reader and writer behind itself: the run fails, and
        # running it again retries the swap (its chunks are done).
        import psycopg2.errors

        session.execute(f"SET LOCAL lock_timeout = '{_SWAP_LOCK_SECONDS}s'")
        try:
            session.execute(f"LOCK TABLE {INDICATORS.name} IN ACCESS EXCLUSIVE MODE")
        except psycopg2.errors.LockNotAvailable:
            raise StoreError(
                f"waited {_SWAP_LOCK_SECONDS} s for other sessions to finish with the indicators table (a long "
                "query, an idle transaction: see pg_stat_activity) before swapping in the rebuilt one; nothing "
                "changed: run the same command again") from None
        session.execute("SET LOCAL lock_timeout = 0")

    def _carry_table_settings(self, session, old, build):
        # Key names are index names, unique in the schema: the old table's goes first.
        session.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {INDICATORS.name}_pkey TO {old}_pkey")
        session.execute(f"ALTER TABLE {INDICATORS.name} RENAME CONSTRAINT {build}_pkey TO {INDICATORS.name}_pkey")
        # Grants made on the old table (to a dashboard's role, say), except its owner's own. The
        # old table, kept as a backup, keeps none: it is nobody's to read, and a role dropped
        # later must not find privileges on it.
        for grantee, privilege, grantable in session.fetch(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, "
                "a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a "
                "WHERE c.oid = to_regclass(:t) AND a.grantee <> c.relowner ORDER BY 1, 2", {"t": old}):
            session.execute(f"GRANT {privilege} ON {INDICATORS.name} TO {grantee}"
                            + (" WITH GRANT OPTION" if grantable else ""))
        self._revoke_from_others(session, old)
        owner, options, comment = session.fetch(
            "SELECT pg_get_userbyid(relowner), reloptions, obj_description(oid, 'pg_class') FROM pg_class "
            "WHERE oid = to_regclass(:t)", {"t": old})[0]
        session.execute(f"ALTER TABLE {INDICATORS.name} OWNER TO {_quote_ident(owner)}")
        if options:  # e.g. autovacuum settings an operator gave the table
            session.execute(f"ALTER TABLE {INDICATORS.name} SET ({', '.join(options)})")
        if comment is not None:
            session.execute(f"COMMENT ON TABLE {INDICATORS.name} IS :c", {"c": comment})
        session.execute(f"ANALYZE {INDICATORS.name}")  # the planner's statistics, committed with the swap

    def _revoke_from_others(self, session, table):
        for (grantee,) in session.fetch(
                "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END "
                "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(:t) AND a.grantee <> c.relowner "
                "ORDER BY 1", {"t": table}):
            session.execute(f"REVOKE ALL ON {table} FROM {grantee} CASCADE")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _parse_csv(buffer: io.BytesIO, names: list[str] | None, schema: pa.Schema | None) -> pa.Table:
    """Rows that `COPY ... TO STDOUT` wrote as CSV (see `_copy_out`) as an Arrow table of `schema`."""
    if buffer.getbuffer().nbytes == 0:
        return schema.empty_table() if schema is not None else pa.table({})
    convert = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in schema} if schema is not None else None,
        null_values=["\\N"],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t", "true"],
        false_values=["f", "false"],
    )
    table = pacsv.read_csv(buffer, convert_options=convert, read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if names else 0))
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    return table


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_stats(cursor, table: str) -> tuple[float, int, int] | None:
    """`table`'s estimated rows (-1: never analyzed), dead rows and rows changed since its last
    ANALYZE, as the server counts them; None if there is no such table."""
    cursor.execute(
        "SELECT c.reltuples, coalesce(s.n_dead_tup, 0), coalesce(s.n_mod_since_analyze, 0) FROM pg_class c "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(%(t)s)", {"t": table})
    return cursor.fetchone()


def _key_symbols(table: str) -> str:
    """A query of `table`'s distinct symbols in key order, one probe of its (symbol, date) key each
    (a skip scan: PostgreSQL has none of its own)."""
    return (f"WITH RECURSIVE s(symbol) AS ((SELECT symbol FROM {table} ORDER BY symbol LIMIT 1) UNION ALL "
            f"SELECT (SELECT t.symbol FROM {table} t WHERE t.symbol > s.symbol ORDER BY t.symbol LIMIT 1) "
            "FROM s WHERE s.symbol IS NOT NULL) SELECT symbol FROM s WHERE symbol IS NOT NULL")
