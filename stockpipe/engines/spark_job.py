"""What runs on Spark's executors: one plan chunk's bars in, its indicator rows back to the driver.

An executor touches no file of the run: the driver ships each chunk's bars inside the job (one row
per chunk: `chunk_id`, the bars as an Arrow IPC stream) and receives the chunk's rows inside the
job's result (the staged file's bytes: an Arrow IPC stream tagged with the digest of the bars
they came from), which it writes to `<run dir>/staged/` itself. So executors on other machines need
no shared filesystem, only Python with numpy and pyarrow.

Shipped to executors by value (cloudpickle), together with `stockpipe.indicators`: an executor needs
numpy and pyarrow, not stockpipe, and never imports Luigi or the tasks. Keep this module's imports
to the standard library, numpy, pyarrow and `stockpipe.indicators`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stockpipe.indicators.table import indicator_rows

FINGERPRINT = b"stockpipe.bars_fingerprint"
# One row per chunk each way: the job's input (chunk_id, bars) and its result.
JOB_SCHEMA = pa.schema([("chunk_id", pa.int32()), ("bars", pa.binary())])
RESULT_SCHEMA = "chunk_id int, rows long, fingerprint string, staged binary"
# The bars of one chunk as shipped: what decides its rows, nothing more.
CHUNK_BARS = pa.schema([("symbol", pa.string()), ("date", pa.date32()), ("close", pa.float64()),
                        ("volume", pa.int64()), ("keep_from", pa.date32())])


def staged_path(staging: str | Path, chunk_id: int) -> Path:
    # An Arrow IPC stream, not Parquet: the rows are 11 doubles each, which Parquet's lz4 did not
    # shrink (~95 bytes a row either way), while encoding them took 115 ms of a 50-symbol chunk's
    # 200 ms on an executor and decoding them 30 ms of each chunk task; an IPC stream is written
    # and read back as it lies in memory.
    return Path(staging) / f"chunk-{int(chunk_id)}.arrow"


def normalise(bars: pa.Table) -> pa.Table:
    """symbol, date, close, volume with the store's types (Spark hands strings over as large ones)."""
    return pa.table({
        "symbol": bars.column("symbol").cast(pa.string()).combine_chunks(),
        "date": bars.column("date").cast(pa.date32()).combine_chunks(),
        "close": bars.column("close").cast(pa.float64()).combine_chunks(),
        "volume": bars.column("volume").cast(pa.int64()).combine_chunks(),
    })


def fingerprint(bars: pa.Table, from_dates: Mapping[str, dt.date] | None) -> str:
    """A digest of exactly what decides a chunk's rows: its bars (symbol, date, close, volume, in
    order) and each symbol's first kept date. Staged rows are used only when the chunk task's own
    read gives the same digest."""
    bars = normalise(bars)
    digest = hashlib.blake2b(digest_size=20)
    if bars.num_rows:
        runs = pc.run_end_encode(bars.column("symbol").combine_chunks())
        names = runs.values.to_pylist()
        keep = [(from_dates or {}).get(n) for n in names]
        digest.update(json.dumps([names, runs.run_ends.to_numpy().tolist(),
                                  [None if k is None or k == dt.date.min else k.isoformat() for k in keep]]).encode())
        digest.update(pc.cast(bars.column("date"), pa.int32()).to_numpy().astype("<i4").tobytes())
        digest.update(bars.column("close").to_numpy().astype("<f8").tobytes())
        digest.update(bars.column("volume").to_numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def pack_bars(bars: pa.Table) -> bytes:
    """One chunk's bars (CHUNK_BARS' columns) as the bytes a job row carries: an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    bars = bars.select(CHUNK_BARS.names).cast(CHUNK_BARS)
    with pa.ipc.new_stream(sink, CHUNK_BARS) as writer:
        writer.write_table(bars)
    return sink.getvalue().to_pybytes()


def compute_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The `mapInArrow` function: for each job row (chunk_id, bars), one result row (chunk_id,
    rows, fingerprint, staged). One chunk at a time, so a Python worker holds one chunk's bars and rows."""
    for batch in batches:
        ids = batch.column("chunk_id")
        payloads = batch.column("bars")
        for i in range(batch.num_rows):
            yield compute_chunk(int(ids[i].as_py()), pa.ipc.open_stream(payloads[i].as_buffer()).read_all())


def compute_chunk(chunk_id: int, group: pa.Table) -> pa.RecordBatch:
    """One chunk's bars (symbol, date, close, volume, keep_from): its indicator rows as the bytes of
    the file the driver stages (an Arrow IPC stream whose schema carries the digest of the bars),
    with the row count and that digest."""
    order = pc.sort_indices(group, sort_keys=[("symbol", "ascending"), ("date", "ascending")])
    group = group.take(order)
    bars = normalise(group)
    runs = pc.run_end_encode(bars.column("symbol").combine_chunks())
    firsts = np.r_[0, runs.run_ends.to_numpy()[:-1]].astype(np.int64) if bars.num_rows else np.empty(0, np.int64)
    keep = group.column("keep_from").cast(pa.date32()).take(pa.array(firsts)).to_pylist()
    from_dates = {name: day for name, day in zip(runs.values.to_pylist(), keep) if day is not None}
    rows = indicator_rows(bars, from_dates)
    digest = fingerprint(bars, from_dates)
    rows = rows.replace_schema_metadata({FINGERPRINT: digest.encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return pa.RecordBatch.from_pydict(
        {"chunk_id": pa.array([chunk_id], pa.int32()), "rows": pa.array([rows.num_rows], pa.int64()),
         "fingerprint": pa.array([digest], pa.string()), "staged": _one_value(sink.getvalue())})


def _one_value(data: pa.Buffer) -> pa.Array:
    """A binary array of one value, `data`, without copying it."""
    return pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, data.size], np.int32)), data])


def write_staged(staging: str | Path, chunk_id: int, staged: bytes | pa.Buffer) -> Path:
    """The driver's side: a chunk's staged bytes to `staging`, atomically (written, then
    renamed), so a task never reads half a file and a second attempt rewrites it whole."""
    target = staged_path(staging, chunk_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(staged)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def read_staged(staging: str | Path, chunk_id: int) -> tuple[pa.Table, str] | None:
    """The chunk's staged rows and the digest of the bars they came from, or None if none are staged."""
    path = staged_path(staging, chunk_id)
    try:
        # Mapped, not copied: the rows go from the page cache straight to the store's bulk insert.
        with pa.memory_map(str(path)) as source:
            rows = pa.ipc.open_stream(source).read_all()
    except FileNotFoundError:
        return None
    digest = (rows.schema.metadata or {}).get(FINGERPRINT, b"").decode()
    return rows.replace_schema_metadata(None), digest
