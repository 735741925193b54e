"""PostgreSQL binary COPY payloads built from Arrow with numpy, no Python object per row.

Format (PostgreSQL docs, "COPY ... BINARY"): a header, then per row an int16 field count and per
field an int32 byte length (-1 for NULL) followed by the value in network byte order; a -1 int16
trailer. Rows vary in size only by their text fields' lengths and which fields are NULL, so rows are
grouped by (NULL pattern, text lengths) by one stable sort, and each group is written as blocks of
one fixed-layout structured array. NaN floats are written as NULL. Text columns are dictionary
encoded first: a chunk holds few distinct symbols, whose bytes are laid out once.
Binary COPY spares the server from parsing 17-digit float text: ~3x faster than CSV here.

Row order in the payload: groups in ascending order of their key, rows of a group in input order.
The key orders groups by the last text column's length first, ..., the first text column's length,
then the NULL flags from the last column to the first; when those do not fit 63 bits (many text
columns, a text of 64 KiB or more) by the NULL flags from the first column to the last, then the
text lengths from the first to the last. This is the order of the first encoder's payloads (one
np.unique over the packed key, or over the key's rows), kept so that payloads stay byte-identical.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
_PG_EPOCH_DAYS = (dt.date(2000, 1, 1) - dt.date(1970, 1, 1)).days
_PG_EPOCH_MICROS = _PG_EPOCH_DAYS * 86_400_000_000
# Packed group keys: NULL flags and text lengths share one int64 while the columns and the text
# lengths fit (see the module doc: which order the groups come in depends on it).
_KEY_BITS = 63
_TEXT_LENGTH_BITS = 16


class _Text:
    """A string column as dictionary entries: their UTF-8 bytes, by entry, in one buffer per width.

    A chunk holds few distinct symbols, so the bytes of each distinct value are laid out once and
    rows take them by index.
    """

    def __init__(self, column: pa.ChunkedArray | pa.Array):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        encoded = pc.dictionary_encode(array)
        dictionary = encoded.dictionary
        offsets = np.frombuffer(dictionary.buffers()[1], dtype=np.int32, count=len(dictionary) + 1,
                                offset=dictionary.offset * 4).astype(np.int64)
        data = dictionary.buffers()[2]
        self._bytes = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
        self._starts = offsets[:-1]
        self._entry_lengths = np.diff(offsets)
        # A NULL row's index is 0 (masked out: its field is written as NULL); its length counts as 0.
        indices = encoded.indices
        self.indices = indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        self.missing = indices.is_null().to_numpy(zero_copy_only=False)
        self.lengths = self._entry_lengths[self.indices] if len(dictionary) else np.zeros(len(array), np.int64)
        self.lengths[self.missing] = 0
        self._by_width: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def take(self, indices: np.ndarray, width: int) -> np.ndarray:
        """The bytes of the entries `indices` (all `width` long) as rows of a (len, width) uint8 array."""
        if width not in self._by_width:
            entries = np.flatnonzero(self._entry_lengths == width)
            matrix = self._bytes[self._starts[entries][:, None] + np.arange(width)]
            position = np.zeros(len(self._entry_lengths), np.int64)
            position[entries] = np.arange(len(entries))
            self._by_width[width] = (matrix, position)
        matrix, position = self._by_width[width]
        return matrix[position[indices]]


def _fixed(column: pa.ChunkedArray | pa.Array, arrow_type: pa.DataType) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """Values (native byte order; a NULL's value is arbitrary), NULL flags, and the wire dtype."""
    if pa.types.is_floating(arrow_type):
        values = column.to_numpy(zero_copy_only=False)  # NULL -> NaN
        return values, np.isnan(values), np.dtype(">f8")
    missing = pc.is_null(column).to_numpy(zero_copy_only=False)
    if column.null_count:
        column = pc.fill_null(column, pa.scalar(0 if not pa.types.is_boolean(arrow_type) else False, arrow_type))
    if pa.types.is_integer(arrow_type):
        width = ">i8" if arrow_type.bit_width == 64 else ">i4"
        return column.to_numpy(zero_copy_only=False), missing, np.dtype(width)
    if pa.types.is_boolean(arrow_type):
        return column.to_numpy(zero_copy_only=False).astype(np.uint8), missing, np.dtype("u1")
    if pa.types.is_date32(arrow_type):
        days = pc.cast(column, pa.int32()).to_numpy(zero_copy_only=False)
        return (days.astype(np.int64) - _PG_EPOCH_DAYS).astype(np.int32), missing, np.dtype(">i4")
    if pa.types.is_timestamp(arrow_type):
        micros = pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64()).to_numpy(zero_copy_only=False)
        return micros - _PG_EPOCH_MICROS, missing, np.dtype(">i8")
    raise TypeError(f"no binary COPY encoding for {arrow_type}")


