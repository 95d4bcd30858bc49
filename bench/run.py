"""`make bench`: every benchmark of issue 5 in one run, ours and the seed's design side by side,
then BENCHMARKS.md.

    .venv/bin/python bench/run.py              # the full run (< 10 min on 2 cores)
    .venv/bin/python bench/run.py --quick      # a short smoke run (fewer samples, ~2 min)
    .venv/bin/python bench/run.py --only pickup,load --no-write
    .venv/bin/python bench/run.py --render bench/results/<run>.json   # re-render only

Parts (each can be skipped by the time budget, which is then said in the report):
  pickup  job start → greeting queued, in-process, 4 Sheets conditions × cache states (part_pickup)
  worker  real `agent.py start` + dispatch stand-in: dispatch → accepted, failed rooms, SIGTERM,
          process memory and start time (part_worker)
  memory  a process in a call (fake providers) → calls per 8 GB (part_memory)
  load    Sheets requests/min at 1, 10, 60 calls/min (part_load)
  growth  10 → 1,000 inventory rows (part_pickup + part_load)
Raw results: bench/results/<timestamp>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Budget, log, machine, write_json  # noqa: E402

PARTS = ("pickup", "worker", "memory", "load", "growth", "inventory")


def inventory_numbers(quick: bool, timeout: float = 150.0) -> dict:
    """The inventory engineer's own script (bench/inventory_numbers.py), reused as is: a burst of 20
    calls in 20 processes, and how long snapshot() waits per Sheets condition. Output kept verbatim."""
    import subprocess

    script = ROOT / "bench" / "inventory_numbers.py"
    if not script.exists():
        return {"skipped": "bench/inventory_numbers.py does not exist"}
    cmd = [sys.executable, str(script.relative_to(ROOT))] + (["--quick"] if quick else [])
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    return {"command": " ".join([os.path.relpath(sys.executable, ROOT)] + cmd[1:]), "exit_code": r.returncode,
            "stdout": r.stdout, "stderr_tail": r.stderr[-1500:], "seconds": time.monotonic() - t0}


def capacity(worker: dict, mem: dict, total: int = 8 * 1024 ** 3) -> dict:
    """Concurrent calls in `total` bytes. Fixed: worker + forkserver + resource tracker (RSS) and the
    idle prewarmed processes (USS: their shared pages are the forkserver's, already counted).
    Per call: the USS of a job process in the real worker (while it connects) plus what the session
    and a turn add (bench call process, USS in call − USS prewarmed)."""
    from bench.part_memory import capacity as base

    cap = base(worker, mem, total)
    during = (worker.get("memory_during_job") or {}).get("procs") or []
    job_uss = max((p.get("uss") or 0) for p in during) if during else None
    idle_uss = (mem.get("mem_idle") or {}).get("uss", {}).get("median")
    call_uss = (mem.get("mem_call") or {}).get("uss", {}).get("median")
    delta = (call_uss - idle_uss) if (call_uss and idle_uss) else None
    cap["job_uss"] = job_uss
    cap["session_delta"] = delta
    if job_uss and delta is not None:
        cap["per_call_est"] = job_uss + max(delta, 0)
    elif call_uss:
        cap["per_call_est"] = call_uss
    if cap.get("per_call_est"):
        cap["calls_est"] = int((total - cap["fixed_shared"]) // cap["per_call_est"])
    call_pss = (mem.get("mem_call") or {}).get("pss", {}).get("median")
    if call_pss:
        cap["per_call_pss"] = call_pss
        cap["calls_pss"] = int((total - cap["fixed_shared"]) // call_pss)
    return cap


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few samples: a smoke run, not results")
    ap.add_argument("--budget", type=float, default=540.0, help="wall-clock seconds for the whole run")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    ap.add_argument("--no-write", action="store_true", help="don't write BENCHMARKS.md")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--render", metavar="RAW_JSON", help="only rewrite the report from an earlier run's raw results")
    args = ap.parse_args(argv)
    if args.render:
        from bench import report

        raw = json.loads(Path(args.render).read_text())
        report.write(args.out, report.render(raw, raw_path=os.path.relpath(args.render, ROOT)))
        log(f"wrote {os.path.relpath(args.out, ROOT)} from {args.render}")
        return 0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    budget = Budget(args.budget)
    q = args.quick

    from bench import part_load, part_memory, part_pickup, part_worker
    from bench.standins import Sheets

    results: dict = {
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), "bench/run.py", *argv]),
        "quick": q,
        "parts": parts,
        "timings": {},
        "errors": {},
    }
    log("machine:", results["machine"]["cpu"], results["machine"]["nproc"], "cores; load",
        results["machine"]["loadavg_at_start"])
    sheets = Sheets(rows=20)

    def step(name: str, fn):
        if name not in parts:
            return
        t0 = time.monotonic()
        log(f"== {name} (budget left {budget.left():.0f} s)")
        try:
            results[name] = fn()
        except Exception:
            results["errors"][name] = traceback.format_exc()[-3000:]
            log(f"{name} FAILED:\n{results['errors'][name]}")
        results["timings"][name] = time.monotonic() - t0
        log(f"== {name} done in {results['timings'][name]:.0f} s")
        # the next part starts from a healthy sheet, whatever this one left behind
        sheets.set_condition("healthy")
        sheets.s.release()

    try:
        step("worker", lambda: {
            **part_worker.run(sheets, budget, per_condition=4 if q else 12, hung_jobs=2 if q else 6),
            "import_prewarm": part_worker.import_and_prewarm(1 if q else 3),
        })
        step("pickup", lambda: part_pickup.run(sheets, budget, n=4 if q else 20,
                                               rows_list=() if q or "growth" not in parts else (10, 100, 1000),
                                               growth_n=3 if q else 10))
        step("memory", lambda: part_memory.run(sheets, n=1 if q else 3))
        step("growth", lambda: part_load.growth(sheets, n=1 if q else 3))
        step("load", lambda: part_load.run(sheets, budget, sim_minutes=1.0 if q else 3.0,
                                           compress=20.0 if q else 10.0))
        if budget.left() > 60:
            step("inventory", lambda: inventory_numbers(quick=True))
        elif "inventory" in parts:
            results["errors"]["inventory"] = "skipped: time budget"
    finally:
        sheets.stop()

    if results.get("worker") and results.get("memory"):
        try:
            results["capacity"] = capacity(results["worker"], results["memory"])
        except Exception:
            results["errors"]["capacity"] = traceback.format_exc()[-2000:]

    results["total_seconds"] = budget.elapsed()
    try:
        results["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = write_json(f"{stamp}{'-quick' if q else ''}.json", results)
    log(f"raw results: {os.path.relpath(raw, ROOT)}")
    if not args.no_write:
        from bench import report

        report.write(args.out, report.render(results, raw_path=os.path.relpath(raw, ROOT)))
        log(f"wrote {os.path.relpath(args.out, ROOT)}")
    log(f"total {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
