"""Time one `Replicate` (publish_replica) on a kept benchmark store, against a given previous replica.

    python bench/replicate.py STORE_URL --previous OLD_REPLICA --repeat 3

Each repeat is its own process (peak memory is its own): it copies OLD_REPLICA to a scratch
directory as the replica to refresh, then publishes. With the replica that the benchmark's first
Daily left (`replica.previous.duckdb` after its timed Daily), the refresh catches up a 13-session
rebuild and one Daily's ingest and indicators, as that Daily's own Replicate did. Prints JSON:
each run's wall seconds, peak memory (of the process tree, see measure.py), the load average at its start, and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

ONE_RUN = """
import json, shutil, sys
from pathlib import Path
from stockpipe.services.replica import publish_replica
from stockpipe.store import open_store
url, previous, scratch = sys.argv[1:4]
target = Path(scratch) / "replica.duckdb"
if previous:
    shutil.copyfile(previous, target)
stats = publish_replica(open_store(url), target)
print("replica-stats", json.dumps({k: stats.get(k) for k in ("mode", "full_because", "bytes")}), file=sys.stderr)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store_url")
    parser.add_argument("--previous", default="", help="replica to start from (default: none, a full export)")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    runs = []
    for _ in range(options.repeat):
        with tempfile.TemporaryDirectory(prefix="stockpipe-bench-replica-") as scratch:
            load = os.getloadavg()[0]
            measured = json.loads(subprocess.run(
                [sys.executable, str(HERE / "measure.py"), "--grep", "replica-stats", sys.executable, "-c", ONE_RUN,
                 options.store_url, options.previous, scratch],
                capture_output=True, text=True, check=True).stdout)
            if measured["returncode"]:
                raise SystemExit(measured["stderr_tail"])
            runs.append({"seconds": measured["seconds"], "peak_mb": measured["peak_mb"], "load_average_1m": round(load, 2),
                         **json.loads(measured["matched"][-1].split(" ", 1)[1])})
    print(json.dumps({"runs": runs, **{f"median_{k}": statistics.median(r[k] for r in runs)
                                        for k in ("seconds", "peak_mb")}}, indent=2))


if __name__ == "__main__":
    main()
