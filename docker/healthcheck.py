"""Container healthcheck: the luigid this container schedules through answers its API.

In the luigid container that is luigid itself; in assist and cron it is the scheduler they need.
Exits 0 when healthy, 1 with the reason otherwise (docker shows the last output in `inspect`).
"""

from __future__ import annotations

import os
import sys
import urllib.request

host = os.environ.get("HEALTHCHECK_HOST") or os.environ.get("LUIGI_HOST", "localhost")
port = os.environ.get("HEALTHCHECK_PORT") or os.environ.get("LUIGI_PORT", "8082")
url = f"http://{host}:{port}/api/task_list?data=%7B%22status%22%3A%22RUNNING%22%7D"
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        response.read()
except OSError as exc:
    print(f"luigid at {host}:{port} does not answer: {exc}")
    sys.exit(1)
print(f"luigid at {host}:{port} answers")
