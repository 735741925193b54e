"""An order-independent checksum of table rows, to tell a complete backup from a damaged one.

Each row is hashed from its column values (in column-name order) and the row hashes are summed
modulo 2**64, so the result does not depend on row order or on how the rows are batched: the
writer computes it while streaming, the reader over the whole file.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0xA5A5_5A5A_0F0F_F0F0)
_SEED = np.uint64(0x1234_5678_9ABC_DEF1)


def _words(column: pa.Array) -> np.ndarray:
    """One 64-bit word per value of `column`, equal for equal values, fixed for nulls."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        unique = [hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest() for v in encoded.dictionary.to_pylist()]
        table = np.frombuffer(b"".join(unique), dtype=np.uint64) if unique else np.zeros(0, np.uint64)
        indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        words = table[indices] if len(table) else np.zeros(len(column), np.uint64)
    elif pa.types.is_floating(kind):
        words = pc.cast(column, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_boolean(kind):
        words = pc.cast(column, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_date(kind) or pa.types.is_timestamp(kind) or pa.types.is_integer(kind):
        physical = pa.int32() if pa.types.is_date32(kind) else pa.int64()
        words = pc.cast(column.view(physical) if physical != kind else column, pa.int64())
        words = words.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    else:
        raise TypeError(f"no checksum for column type {kind}")
    if column.null_count:
        words = np.where(pc.is_null(column).to_numpy(zero_copy_only=False), _NULL, words)
    return np.asarray(words, dtype=np.uint64)


def batch_checksum(batch: pa.RecordBatch | pa.Table) -> int:
    if batch.num_rows == 0:
        return 0
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks()
        columns = {name: batch.column(name).chunk(0) if batch.column(name).num_chunks else pa.array([], batch.schema.field(name).type)
                   for name in batch.schema.names}
    else:
        columns = {name: batch.column(name) for name in batch.schema.names}
    rows = np.full(batch.num_rows, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in sorted(columns):
            rows = (rows ^ _words(columns[name])) * _MULTIPLIER
            rows ^= rows >> np.uint64(29)
        return int(rows.sum(dtype=np.uint64))


def rows_checksum(batches: Iterable[pa.RecordBatch | pa.Table]) -> int:
    total = 0
    for batch in batches:
        total = (total + batch_checksum(batch)) % (1 << 64)
    return total
