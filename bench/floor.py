"""The raw floor of a full rebuild: the numpy engine's computation and the store's bulk write, with no
Luigi, no plan, no backup and no markers. What any rebuild of the whole history costs at least.

    python bench/floor.py STORE_URL START_DATE [--batch 500]

Reads the bars of `--batch` symbols at a time (all of their history), computes their indicators
from START_DATE and replaces the stored rows through the store's bulk path, one transaction a batch;
prints on stderr `floor: ` and JSON (symbols, batches, rows saved). Run it through bench/measure.py
for seconds and memory (bench/rebuild.py does).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOOR_LINE = "floor: "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store_url")
    parser.add_argument("start_date", type=dt.date.fromisoformat)
    parser.add_argument("--batch", type=int, default=500, help="symbols a transaction")
    options = parser.parse_args()

    from stockpipe.engines import open_engine
    from stockpipe.indicators.spec import WARMUP_BARS
    from stockpipe.services.indicators import chunk, compute_chunk
    from stockpipe.store import open_store

    store = open_store(options.store_url)
    engine = open_engine("numpy")
    batches = chunk(store.bar_symbols(), options.batch)
    saved = 0
    for batch in batches:
        saved += compute_chunk(store, batch, options.start_date, engine=engine, warmup_bars=WARMUP_BARS,
                               marker=None)["rows_saved"]
    store.close()
    # On stderr: bench/measure.py keeps stderr lines (--grep) and discards stdout.
    print(FLOOR_LINE + json.dumps({"symbols": sum(map(len, batches)), "batches": len(batches), "rows_saved": saved}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
