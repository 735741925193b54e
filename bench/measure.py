"""Run one command and print its wall seconds and peak RSS (of it and its children) as JSON.

    python measure.py [--grep TEXT] command ...    # --grep: also return the stderr lines containing TEXT
"""

import json
import resource
import subprocess
import sys
import time

arguments = sys.argv[1:]
grep = None
if arguments[:1] == ["--grep"]:
    grep, arguments = arguments[1], arguments[2:]
started = time.perf_counter()
completed = subprocess.run(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - started
children = resource.getrusage(resource.RUSAGE_CHILDREN)
peak_kib = children.ru_maxrss
# CPU seconds (user + system, of it and its children) vary less than wall seconds on a shared machine.
result = {"returncode": completed.returncode, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_kib / 1024, 1),
          "cpu_seconds": round(children.ru_utime + children.ru_stime, 3),
          "stderr_tail": completed.stderr[-3000:] if completed.returncode else ""}
if grep is not None:
    result["matched"] = [line for line in completed.stderr.splitlines() if grep in line]
print(json.dumps(result))
