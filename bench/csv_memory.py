"""Peak memory of reading a big CSV bar file through the csv source (issue 17 item 18).

    python bench/csv_memory.py [--mb 500] [--keep DIR]

Writes a long-format file of about `--mb` megabytes (synthetic bars, 2,000 symbols), then, in a
fresh process, asks the source for one ingest's worth of bars (every symbol, the last 5 sessions)
and for the universe, and prints JSON: file size, rows, seconds and peak RSS of that process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READER = """
import datetime as dt, json, resource, sys, time
from stockpipe.sources.csv_source import CsvSource
source = CsvSource(sys.argv[1])
started = time.monotonic()
names = source.symbols(dt.date(2025, 10, 10)).column("symbol").to_pylist()
universe_seconds = time.monotonic() - started
started = time.monotonic()
fetched = source.bars(names, dt.date(2025, 10, 6), dt.date(2025, 10, 10))
print(json.dumps({"symbols": len(names), "rows_returned": fetched.rows.num_rows,
                  "universe_seconds": round(universe_seconds, 2),
                  "bars_seconds": round(time.monotonic() - started, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def write_file(path: Path, megabytes: int) -> int:
    import numpy as np
    import pandas as pd

    symbols = [f"S{i:04d}" for i in range(2000)]
    # About 54 bytes a row: enough sessions, ending at the ingest date, to reach the size asked for.
    dates = pd.bdate_range(end="2025-10-10", periods=max(5, (megabytes << 20) // (54 * len(symbols)))).strftime("%Y-%m-%d")
    rows = 0
    rng = np.random.default_rng(1)
    with open(path, "w") as handle:
        handle.write("symbol,date,open,high,low,close,volume\n")
        for start in range(0, len(dates), 500):
            block = dates[start : start + 500]
            for symbol in symbols:
                close = 50 + rng.random(len(block)) * 10
                lines = [f"{symbol},{d},{c:.4f},{c * 1.01:.4f},{c * 0.99:.4f},{c:.4f},{int(c * 1e5)}"
                         for d, c in zip(block, close)]
                handle.write("\n".join(lines) + "\n")
                rows += len(lines)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--keep", help="directory to write the file in (kept)")
    args = parser.parse_args()
    directory = Path(args.keep or tempfile.mkdtemp(prefix="stockpipe-csv-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bars.csv"
    rows = write_file(path, args.mb)
    result = json.loads(subprocess.run([sys.executable, "-c", READER, str(directory)], capture_output=True,
                                       text=True, check=True).stdout)
    result.update({"file_mb": round(path.stat().st_size / (1 << 20), 1), "rows_in_file": rows})
    print(json.dumps(result, indent=2))
    if not args.keep:
        path.unlink()
        directory.rmdir()


if __name__ == "__main__":
    start = time.monotonic()
    main()