def _group_order(missing: list[np.ndarray], text_lengths: list[np.ndarray], n: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Row order (None: as given) and the start of each group in it, plus the end (see module doc)."""
    packed = len(missing) + _TEXT_LENGTH_BITS * len(text_lengths) <= _KEY_BITS and all(
        lengths.max(initial=0) < 1 << _TEXT_LENGTH_BITS for lengths in text_lengths)
    if packed:
        significance = text_lengths[::-1] + missing[::-1]
    else:
        significance = missing + text_lengths
    # Constant parts do not order anything; each varying one gets the bits its range needs.
    parts = []
    for values in significance:
        low, high = int(values.min()), int(values.max())
        if low != high:
            parts.append((values, low, (high - low).bit_length()))
    if not parts:
        return None, np.array([0, n])
    if sum(bits for _, _, bits in parts) <= _KEY_BITS:
        key = np.zeros(n, dtype=np.int64)
        for values, low, bits in parts:
            key <<= bits
            key |= values - low if low else values
        if key.max() < 1 << 16:
            key = key.astype(np.uint16)  # a stable sort of 16-bit keys is a radix sort
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        changes = ordered[1:] != ordered[:-1]
    else:
        order = np.lexsort([values for values, _, _ in parts[::-1]])  # lexsort's last key is the first
        changes = np.zeros(n - 1, dtype=bool)
        for values, _, _ in parts:
            ordered = values[order]
            changes |= ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(changes) + 1
    return order, np.concatenate(([0], starts, [n]))


class _Group:
    """Rows `start:end` of the payload order that share one fixed layout of `row_bytes` bytes."""

    def __init__(self, start: int, end: int, row_bytes: int, values: list[tuple[int, int, np.dtype | int]],
                 template: np.ndarray):
        self.start, self.end, self.row_bytes = start, end, row_bytes
        # (column, offset in the row, wire dtype or text width) of each non-NULL field with bytes
        self.values = values
        self.template = template  # one row's bytes: field count and lengths filled in, values zero


def _groups(columns: list[tuple], missing: list[np.ndarray], order: np.ndarray | None,
            bounds: np.ndarray) -> list[_Group]:
    """Each group's layout, from its first row (its rows share NULLs and text lengths)."""
    groups = []
    count = struct.pack(">h", len(columns))
    null = struct.pack(">i", -1)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        first = int(order[start]) if order is not None else start
        template, values = [count], []
        offset = len(count)
        for index, (array, _, kind) in enumerate(columns):
            if missing[index][first]:
                template.append(null)
                offset += len(null)
                continue
            width = int(array.lengths[first]) if kind is None else kind.itemsize
            template.append(struct.pack(">i", width) + bytes(width))
            if width:
                values.append((index, offset + 4, width if kind is None else kind))
            offset += 4 + width
        groups.append(_Group(start, end, offset, values, np.frombuffer(b"".join(template), dtype=np.uint8)))
    return groups


def iter_encoded(table: pa.Table, block_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The binary COPY payload for `table`'s columns in order, in pieces of about `block_bytes`.

    Streaming lets the server store one piece while the next is encoded, and never holds the
    whole payload in memory. A column that cannot be encoded raises here, before the first piece.
    """
    n = table.num_rows
    if n == 0:
        return iter((HEADER + TRAILER,))
    columns = []  # per column: (values or _Text, NULL flags, wire dtype or None for text)
    for field in table.schema:
        column = table.column(field.name)
        if pa.types.is_string(field.type):
            text = _Text(column)
            columns.append((text, text.missing, None))
        else:
            columns.append(_fixed(column, field.type))
    missing = [flags for _, flags, _ in columns]
    order, bounds = _group_order(missing, [array.lengths for array, _, kind in columns if kind is None], n)
    return _pieces(columns, _groups(columns, missing, order, bounds), order, block_bytes)


def _pieces(columns: list[tuple], groups: list[_Group], order: np.ndarray | None, block_bytes: int) -> Iterator[bytes]:
    # Per column, what rows are taken from: the values, or a text column's dictionary indices.
    sources = [array.indices if kind is None else array for array, _, kind in columns]
    buffer = np.empty(max([block_bytes, len(HEADER)] + [group.row_bytes for group in groups]), dtype=np.uint8)
    buffer[: len(HEADER)] = np.frombuffer(HEADER, dtype=np.uint8)
    used = len(HEADER)
    for group in groups:
        row_bytes = group.row_bytes
        start = group.start
        while start < group.end:
            room = (buffer.size - used) // row_bytes
            if room == 0:
                yield buffer[:used].tobytes()
                used = 0
                continue
            end = min(start + room, group.end)
            rows = order[start:end] if order is not None else slice(start, end)
            block = buffer[used : used + row_bytes * (end - start)]
            block.reshape(end - start, row_bytes)[:] = group.template
            for index, offset, kind in group.values:
                if isinstance(kind, int):  # a text `kind` bytes long: a (rows, kind) view of its bytes
                    field = np.ndarray((end - start, kind), dtype=np.uint8, buffer=block, offset=offset,
                                       strides=(row_bytes, 1))
                    field[:] = columns[index][0].take(sources[index][rows], kind)
                else:
                    field = np.ndarray((end - start,), dtype=kind, buffer=block, offset=offset, strides=(row_bytes,))
                    field[:] = sources[index][rows]
            used += block.size
            start = end
    tail = buffer[:used].tobytes()
    yield tail + TRAILER


class Reader:
    """A file whose read() hands out the pieces of `pieces` in turn, for psycopg2's copy_expert
    (which sends whatever read() returns, until it returns b"")."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces

    def read(self, size: int = -1) -> bytes:
        return next(self._pieces, b"")


def encode(table: pa.Table) -> bytes:
    """The whole binary COPY payload (header, rows, trailer) for `table`'s columns in order."""
    return b"".join(iter_encoded(table))
