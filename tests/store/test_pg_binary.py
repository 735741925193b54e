"""Binary COPY payloads (pg_binary): the vectorised encoder against a row-by-row reference written
from the PostgreSQL docs, and against the server itself (what a payload stores is what was given)."""

from __future__ import annotations

import datetime as dt
import math
import random
import struct

import numpy as np
import pyarrow as pa
import pytest

from stockpipe.store import open_store, pg_binary
from stockpipe.store.schema import Table

_PG_EPOCH = dt.date(2000, 1, 1)
_PG_EPOCH_TIME = dt.datetime(2000, 1, 1)


def _reference_field(value, arrow_type: pa.DataType) -> bytes:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return struct.pack(">i", -1)  # NULL; NaN floats are stored as NULL too
    if pa.types.is_string(arrow_type):
        data = value.encode("utf-8")
    elif pa.types.is_floating(arrow_type):
        data = struct.pack(">d", value)
    elif pa.types.is_boolean(arrow_type):
        data = b"\x01" if value else b"\x00"
    elif pa.types.is_integer(arrow_type):
        data = struct.pack(">q" if arrow_type.bit_width == 64 else ">i", value)
    elif pa.types.is_date32(arrow_type):
        data = struct.pack(">i", (value - _PG_EPOCH).days)
    elif pa.types.is_timestamp(arrow_type):
        data = struct.pack(">q", (value - _PG_EPOCH_TIME) // dt.timedelta(microseconds=1))
    else:
        raise AssertionError(arrow_type)
    return struct.pack(">i", len(data)) + data


def reference_encode(table: pa.Table) -> bytes:
    """One row at a time, in the payload order the module documents: rows grouped by their NULL
    flags and text lengths, groups in key order, rows of a group in input order."""
    types = [field.type for field in table.schema]
    texts = [i for i, t in enumerate(types) if pa.types.is_string(t)]
    rows = [list(row.values()) for row in table.to_pylist()]

    def is_null(value) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    def key(row):
        nulls = [int(is_null(v)) for v in row]
        lengths = [len(row[i].encode("utf-8")) if row[i] is not None else 0 for i in texts]
        return nulls, lengths

    keys = [key(row) for row in rows]
    packed = len(types) + 16 * len(texts) <= 63 and all(l < 1 << 16 for _, lengths in keys for l in lengths)
    if packed:
        sort_key = [lengths[::-1] + nulls[::-1] for nulls, lengths in keys]
    else:
        sort_key = [nulls + lengths for nulls, lengths in keys]
    order = sorted(range(len(rows)), key=lambda i: sort_key[i])  # stable: input order within a group
    body = b"".join(
        struct.pack(">h", len(types)) + b"".join(_reference_field(v, t) for v, t in zip(rows[i], types)) for i in order
    )
    return pg_binary.HEADER + body + pg_binary.TRAILER


_SYMBOLS = ["", "A", "AAPL", "BRK.B", "ÄÖÜ", "日本株", "x" * 40, "emoji😀", "GOOGL", "Z"]


def _random_table(seed: int, rows: int, text_columns: int = 1) -> pa.Table:
    rng = random.Random(seed)

    def maybe_null(make, share=0.2):
        return [None if rng.random() < share else make() for _ in range(rows)]

    def float_value():
        return rng.choice([float("nan"), 0.0, -0.0, math.inf, -math.inf, rng.uniform(-1e6, 1e6), 1e-310])

    columns = {}
    for i in range(text_columns):
        columns[f"text{i}"] = pa.array(maybe_null(lambda: rng.choice(_SYMBOLS), 0.1 if i else 0.0), pa.string())
    columns["day"] = pa.array(maybe_null(lambda: dt.date(1990, 1, 1) + dt.timedelta(days=rng.randrange(20000))), pa.date32())
    for i in range(3):
        columns[f"value{i}"] = pa.array(maybe_null(float_value, 0.1 * i), pa.float64())
    columns["volume"] = pa.array(maybe_null(lambda: rng.randrange(-(2**62), 2**62)), pa.int64())
    columns["count"] = pa.array(maybe_null(lambda: rng.randrange(-(2**31), 2**31)), pa.int32())
    columns["flag"] = pa.array(maybe_null(lambda: rng.random() < 0.5), pa.bool_())
    columns["stamp"] = pa.array(
        maybe_null(lambda: dt.datetime(2020, 1, 1) + dt.timedelta(microseconds=rng.randrange(10**15))), pa.timestamp("us"))
    return pa.table(columns)


@pytest.mark.parametrize("rows", [0, 1, 2, 7, 500])
@pytest.mark.parametrize("text_columns", [0, 1, 4])
def test_payload_matches_the_row_by_row_reference(rows, text_columns):
    for seed in range(3):
        table = _random_table(seed, rows, text_columns)
        assert pg_binary.encode(table) == reference_encode(table), (seed, rows, text_columns)


def test_payload_is_the_same_from_several_chunks_slices_and_small_pieces():
    table = _random_table(11, 300, 2)
    whole = reference_encode(table)
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100, 1), table.slice(101)])
    assert chunked.column("text0").num_chunks == 3
    assert pg_binary.encode(chunked) == whole
    pieces = list(pg_binary.iter_encoded(table, block_bytes=64))
    assert len(pieces) > 10 and b"".join(pieces) == whole
    sliced = table.slice(37, 200)
    assert pg_binary.encode(sliced) == reference_encode(sliced)


def test_texts_of_64_kib_and_more_and_all_null_texts():
    long_text = "é" * 40_000  # 80,000 bytes: too long for the packed group key
    table = pa.table({
        "text": pa.array(["a", long_text, None, "", long_text + "x", "b"], pa.string()),
        "empty": pa.array([None] * 6, pa.string()),
        "value": pa.array([1.0, None, float("nan"), 4.0, 5.0, 6.0]),
    })
    assert pg_binary.encode(table) == reference_encode(table)


def test_a_single_group_keeps_the_input_order():
    table = pa.table({"symbol": ["B", "A", "C"], "close": [1.0, 2.0, 3.0]})
    assert pg_binary.encode(table) == reference_encode(table)


def test_a_column_that_cannot_be_encoded_is_named_before_any_piece():
    table = pa.table({"payload": pa.array([b"x"], pa.binary())})
    with pytest.raises(TypeError, match="binary"):
        pg_binary.iter_encoded(table)


@pytest.mark.postgres
def test_postgresql_stores_what_was_encoded(postgres_url):
    rows = 3000
    table = _random_table(5, rows, 2)
    table = table.append_column("row_id", pa.array(np.arange(rows), pa.int64()))
    target = Table("pg_binary_round_trip", table.schema, key=("row_id",))
    store = open_store(postgres_url)
    with store.session() as session:
        session.execute(target.ddl())
        assert session.insert(target, table) == rows
    with store.session(write=False) as session:
        stored = session.fetch(f"SELECT {', '.join(table.column_names)} FROM {target.name} ORDER BY row_id")

    def expected(value):
        return None if isinstance(value, float) and math.isnan(value) else value

    given = [tuple(expected(v) for v in row.values()) for row in table.to_pylist()]
    assert len(stored) == rows
    for row_given, row_stored in zip(given, stored):
        for value_given, value_stored in zip(row_given, row_stored):
            if isinstance(value_given, float):
                # Bit for bit (keeps -0.0 apart from 0.0).
                assert struct.pack(">d", value_given) == struct.pack(">d", value_stored)
            else:
                assert value_given == value_stored
