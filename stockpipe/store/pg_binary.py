"""PostgreSQL binary COPY payloads built from Arrow with numpy, no Python object per row.

Format (PostgreSQL docs, "COPY ... BINARY"): a header, then per row an int16 field count and per
field an int32 byte length (-1 for NULL) followed by the value in network byte order; a -1 int16
trailer. Rows vary in size only by their text field's length and which fields are NULL, so rows are
grouped by (text lengths, NULL pattern) and each group becomes one fixed-layout structured array.
Binary COPY spares the server from parsing 17-digit float text: ~3x faster than CSV here.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
_PG_EPOCH_DAYS = (dt.date(2000, 1, 1) - dt.date(1970, 1, 1)).days
_PG_EPOCH_MICROS = _PG_EPOCH_DAYS * 86_400_000_000


def _fixed(column: pa.ChunkedArray | pa.Array, arrow_type: pa.DataType) -> tuple[np.ndarray, np.dtype]:
    """Values in network byte order, and their dtype; nulls are filled (masked out later)."""
    if pa.types.is_floating(arrow_type):
        return pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False).astype(">f8"), np.dtype(">f8")
    if pa.types.is_integer(arrow_type):
        width = ">i8" if arrow_type.bit_width == 64 else ">i4"
        return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(width), np.dtype(width)
    if pa.types.is_boolean(arrow_type):
        return pc.fill_null(column, False).to_numpy(zero_copy_only=False).astype("u1"), np.dtype("u1")
    if pa.types.is_date32(arrow_type):
        days = pc.cast(pc.fill_null(column, pa.scalar(0, pa.date32())), pa.int32()).to_numpy(zero_copy_only=False)
        return (days.astype(np.int64) - _PG_EPOCH_DAYS).astype(">i4"), np.dtype(">i4")
    if pa.types.is_timestamp(arrow_type):
        micros = pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64())
        micros = pc.fill_null(micros, 0).to_numpy(zero_copy_only=False)
        return (micros - _PG_EPOCH_MICROS).astype(">i8"), np.dtype(">i8")
    raise TypeError(f"no binary COPY encoding for {arrow_type}")


def _group_rows(null_matrix: np.ndarray, text_lengths: list[np.ndarray]) -> np.ndarray:
    """Group index per row: rows share a group when their NULLs and text lengths are the same."""
    columns = null_matrix.shape[1]
    if columns + 16 * len(text_lengths) <= 63 and all(l.max(initial=0) < 1 << 16 for l in text_lengths):
        # Pack the key into one int64: a 1-D unique is ~50x faster than np.unique(axis=0).
        key = (null_matrix.astype(np.int64) << np.arange(columns, dtype=np.int64)).sum(axis=1)
        for offset, lengths in enumerate(text_lengths):
            key |= lengths.astype(np.int64) << (columns + 16 * offset)
        return np.unique(key, return_inverse=True)[1].reshape(-1)
    keys = np.hstack([null_matrix.astype(np.int64)] + [l[:, None] for l in text_lengths])
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def encode(table: pa.Table) -> bytes:
    """The whole binary COPY payload (header, rows, trailer) for `table`'s columns in order."""
    n = table.num_rows
    if n == 0:
        return HEADER + TRAILER
    values, nulls, text_lengths, kinds = [], [], [], []
    for field in table.schema:
        column = table.column(field.name)
        if pa.types.is_floating(field.type):
            missing = pc.or_(pc.is_null(column), pc.fill_null(pc.is_nan(column), False)).to_numpy(zero_copy_only=False)
        else:
            missing = pc.is_null(column).to_numpy(zero_copy_only=False)
        nulls.append(np.asarray(missing, dtype=bool))
        if pa.types.is_string(field.type):
            encoded = [s.encode("utf-8") if s is not None else b"" for s in column.to_pylist()]
            values.append(np.array(encoded, dtype=object))
            text_lengths.append(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n))
            kinds.append("text")
        else:
            array, dtype = _fixed(column, field.type)
            values.append(array)
            text_lengths.append(None)
            kinds.append(dtype)
    null_matrix = np.column_stack(nulls)
    group_of_row = _group_rows(null_matrix, [l for l in text_lengths if l is not None])
    parts = [HEADER]
    field_count = np.array(len(table.schema), dtype=">i2")
    for group in range(group_of_row.max() + 1):
        rows = np.flatnonzero(group_of_row == group)
        first = rows[0]
        layout = [("count", ">i2")]
        for index, kind in enumerate(kinds):
            layout.append((f"len{index}", ">i4"))
            if null_matrix[first, index]:
                continue
            if kind == "text":
                layout.append((f"val{index}", f"S{int(text_lengths[index][first])}"))
            else:
                layout.append((f"val{index}", kind))
        block = np.empty(rows.shape[0], dtype=np.dtype(layout))
        block["count"] = field_count
        for index, kind in enumerate(kinds):
            if null_matrix[first, index]:
                block[f"len{index}"] = -1
                continue
            if kind == "text":
                width = int(text_lengths[index][first])
                block[f"len{index}"] = width
                block[f"val{index}"] = values[index][rows].astype(f"S{width}") if width else b""
            else:
                block[f"len{index}"] = kind.itemsize
                block[f"val{index}"] = values[index][rows]
        parts.append(block.tobytes())
    parts.append(TRAILER)
    return b"".join(parts)
