"""Several workers sharing one real `luigid`: each chunk runs once, and the scheduler shows each
chunk's status message and progress percentage."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import free_port, luigi_command, prepared_store, run_luigi, service_missing

pytestmark = pytest.mark.slow


@pytest.fixture
def luigid(tmp_path):
    binary = shutil.which("luigid")
    if binary is None:
        service_missing("luigid", "the luigid command is not on PATH")
    port = free_port()
    (tmp_path / "luigid-logs").mkdir()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--address", "127.0.0.1", "--state-path", str(tmp_path / "luigid.state"),
         "--logdir", str(tmp_path / "luigid-logs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?data={{}}", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                service_missing("luigid", f"it did not start on port {port}")
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(timeout=10)


def _tasks(port: int, status: str) -> dict:
    query = urllib.request.quote(json.dumps({"status": status, "upstream_status": "", "search": "IndicatorChunk"}))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?data={query}", timeout=10) as response:
        return json.loads(response.read())["response"]


def test_an_assistant_on_another_machine_shares_chunks_through_luigid(tmp_path, luigid, postgres_url):
    store = prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 1},
                           core={"scheduler_host": "127.0.0.1", "scheduler_port": luigid},
                           worker={"wait_interval": "0.1", "wait_jitter": "0.05", "keep_alive": "true"})
    # Another machine lends workers: an assistant runs whatever the scheduler has pending.
    assistant = subprocess.Popen(
        ["stockpipe", "assist", "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}, "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")},
    )
    try:
        code, output = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--workers", "1")
        # The job's target is complete, whoever ran its chunks: exit 0 (Luigi alone says 10 or 25).
        assert code == 0, output
        assert store.read_marker("RebuildFrom/rebuild-2025-09-29") is not None
    finally:
        assistant.terminate()  # stockpipe assist turns SIGTERM into Luigi's graceful stop
        helped = assistant.communicate(timeout=60)[0]
    assert assistant.returncode == 0, helped[-3000:]
    again, confirm = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29")
    assert again == 0 and not re.search(r"running\s+IndicatorChunk", confirm), confirm
    mine = re.findall(r"running\s+IndicatorChunk\(date=2025-09-29, plan_id=rebuild-2025-09-29, chunk_id=(\d+)\)", output)
    theirs = re.findall(r"running\s+IndicatorChunk\(date=2025-09-29, plan_id=rebuild-2025-09-29, chunk_id=(\d+)\)", helped)
    assert sorted(map(int, mine + theirs)) == list(range(30)), "luigid hands each chunk to exactly one worker"
    assert theirs, "the assistant took part of the rebuild"
    done = _tasks(luigid, "DONE")
    chunks = {k: v for k, v in done.items()
              if v["name"] == "IndicatorChunk" and v["params"]["plan_id"] == "rebuild-2025-09-29"}
    assert len(chunks) == 30
    for task in chunks.values():
        assert task["progress_percentage"] == 100
        assert "saved" in task["status_message"]
    assert len(store.markers(prefix="IndicatorChunk/rebuild-2025-09-29/")) == 30


def test_a_second_identical_job_elsewhere_never_writes_a_chunk_twice(tmp_path, luigid, postgres_url):
    store = prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 3},
                           core={"scheduler_host": "127.0.0.1", "scheduler_port": luigid},
                           worker={"keep_alive": "true", "wait_interval": "0.1", "wait_jitter": "0.05"})
    command = ("RebuildFrom", "--start-date", "2025-09-29", "--workers", "2", "--no-lock")
    workers = [luigi_command(tmp_path, *command) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    # Which job finishes RebuildFrom is luigid's race; both see the rebuild complete and exit 0.
    # What must also hold: every chunk ran exactly once.
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = re.findall(r"running\s+IndicatorChunk\(date=2025-09-29, plan_id=rebuild-2025-09-29, chunk_id=(\d+)\)",
                     "\n".join(outputs))
    assert sorted(map(int, ran)) == list(range(10)), ran
    code, confirm = run_luigi(tmp_path, "RebuildFrom", "--start-date", "2025-09-29", "--workers", "2")
    assert code == 0 and not re.search(r"running\s+IndicatorChunk", confirm), confirm
    assert store.read_marker("RebuildFrom/rebuild-2025-09-29") is not None


def test_rebuild_shows_chunk_progress_in_luigid_while_its_chunks_run(tmp_path, luigid, postgres_url):
    prepared_store(tmp_path, postgres_url, stockpipe={"chunk_size": 1},
                   core={"scheduler_host": "127.0.0.1", "scheduler_port": luigid},
                   worker={"wait_interval": "0.1", "wait_jitter": "0.05"})
    job = luigi_command(tmp_path, "RebuildFrom", "--start-date", "2025-09-29")
    seen = []  # (status, progress, message) of RebuildFrom in luigid while the job runs
    query = urllib.request.quote(json.dumps({"status": "", "upstream_status": "", "search": "RebuildFrom"}))
    while job.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{luigid}/api/task_list?data={query}", timeout=5) as response:
                for task in json.loads(response.read())["response"].values():
                    seen.append((task["status"], task.get("progress_percentage"), task.get("status_message")))
        except OSError:
            pass
        time.sleep(0.05)
    output = job.communicate(timeout=60)[0]
    assert job.returncode == 0, output
    waiting = [(p, m) for status, p, m in seen if status == "PENDING" and p]
    assert waiting, f"RebuildFrom never showed progress while its chunks ran: {seen[-5:]}"
    assert any(0 < p < 100 for p, _ in waiting), waiting
    assert any(m and m.endswith("/30 chunks done") and not m.startswith(("0/", "30/")) for _, m in waiting), waiting
    percentages = [p for p, _ in waiting]
    assert percentages == sorted(percentages), "progress only moves forward"
    assert seen[-1][0] == "DONE" and seen[-1][1] == 100
