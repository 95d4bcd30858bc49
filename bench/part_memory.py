"""Part 4 (call side): the memory of a process in a call, and what fits in 8 GB.

A call process here is forked from the bench's forkserver (which preloads what the worker's
forkserver preloads, plus agent.py), prewarmed with voice.prewarm, then runs agent.run_call
(bench/ours_call.py: the production pipeline with the fake TTS and audio output, and a scripted
LLM in place of OpenAI's), speaks the greeting and takes one scripted turn with a real
tool call into the inventory. Its RSS, USS (pages only it holds) and PSS (its share of the shared
ones) are read with psutil, idle (prewarmed) and in the call.
"""

from __future__ import annotations

from bench import callproc
from bench.common import summary
from bench.standins import Sheets, new_state_dir

GiB = 1024 ** 3


def run(sheets: Sheets, n: int = 3) -> dict:
    sheets.set_condition("healthy")
    rs = [callproc.run_pickup("ours", sheets.env(new_state_dir("mem")), memory=True) for _ in range(n)]
    ok = [r for r in rs if "mem_call" in r]
    out: dict = {"n": len(ok), "errors": [r.get("error", "")[-800:] for r in rs if "mem_call" not in r],
                 "turn": [r.get("turn") for r in ok]}
    for phase in ("mem_idle", "mem_call"):
        out[phase] = {k: summary(r[phase][k] for r in ok) for k in ("rss", "uss", "pss")}
    return out


def capacity(worker: dict, mem: dict, total: int = 8 * GiB) -> dict:
    """Concurrent calls that fit in `total` bytes.

    Fixed cost: the worker process, its forkserver and resource tracker, and the idle prewarmed
    processes it keeps (num_idle_processes), each counted at PSS. Per call: one job process.
    - shared view: a call costs its USS + its share of the shared pages... counted as PSS of an
      in-call process (the pages it shares with the forkserver are paid once, by the forkserver);
      we use USS(in call) as the marginal cost and add the forkserver's RSS once to the fixed cost.
    - no-sharing view (pessimistic): every call costs its full RSS, as if nothing were shared.
    """
    idle = worker.get("memory_idle") or {}

    def g(d, k):
        return (d or {}).get(k) or 0

    procs = idle.get("procs") or []
    fixed_shared = (g(idle.get("worker"), "rss") + g(idle.get("forkserver"), "rss")
                    + g(idle.get("resource_tracker"), "rss") + sum(g(p, "uss") for p in procs))
    per_call_uss = (mem.get("mem_call") or {}).get("uss", {}).get("median")
    per_call_rss = (mem.get("mem_call") or {}).get("rss", {}).get("median")
    fixed_rss = (g(idle.get("worker"), "rss") + g(idle.get("forkserver"), "rss")
                 + g(idle.get("resource_tracker"), "rss") + sum(g(p, "rss") for p in procs))
    out = {"total": total, "fixed_shared": fixed_shared, "fixed_rss": fixed_rss,
           "per_call_uss": per_call_uss, "per_call_rss": per_call_rss, "idle_procs": len(procs)}
    if per_call_uss:
        out["calls_shared"] = int((total - fixed_shared) // per_call_uss)
    if per_call_rss:
        out["calls_no_sharing"] = int((total - fixed_rss) // per_call_rss)
    return out
