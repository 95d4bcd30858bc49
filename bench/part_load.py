"""Part 2 and 5b: Sheets requests per minute as calls grow, ours vs the seed's per-process cache.

Each simulated call is its own process (forked from the bench's forkserver, as job processes are),
reads the inventory once the way its design does, and stays alive `hold` seconds like a call.
Requests are counted by the Sheets stand-in (every request it receives, by kind).

Time is compressed by a factor C: calls arrive C times faster and every TTL is C times shorter
(ours: EQUIPMENT_CACHE_TTL = 30/C; the seed's 30 s module cache never serves a second call anyway,
each call being a new process), so the requests per *simulated* minute are the same as in real time;
the only thing not scaled is Sheets' own latency (~1 ms here), which is far below every interval.
"""

from __future__ import annotations

import json
import time

from bench import callproc
from bench.common import Budget, log, summary
from bench.standins import Sheets, new_state_dir

QUOTA_PER_MIN = 60


def _simulate(sheets: Sheets, design: str, rate_per_min: float, sim_minutes: float, compress: float,
              hold: float) -> dict:
    ctx = callproc.context()
    q = ctx.SimpleQueue()
    ttl = 30.0 / compress
    env = sheets.env(new_state_dir(f"load-{design}"), EQUIPMENT_CACHE_TTL=f"{ttl:g}")
    n_calls = max(1, round(rate_per_min * sim_minutes))
    interval = 60.0 / rate_per_min / compress
    sheets.reset_counts()
    procs = []
    t0 = time.monotonic()
    lateness = []
    for i in range(n_calls):
        target = t0 + i * interval
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        lateness.append(time.monotonic() - target)
        p = ctx.Process(target=callproc.load_child, args=(design, env, hold, q), daemon=True)
        p.start()
        procs.append(p)
        # reap finished ones as we go
        for old in procs[:-50]:
            old.join(0)
    window_end = t0 + n_calls * interval
    while time.monotonic() < window_end:
        time.sleep(0.05)
    for p in procs:
        p.join(hold + 10)
        if p.is_alive():
            p.kill()
            p.join(1)
    elapsed = time.monotonic() - t0
    counts = sheets.counts()
    infos = []
    while not q.empty():
        infos.append(q.get())
    sim_min_elapsed = (n_calls * interval) * compress / 60.0
    return {
        "design": design,
        "rate_per_min": rate_per_min,
        "calls": n_calls,
        "reported": len(infos),
        "sim_minutes": sim_min_elapsed,
        "real_seconds": elapsed,
        "counts": counts,
        "sheets_per_min": counts.get("sheets_api", 0) / sim_min_elapsed,
        "reads_per_min": (counts.get("read", 0) + counts.get("metadata", 0)) / sim_min_elapsed,
        "token_per_min": counts.get("token", 0) / sim_min_elapsed,
        "wait": summary(i.get("wait") for i in infos),
        "known": sum(1 for i in infos if i.get("known")),
        "errors": [i["error"] for i in infos if "error" in i][:3],
        "max_lateness": max(lateness) if lateness else None,
    }


def run(sheets: Sheets, budget: Budget, rates=(1, 10, 60), sim_minutes: float = 3.0,
        compress: float = 10.0, hold: float = 2.0) -> dict:
    out: dict = {"compress": compress, "sim_minutes": sim_minutes, "hold_real_s": hold,
                 "ttl_real_s": 30.0 / compress, "runs": [], "errors": []}
    sheets.set_condition("healthy")
    for rate in rates:
        for design in ("ours", "baseline"):
            need = sim_minutes * 60 / compress + hold + 5
            if budget.left() < need + 30:
                out["errors"].append(f"{design} at {rate}/min: skipped (time budget)")
                continue
            log(f"load: {design} at {rate} calls/min ({sim_minutes:g} simulated min, {need:.0f} s)")
            out["runs"].append(_simulate(sheets, design, rate, sim_minutes, compress, hold))
    return out


def growth(sheets: Sheets, rows_list=(10, 100, 1000), n: int = 3) -> dict:
    """Requests and time per inventory load, per design, as the sheet grows (healthy sheet)."""
    out: dict = {}
    sheets.set_condition("healthy")
    for rows in rows_list:
        sheets.set_inventory(rows)
        body = len(json.dumps({"values": sheets.s.rows("Equipment")}))
        cell: dict = {"values_bytes": body}
        for design in ("ours", "baseline"):
            reqs, waits = [], []
            for _ in range(n):
                sheets.reset_counts()
                info = callproc.run_load_once(design, sheets.env(new_state_dir("growth")), hold=0.3)
                c = sheets.counts()
                reqs.append({"sheets_api": c.get("sheets_api", 0), "token": c.get("token", 0)})
                waits.append(info.get("wait"))
                if not info.get("known"):
                    cell.setdefault("errors", []).append(info)
            cell[design] = {"requests_per_load": reqs[-1], "cold_load": summary(waits),
                            "n_units": info.get("n")}
        out[str(rows)] = cell
    return out
