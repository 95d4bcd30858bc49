"""Part 1b and 5a: job start → greeting queued, in-process, ours vs the seed's design.

Each sample is one call in a fresh process forked from a forkserver that preloaded the modules
(as the worker does). Ours is `agent.run_call` with its `make_inventory`/`make_pipeline` seams
(bench/ours_call.py). The room is out of reach (no media server here), so connect is a no-op and
the session's audio goes to a fake output; the production pipeline's construction, the
AgentSession, the inventory code and the Sheets traffic (to the local stand-in, through real
gspread) are real.

Ours is measured in three cache states of STATE_DIR (the machine-wide cache):
- warm-stale: a snapshot exists but is older than the TTL, so the call triggers a refresh against
  the faulted sheet (the normal case on a running machine, and the one stale-while-revalidate covers);
- warm-fresh: a snapshot younger than the TTL (no Sheets request at all);
- cold: STATE_DIR empty (a machine that has never read the sheet; bounded by EQUIPMENT_LOAD_TIMEOUT).
The baseline has no cross-process cache: every call is cold.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench import callproc
from bench.common import Budget, log, ratio, summary
from bench.standins import CONDITIONS, Sheets, new_state_dir

STALE_TTL = "1"  # for warm-stale: any snapshot older than 1 s is stale


def _seed_state(sheets: Sheets, rows: int) -> Path:
    """A STATE_DIR holding one good snapshot, written by a call against the healthy sheet."""
    d = new_state_dir(f"template-{rows}")
    prev = sheets.condition
    sheets.set_condition("healthy")
    res = callproc.run_load_once("ours", sheets.env(d))
    sheets.set_condition(prev)
    if not res.get("known"):
        log("warning: seeding the cache failed:", res)
    return d


def _copy_state(template: Path, tag: str) -> Path:
    d = new_state_dir(tag)
    shutil.rmtree(d)
    shutil.copytree(template, d, ignore=shutil.ignore_patterns("*.lock"))
    return d


def _ours_env(sheets: Sheets, state: str, template: Path) -> dict:
    if state == "cold":
        return sheets.env(new_state_dir("cold"))
    d = _copy_state(template, state)
    if state == "warm-stale":
        return sheets.env(d, EQUIPMENT_CACHE_TTL=STALE_TTL)
    return sheets.env(d, EQUIPMENT_CACHE_TTL="3600")


def _fast_samples(sheets, n, template, keys, results, cond, rows):
    """Interleaved, one call at a time, alternating the order: baseline, ours:<state>, ..."""
    for i in range(n):
        order = list(keys)
        if i % 2:
            order.reverse()
        for key in order:
            if key == "baseline":
                res = callproc.run_pickup("baseline", sheets.env(new_state_dir("bl")))
            else:
                res = callproc.run_pickup("ours", _ours_env(sheets, key.split(":")[1], template))
            results.setdefault((cond, rows, key), []).append(res)


def ssl_context_cost(n: int = 5) -> dict:
    """What one `ssl.create_default_context()` (CA bundle load) costs here: every httpx client the
    OpenAI plugin objects build pays it once (measured in this process, same machine, same run)."""
    import ssl

    vals = []
    for _ in range(n):
        t0 = time.perf_counter()
        ssl.create_default_context()
        vals.append(time.perf_counter() - t0)
    return summary(vals)


def run(sheets: Sheets, budget: Budget, n: int = 20, rows_list=(10, 100, 1000),
        growth_n: int = 10) -> dict:
    out: dict = {"n": n, "conditions": {}, "growth": {}, "errors": []}
    samples: dict = {}
    base_rows = sheets.rows
    ours_keys = ["ours:warm-stale", "ours:warm-fresh", "ours:cold"]
    # one Sheets stand-in per condition, each with its own cache template (seeded while healthy),
    # so that calls of every condition can be interleaved one by one: a burst of load from the
    # other engineers' test runs then hits all conditions alike
    stands: dict = {}
    templates: dict = {}
    for cond in CONDITIONS:
        st = sheets if cond == "healthy" else Sheets(rows=base_rows)
        templates[cond] = _seed_state(st, base_rows)
        st.set_condition(cond)
        stands[cond] = st
    time.sleep(1.1)  # so the templates are older than STALE_TTL
    try:
        # phase 1: every fast call, one at a time, rotating condition and design
        log(f"pickup: {n} rounds × {len(CONDITIONS)} conditions, interleaved")
        for i in range(n):
            if budget.left() < 90:
                out["errors"].append(f"pickup: stopped after {i} of {n} rounds (time budget)")
                break
            conds = list(CONDITIONS) if i % 2 == 0 else list(reversed(CONDITIONS))
            for cond in conds:
                keys = (["baseline"] if cond in ("healthy", "429") else []) + ours_keys
                _fast_samples(stands[cond], 1, templates[cond], keys if i % 2 == 0 else keys[::-1],
                              samples, cond, base_rows)
        # phase 2: the baseline under slow and hung Sheets waits its 3 s timeout in every call:
        # start those calls 0.4 s apart, alternating the two conditions, so that their waits
        # overlap but the work after the timeout (~0.2 s) does not
        log("pickup: baseline with Sheets slow and hung (staggered)")
        started = {"slow": [], "hung": []}
        k = len(samples.get(("healthy", base_rows, "baseline"), [])) or n
        for i in range(k):
            for cond in ("slow", "hung"):
                started[cond] += callproc.start_pickups("baseline", stands[cond].env(new_state_dir("bl")), 1)
                time.sleep(0.3)
        for cond in ("slow", "hung"):
            samples[(cond, base_rows, "baseline")] = callproc.collect_pickups(started[cond], timeout=25)
    finally:
        for cond, st in stands.items():
            st.set_condition("healthy")
            st.s.release()
            if st is not sheets:
                st.stop()

    # growth: healthy sheet, 10 → 1,000 rows
    for rows in rows_list:
        if budget.left() < 45:
            out["errors"].append(f"growth {rows} rows: skipped (time budget)")
            continue
        log(f"pickup: growth, {rows} rows")
        sheets.set_inventory(rows)
        sheets.set_condition("healthy")
        tmpl = _seed_state(sheets, rows)
        time.sleep(1.1)
        _fast_samples(sheets, growth_n, tmpl, ["baseline"] + ours_keys, samples, "growth", rows)
    sheets.set_inventory(base_rows)

    # summarise
    for (cond, rows, key), rs in samples.items():
        errs = [r["error"] for r in rs if "error" in r]
        if errs:
            out["errors"].append(f"{cond}/{rows}/{key}: {len(errs)} errors, first: {errs[0][-600:]}")
        ok = [r for r in rs if "error" not in r]
        cell = {
            "greeting_queued": summary(r.get("greeting_queued") for r in ok),
            "first_audio": summary(r.get("first_audio") for r in ok),
            "inventory_ready": summary(r.get("inventory_ready") for r in ok),
            "inventory": _count(r.get("inventory") for r in ok),
            "errors": len(errs),
        }
        tgt = out["growth"].setdefault(str(rows), {}) if cond == "growth" else out["conditions"].setdefault(cond, {})
        tgt[key] = cell
    # where ours spends the time before the greeting (all ours calls of the condition table)
    steps = {
        "entry → inventory object built (Settings.lenient() parsed first)": ("t_inventory_end", None),
        "entry → build_pipeline begins (after connect, a no-op here)": ("t_build_begin", None),
        "voice.build_pipeline (plugin objects: STT, 2 LLMs, 2 TTS, session)": ("t_build_end", "t_build_begin"),
        "bench only: the session built again with the fake TTS": ("t_session_built", "t_build_end"),
        "→ session.start begins (BookingDesk, RentalAgent, CallControl.attach, GreetingAudio)":
            ("t_session_start_begin", "t_session_built"),
        "session.start": ("t_session_start_end", "t_session_start_begin"),
        "session.start end → greeting queued": ("greeting_queued", "t_session_start_end"),
    }
    def breakdown(rs):
        bd = {}
        for label, (end, begin) in steps.items():
            vals = [r[end] - (r[begin] if begin else 0.0) for r in rs
                    if isinstance(r.get(end), float) and (begin is None or isinstance(r.get(begin), float))]
            if vals:
                bd[label] = summary(vals)
        return bd

    ours_all = [r for (cond, rows, key), rs in samples.items() if cond != "growth" and key.startswith("ours")
                for r in rs if "error" not in r]
    out["breakdown"] = breakdown(ours_all)
    out["ssl_context"] = ssl_context_cost()
    out["breakdown_by_condition"] = {
        c: breakdown([r for (cond, rows, key), rs in samples.items() if cond == c and key.startswith("ours")
                      for r in rs if "error" not in r]) for c in CONDITIONS}
    for table in list(out["conditions"].values()) + list(out["growth"].values()):
        bl = table.get("baseline", {}).get("greeting_queued", {})
        for key, cell in table.items():
            if key == "baseline":
                continue
            g = cell["greeting_queued"]
            cell["speedup_median"] = ratio(bl.get("median"), g.get("median"))
            cell["speedup_p95"] = ratio(bl.get("p95"), g.get("p95"))
    return out


def _count(values) -> dict:
    d: dict = {}
    for v in values:
        d[str(v)] = d.get(str(v), 0) + 1
    return d
