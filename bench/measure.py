"""Run one command and print its wall seconds and peak RSS (of it and its children) as JSON."""

import json
import resource
import subprocess
import sys
import time

started = time.perf_counter()
completed = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"returncode": completed.returncode, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_kib / 1024, 1),
                  "stderr_tail": completed.stderr[-3000:] if completed.returncode else ""}))
