"""bench/measure.py counts the memory of every process a command starts: Luigi's forked workers and
a JVM started by a task (which may even leave the session), not only the command's own process."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

MEASURE = Path(__file__).resolve().parents[2] / "bench" / "measure.py"

# The parent holds 100 MB, two forked children 150 MB more each and a grandchild in a session of its
# own 100 MB, all at once (each waits until every one has filled its memory, then a second more).
TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    ready = sys.argv[1]
    held = b"p" * (100 << 20)
    children = []
    for n in range(2):
        pid = os.fork()
        if pid == 0:
            mine = b"c" * (150 << 20)
            open(f"{ready}/child{n}", "w").close()
            time.sleep(3)
            os._exit(0)
        children.append(pid)
    grandchild = f"import time; mine = b'g' * (100 << 20); open('{ready}/grandchild', 'w').close(); time.sleep(3)"
    subprocess.Popen([sys.executable, "-c", grandchild], start_new_session=True)
    while len(os.listdir(ready)) < 3:
        time.sleep(0.05)
    print("all filled", file=sys.stderr)
    for pid in children:
        os.waitpid(pid, 0)
    time.sleep(3)
""")


def measure(tmp_path, *command):
    completed = subprocess.run([sys.executable, str(MEASURE), *command], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def test_peak_memory_adds_up_the_whole_process_tree(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    ready = tmp_path / "ready"
    ready.mkdir()
    result = measure(tmp_path, "--grep", "filled", sys.executable, str(script), str(ready))
    assert result["returncode"] == 0
    assert result["matched"] == ["all filled"]
    assert result["processes"] >= 4
    # 100 + 2 x 150 + 100 MB held at once; no single process held more than 250 MB.
    assert result["peak_mb"] >= 480, result
    assert result["peak_largest_process_mb"] < 300, result
    assert result["peak_mb"] > result["peak_largest_process_mb"]


def test_failure_keeps_exit_code_and_output(tmp_path):
    result = measure(tmp_path, sys.executable, "-c", "import sys; print('broken here', file=sys.stderr); sys.exit(3)")
    assert result["returncode"] == 3
    assert "broken here" in result["stderr_tail"]
