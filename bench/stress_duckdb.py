"""Stress DuckDB under several Luigi workers: does any run corrupt the store, abort, or leave a WAL?

Builds (once, cached under bench/out/stress/) a demo store of 2,500 symbols x 10 years through the
real tasks (Backfill, then a full-history RebuildFrom, one worker), then runs the real
`luigi --module stockpipe ... --local-scheduler --workers 2` (every 4th run `--workers 3`), each on
a fresh copy of the last good store (the base, then each run's result: so Dailies advance session
by session, and a copy of the .duckdb file alone must hold everything committed):

- a full-history RebuildFrom every 20th run (fresh --run-id),
- a Daily for the next session every 3rd run,
- a 13-session RebuildFrom with a fresh --run-id otherwise.

After every run it requires: exit code 0, no abort signature ('terminate called', 'FATAL', 'Corrupt'...)
in the output, no `.wal` left next to the file, the run's report present (no failed chunk), and
`stockpipe check` passing (it opens the file read-only and reads every value of every table). A copy
is only taken from a store with no pending WAL.

    python bench/stress_duckdb.py                                # 100 runs on 2,500 x 10 years
    python bench/stress_duckdb.py --tickers 300 --years 3 --runs 5   # a smoke run

Prints one line per run and a final JSON summary (runs, failures with their output tails, corrupt
count, wall seconds). Resumable: finished runs are recorded in runs.jsonl; running the same command
again continues (--runs is the total wanted); --fresh starts the count over (the base store is kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import luigi_cfg, runs_dir  # noqa: E402 - the benchmark's settings (chunk_size 50, demo source)

# Output that means a process died in native code or the file went bad, whatever the exit code says.
ABORT_SIGNS = re.compile(r"terminate called|FATAL|Aborted|core dumped|Segmentation fault|INTERNAL Error|"
                         r"Corrupt database|does not match stored checksum|database has been invalidated")
LUIGI = shutil.which("luigi") or "luigi"
STOCKPIPE = shutil.which("stockpipe") or "stockpipe"


def environment(directory: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")}
    env["LUIGI_CONFIG_PATH"] = str(directory / "luigi.cfg")
    return env


def run_command(command: list[str], directory: Path, log: Path, timeout: float) -> tuple[int, float, str]:
    """(exit code, seconds, output); output also written to `log`. A timeout is exit code -9."""
    started = time.monotonic()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=directory, env=environment(directory), stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            code = process.wait()
            sink.write(f"\n[stress] killed after {timeout:.0f} s\n")
    return code, time.monotonic() - started, log.read_text(errors="replace")


def luigi(directory: Path, log: Path, timeout: float, *args: str) -> tuple[int, float, str]:
    return run_command([LUIGI, "--module", "stockpipe", *args, "--local-scheduler"], directory, log, timeout)


def check(directory: Path, store: Path, timeout: float) -> dict:
    code, seconds, output = run_command([STOCKPIPE, "check", "--json", str(store)], directory,
                                        directory / "check.log", timeout)
    result = {"returncode": code, "seconds": round(seconds, 2)}
    try:
        result.update(json.loads(output.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        result["ok"] = False
        result["lines"] = [output[-2000:]]
    result["abort_signs"] = sorted(set(ABORT_SIGNS.findall(output)))
    return result


def copy_store(source: Path, target: Path) -> float:
    """Copy a quiescent store file; refuse one with a pending WAL (the copy would miss its commits)."""
    wal = source.with_name(source.name + ".wal")
    if wal.exists():
        raise SystemExit(f"stress: {source} has a pending WAL ({wal.stat().st_size:,} bytes): a copy of the file "
                         f"alone would be incomplete; this is a finding, not a setup problem")
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return time.monotonic() - started


def code_version() -> str:
    """Which stockpipe the runs import: the first PYTHONPATH entry (e.g. a snapshot of a commit) or the installed one."""
    found = subprocess.run([sys.executable, "-c", "import stockpipe; print(stockpipe.__file__)"], capture_output=True,
                           text=True, cwd="/", env={k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_")})
    return str(Path(found.stdout.strip()).parent.parent) if found.returncode == 0 else "unknown"


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- the base store ---------------------------------------------------------------------------------
def build_base(root: Path, tickers: int, years: int, end: dt.date, timeout: float) -> dict:
    from stockpipe import trading_calendar

    base = root / "base"
    if (base / "base.json").exists():
        return json.loads((base / "base.json").read_text())
    building = root / "base.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    start = trading_calendar.sessions_back("XNYS", end, 252 * years - 1)
    luigi_cfg(building, f"duckdb:///{building / 'store.duckdb'}", tickers)
    figures: dict = {"symbols": tickers, "sessions": 252 * years, "first_date": str(start), "last_date": str(end)}
    print(f"building the base store in {building} ({tickers} symbols x {252 * years} sessions)...", flush=True)
    for name, args in (("backfill", ("Backfill", "--start-date", str(start), "--end-date", str(end))),
                       ("rebuild_full", ("RebuildFrom", "--start-date", str(start)))):
        code, seconds, output = luigi(building, building / f"{name}.log", timeout, *args, "--workers", "1")
        if code != 0:
            raise SystemExit(f"stress: building the base store failed at {name} (exit {code}); "
                             f"log {building / f'{name}.log'}:\n{tail(output)}")
        figures[f"{name}_seconds"] = round(seconds, 1)
        print(f"  {name}: {seconds:.1f} s", flush=True)
    verdict = check(building, building / "store.duckdb", timeout)
    if not verdict.get("ok") or verdict["returncode"] != 0:
        raise SystemExit(f"stress: the freshly built base store fails `stockpipe check`: {verdict['lines']}")
    if building.joinpath("store.duckdb.wal").exists():
        raise SystemExit("stress: the base build left a pending WAL")
    figures["tables"] = {k: v["rows"] for k, v in verdict["tables"].items()}
    figures["file_mb"] = round(verdict["storage"]["file_bytes"] / 1e6, 1)
    (building / "base.json").write_text(json.dumps(figures, indent=2))
    shutil.rmtree(base, ignore_errors=True)
    building.rename(base)
    # The store's absolute path was in luigi.cfg; runs write their own.
    return figures


# -- the runs -----------------------------------------------------------------------------------------
def plan_run(index: int, last_date: dt.date, first_date: dt.date) -> tuple[str, list[str], str]:
    """(kind, luigi arguments, what the run's report file is) for run number `index` (1-based)."""
    from stockpipe import trading_calendar

    workers = "3" if index % 4 == 0 else "2"
    run_id = f"s{index:03d}"
    if index % 20 == 1:
        return "rebuild_full", ["RebuildFrom", "--start-date", str(first_date), "--run-id", run_id, "--workers", workers], \
            f"rebuild-{first_date}-{run_id}"
    if index % 3 == 0:
        day = trading_calendar.sessions("XNYS", last_date + dt.timedelta(days=1), last_date + dt.timedelta(days=10))[0]
        return "daily", ["Daily", "--date", str(day), "--workers", workers], f"daily-{day}"
    start = trading_calendar.sessions_back("XNYS", last_date, 12)
    return "rebuild_13", ["RebuildFrom", "--start-date", str(start), "--run-id", run_id, "--workers", workers], \
        f"rebuild-{start}-{run_id}"


def one_run(root: Path, index: int, state: dict, base: dict, options) -> dict:
    source = Path(state["source"])
    last_date = dt.date.fromisoformat(state["last_date"])
    kind, args, plan_id = plan_run(index, last_date, dt.date.fromisoformat(base["first_date"]))
    directory = root / f"run-{index:03d}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    store = directory / "store.duckdb"
    luigi_cfg(directory, f"duckdb:///{store}", base["symbols"])
    record: dict = {"run": index, "kind": kind, "args": " ".join(args), "source": source.parent.name,
                    "code": code_version(),
                    "copy_seconds": round(copy_store(source, store), 2)}
    problems = []
    # A base cached by an older stockpipe has an older schema: upgrade the copy as a user would.
    upgrade, _, upgrade_output = run_command([STOCKPIPE, "init-db"], directory, directory / "init-db.log", options.timeout)
    if upgrade != 0:
        problems.append(f"stockpipe init-db exit {upgrade}: {tail(upgrade_output, 3)}")
    code, seconds, output = luigi(directory, directory / "luigi.log", options.timeout, *args)
    record.update(returncode=code, luigi_seconds=round(seconds, 1))
    if code != 0:
        problems.append(f"exit code {code}" + (" (abort)" if code in (134, -6) else ""))
    signs = sorted(set(ABORT_SIGNS.findall(output)))
    if signs:
        problems.append(f"output shows {signs}")
    wal = store.with_name(store.name + ".wal")
    record["wal_bytes"] = wal.stat().st_size if wal.exists() else None
    if wal.exists():
        problems.append(f"pending WAL left: {record['wal_bytes']:,} bytes")
    report_file = runs_dir(directory, f"duckdb:///{store}") / plan_id / "report.json"
    if not report_file.exists():
        problems.append(f"no {report_file.relative_to(directory)}")
    else:
        report = json.loads(report_file.read_text())
        if report.get("failed_chunks") or report.get("chunks_pending"):
            problems.append(f"report: failed chunks {report.get('failed_chunks')}, pending {report.get('chunks_pending')}")
        record["chunks"] = report.get("chunks")
    verdict = check(directory, store, options.timeout)
    record["check_seconds"] = verdict["seconds"]
    record["check"] = verdict["lines"][0][:300] if verdict.get("lines") else None
    if verdict["returncode"] != 0 or not verdict.get("ok"):
        problems.append(f"stockpipe check exit {verdict['returncode']}")
        record["corrupt"] = verdict["returncode"] not in (0, 1) or any("FAILED" in line for line in verdict.get("lines", []))
    if verdict["abort_signs"] and not verdict.get("ok"):
        problems.append(f"check output shows {verdict['abort_signs']}")
    if verdict.get("tables"):
        rows = {k: v["rows"] for k, v in verdict["tables"].items()}
        record["bars"], record["indicators"] = rows.get("bars"), rows.get("indicators")
        if rows.get("bars") != rows.get("indicators"):
            problems.append(f"bars {rows.get('bars'):,} but indicators {rows.get('indicators'):,} rows")
        record["file_mb"] = round(verdict["storage"]["file_bytes"] / 1e6, 1)
    record["problems"] = problems
    record["ok"] = not problems
    if problems:
        record["output_tail"] = tail(output)
        record["kept"] = str(directory)
    return record


def summary(records: list[dict], started: float, base: dict, root: Path) -> dict:
    failures = [r for r in records if not r["ok"]]
    by_kind: dict = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r["luigi_seconds"])
    return {
        "runs": len(records),
        "ok": len(records) - len(failures),
        "failures": [{k: r.get(k) for k in ("run", "kind", "args", "problems", "kept", "check", "output_tail")}
                     for r in failures],
        "corrupt": sum(1 for r in records if r.get("corrupt")),
        "aborts": sum(1 for r in records if r["returncode"] in (134, -6) or any("abort" in p or "shows" in p for p in r["problems"])),
        "wal_left": sum(1 for r in records if r.get("wal_bytes") is not None),
        "workers": {w: sum(1 for r in records if r["args"].endswith(f"--workers {w}")) for w in ("2", "3")},
        "luigi_seconds": {k: {"runs": len(v), "median": round(statistics.median(v), 1), "max": max(v)} for k, v in by_kind.items()},
        "check_seconds_median": round(statistics.median(r["check_seconds"] for r in records), 1) if records else None,
        "wall_seconds_this_session": round(time.monotonic() - started, 1),
        "base": base,
        "log_dir": str(root),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="total runs wanted (finished ones count)")
    parser.add_argument("--tickers", type=int, default=2500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--end", default="2025-10-10", help="last session of the base store")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds any one command may take")
    parser.add_argument("--fresh", action="store_true", help="forget finished runs (keeps the cached base store)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    options = parser.parse_args()

    started = time.monotonic()
    root = HERE / "out" / "stress" / f"{options.tickers}x{options.years}-{options.end}"
    root.mkdir(parents=True, exist_ok=True)
    base = build_base(root, options.tickers, options.years, dt.date.fromisoformat(options.end), options.timeout)
    runs_file, state_file = root / "runs.jsonl", root / "state.json"
    if options.fresh:
        runs_file.unlink(missing_ok=True)
        state_file.unlink(missing_ok=True)
    records = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    fresh_state = {"source": str(root / "base" / "store.duckdb"), "last_date": base["last_date"]}
    state = json.loads(state_file.read_text()) if state_file.exists() else fresh_state
    print(f"base: {json.dumps(base)}\n{len(records)} runs already done; running up to {options.runs}", flush=True)

    for index in range(len(records) + 1, options.runs + 1):
        record = one_run(root, index, state, base, options)
        records.append(record)
        previous = Path(state["source"]).parent
        if record["ok"]:
            state = {"source": str(root / f"run-{index:03d}" / "store.duckdb"),
                     "last_date": record["args"].split("--date ")[1].split()[0] if record["kind"] == "daily" else state["last_date"]}
        else:
            state = fresh_state  # a bad store is kept for evidence; the next run starts from the base again
        with open(runs_file, "a") as sink:
            sink.write(json.dumps(record) + "\n")
        state_file.write_text(json.dumps(state))
        if previous.name.startswith("run-") and previous != Path(state["source"]).parent and \
                not any(not r["ok"] and r["run"] == int(previous.name[4:]) for r in records):
            shutil.rmtree(previous, ignore_errors=True)
        verdict = "ok" if record["ok"] else "FAILED: " + "; ".join(record["problems"])
        print(f"[{index:3d}/{options.runs}] {record['kind']:<12} {record['args']:<70} luigi {record['luigi_seconds']:6.1f} s "
              f"exit {record['returncode']}, wal {'none' if record['wal_bytes'] is None else record['wal_bytes']}, "
              f"check {record['check_seconds']:.1f} s, copy {record['copy_seconds']:.1f} s, "
              f"{record.get('bars') or 0:,} bars / {record.get('indicators') or 0:,} indicators: {verdict}", flush=True)
        if not record["ok"]:
            print(f"    check: {record.get('check')}\n    output tail:\n" + "\n".join("      " + l for l in record["output_tail"].splitlines()[-15:]),
                  flush=True)
            if options.fail_fast:
                break
    result = summary(records, started, base, root)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
