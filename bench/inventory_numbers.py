"""Inventory numbers against the local Sheets stand-in (offline).

    .venv/bin/python bench/inventory_numbers.py            # everything (~40 s)
    .venv/bin/python bench/inventory_numbers.py --quick    # skips the one-minute run

Prints:
1. Sheets requests (counted by the stand-in) for a burst of 20 calls in 20 separate processes,
   on a cold machine and on a machine whose snapshot is stale.
2. Sheets requests for one minute of one call per second. Time is compressed 10x: TTL 3 s
   instead of 30 s, one call every 0.1 s, 60 calls (= one minute at 1/s with TTL 30 s). Each call
   is a new Inventory object (as a fresh job process has: no in-memory state, its own gspread
   client and token), in one process, sharing STATE_DIR.
3. How long a call waits for the inventory (snapshot()) with the stand-in healthy, slow (5 s per
   read) and hung, with a warm (stale) cache and cold, at the default settings
   (EQUIPMENT_LOAD_TIMEOUT=3, SHEETS_HTTP_TIMEOUT=5,10 default, TTL 30).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import equipment  # noqa: E402
from tests.conftest import child_env, equipment_rows  # noqa: E402
from tests.fakes.sheets_server import SheetsStandIn, install_network_guard  # noqa: E402


def env_for(s: SheetsStandIn, **extra: str) -> dict[str, str]:
    env = {"GOOGLE_SHEET_ID": s.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": s.service_account_json(),
           "GOOGLE_SHEETS_API_URL": s.url, "STATE_DIR": tempfile.mkdtemp(prefix="inv-bench-")}
    env.update(extra)
    return env


def fresh_standin() -> SheetsStandIn:
    s = SheetsStandIn().start()
    s.set_rows("Equipment", equipment_rows())
    return s


def burst(env: dict[str, str], n: int = 20) -> list[dict]:
    start_at = str(time.time() + 3.0)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fakes.child", "snapshot"],
                              cwd=str(ROOT), env=child_env(env, START_AT=start_at),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=120)
        lines = o.strip().splitlines()
        if p.returncode or not lines:
            raise RuntimeError(f"a child exited {p.returncode} without a result:\n{e[-1500:]}")
        out.append(json.loads(lines[-1]))
    return out


def counts(s: SheetsStandIn) -> str:
    c = s.counts
    return (f"read={c['read']} token={c['token']} metadata={c['metadata']} write={c['write']} "
            f"append={c['append']} total={sum(c.values())}")


async def timed_snapshot(env: dict[str, str]) -> tuple[float, equipment.Snapshot]:
    inv = equipment.inventory_from_env(env)
    t0 = time.perf_counter()
    snap = await inv.snapshot()
    return time.perf_counter() - t0, snap


async def made_stale(env: dict[str, str], ttl: float = 1.0) -> dict[str, str]:
    """The same machine (STATE_DIR) once its snapshot is older than the TTL: a short TTL and a
    wait just past it, through configuration only, whatever the inventory keeps its state in.
    The TTL must outlast what it measures, or the snapshot goes stale again meanwhile."""
    await asyncio.sleep(ttl + 0.1)
    return {**env, "EQUIPMENT_CACHE_TTL": f"{ttl:g}"}


async def main(quick: bool) -> None:
    install_network_guard()
    logging.getLogger("equipment").setLevel(logging.WARNING)

    print("== 1. burst of 20 calls, 20 separate processes (requests counted by the stand-in)")
    s = fresh_standin()
    s.delay("read", 0.3)  # a realistic Sheets latency, so the load is in flight while others arrive
    res = burst(env_for(s, EQUIPMENT_LOAD_TIMEOUT="10"))
    waits = sorted(r["elapsed"] for r in res)
    print(f"   cold machine : {counts(s)}; all known={all(r['known'] for r in res)}; "
          f"snapshot() wait median {statistics.median(waits)*1000:.0f} ms, max {waits[-1]*1000:.0f} ms")
    s.stop()
    s = fresh_standin()
    s.delay("read", 0.3)
    env = env_for(s)
    await timed_snapshot(env)
    stale = await made_stale(env, ttl=5.0)  # the burst's 20 processes take a few seconds to start
    s.reset_counts()
    res = burst(stale)
    waits = sorted(r["elapsed"] for r in res)
    print(f"   stale cache  : {counts(s)}; snapshot() wait median {statistics.median(waits)*1000:.1f} ms, "
          f"max {waits[-1]*1000:.1f} ms")
    s.stop()

    if not quick:
        print("== 2. one minute of one call per second (compressed 10x: TTL 3 s, a call every 0.1 s, 60 calls)")
        s = fresh_standin()
        env = env_for(s, EQUIPMENT_CACHE_TTL="3")
        waits = []
        t_next = time.monotonic()
        invs = []
        for _ in range(60):
            t_next += 0.1
            inv = equipment.inventory_from_env(env)  # a fresh "process": no in-memory state
            t0 = time.perf_counter()
            await inv.snapshot()
            waits.append(time.perf_counter() - t0)
            invs.append(inv)
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        for inv in invs:
            await inv.close(timeout=5)
        print(f"   {counts(s)} (reads: the first load + one per TTL expiry); "
              f"wait median {statistics.median(waits)*1000:.2f} ms, max {max(waits)*1000:.0f} ms (the cold first call)")
        s.stop()

    print("== 3. how long snapshot() waits for the inventory (defaults: load timeout 3 s, TTL 30 s)")
    for label, setup in (("healthy", lambda s: None), ("slow 5 s", lambda s: s.delay("read", 5)),
                         ("hung", lambda s: s.hang("read"))):
        s = fresh_standin()
        env = env_for(s)
        # warm: a snapshot exists but is stale (the worst warm case: it triggers a refresh)
        await timed_snapshot(env)
        stale = await made_stale(env)
        setup(s)
        warm, wsnap = await timed_snapshot(stale)
        cold_env = env_for(s)  # a machine that never read the sheet
        cold, csnap = await timed_snapshot(cold_env)
        print(f"   {label:9s}: warm (stale) {warm*1000:7.1f} ms known={wsnap.known} | "
              f"cold {cold*1000:7.1f} ms known={csnap.known}")
        s.release()
        s.stop()


if __name__ == "__main__":
    asyncio.run(main("--quick" in sys.argv))
    import os

    os._exit(0)  # don't wait for hung background refreshes (daemon threads)
