"""What runs on Spark's executors: one plan chunk's bars in, its indicator rows staged as Parquet.

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
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stockpipe.indicators.table import indicator_rows

FINGERPRINT = b"stockpipe.bars_fingerprint"
RESULT_SCHEMA = "chunk_id int, rows long, fingerprint string"


def staged_path(staging: str | Path, chunk_id: int) -> Path:
    return Path(staging) / f"chunk-{int(chunk_id)}.parquet"


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


def stage_chunk(staging: str, group: pa.Table) -> pa.Table:
    """One chunk's group (chunk_id, symbol, date, close, volume, keep_from): its indicator rows
    written atomically to `staging`, and one summary row back to the driver."""
    order = pc.sort_indices(group, sort_keys=[("symbol", "ascending"), ("date", "ascending")])
    group = group.take(order)
    chunk_id = int(group.column("chunk_id")[0].as_py())
    bars = normalise(group)
    runs = pc.run_end_encode(bars.column("symbol").combine_chunks())
    firsts = np.r_[0, runs.run_ends.to_numpy()[:-1]].astype(np.int64)
    keep = group.column("keep_from").cast(pa.date32()).take(pa.array(firsts)).to_pylist()
    from_dates = {name: day for name, day in zip(runs.values.to_pylist(), keep) if day is not None}
    rows = indicator_rows(bars, from_dates)
    digest = fingerprint(bars, from_dates)
    target = staged_path(staging, chunk_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(rows.replace_schema_metadata({FINGERPRINT: digest.encode()}), temporary, compression="lz4")
    os.replace(temporary, target)  # a retried or speculative task rewrites the same file whole
    return pa.table({"chunk_id": pa.array([chunk_id], pa.int32()), "rows": pa.array([rows.num_rows], pa.int64()),
                     "fingerprint": pa.array([digest], pa.string())})


def read_staged(staging: str | Path, chunk_id: int) -> tuple[pa.Table, str] | None:
    """The chunk's staged rows and the digest of the bars they came from, or None if none are staged."""
    path = staged_path(staging, chunk_id)
    try:
        rows = pq.read_table(path)
    except FileNotFoundError:
        return None
    digest = (rows.schema.metadata or {}).get(FINGERPRINT, b"").decode()
    return rows.replace_schema_metadata(None), digest
