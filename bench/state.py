"""`make bench-state`: the shared State (inventory/state.py) on each engine, SQLite and PostgreSQL,
measured on the paths a call takes; writes section 7 of BENCHMARKS.md (between its markers only).

    .venv/bin/python bench/state.py                      # the full run (~5-7 min on 2 busy cores)
    .venv/bin/python bench/state.py --quick              # a smoke run (< 90 s): too few samples to quote
    .venv/bin/python bench/state.py --engines sqlite --no-write --json /tmp/state.json

Parts, each on every engine (sqlite: STATE_DIR alone; postgresql: DATABASE_URL to a real server
started here from tests/pg_server.py, with its own STATE_DIR as the fallback beside it):
  pickup        what a new call's process does at pickup: settings.inventory_settings(env),
                equipment.inventory_from_settings(cfg), await inventory.snapshot(), with a warm,
                fresh stored snapshot; in one process (a new inventory per sample) and in new
                processes (forked from a preloaded forkserver, as job processes are): unprepared;
                then prepared, as agent.prewarm prepares a call's process: new processes that
                build the inventory and call warm() first (untimed), then `await snapshot()` timed
  booking       await inventory.book(request) end to end against the Sheets stand-in (its
                Reservations row and Bookings row written), distinct units and dates
  replicas      3 replicas (3 STATE_DIRs; one DATABASE_URL, or none) and one Sheets stand-in, 60
                calls/min in total, each call its own process, time compressed (TTL scaled):
                Sheets requests per minute by kind
  availability  1,000 units and 10 .. 10,000 reservations: the pickup snapshot and the free-units
                query (Snapshot.free_units, as rental_agent's look_up_equipment uses it); cProfile
                when its p95 at 10,000 is over 5 ms. At 10, 1,000 and 10,000 reservations, the
                pickup unprepared and prepared in new processes, prepared in one process (warm()
                once, snapshot() repeated), and at 10,000 the miss: prepared, then the stored
                snapshot replaced (State.save_snapshot, a new read_at) before the pickup
Also a model (arithmetic, not a measurement) of how often a prepared pickup finds the snapshot
its process parsed in prewarm, by call rate and number of idle processes.
Raw results: bench/results/state-<timestamp>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import random
import shlex
import subprocess
import sys
import threading
import time
import traceback
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import equipment  # noqa: E402
import settings  # noqa: E402
from bench.common import fmt_ms, fmt_ratio, log, machine, ratio, summary, write_json  # noqa: E402
from inventory.table import LOG_HEADER  # noqa: E402

# psycopg, as the worker's forkserver preloads it when DATABASE_URL is set (worker.py); a bench
# without it still runs on SQLite
with contextlib.suppress(ImportError):
    import inventory.postgres_state  # noqa: E402,F401

ENGINES = ("sqlite", "postgresql")
GOAL_PICKUP = 0.005  # p95, the goal for the pickup path
GOAL_READS = 2.0  # Sheets reads per minute, all replicas together (one per 30 s TTL)
RESERVATIONS = (10, 100, 1000, 10000)
UNITS = 1000
REPLICAS = 3
CALLS_PER_MIN = 60
TTL = 30.0  # production default (settings.py); the replicas part scales it
WARM_TTL = "3600"  # the pickup samples must find the stored snapshot fresh however slow the machine
PHONE = "+1 555 010 9999"


# ----------------------------------------------------------------------------------- helpers

def _quiet() -> None:
    """Nothing leaves the machine (the project's network guard: loopback only), and the
    inventory's routine INFO lines stay out of the bench's output; warnings still show."""
    from tests.fakes.sheets_server import install_network_guard

    install_network_guard()
    logging.basicConfig(level=logging.WARNING)
    for name in ("equipment", "gspread", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _Warnings(logging.Handler):
    """Counts what the inventory logged at WARNING or above in this process, by message start."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            key = record.getMessage()[:160]
            self.seen[key] = self.seen.get(key, 0) + 1


def _join_mirrors(timeout: float = 10.0) -> None:
    """PostgreSQL: each snapshot read starts a thread that keeps this machine's SQLite copy
    current (engines.SharedState._mirror). Within a call it runs alongside the rest of the
    pickup, which the timing includes; across samples of one loop it would not be there in a
    real call's process, so the loop waits for it between samples (untimed)."""
    for t in threading.enumerate():
        if t.name == "state-mirror" and t is not threading.current_thread():
            t.join(timeout)


def _sheets_counts(sheets: Any) -> dict[str, int]:
    return {k: v for k, v in sorted(sheets.counts().items()) if v}


def _pct_summary(values: list[float]) -> dict:
    s = summary(values)
    s["p50"] = s["median"]
    return s


def _open_inventory(env: dict[str, str]) -> tuple[Any, float, float]:
    """What a call's process does before its first read: parse the settings, build the inventory.
    Returns (inventory, settings seconds, construction seconds)."""
    t0 = time.perf_counter()
    cfg = settings.inventory_settings(env)
    t1 = time.perf_counter()
    inv = equipment.inventory_from_settings(cfg)
    return inv, t1 - t0, time.perf_counter() - t1


async def _pickup_once(env: dict[str, str]) -> tuple[Any, Any, dict[str, float]]:
    inv, t_settings, t_construct = _open_inventory(env)
    t0 = time.perf_counter()
    snap = await inv.snapshot()
    t_snapshot = time.perf_counter() - t0
    return inv, snap, {"settings": t_settings, "construct": t_construct, "snapshot": t_snapshot,
                       "total": t_settings + t_construct + t_snapshot}


def _close_state(inv: Any) -> None:
    with contextlib.suppress(Exception):
        inv.state.close()


_STATE_DIRS: list[Path] = []  # removed at the end of the run (--keep-state-dirs keeps them)


def _new_state_dir(tag: str) -> Path:
    from bench.standins import new_state_dir

    d = new_state_dir(f"state-{tag}")
    _STATE_DIRS.append(d)
    return d


# ----------------------------------------------------------------------------------- children
# Forked from a forkserver that imported this module (and through it equipment, settings, the
# inventory and psycopg), as the worker's forkserver preloads agent and inventory.postgres_state.

def _pickup_child(env: dict[str, str], conn: Any) -> None:
    _quiet()
    entry = time.perf_counter()
    try:
        async def run() -> dict:
            inv, snap, t = await _pickup_once(env)
            return {**t, "known": snap.known, "units": len(snap.units or ()), "since_entry": time.perf_counter() - entry}

        conn.send(asyncio.run(run()))
    except BaseException:  # noqa: BLE001
        conn.send({"error": traceback.format_exc()[-2000:]})
    conn.close()
    os._exit(0)  # a call's process ends without waiting for daemon threads (bench/callproc.py does the same)


def _prepared_child(env: dict[str, str], conn: Any, handshake: bool) -> None:
    """A call's process as LiveKit runs it now: started before its call, agent.prewarm builds the
    inventory and calls warm() (opens the State, parses the stored snapshot; untimed for the
    pickup, reported as `warm`), and only then the call: `await inventory.snapshot()`, timed.
    handshake: the parent replaces the stored snapshot between the two (the miss case)."""
    _quiet()
    entry = time.perf_counter()
    try:
        t0 = time.perf_counter()
        inv = equipment.inventory_from_settings(settings.inventory_settings(env))  # as prewarm builds it
        t1 = time.perf_counter()
        inv.warm()
        t2 = time.perf_counter()
        warmed = inv.cache._parsed
        # PostgreSQL: warm()'s read started the mirror into the local SQLite (engines.SharedState._mirror);
        # in an idle process it has long finished when the call comes: not overlapping the pickup here
        _join_mirrors()
        if handshake:
            conn.send({"ready": True, "read_at": warmed.read_at if warmed else None})
            conn.recv()  # the parent has replaced the stored snapshot

        async def run() -> dict:
            t = time.perf_counter()
            snap = await inv.snapshot()
            dt = time.perf_counter() - t
            return {"build": t1 - t0, "warm": t2 - t1, "snapshot": dt, "known": snap.known,
                    "units": len(snap.units or ()), "warmed": warmed is not None,
                    # the stored snapshot was the one parsed in prewarm: only patches and holds read
                    "fast_path": warmed is not None and inv.cache._parsed is warmed,
                    "since_entry": time.perf_counter() - entry}

        conn.send(asyncio.run(run()))
    except BaseException:  # noqa: BLE001
        conn.send({"error": traceback.format_exc()[-2000:]})
    conn.close()
    os._exit(0)


def _call_child(env: dict[str, str], hold: float, q: Any) -> None:
    """One call: the pickup read, then the call goes on for `hold` seconds (a refresh it started
    in the background finishes meanwhile), then close() as at call end."""
    _quiet()
    info: dict[str, Any] = {"pid": os.getpid(), "replica": env.get("BENCH_REPLICA")}
    try:
        async def run() -> None:
            t0 = time.perf_counter()
            inv = equipment.inventory_from_settings(settings.inventory_settings(env))
            snap = await inv.snapshot()
            info.update(wait=time.perf_counter() - t0, known=snap.known, age=snap.age)
            q.put(info)
            await asyncio.sleep(hold)
            await inv.close(timeout=5.0)

        asyncio.run(run())
    except BaseException:  # noqa: BLE001
        q.put({**info, "error": traceback.format_exc()[-1500:]})
    os._exit(0)


_CTX = None


def _context() -> Any:
    global _CTX
    if _CTX is None:
        import multiprocessing as mp

        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["bench.state"])
    return _CTX


def _run_pickup_process(env: dict[str, str], timeout: float = 30.0) -> dict:
    from bench import state as me  # the children's targets by their importable name, not __main__

    ctx = _context()
    r, w = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    p = ctx.Process(target=me._pickup_child, args=(env, w), daemon=True)
    p.start()
    w.close()
    res: dict
    if r.poll(timeout):
        try:
            res = r.recv()
        except EOFError:
            res = {"error": "child exited without a result"}
    else:
        res = {"error": f"no result within {timeout:g}s"}
    res["start_to_result"] = time.perf_counter() - t0
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join(2)
    r.close()
    return res


def _run_prepared_process(env: dict[str, str], between: Any = None, timeout: float = 30.0) -> dict:
    """A prepared call's process (_prepared_child). between: called (untimed) after the child's
    warm() and before its pickup, e.g. to replace the stored snapshot."""
    from bench import state as me

    ctx = _context()
    mine, theirs = ctx.Pipe(duplex=True)
    p = ctx.Process(target=me._prepared_child, args=(env, theirs, between is not None), daemon=True)
    p.start()
    theirs.close()
    res: dict = {}
    try:
        if between is not None:
            if not mine.poll(timeout):
                raise TimeoutError(f"not prepared within {timeout:g}s")
            ready = mine.recv()
            if "error" in ready:
                res = ready
            else:
                between()
                mine.send("go")
        if not res:
            res = mine.recv() if mine.poll(timeout) else {"error": f"no result within {timeout:g}s"}
    except (EOFError, OSError, TimeoutError) as e:
        res = {"error": f"child: {type(e).__name__}: {e}"}
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join(2)
    mine.close()
    return res


def _proc_summary(procs: list[dict], keys: tuple[str, ...]) -> dict:
    ok = [p for p in procs if "error" not in p]
    out: dict = {k: _pct_summary([p[k] for p in ok if k in p]) for k in keys}
    out["processes"] = len(procs)
    out["known"] = sum(1 for p in ok if p.get("known"))
    if any("fast_path" in p for p in ok):
        out["fast_path"] = sum(1 for p in ok if p.get("fast_path"))
    out["errors"] = [p["error"] for p in procs if "error" in p][:3]
    return out


# ----------------------------------------------------------------------------------- engines

class Engines:
    """sqlite: nothing to start. postgresql: one real server (tests/pg_server.py), a fresh
    database per measurement."""

    def __init__(self, wanted: list[str], pg_disk: bool):
        self.wanted = wanted
        self.pg = None
        self.pg_info: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        if "postgresql" in wanted:
            try:
                from tests.pg_server import PgServer

                base = None
                if pg_disk:
                    base = Path("/tmp") / "bench-state"
                    base.mkdir(exist_ok=True)
                # durable (fsync on) and on the same ext4 disk as the SQLite STATE_DIRs, so a commit
                # costs both engines the same kind of fsync; tests use tmpfs and fsync=off instead
                self.pg = PgServer(durable=pg_disk, base_dir=base).start()
                self.pg_info = {"version": self.pg.version, "source": self.pg.source, "run_as": self.pg.run_as,
                                "data_dir": str(self.pg.base), "durable": pg_disk,
                                "timings": dict(self.pg.timings)}
            except Exception:
                self.errors["postgresql"] = traceback.format_exc()[-2000:]
                log("PostgreSQL unavailable, measuring SQLite only:", self.errors["postgresql"].strip().splitlines()[-1])

    @property
    def names(self) -> list[str]:
        return [e for e in self.wanted if e == "sqlite" or (e == "postgresql" and self.pg is not None)]

    def extra(self, engine: str) -> dict[str, str]:
        """The env an engine adds: PostgreSQL gets a fresh, empty database."""
        if engine == "postgresql":
            assert self.pg is not None
            return {"DATABASE_URL": self.pg.create_database()}
        return {}

    def stop(self) -> None:
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()


def _new_sheets(rows: int = 20) -> Any:
    """The bench's Sheets stand-in (bench/standins.py) with the history tab set up as
    docs/google-sheet.md has it: without it the first booking creates the tab."""
    from bench.standins import Sheets

    sheets = Sheets(rows=rows)
    sheets.s.set_rows("Bookings", [list(LOG_HEADER)])
    return sheets


# ----------------------------------------------------------------------------------- 1. pickup

async def part_pickup(engines: Engines, n: int, n_proc: int, warmup: int = 5) -> dict:
    out: dict = {"samples": n, "processes": n_proc, "warmup": warmup, "ttl": float(WARM_TTL)}
    sheets = _new_sheets()
    try:
        for engine in engines.names:
            env = sheets.env(_new_state_dir(f"pickup-{engine}"), EQUIPMENT_CACHE_TTL=WARM_TTL,
                             **engines.extra(engine))
            inv, snap, _ = await _pickup_once(env)  # the first call: loads the snapshot from the sheet
            await inv.close(timeout=5)
            _close_state(inv)
            _join_mirrors()
            assert snap.known, "the first load did not come back known"
            cell: dict = {"units": len(snap.units or ()), "state": type(inv.state).__name__}
            for _ in range(warmup):  # untimed: the loop's own first-use costs (a new process is measured apart)
                inv, snap, _ = await _pickup_once(env)
                _close_state(inv)
                _join_mirrors()
            sheets.reset_counts()
            samples: list[dict[str, float]] = []
            known = 0
            for _ in range(n):
                inv, snap, t = await _pickup_once(env)
                known += snap.known
                samples.append(t)
                _close_state(inv)
                _join_mirrors()
            cell["in_process"] = {k: _pct_summary([s[k] for s in samples]) for k in samples[0]}
            cell["in_process"]["known"] = known
            cell["sheets_requests_in_process"] = _sheets_counts(sheets)
            sheets.reset_counts()
            procs = [_run_pickup_process(env) for _ in range(n_proc)]
            ok = [p for p in procs if "error" not in p]
            cell["new_process"] = {k: _pct_summary([p[k] for p in ok]) for k in
                                   ("settings", "construct", "snapshot", "total", "since_entry", "start_to_result")}
            cell["new_process"]["known"] = sum(1 for p in ok if p.get("known"))
            cell["new_process"]["errors"] = [p["error"] for p in procs if "error" in p][:3]
            cell["sheets_requests_new_process"] = _sheets_counts(sheets)
            # (a) the same new processes, prepared as agent.prewarm prepares them: warm() first
            # (untimed), then the pickup, which is `await inventory.snapshot()` alone
            sheets.reset_counts()
            prepared = [_run_prepared_process(env) for _ in range(n_proc)]
            cell["prepared_process"] = _proc_summary(prepared, ("build", "warm", "snapshot", "since_entry"))
            cell["sheets_requests_prepared"] = _sheets_counts(sheets)
            if engine == "postgresql":
                cell["postgresql_steps"] = _pg_steps(env, min(n, 100))
            out[engine] = cell
            pp = cell["prepared_process"]
            log(f"pickup {engine}: in-process total p50 {fmt_ms(cell['in_process']['total']['p50'])} "
                f"p95 {fmt_ms(cell['in_process']['total']['p95'])}; new process p50 "
                f"{fmt_ms(cell['new_process']['total']['p50'])}; prepared new process snapshot() p50 "
                f"{fmt_ms(pp['snapshot']['p50'])} p95 {fmt_ms(pp['snapshot']['p95'])} (fast path "
                f"{pp.get('fast_path', 0)}/{pp['processes']}); Sheets {cell['sheets_requests_in_process']}, "
                f"prepared {cell['sheets_requests_prepared']}")
    finally:
        sheets.stop()
    return out


def _pg_steps(env: dict[str, str], n: int) -> dict:
    """Where a PostgreSQL pickup read goes, step by step, each timed on its own in this thread
    (through the product's own classes, nothing changed): a bare connection; a new PostgresState's
    first snapshot read (its connection, the schema check, the read and the JSON parse); the same
    read again on the open connection; and what SharedState adds from this machine's SQLite (the
    holds of bookings kept locally: a new SQLite connection and a query), plus the local copy's
    read that the background mirror makes."""
    import psycopg

    from inventory.postgres_state import PostgresState
    from inventory.sqlite_state import SqliteState

    cfg = settings.inventory_settings(env)
    inv = equipment.inventory_from_settings(cfg)
    origin = inv.store.origin
    _close_state(inv)
    steps: dict[str, list[float]] = {"connect": [], "first_read": [], "read_open": [], "local_holds": [],
                                     "local_copy_read": []}
    for _ in range(n):
        t0 = time.perf_counter()
        conn = psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=3)
        steps["connect"].append(time.perf_counter() - t0)
        conn.close()
        pg = PostgresState(cfg.database_url, connect_timeout=cfg.database_timeout,
                           statement_timeout=cfg.database_timeout)
        t0 = time.perf_counter()
        pg.snapshot(origin)
        steps["first_read"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pg.snapshot(origin)
        steps["read_open"].append(time.perf_counter() - t0)
        pg.close()
        local = SqliteState(cfg.state_dir)
        t0 = time.perf_counter()
        local.holds()
        steps["local_holds"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        local.snapshot(origin)
        steps["local_copy_read"].append(time.perf_counter() - t0)
        local.close()
    return {k: _pct_summary(v) for k, v in steps.items()}


# ----------------------------------------------------------------------------------- 2. booking

async def part_booking(engines: Engines, n: int) -> dict:
    out: dict = {"bookings": n}
    for engine in engines.names:
        sheets = _new_sheets()  # one sheet per engine: each starts from the same rows
        try:
            env = sheets.env(_new_state_dir(f"book-{engine}"), EQUIPMENT_CACHE_TTL=WARM_TTL, **engines.extra(engine))
            inv, snap, _ = await _pickup_once(env)
            await inv.close(timeout=5)
            _close_state(inv)
            today = date.today()
            # units free for the whole time the bookings span (a RENTED row without dates is taken for good)
            rentable = [u for u in snap.units or () if snap.free(u, today, today + timedelta(days=366))]
            before = {t: len(sheets.s.rows(t)) for t in ("Reservations", "Bookings")}
            times: list[float] = []
            per: list[dict[str, int]] = []
            confirmed, errors = 0, []
            for i in range(n):
                unit = rentable[i % len(rentable)]
                start = today + timedelta(days=7 + 5 * (i // len(rentable)))  # distinct dates per unit
                request = equipment.parse_booking(unit.id, "Bench Caller", PHONE, start.isoformat(),
                                                  (start + timedelta(days=2)).isoformat(), f"bench-call-{i}",
                                                  today=today)
                inv, _snap, _ = await _pickup_once(env)  # a new call: its own inventory, as its own process has
                sheets.reset_counts()
                t0 = time.perf_counter()
                try:
                    booking = await inv.book(request)
                    times.append(time.perf_counter() - t0)
                    confirmed += bool(booking.confirmed)
                except Exception as e:  # noqa: BLE001 - a refusal here is a bench bug or a product one: reported
                    errors.append(f"{unit.id} {start}: {type(e).__name__}: {e}"[:300])
                per.append(sheets.counts())
                await inv.close(timeout=5)  # call end (untimed): nothing should be pending
                _close_state(inv)
                _join_mirrors()
            after = {t: len(sheets.s.rows(t)) for t in ("Reservations", "Bookings")}
            kinds = sorted({k for c in per for k, v in c.items() if v})
            out[engine] = {
                "book": _pct_summary(times), "confirmed": confirmed, "errors": errors[:5],
                "rows_added": {t: after[t] - before[t] for t in after},
                "requests_per_booking": {k: sum(c.get(k, 0) for c in per) / len(per) for k in kinds},
                "requests_per_booking_max": {k: max(c.get(k, 0) for c in per) for k in kinds},
                "units_used": len({rentable[i % len(rentable)].id for i in range(n)}),
            }
            log(f"booking {engine}: p50 {fmt_ms(out[engine]['book']['p50'])} p95 {fmt_ms(out[engine]['book']['p95'])}, "
                f"{confirmed}/{n} confirmed, requests per booking {out[engine]['requests_per_booking']}")
        finally:
            sheets.stop()
    return out


# ----------------------------------------------------------------------------------- 3. replicas

def _simulate(envs: list[dict[str, str]], sheets: Any, sim_minutes: float, compress: float, hold: float) -> dict:
    from bench import state as me

    ctx = _context()
    q = ctx.SimpleQueue()
    # each replica's first call (untimed, before the window): the window measures the steady state
    for env in envs if "DATABASE_URL" not in envs[0] else envs[:1]:
        p = ctx.Process(target=me._call_child, args=(env, 0.0, q), daemon=True)
        p.start()
        p.join(30)
    while not q.empty():
        q.get()
    _time_to_settle = 0.2
    time.sleep(_time_to_settle)
    sheets.reset_counts()
    n_calls = max(1, round(CALLS_PER_MIN * sim_minutes))
    interval = 60.0 / CALLS_PER_MIN / compress
    procs, lateness = [], []
    t0 = time.monotonic()
    last_start = t0
    for i in range(n_calls):
        target = t0 + i * interval
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        lateness.append(time.monotonic() - target)
        p = ctx.Process(target=me._call_child, args=(envs[i % len(envs)], hold, q), daemon=True)
        p.start()
        last_start = time.monotonic()
        procs.append(p)
        for old in procs[:-40]:
            old.join(0)
    # the window as it happened (on a busy machine calls start late): from the first call's start to
    # one interval after the last one's; the requests are those made meanwhile
    window = max(n_calls * interval, last_start - t0 + interval)
    while time.monotonic() < t0 + window:
        time.sleep(0.02)
    counts = _sheets_counts(sheets)
    for p in procs:
        p.join(hold + 15)
        if p.is_alive():
            p.kill()
            p.join(2)
    after = _sheets_counts(sheets)
    infos = []
    while not q.empty():
        infos.append(q.get())
    sim_min = window * compress / 60.0
    per_min = {k: v / sim_min for k, v in counts.items()}
    reads = counts.get("read", 0) + counts.get("metadata", 0)
    return {
        "calls": n_calls, "replicas": len(envs), "sim_minutes": sim_min, "real_seconds": window,
        "planned_seconds": n_calls * interval,
        "ttl_real_s": TTL / compress, "counts": counts, "counts_after_calls_ended": after, "per_min": per_min,
        "reads_per_min": reads / sim_min, "reads_per_ttl": reads / (sim_min * 60.0 / TTL),
        "known": sum(1 for x in infos if x.get("known")), "reported": len(infos),
        "wait": _pct_summary([x["wait"] for x in infos if "wait" in x]),
        "errors": [x["error"] for x in infos if "error" in x][:3],
        "max_lateness": max(lateness) if lateness else None, "lateness": _pct_summary(lateness),
    }


def part_replicas(engines: Engines, sim_minutes: float, compress: float, hold: float) -> dict:
    out: dict = {"calls_per_min": CALLS_PER_MIN, "compress": compress, "ttl_sim_s": TTL, "ttl_real_s": TTL / compress,
                 "hold_real_s": hold, "sim_minutes": sim_minutes}
    for engine in engines.names:
        sheets = _new_sheets()
        try:
            shared = engines.extra(engine)  # one database for the three replicas (PostgreSQL)
            envs = [sheets.env(_new_state_dir(f"replica{r}-{engine}"), EQUIPMENT_CACHE_TTL=f"{TTL / compress:g}",
                               BENCH_REPLICA=str(r), **shared) for r in range(REPLICAS)]
            log(f"replicas {engine}: {REPLICAS} replicas, {CALLS_PER_MIN} calls/min, {sim_minutes:g} simulated min "
                f"compressed {compress:g}x ({sim_minutes * 60 / compress:.0f} s)")
            run = _simulate(envs, sheets, sim_minutes, compress, hold)
            late = _g(run, "lateness", "p95") or 0
            if late > 0.25 * TTL / compress:  # the machine stalled: calls did not arrive at the rate asked
                log(f"replicas {engine}: calls started late (p95 {late:.2f} s), measuring once more on a fresh State")
                shared = engines.extra(engine)
                envs = [{**env, "STATE_DIR": str(_new_state_dir(f"replica{r}-{engine}")), **shared}
                        for r, env in enumerate(envs)]
                again = _simulate(envs, sheets, sim_minutes, compress, hold)
                if (_g(again, "lateness", "p95") or 0) < late:
                    run = {**again, "first_attempt": run}
                else:
                    run = {**run, "second_attempt": again}
            out[engine] = run
            log(f"replicas {engine}: {out[engine]['per_min']} per simulated min")
        finally:
            sheets.stop()
    return out


# ----------------------------------------------------------------------------------- 4. availability

def _units_rows() -> list[list[str]]:
    cats = [("EX", "Excavators", "Mini Excavator", 325, 1300), ("SS", "Skid Steers", "Skid Steer", 275, 1100),
            ("LF", "Lifts", "Scissor Lift", 140, 520), ("GN", "Generators", "Generator", 95, 380),
            ("CP", "Compaction", "Plate Compactor", 85, 340), ("TR", "Trailers", "Utility Trailer", 60, 240)]
    rows = [["ID", "Name", "Category", "Status", "Daily Rate", "Weekly Rate", "Description"]]
    for i in range(UNITS):
        pre, cat, name, d, w = cats[i % len(cats)]
        rows.append([f"{pre}-{i:04d}", f"{name} #{i}", cat, "MAINTENANCE" if i % 20 == 19 else "AVAILABLE",
                     str(d), str(w), f"{name} in good condition, unit {i}"])
    return rows


def _reservation_rows(n: int, units: list[list[str]], today: date) -> list[list[str]]:
    """n reservations over the units, none overlapping on a unit: per unit, slot k starts about
    30*k days after three days ago, lasts 1-7 days; 5 % cancelled. Renter names and phones are
    filled in, as the agent writes them."""
    from inventory.reservations import RESERVATION_HEADER

    rng = random.Random(n)
    rows = [list(RESERVATION_HEADER)]
    ids = [u[0] for u in units[1:]]
    for k in range(n):
        eid, slot = ids[k % len(ids)], k // len(ids)
        start = today + timedelta(days=-3 + 30 * slot + rng.randint(0, 20))
        end = start + timedelta(days=rng.randint(0, 6))
        rows.append([f"B{k:06d}", eid, start.isoformat(), end.isoformat(), f"Renter {k} Example",
                     f"+1 555 {100 + k % 900:03d} {k % 10000:04d}", "CANCELLED" if rng.random() < 0.05 else "CONFIRMED",
                     f"{rng.randint(95, 2000)}.00", "500", f"{today.isoformat()}T09:00:00-06:00", f"call-{k}", ""])
    return rows


def _profile(env: dict[str, str], start: date, end: date, n: int = 40) -> dict:
    """Where the pickup and the free-units query spend their time at the largest size, in this
    thread (snapshot() reads off the loop, on a thread cProfile would not see: the same calls are
    made here directly: settings, construction, cache.read(), the Snapshot, free_units)."""
    def once() -> None:
        inv, _, _ = _open_inventory(env)
        cached = inv.cache.read()
        snap = inv._snapshot(cached)
        snap.free_units(start, end)
        _close_state(inv)
        _join_mirrors()

    once()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        once()
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rel = os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else file
        if "site-packages/" in rel:
            rel = rel.split("site-packages/")[-1]
        elif "/lib/python3" in rel:
            rel = rel.split("/lib/")[-1].split("/", 1)[-1]  # the standard library: json/decoder.py
        rows.append({"where": f"{rel}:{line}({func})", "calls_per_iteration": nc / n, "tottime_ms": 1000 * tt / n,
                     "cumtime_ms": 1000 * ct / n})
    by_tot = sorted(rows, key=lambda r: -r["tottime_ms"])[:15]
    ours = sorted((r for r in rows if r["where"].startswith(("inventory/", "equipment.py", "settings.py"))),
                  key=lambda r: -r["cumtime_ms"])[:15]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    return {"iterations": n, "total_ms_per_iteration": 1000 * total / n, "by_own_time": by_tot,
            "ours_by_cumulative": ours, "text": buf.getvalue()[-6000:]}


MIN_ROW_SAMPLES = 50
PREPARED_SIZES = (10, 1000, 10000)  # reservations, at 1,000 units: the prepared pickup's rows


async def _prepared_at_size(env: dict[str, str], sheets: Any, prep: dict[str, int], miss: bool) -> dict:
    """The pickup of a prepared process at one size of the stored snapshot (it is there and fresh):
    - unprepared_process: new processes as in 7a's new-process rows (settings, construct,
      snapshot()), for the ratio measured at this size and in this run;
    - process: new processes prepared as agent.prewarm does (build, warm(); untimed for the
      pickup), then `await snapshot()` timed;
    - one_process: one inventory, warm() once, then snapshot() again and again (each on its own
      thread, as every snapshot() is); beside it cache.read() on the thread that ran warm(),
      whose SQLite connection is open;
    - miss (the largest size): prepared, then the stored snapshot replaced by a refresh's write
      (State.save_snapshot: the same data, a new read_at; what cache.refresh writes, without the
      Sheets read) before the pickup: the full read again, on the connection opened in prewarm."""
    out: dict = {}
    unprepared = [_run_pickup_process(env) for _ in range(prep["processes"])]
    out["unprepared_process"] = _proc_summary(unprepared, ("settings", "construct", "snapshot", "total"))
    sheets.reset_counts()
    procs = [_run_prepared_process(env) for _ in range(prep["processes"])]
    out["process"] = _proc_summary(procs, ("build", "warm", "snapshot"))

    inv, _, _ = _open_inventory(env)
    t0 = time.perf_counter()
    inv.warm()
    warm = time.perf_counter() - t0
    warmed = inv.cache._parsed
    _join_mirrors()
    snaps: list[float] = []
    reads: list[float] = []
    hits = 0
    for i in range(3 + prep["one_process"]):  # the first three: warm-up, untimed
        t0 = time.perf_counter()
        await inv.snapshot()
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        inv.cache.read()
        dr = time.perf_counter() - t0
        if i >= 3:
            snaps.append(dt)
            reads.append(dr)
            hits += warmed is not None and inv.cache._parsed is warmed
    out["one_process"] = {"warm": warm, "snapshot": _pct_summary(snaps), "cache_read_same_thread": _pct_summary(reads),
                          "fast_path": hits, "samples": len(snaps)}
    out["sheets_requests"] = _sheets_counts(sheets)

    if miss:
        rep = equipment.inventory_from_settings(settings.inventory_settings(env))  # the refreshing process
        origin = rep.store.origin
        stored = rep.state.snapshot(origin)
        _join_mirrors()
        assert stored is not None and stored.data is not None, "no stored snapshot to replace"
        data = stored.data
        replaced: list[float] = []

        def replace() -> None:
            now = time.time()
            t = time.perf_counter()
            rep.state.save_snapshot(origin, data, now, now)
            replaced.append(time.perf_counter() - t)
            time.sleep(0.1)  # the refresh came some time before the call, not within its pickup

        sheets.reset_counts()
        missed = [_run_prepared_process(env, between=replace) for _ in range(prep["miss_processes"])]
        out["miss_process"] = _proc_summary(missed, ("build", "warm", "snapshot"))
        times: list[float] = []
        misses = 0
        for i in range(1 + prep["miss_one_process"]):  # the first: warm-up, untimed
            replace()
            before = inv.cache._parsed
            t0 = time.perf_counter()
            await inv.snapshot()
            dt = time.perf_counter() - t0
            _join_mirrors()
            if i >= 1:
                times.append(dt)
                misses += before is not None and inv.cache._parsed is not before
        out["miss_one_process"] = {"snapshot": _pct_summary(times), "missed": misses, "samples": len(times)}
        out["miss_replace"] = _pct_summary(replaced)
        out["sheets_requests_miss"] = _sheets_counts(sheets)
        _close_state(rep)
    await inv.close(timeout=5)
    _close_state(inv)
    _join_mirrors()
    return out


async def part_availability(engines: Engines, n: int, sizes: tuple[int, ...], row_seconds: float = 20.0,
                            prep: dict[str, int] | None = None) -> dict:
    today = date.today()
    start, end = today + timedelta(days=30), today + timedelta(days=32)  # a 3-day rental a month out
    units = _units_rows()
    out: dict = {"units": UNITS, "samples": n, "row_seconds": row_seconds, "query": {"start": start.isoformat(), "end": end.isoformat(),
                                                         "category": "Generators"},
                 "prepared_sizes": [s for s in sizes if s in PREPARED_SIZES] if prep else [], "prepared_counts": prep}
    sheets = _new_sheets()
    sheets.s.set_rows("Equipment", units)
    try:
        for engine in engines.names:
            cells: dict = {}
            for size in sizes:
                sheets.s.set_rows("Reservations", _reservation_rows(size, units, today))
                env = sheets.env(_new_state_dir(f"avail{size}-{engine}"), EQUIPMENT_CACHE_TTL=WARM_TTL,
                                 EQUIPMENT_LOAD_TIMEOUT="30", **engines.extra(engine))
                inv, snap, first = await _pickup_once(env)  # cold: reads the sheet, stores the snapshot
                assert snap.known, f"{size} reservations: the first load did not come back known"
                stored = inv.state.snapshot(inv.store.origin)
                stored_bytes = len(json.dumps(stored.data)) if stored else None
                refresh = []
                for _ in range(3):  # the refresh itself, as the process that refreshes pays it once per TTL
                    t0 = time.perf_counter()
                    inv.cache.refresh(force=True, budget=30)
                    refresh.append(time.perf_counter() - t0)
                mirror = []
                if engine == "postgresql":  # what the background mirror re-reads on every PostgreSQL pickup
                    for _ in range(5):
                        t0 = time.perf_counter()
                        inv.state.local.snapshot(inv.store.origin)
                        mirror.append(time.perf_counter() - t0)
                # the read in two layers, on this inventory's open connection (no connect): the State's
                # read with its JSON parse, then the cache's read (that plus validation into units)
                state_read, cache_read = [], []
                for _ in range(max(5, n // 8)):
                    t0 = time.perf_counter()
                    inv.state.snapshot(inv.store.origin)
                    state_read.append(time.perf_counter() - t0)
                    _join_mirrors()
                    inv.cache._parsed = None  # the full read and parse, as an unprepared process makes it
                    t0 = time.perf_counter()
                    inv.cache.read()
                    cache_read.append(time.perf_counter() - t0)
                    _join_mirrors()
                await inv.close(timeout=5)
                _close_state(inv)
                _join_mirrors()
                sheets.reset_counts()
                t_snap, t_all, t_cat, t_total, free_n = [], [], [], [], None
                check_reservations = None
                row_started = time.monotonic()
                for i in range(3 + n):  # the first three: warm-up, untimed
                    if i >= 3 + MIN_ROW_SAMPLES and time.monotonic() - row_started > row_seconds:
                        break  # the row's time is up (a busy machine): fewer samples, said in the table
                    inv, snap, t = await _pickup_once(env)
                    _join_mirrors()  # the query alone: PostgreSQL's mirror thread is measured apart (mirror_read)
                    t0 = time.perf_counter()
                    free = snap.free_units(start, end)  # a new snapshot's first question: builds its calendar
                    if i >= 3:
                        t_all.append(time.perf_counter() - t0)
                        t_snap.append(t["snapshot"])
                        t_total.append(t["total"])
                    free_n = len(free)
                    _close_state(inv)
                    _join_mirrors()
                row_started = time.monotonic()
                for i in range(max(3, n // 2)):  # the usual look-up, by category, as a new snapshot's first question
                    if i >= MIN_ROW_SAMPLES and time.monotonic() - row_started > row_seconds / 3:
                        break
                    inv, snap, t = await _pickup_once(env)
                    _join_mirrors()
                    t0 = time.perf_counter()
                    snap.free_units(start, end, "Generators")
                    t_cat.append(time.perf_counter() - t0)
                    if check_reservations is None:
                        check_reservations = len(snap.reservations)
                    _close_state(inv)
                    _join_mirrors()
                cells[str(size)] = {
                    "reservations_in_snapshot": check_reservations, "stored_bytes": stored_bytes,
                    "cold_pickup": first["total"], "refresh": _pct_summary(refresh),
                    "mirror_read": _pct_summary(mirror) if mirror else None,
                    "state_read_open": _pct_summary(state_read), "cache_read_open": _pct_summary(cache_read),
                    "snapshot": _pct_summary(t_snap), "pickup_total": _pct_summary(t_total),
                    "free_units_all": _pct_summary(t_all), "free_units_category": _pct_summary(t_cat),
                    "free_units_found": free_n, "sheets_requests_during_samples": _sheets_counts(sheets),
                }
                log(f"availability {engine} {size}: snapshot() p50 {fmt_ms(cells[str(size)]['snapshot']['p50'])} "
                    f"p95 {fmt_ms(cells[str(size)]['snapshot']['p95'])}; free_units(all) p95 "
                    f"{fmt_ms(cells[str(size)]['free_units_all']['p95'])}; stored {stored_bytes or 0:,} B")
                if prep and size in PREPARED_SIZES:
                    cells[str(size)]["prepared"] = pr = await _prepared_at_size(env, sheets, prep,
                                                                                 miss=size == max(sizes))
                    log(f"availability {engine} {size} prepared: new process snapshot() p50 "
                        f"{fmt_ms(_g(pr, 'process', 'snapshot', 'p50'))} p95 {fmt_ms(_g(pr, 'process', 'snapshot', 'p95'))} "
                        f"(unprepared {fmt_ms(_g(pr, 'unprepared_process', 'snapshot', 'p95'))} p95); one process p95 "
                        f"{fmt_ms(_g(pr, 'one_process', 'snapshot', 'p95'))}; fast path "
                        f"{_g(pr, 'process', 'fast_path')}/{_g(pr, 'process', 'processes')}; Sheets {pr['sheets_requests']}"
                        + (f"; miss p50 {fmt_ms(_g(pr, 'miss_process', 'snapshot', 'p50'))} p95 "
                           f"{fmt_ms(_g(pr, 'miss_process', 'snapshot', 'p95'))}" if pr.get("miss_process") else ""))
            base = cells.get(str(sizes[0])) or {}
            for size, c in cells.items():
                c["ratio_vs_first"] = {k: ratio(_g(c, k, "p50"), _g(base, k, "p50")) for k in
                                       ("snapshot", "pickup_total", "free_units_all", "free_units_category")}
            big = cells.get(str(max(sizes))) or {}
            if max(sizes) >= 10000 and ((_g(big, "pickup_total", "p95") or 0) > GOAL_PICKUP
                                        or (_g(big, "free_units_all", "p95") or 0) > GOAL_PICKUP):
                sheets.s.set_rows("Reservations", _reservation_rows(max(sizes), units, today))
                env = sheets.env(_new_state_dir(f"profile-{engine}"), EQUIPMENT_CACHE_TTL=WARM_TTL,
                                 EQUIPMENT_LOAD_TIMEOUT="30", **engines.extra(engine))
                inv, _, _ = await _pickup_once(env)
                await inv.close(timeout=5)
                _close_state(inv)
                _join_mirrors()
                cells["profile"] = _profile(env, start, end, n=20 if n < 50 else 40)
                log(f"availability {engine}: profiled at {max(sizes)} reservations "
                    f"({cells['profile']['total_ms_per_iteration']:.1f} ms per pickup + query under cProfile)")
            out[engine] = cells
    finally:
        sheets.stop()
    return out


MODEL_RATES = (0.2, 1, 6, 30, 60)  # calls/min sharing one stored snapshot
MODEL_PREWARM = 2.0  # s from a process's start (when the previous idle one took a call) to its warm()
MODEL_REFRESH = 0.5  # s a refresh takes (the Sheets read and the write)


def _fast_path_share(calls_per_min: float, idle: int, machines: int = 1, ttl: float = TTL,
                     prewarm: float = MODEL_PREWARM, refresh: float = MODEL_REFRESH, calls: int = 20000,
                     seed: int = 7) -> float:
    """A model, not a measurement: the share of pickups whose process parsed, in prewarm, the
    stored snapshot still there at pickup (the fast path). Poisson arrivals, each to one of
    `machines` at random; each machine keeps `idle` prepared processes, and the oldest takes the
    call (livekit-agents 1.8.9 ipc/proc_pool.py: an asyncio.Queue), a new one is started then and
    runs warm() `prewarm` s later; a pickup that finds the snapshot older than the TTL starts a
    refresh (stale-while-revalidate; one at a time), which replaces the snapshot `refresh` s
    later. A pickup misses when a refresh replaced the snapshot after its process's warm()."""
    import bisect
    from collections import deque

    rng = random.Random(seed)
    queues = [deque([0.0] * idle) for _ in range(machines)]  # when each idle process ran warm()
    replaced = [0.0]  # when refreshes replaced the stored snapshot
    read_at, inflight, t = 0.0, None, 0.0
    hits = counted = 0
    for i in range(calls):
        t += rng.expovariate(calls_per_min / 60.0)
        q = queues[rng.randrange(machines)]
        warm_at = q.popleft()
        start = max(t, warm_at)  # (no idle process ready: the call waits for the next)
        if inflight is not None and inflight <= start:
            replaced.append(inflight)
            read_at, inflight = inflight, None
        if i >= calls // 10:  # past the start-up
            counted += 1
            hits += bisect.bisect_right(replaced, warm_at) == len(replaced)
        if start - read_at >= ttl and inflight is None:
            inflight = start + refresh
        q.append(t + prewarm)
    return hits / counted


def fast_path_model() -> dict:
    rows = {}
    for rate in MODEL_RATES:
        rows[str(rate)] = {"idle1": _fast_path_share(rate, 1), "idle2": _fast_path_share(rate, 2),
                           "idle4": _fast_path_share(rate, 4),
                           "replicas3_idle2": _fast_path_share(rate, 2, machines=3),
                           "idle1_slow_refresh": _fast_path_share(rate, 1, refresh=MODEL_PREWARM + 1.0)}
    return {"ttl": TTL, "prewarm": MODEL_PREWARM, "refresh": MODEL_REFRESH, "slow_refresh": MODEL_PREWARM + 1.0,
            "rows": rows}


def _g(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# ----------------------------------------------------------------------------------- the report

def _ms(s: Any, stat: str = "p50") -> str:
    return fmt_ms(_g(s, stat))


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("meets goal" if ok else "**misses goal**")


def _counts_text(c: dict | None, per: str = "") -> str:
    if not c:
        return "none"
    return ", ".join(f"{k} {v:g}{per}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in c.items()
                     if k != "sheets_api")


def render(r: dict, raw_path: str) -> str:
    """The text between section 7's markers."""
    m = r["machine"]
    L: list[str] = []
    a = L.append
    names = [e for e in ENGINES if e in r.get("engines", [])]
    a("Generated by `make bench-state` (`bench/state.py`), apart from the rest of this file (`bench/report.py` "
      "keeps this block as it is). The State is what every call's process shares (inventory/state.py): the "
      "inventory snapshot, its single-flight refresh, the unit locks and the outbox; SQLite in STATE_DIR on one "
      "machine, PostgreSQL (DATABASE_URL) across replicas, with the machine's SQLite beside it as the fallback.")
    a("")
    a("| | |")
    a("|---|---|")
    a(f"| date | {m['date']} |")
    la, le = r.get("loadavg_at_start") or [], r.get("loadavg_at_end") or []
    a(f"| machine | {m['nproc']} cores (`nproc`), {m['cpu']}, {(m.get('mem_total') or 0) / 2 ** 20:,.0f} MB RAM, "
      f"Linux {m['kernel']}, Python {m['python']}; **shared with other work**: load average (1, 5, 15 min) at start "
      f"{', '.join(f'{x:.2f}' for x in la)}, at end {', '.join(f'{x:.2f}' for x in le)} |")
    pg = r.get("postgresql_server") or {}
    if pg:
        a(f"| PostgreSQL | {pg.get('version')} ({pg.get('source', '').split(' (')[0]}), started here by tests/pg_server.py, "
          f"over loopback TCP (no network latency), {'data on the ext4 disk with fsync on, like the SQLite files' if pg.get('durable') else 'data on tmpfs with fsync off'} |")
    else:
        a(f"| PostgreSQL | not measured{': ' + r['errors']['postgresql'].strip().splitlines()[-1][:200] if 'postgresql' in r.get('errors', {}) else ' (--engines)'} |")
    a(f"| SQLite | STATE_DIR under {r.get('state_dir_base')} (ext4 disk; WAL, synchronous=FULL as inventory/sqlite_state.py sets it) |")
    a(f"| code | commit {m['commit']} |")
    default = r["command"].endswith("bench/state.py")
    a(f"| command | {'`make bench-state` → ' if default else ''}`{r['command']}` |")
    a(f"| run time | {r.get('total_seconds', 0):.0f} s" + (" (**--quick: smoke run, too few samples to quote**)" if r.get("quick") else "") + " |")
    a(f"| raw data | `{raw_path}` (git-ignored) |")
    a("")
    try:
        cores = int(m.get("nproc") or 0)
    except ValueError:
        cores = 0
    loads = [x[0] for x in (la, le) if x]
    if cores and loads and max(loads) > cores * 0.75:
        a(f"**The machine was busy with other work during this run** (1-minute load average up to {max(loads):.1f} on "
          f"{cores} cores): times include waits for a CPU. Ratios measured in the same run and request counts hold "
          f"better than absolute times.")
        a("")

    _render_verdicts(r, names, a)

    # ---- 7a
    a("### 7a. The snapshot read at call start")
    a("")
    pk = r.get("pickup") or {}
    if not any(e in pk for e in names):
        a(f"Not measured{_failed(r, 'pickup')}.")
        a("")
    else:
        a(f"What a new call's process does at pickup, with a warm and fresh stored snapshot (20 units): "
          f"`settings.inventory_settings(env)` (includes a write check of STATE_DIR), "
          f"`equipment.inventory_from_settings(cfg)` (no network; opens nothing yet), `await inventory.snapshot()` "
          f"(reads the State off the event loop: SQLite opens the file, PostgreSQL opens a connection, then one read). "
          f"In one process, {pk.get('samples')} samples after {pk.get('warmup')} untimed, a new inventory object per "
          f"sample; PostgreSQL's background mirror of each read into the local SQLite is waited for between samples "
          f"(untimed), as it would not overlap the next call in a real call's process.")
        a("")
        a("| engine | step | p50 | p95 | max | goal |")
        a("|---|---|---|---|---|---|")
        for e in names:
            c = pk.get(e)
            if not c:
                continue
            ip = c["in_process"]
            for step, label in (("settings", "settings parse"), ("construct", "construct the inventory"),
                                ("snapshot", "`await snapshot()`"), ("total", "**pickup total**")):
                s = ip[step]
                goal = (f"≤ 5 ms p95: {_verdict(s['p95'] is not None and s['p95'] <= GOAL_PICKUP)}"
                        if step == "total" else "")
                a(f"| {e} | {label} | {fmt_ms(s['p50'])} | {fmt_ms(s['p95'])} | {fmt_ms(s['max'])} | {goal} |")
        a("")
        if all(e in pk for e in ENGINES):
            s, p = pk["sqlite"]["in_process"], pk["postgresql"]["in_process"]
            a(f"PostgreSQL ÷ SQLite: snapshot() {fmt_ratio(ratio(p['snapshot']['p50'], s['snapshot']['p50']))} at p50, "
              f"{fmt_ratio(ratio(p['snapshot']['p95'], s['snapshot']['p95']))} at p95; pickup total "
              f"{fmt_ratio(ratio(p['total']['p50'], s['total']['p50']))} at p50. Settings + construction are "
              + ", ".join(f"{e} {100 * (pk[e]['in_process']['settings']['p50'] + pk[e]['in_process']['construct']['p50']) / pk[e]['in_process']['total']['p50']:.0f} %"
                          for e in names) + " of the pickup total (p50).")
            a("")
        steps = _g(pk, "postgresql", "postgresql_steps")
        if steps:
            a(f"Where PostgreSQL's `snapshot()` goes (p50, each step timed alone, {steps['connect']['n']} times): a bare "
              f"connection {_ms(steps['connect'])}; a new PostgresState's first read (connection, schema check, the "
              f"read, JSON parse) {_ms(steps['first_read'])}; the same read on the open connection "
              f"{_ms(steps['read_open'])}; the local SQLite's holds SharedState adds (new connection + query) "
              f"{_ms(steps['local_holds'])}; the local copy's read its background mirror makes "
              f"{_ms(steps['local_copy_read'])}. Every call's process opens its own connection: the server forks a "
              f"backend for each, and over a real network each round trip of the connection's start-up adds the "
              f"network's latency on top of these loopback figures.")
            a("")
        a("Sheets requests during the samples (the stand-in's own count): "
          + "; ".join(f"{e}: {_counts_text(pk[e].get('sheets_requests_in_process'))} in one process, "
                      f"{_counts_text(pk[e].get('sheets_requests_new_process'))} in new processes" for e in names if e in pk)
          + ". Every sample came back with the inventory known: "
          + ", ".join(f"{e} {pk[e]['in_process']['known']}/{pk['samples']}" for e in names if e in pk) + ".")
        a("")
        a(f"In new processes ({pk.get('processes')} per engine, one at a time, each forked from a forkserver that "
          f"preloaded equipment, the inventory and psycopg, as the worker's forkserver preloads agent and "
          f"inventory.postgres_state): the same steps, timed in the child.")
        a("")
        a("| engine | settings p50 | construct p50 | snapshot() p50 / p95 | pickup total p50 / p95 | ÷ one process (total p50) | goal ≤ 5 ms p95 | fork → result p50 |")
        a("|---|---|---|---|---|---|---|---|")
        for e in names:
            c = pk.get(e)
            if not c or not c["new_process"]["total"]["n"]:
                continue
            npc, ip = c["new_process"], c["in_process"]
            a(f"| {e} | {_ms(npc['settings'])} | {_ms(npc['construct'])} | {_ms(npc['snapshot'])} / {_ms(npc['snapshot'], 'p95')} | "
              f"{_ms(npc['total'])} / {_ms(npc['total'], 'p95')} | {fmt_ratio(ratio(npc['total']['p50'], ip['total']['p50']))} | "
              f"{_verdict(npc['total']['p95'] <= GOAL_PICKUP)} | {_ms(npc['start_to_result'])} |")
            for err in npc.get("errors") or []:
                a(f"- {e}: a process failed: `{err.strip().splitlines()[-1][:200]}`")
        a("")
        a("What a new process pays that the warm one does not: Python's regular-expression cache starts empty (the "
          "settings' patterns, and the glob legacy.import_files makes in STATE_DIR, compile on first use), and the "
          "process's first thread, first SQLite or PostgreSQL connection and first JSON parse start cold. Every call is "
          "a new process: this is the pickup of a process that did not prepare its inventory (**unprepared**, as every "
          "call was before agent.prewarm prepared it; still so when prewarm could not build it).")
        a("")
        _render_prepared_20(pk, names, a)

    # ---- 7b
    a("### 7b. A booking, end to end")
    a("")
    bk = r.get("booking") or {}
    if not any(e in bk for e in names):
        a(f"Not measured{_failed(r, 'booking')}.")
        a("")
    else:
        a(f"`await inventory.book(request)` (what the book_equipment tool reaches through booking_desk.py), "
          f"against the Sheets stand-in (in this process, ~1 ms per request): the unit's lock (a file lock / a "
          f"PostgreSQL advisory lock on a connection of its own), the sheet read again, the write-ahead outbox entry, "
          f"the Reservations row appended and looked at again, the snapshot patched, the Bookings row appended, the "
          f"entry settled. {bk.get('bookings')} bookings per engine, distinct units and dates, each in a new inventory "
          f"(a call of its own: its first Sheets request fetches a token).")
        a("")
        a("| engine | bookings confirmed | rows added (Reservations, Bookings) | p50 | p95 | max | Sheets requests per booking |")
        a("|---|---|---|---|---|---|---|")
        for e in names:
            c = bk.get(e)
            if not c:
                continue
            ra = c["rows_added"]
            a(f"| {e} | {c['confirmed']}/{bk['bookings']} | {ra.get('Reservations')}, {ra.get('Bookings')} | {_ms(c['book'])} | "
              f"{_ms(c['book'], 'p95')} | {_ms(c['book'], 'max')} | {_counts_text({k: round(v, 2) for k, v in c['requests_per_booking'].items()})} |")
            for err in c.get("errors") or []:
                a(f"- {e}: `{err}`")
        if all(e in bk for e in ENGINES):
            a("")
            a(f"PostgreSQL ÷ SQLite: {fmt_ratio(ratio(bk['postgresql']['book']['p50'], bk['sqlite']['book']['p50']))} at p50, "
              f"{fmt_ratio(ratio(bk['postgresql']['book']['p95'], bk['sqlite']['book']['p95']))} at p95.")
        a("")

    # ---- 7c
    a("### 7c. Sheets reads with 3 replicas")
    a("")
    rp = r.get("replicas") or {}
    if not any(e in rp for e in names):
        a(f"Not measured{_failed(r, 'replicas')}.")
        a("")
    else:
        a(f"Three replicas (three STATE_DIRs; with PostgreSQL one DATABASE_URL for the three) and one Sheets stand-in; "
          f"{rp['calls_per_min']} calls/min in total, round robin over the replicas, each call its own process (forked "
          f"as above): the pickup read, the call held {rp['hold_real_s']:g} s, then close(). Time compressed "
          f"{rp['compress']:g}× as in bench/part_load.py: calls arrive {rp['compress']:g}× faster and "
          f"EQUIPMENT_CACHE_TTL = {rp['ttl_sim_s']:g} s / {rp['compress']:g} = {rp['ttl_real_s']:g} s, so requests per "
          f"simulated minute are those of real time. Each replica's snapshot was loaded before the window (steady "
          f"state; a cold start costs one read more per State).")
        a("")
        a("| engine | calls | simulated min | Sheets reads/min (values batchGet + metadata) | by kind, per min | reads per TTL | goal ≤ 2 reads/min | calls that got the inventory |")
        a("|---|---|---|---|---|---|---|---|")
        for e in names:
            c = rp.get(e)
            if not c:
                continue
            a(f"| {e} | {c['calls']} | {c['sim_minutes']:.1f} | {c['reads_per_min']:.2f} | "
              f"{_counts_text({k: round(v, 2) for k, v in c['per_min'].items()})} | {c['reads_per_ttl']:.2f} | "
              f"{_verdict(c['reads_per_min'] <= GOAL_READS)} | {c['known']}/{c['calls']} |")
            for err in c.get("errors") or []:
                a(f"- {e}: a call failed: `{err.strip().splitlines()[-1][:200]}`")
        a("")
        if all(e in rp for e in ENGINES) and rp["postgresql"]["reads_per_min"]:
            a(f"SQLite ÷ PostgreSQL: {fmt_ratio(ratio(rp['sqlite']['reads_per_min'], rp['postgresql']['reads_per_min']))} "
              f"the reads. That is the point of PostgreSQL here: with SQLite each replica has its own snapshot and its "
              f"own single flight, so each reads the sheet once per TTL ({REPLICAS} replicas: ~{REPLICAS}× the reads, "
              f"{REPLICAS * 60 / TTL:g}/min at a {TTL:g} s TTL); with PostgreSQL the snapshot and the refresh lock (an "
              f"advisory lock) are shared, so all replicas together read once per TTL. Token requests go to Google's "
              f"OAuth endpoint, not the Sheets quota: one per process that refreshes.")
            a("")
        for e in names:
            first = _g(rp, e, "first_attempt")
            if first:
                a(f"{e}: measured twice; in the first attempt the machine stalled and calls started late (p95 "
                  f"{_g(first, 'lateness', 'p95') or 0:.2f} s): {first['reads_per_min']:.2f} reads/min there "
                  f"({_counts_text(first.get('counts'))} in all).")
                a("")
        late = {e: rp[e].get("lateness") or {} for e in names if e in rp}
        a("Calls started late by (p50 / p95 / max, real seconds; the TTL is " + f"{rp['ttl_real_s']:g} s): "
          + "; ".join(f"{e} {x.get('p50') or 0:.3f} / {x.get('p95') or 0:.3f} / {x.get('max') or 0:.3f}"
                      for e, x in late.items())
          + (". A late start is a larger part of a compressed TTL than of a real one: with the machine this busy "
             "the per-minute figures are less exact." if any((x.get("p95") or 0) > 0.25 * rp.get("ttl_real_s", 3)
                                                              for x in late.values()) else "."))
        a("")

    # ---- 7d
    a("### 7d. Availability at call start: 1,000 units, 10 → 10,000 reservations")
    a("")
    av = r.get("availability") or {}
    if not any(e in av for e in names):
        a(f"Not measured{_failed(r, 'availability')}.")
        a("")
    else:
        q = av.get("query") or {}
        a(f"{av['units']:,} units (every 20th in MAINTENANCE) on the Sheets stand-in, and N reservations on its "
          f"Reservations tab (non-overlapping per unit, about a month apart, 5 % cancelled, names and phones filled in), "
          f"read into the stored snapshot once (`refresh`: the Sheets read, parsing, and the write of the snapshot; a "
          f"call's process pays it once per TTL, in the background). Then per sample, as at pickup, a new inventory and "
          f"`await snapshot()`, then on that new Snapshot the question look_up_equipment asks: "
          f"`snapshot.free_units({q.get('start')}, {q.get('end')})` over all units (its first question also builds the "
          f"calendar), and, on another new snapshot, `free_units(..., \"{q.get('category')}\")` as a category look-up. Up to {av.get('samples')} samples per row "
          f"(n; half as many for the category look-up), fewer where the row's {av.get('row_seconds', 25):g} s were up "
          f"(at least {MIN_ROW_SAMPLES}); the queries are timed after PostgreSQL's mirror thread (below) has finished. × = p50 ÷ p50 of the {min(RESERVATIONS)}-reservation row of the same "
          f"engine and run.")
        a("")
        a("| engine | reservations | stored snapshot | refresh p50 | n | `snapshot()` p50 / p95 (×) | pickup total p95 | free_units all p50 / p95 (×) | free_units category p50 / p95 (n) | goal ≤ 5 ms p95 (pickup total) |")
        a("|---|---|---|---|---|---|---|---|---|---|")
        for e in names:
            cells = av.get(e) or {}
            for size, c in cells.items():
                if size == "profile":
                    continue
                rv = c.get("ratio_vs_first") or {}
                a(f"| {e} | {int(size):,} | {(c.get('stored_bytes') or 0) / 1024:,.0f} KB | {_ms(c['refresh'])} | "
                  f"{c['snapshot']['n']} | {_ms(c['snapshot'])} / {_ms(c['snapshot'], 'p95')} ({fmt_ratio(rv.get('snapshot'))}) | "
                  f"{_ms(c['pickup_total'], 'p95')} | {_ms(c['free_units_all'])} / {_ms(c['free_units_all'], 'p95')} "
                  f"({fmt_ratio(rv.get('free_units_all'))}) | {_ms(c['free_units_category'])} / "
                  f"{_ms(c['free_units_category'], 'p95')} ({c['free_units_category']['n']}) | "
                  f"{_verdict(_g(c, 'pickup_total', 'p95') is not None and _g(c, 'pickup_total', 'p95') <= GOAL_PICKUP)} |")
        a("")
        for e in names:
            cells = {k: v for k, v in (av.get(e) or {}).items() if k != "profile"}
            if len(cells) < 2:
                continue
            lo, hi = cells[min(cells, key=int)], cells[max(cells, key=int)]
            grow = lambda k: fmt_ratio(ratio(_g(hi, k, "p50"), _g(lo, k, "p50")))  # noqa: E731
            units_cost = (_g(lo, "cache_read_open", "p50") or 0) - (_g(lo, "state_read_open", "p50") or 0)
            a(f"{e}: from {int(min(cells, key=int)):,} to {int(max(cells, key=int)):,} reservations (×{int(max(cells, key=int)) // int(min(cells, key=int)):,}) "
              f"`snapshot()` grows {grow('snapshot')}, the State's read with its JSON parse {grow('state_read_open')}, "
              f"free_units over all units {grow('free_units_all')}, the stored snapshot "
              f"{fmt_ratio(ratio(hi.get('stored_bytes'), lo.get('stored_bytes')))}: sub-linear, because the "
              f"{av['units']:,} units cost as much as thousands of reservations (validating them into Unit objects alone "
              f"is ~{fmt_ms(units_cost)} at {int(min(cells, key=int)):,} reservations)"
              + (", so an unprepared pickup misses the goal at every size (prepared: 7e)." if all((_g(c, "pickup_total", "p95") or 0) > GOAL_PICKUP
                                                             for c in cells.values()) else "."))
            a("")
        a("Where `snapshot()` goes, p50, each layer timed on an inventory whose connection is already open: the "
          "State's read with its JSON parse (`state.snapshot(origin)`), then the cache's read (that plus validating "
          "the units and the reservations' compact form: `cache.read()`, with the cache's parsed snapshot dropped "
          "first, so it parses all as an unprepared process does); the rest of `snapshot()` is opening the "
          "connection and the hop off the event loop.")
        a("")
        a("| engine | reservations | State read + JSON parse | + validation = `cache.read()` | `snapshot()` (new inventory) |")
        a("|---|---|---|---|---|")
        for e in names:
            for size, c in (av.get(e) or {}).items():
                if size == "profile" or not c.get("state_read_open"):
                    continue
                a(f"| {e} | {int(size):,} | {_ms(c['state_read_open'])} | {_ms(c['cache_read_open'])} | {_ms(c['snapshot'])} |")
        a("")
        mirror = [(e, s, c["mirror_read"]) for e in names for s, c in (av.get(e) or {}).items()
                  if s != "profile" and c.get("mirror_read")]
        if mirror:
            a("With PostgreSQL every pickup read also starts a background thread that re-reads this machine's SQLite "
              "copy of the snapshot to see whether it is older (engines.SharedState._mirror), in the call's process: "
              + ", ".join(f"{fmt_ms(x['p50'])} at {int(s):,}" for e, s, x in mirror) + " (p50). The table's times "
              "include it only where it overlaps the pickup itself.")
            a("")
        reqs = {e: sum(sum(v for k, v in (c.get("sheets_requests_during_samples") or {}).items() if k != "sheets_api")
                       for s, c in (av.get(e) or {}).items() if s != "profile") for e in names}
        a("Sheets requests during the samples: " + ", ".join(f"{e} {n}" for e, n in reqs.items()) + " (the refreshes "
          "before them are not counted).")
        a("")
        for e in names:
            prof = (av.get(e) or {}).get("profile")
            if not prof:
                continue
            a(f"Profile, {e}, {max(RESERVATIONS):,} reservations (cProfile, {prof['iterations']} pickups + free_units "
              f"in the bench's thread, {prof['total_ms_per_iteration']:.1f} ms each under the profiler); own time per "
              f"pickup, largest first:")
            a("")
            a("| function | calls | own time | cumulative |")
            a("|---|---|---|---|")
            for row in prof["by_own_time"][:8]:
                a(f"| `{row['where']}` | {row['calls_per_iteration']:,.0f} | {row['tottime_ms']:.2f} ms | {row['cumtime_ms']:.2f} ms |")
            a("")
    _render_7e(r, names, a)

    errs = [f"- part `{p}` failed: `{tb.strip().splitlines()[-1][:300]}`" for p, tb in (r.get("errors") or {}).items()
            if p != "postgresql"]
    warns = r.get("warnings") or {}
    if errs or warns:
        a("### Failures and warnings in this run")
        a("")
        L.extend(errs)
        for msg, k in list(warns.items())[:8]:
            a(f"- logged ×{k}: `{msg}`")
        a("")
    a("Rerun: `make bench-state` (= `.venv/bin/python bench/state.py`, ~5-7 min on 2 busy cores, rewrites only this block); "
      "`.venv/bin/python bench/state.py --quick --no-write` for a smoke run; `--engines sqlite` without PostgreSQL.")
    return "\n".join(L).rstrip("\n")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _render_verdicts(r: dict, names: list[str], a: Any) -> None:
    """The goal's verdicts, unprepared (before) and prepared (now), from 7a and 7e."""
    pk = r.get("pickup") or {}
    av = r.get("availability") or {}
    sizes = [str(x) for x in av.get("prepared_sizes") or []]
    if not any(e in pk for e in names) and not any(e in av for e in names):
        return
    a("### The ≤ 5 ms p95 pickup goal, in short")
    a("")
    a("A call's process is started before its call (LiveKit's idle processes), and agent.prewarm now builds the "
      "inventory and calls `warm()`: it opens the State (the SQLite file; the PostgreSQL connection and its schema "
      "check) and parses the stored snapshot. At pickup `snapshot()` asks the State for the snapshot with the read_at "
      "it parsed: when that is still the stored one the State sends no data, only the patches and holds, and the "
      "parsed units are reused (the **fast path**). **Prepared**: that pickup, `await inventory.snapshot()` timed "
      "alone (the building and warm() were prewarm's). **Unprepared**: the pickup as it was before, measured in the "
      "same run: settings, construction and `snapshot()` reading and parsing everything. All in new processes forked "
      "as job processes are; p95, n per cell in 7a and 7e.")
    a("")
    head = "| pickup | stored snapshot | " + " | ".join(f"{e} p95 | {e}" for e in names) + " |"
    a(head)
    a("|---|---|" + "---|---|" * len(names))

    def row(label: str, what: str, cells: list[tuple[Any, Any]]) -> None:
        out = []
        for val, base in cells:
            if val is None:
                out += ["–", "–"]
                continue
            rr = ratio(base, val)
            out += [fmt_ms(val) + (f" ({fmt_ratio(rr)} faster than unprepared)" if rr is not None else ""),
                    _verdict(val <= GOAL_PICKUP)]
        a(f"| {label} | {what} | " + " | ".join(out) + " |")

    row("unprepared (before), new process: settings + construct + `snapshot()`", "20 units",
        [(_g(pk, e, "new_process", "total", "p95"), None) for e in names])
    row("**prepared (a call now)**: `snapshot()`", "20 units",
        [(_g(pk, e, "prepared_process", "snapshot", "p95"), _g(pk, e, "new_process", "total", "p95")) for e in names])
    for size in sizes:
        what = f"1,000 units, {int(size):,} reservations"
        row("unprepared (before), new process", what,
            [(_g(av, e, size, "prepared", "unprepared_process", "total", "p95"), None) for e in names])
        row("**prepared (a call now)**", what,
            [(_g(av, e, size, "prepared", "process", "snapshot", "p95"),
              _g(av, e, size, "prepared", "unprepared_process", "total", "p95")) for e in names])
    if sizes:
        big = sizes[-1]
        row("prepared, but a refresh replaced the snapshot after warm() (**miss**)", f"1,000 units, {int(big):,} reservations",
            [(_g(av, e, big, "prepared", "miss_process", "snapshot", "p95"),
              _g(av, e, big, "prepared", "unprepared_process", "total", "p95")) for e in names])
    a("")
    prepared = [(e, "20 units", _g(pk, e, "prepared_process", "snapshot", "p95")) for e in names] + [
        (e, f"{int(sz):,} reservations", _g(av, e, sz, "prepared", "process", "snapshot", "p95"))
        for e in names for sz in sizes]
    prepared = [x for x in prepared if x[2] is not None]
    if prepared:
        met = [x for x in prepared if x[2] <= GOAL_PICKUP]
        missed = [f"{e} at {w} ({fmt_ms(v)})" for e, w, v in prepared if v > GOAL_PICKUP]
        a(f"Prepared, on the fast path, the pickup meets the goal in {len(met)} of {len(prepared)} cells"
          + (f"; it misses at {', '.join(missed)}." if missed else ".")
          + (" Unprepared, and prepared but missed (the snapshot replaced since prewarm: the full read and parse again, "
             "on the connection prewarm opened), the pickup misses it at 1,000 units at every size measured."
             if all(v is not None and v > GOAL_PICKUP for v in
                    [_g(av, e, sz, "prepared", "unprepared_process", "total", "p95") for e in names for sz in sizes]
                    + [_g(av, e, sizes[-1], "prepared", "miss_process", "snapshot", "p95") for e in names if sizes])
             else ""))
        a("")
    model = r.get("fast_path_model")
    if model:
        rows = model["rows"]

        def share(rate: str, key: str) -> str:
            return _pct(_g(rows, rate, key))

        lo, hi = "1", str(max(MODEL_RATES))
        a(f"The fast path holds when the idle process has parsed the latest refresh. A refresh happens at most "
          f"every {model['ttl']:g} s (on demand: a pickup that finds the snapshot older starts one), while an idle "
          "process waits for its call between ~0 s and minutes. So a waiting process checks the stored snapshot "
          "every 2 s (`CachedInventory.keep_warm`, started by agent.prewarm: one small read when nothing changed) and "
          "parses a refresh when it lands: a pickup misses only when a refresh was saved within the last ~2 s. "
          f"Without keep_warm (prewarm's parse only), a model (7e, not measured) put the share of pickups on the fast "
          f"path at {share(lo, 'idle2')} at {lo} call/min with 2 idle processes (docs/railway.md's setting; "
          f"{share(lo, 'idle4')} with 4), {share('0.2', 'idle2')} at a call every 5 min, and {share(hi, 'idle2')} at "
          f"{hi} calls/min: that is why keep_warm exists.")
        a("")


def _render_prepared_20(pk: dict, names: list[str], a: Any) -> None:
    rows = [e for e in names if _g(pk, e, "prepared_process", "snapshot", "n")]
    if not rows:
        return
    a(f"**Prepared** (what a call's process does now): new processes forked the same way ({pk.get('processes')} per "
      f"engine), in which the inventory is built and `warm()` called first, untimed for the pickup, as agent.prewarm "
      f"does; then `await inventory.snapshot()`, timed alone (the call uses the inventory prewarm built: "
      f"agent._inventory). Fast path: the pickup reused the snapshot parsed in prewarm (the State sent no data).")
    a("")
    a("| engine | prepared `snapshot()` p50 / p95 | fast path | unprepared `snapshot()` p50 / p95 | unprepared total p95 | "
      "unprepared ÷ prepared: `snapshot()` p50, p95; total p95 ÷ `snapshot()` p95 | goal ≤ 5 ms p95 | in prewarm, p50: build, warm() |")
    a("|---|---|---|---|---|---|---|---|")
    for e in rows:
        pp, npc = pk[e]["prepared_process"], pk[e]["new_process"]
        a(f"| {e} | {_ms(pp['snapshot'])} / {_ms(pp['snapshot'], 'p95')} | {pp.get('fast_path', 0)}/{pp['processes']} | "
          f"{_ms(npc['snapshot'])} / {_ms(npc['snapshot'], 'p95')} | {_ms(npc['total'], 'p95')} | "
          f"{fmt_ratio(ratio(_g(npc, 'snapshot', 'p50'), _g(pp, 'snapshot', 'p50')))}, "
          f"{fmt_ratio(ratio(_g(npc, 'snapshot', 'p95'), _g(pp, 'snapshot', 'p95')))}; "
          f"{fmt_ratio(ratio(_g(npc, 'total', 'p95'), _g(pp, 'snapshot', 'p95')))} | "
          f"{_verdict(_g(pp, 'snapshot', 'p95') is not None and _g(pp, 'snapshot', 'p95') <= GOAL_PICKUP)} | "
          f"{_ms(pp['build'])}, {_ms(pp['warm'])} |")
        for err in pp.get("errors") or []:
            a(f"- {e}: a prepared process failed: `{err.strip().splitlines()[-1][:200]}`")
    a("")
    a("Sheets requests during the prepared processes (prewarm and pickup): "
      + ", ".join(f"{e} {_counts_text(pk[e].get('sheets_requests_prepared'))}" for e in rows)
      + "; inventory known in " + ", ".join(f"{e} {pk[e]['prepared_process']['known']}/{pk[e]['prepared_process']['processes']}"
                                              for e in rows) + " of them.")
    a("")


def _render_7e(r: dict, names: list[str], a: Any) -> None:
    av = r.get("availability") or {}
    sizes = [str(x) for x in av.get("prepared_sizes") or []]
    a("### 7e. Prepared pickup at 1,000 units, and the miss")
    a("")
    if not sizes or not any(_g(av, e, sizes[0], "prepared") for e in names):
        a(f"Not measured{_failed(r, 'availability')}.")
        a("")
    else:
        pc = av.get("prepared_counts") or {}
        a(f"7d's stored snapshots (1,000 units; {', '.join(f'{int(x):,}' for x in sizes)} reservations), fresh. Per "
          f"engine and size: {pc.get('processes')} new processes **unprepared** (settings, construction, `snapshot()`, "
          f"as in 7a), then {pc.get('processes')} new processes **prepared** (built and `warm()` first, untimed; then "
          f"`snapshot()` timed), all forked one at a time as in 7a; and **one process**: one inventory, warm() once, "
          f"then `snapshot()` {pc.get('one_process')} times (after 3 untimed), without a process's cold start: a lower "
          f"bound. Beside it, `cache.read()` on the thread that ran warm().")
        a("")
        a("| engine | reservations | unprepared new process: `snapshot()` p50 / p95; total p95 | prepared new process: "
          "`snapshot()` p50 / p95 | fast path | unprepared ÷ prepared `snapshot()` p50, p95 | one process, prepared: "
          "`snapshot()` p50 / p95 | `cache.read()` on warm()'s thread p50 | warm() in prewarm p50 | goal ≤ 5 ms p95 "
          "(prepared new process) |")
        a("|---|---|---|---|---|---|---|---|---|---|")
        for e in names:
            for size in sizes:
                pr = _g(av, e, size, "prepared")
                if not pr:
                    continue
                up, pp, one = pr["unprepared_process"], pr["process"], pr["one_process"]
                p95 = _g(pp, "snapshot", "p95")
                a(f"| {e} | {int(size):,} | {_ms(up['snapshot'])} / {_ms(up['snapshot'], 'p95')}; {_ms(up['total'], 'p95')} | "
                  f"{_ms(pp['snapshot'])} / {_ms(pp['snapshot'], 'p95')} | {pp.get('fast_path', 0)}/{pp['processes']} | "
                  f"{fmt_ratio(ratio(_g(up, 'snapshot', 'p50'), _g(pp, 'snapshot', 'p50')))}, "
                  f"{fmt_ratio(ratio(_g(up, 'snapshot', 'p95'), p95))} | "
                  f"{_ms(one['snapshot'])} / {_ms(one['snapshot'], 'p95')} | {_ms(one['cache_read_same_thread'])} | "
                  f"{_ms(pp['warm'])} | {_verdict(p95 is not None and p95 <= GOAL_PICKUP)} |")
                for err in (up.get("errors") or []) + (pp.get("errors") or []):
                    a(f"- {e} {int(size):,}: a process failed: `{err.strip().splitlines()[-1][:200]}`")
        a("")
        a("Sheets requests during the prepared pickups (new processes and one process): "
          + "; ".join(f"{e} " + ", ".join(f"{int(sz):,}: {_counts_text(_g(av, e, sz, 'prepared', 'sheets_requests'))}"
                                          for sz in sizes if _g(av, e, sz, "prepared")) for e in names) + ".")
        a("")
        sq = {sz: _g(av, "sqlite", sz, "prepared") for sz in sizes}
        if "sqlite" in names and sq.get(sizes[0]) and sq.get(sizes[-1]):
            lo, hi = sq[sizes[0]], sq[sizes[-1]]
            grow = ratio(_g(hi, "process", "snapshot", "p50"), _g(lo, "process", "snapshot", "p50"))
            stored = _g(av, "sqlite", sizes[-1], "stored_bytes") or 0
            if grow and grow > 1.5:
                a(f"SQLite's fast path still grows with the snapshot, {fmt_ratio(grow)} from {int(sizes[0]):,} to "
                  f"{int(sizes[-1]):,} reservations (prepared new process, p50), though it sends no data: its "
                  f"`snapshot` table stores read_at after the data column (inventory/sqlite_state.py, SCHEMA), so "
                  f"reading read_at walks the row's overflow pages, ~{stored / 4096:,.0f} pages of 4 KB at "
                  f"{stored / 1024:,.0f} KB, from a new connection's empty page cache. PostgreSQL keeps a large value out "
                  f"of line (TOAST) and reads read_at alone.")
                a("")
        one = [(e, sz, _g(av, e, sz, "prepared", "one_process")) for e in names for sz in sizes[:1]]
        one = [(e, sz, o) for e, sz, o in one if o]
        if one:
            a("Each `snapshot()` runs on a new thread (inventory/background.py) and SqliteState's connections are per "
              "thread, so the SQLite connection warm() opened serves prewarm's thread only: every pickup opens SQLite "
              "again (with PostgreSQL too, for the holds SharedState reads from the local SQLite). One process, "
              + ", ".join(f"{e} at {int(sz):,}: `cache.read()` on warm()'s thread {_ms(o['cache_read_same_thread'])}, "
                          f"`snapshot()` {_ms(o['snapshot'])}" for e, sz, o in one) + " (p50).")
            a("")
        big = sizes[-1]
        miss = [e for e in names if _g(av, e, big, "prepared", "miss_process")]
        if miss:
            rep = [fmt_ms(_g(av, e, big, "prepared", "miss_replace", "p50")) for e in miss]
            a(f"**The miss**, at {int(big):,} reservations: prepared, then the stored snapshot replaced after warm() "
              f"and before the pickup, as a refresh in another process replaces it (`State.save_snapshot` with the "
              f"same data and a new read_at: cache.refresh's write without its Sheets read; the write took "
              f"{', '.join(f'{e} {x}' for e, x in zip(miss, rep))} p50, untimed, then 0.1 s before the pickup). The "
              f"pickup then reads and parses everything, as unprepared, on the connection prewarm opened. The "
              f"one-process rows run in the bench's own process (its larger heap, the Sheets stand-in's threads): "
              f"noisier than the new-process rows, which are what a call's process sees.")
            a("")
            a("| engine | variant | n | `snapshot()` p50 / p95 | full reads (missed) | ÷ prepared fast path p50 | "
              "unprepared `snapshot()` ÷ miss, p50 | goal ≤ 5 ms p95 |")
            a("|---|---|---|---|---|---|---|---|")
            for e in miss:
                pr = av[e][big]["prepared"]
                for label, m, hit in (("new process", pr["miss_process"], pr["process"]),
                                      ("one process", pr["miss_one_process"], pr["one_process"])):
                    n_missed = m.get("missed", None)
                    if n_missed is None:  # new processes: not on the fast path
                        n_missed = (m.get("processes", 0) - len(m.get("errors") or [])) - (m.get("fast_path") or 0)
                    a(f"| {e} | {label} | {m['snapshot']['n']} | {_ms(m['snapshot'])} / {_ms(m['snapshot'], 'p95')} | "
                      f"{n_missed}/{m['snapshot']['n']} | {fmt_ratio(ratio(_g(m, 'snapshot', 'p50'), _g(hit, 'snapshot', 'p50')))} | "
                      f"{fmt_ratio(ratio(_g(pr, 'unprepared_process', 'snapshot', 'p50'), _g(m, 'snapshot', 'p50')))} | "
                      f"{_verdict(_g(m, 'snapshot', 'p95') is not None and _g(m, 'snapshot', 'p95') <= GOAL_PICKUP)} |")
            a("")
    model = r.get("fast_path_model")
    if model:
        rows = model["rows"]
        a("How often a prepared pickup would take the fast path **without keep_warm** (prewarm's parse only; the "
          "product now re-parses while waiting, see the summary above): only when the idle process was prepared "
          f"after the latest refresh. At the {model['ttl']:g} s TTL a refresh happens at most every {model['ttl']:g} s, and only on "
          "demand: a pickup that finds the snapshot older than the TTL starts one in the background (its own pickup "
          "is served the old snapshot, still on the fast path). An idle process waits for its call between ~0 s and "
          "minutes, and LiveKit gives a call to the oldest idle process (livekit-agents 1.8.9 ipc/proc_pool.py: a "
          "FIFO queue of NUM_IDLE_PROCESSES processes, one per CPU by default, 2 or 3 as docs/railway.md sets it): it "
          "has waited while "
          "the other idle processes took the calls in between, and any of those that found the snapshot expired "
          "replaced it. A model, **not a measurement** (`_fast_path_share` in bench/state.py: Poisson arrivals; a new "
          f"idle process is started when one takes a call and runs warm() {model['prewarm']:g} s later; a refresh "
          f"takes {model['refresh']:g} s), of the share of pickups on the fast path:")
        a("")
        a(f"| calls/min sharing one stored snapshot | 1 idle process | 2 idle | 4 idle | 3 replicas on one PostgreSQL, "
          f"2 idle each | 1 idle, a refresh slower than prewarm ({model['slow_refresh']:g} s) |")
        a("|---|---|---|---|---|---|")
        for rate, c in rows.items():
            a(f"| {rate} | {_pct(c['idle1'])} | {_pct(c['idle2'])} | {_pct(c['idle4'])} | {_pct(c['replicas3_idle2'])} "
              f"| {_pct(c['idle1_slow_refresh'])} |")
        a("")
        a("With one idle process per machine the process that takes a call was started when the previous call took "
          "its own, so the only refresh in between is the one that call started, which ends before the new process's "
          "prewarm reaches warm() unless the Sheets read is slower than prewarm. With several idle processes, or "
          "replicas sharing PostgreSQL (each machine's idle processes wait for all of their calls, and any replica's "
          "call refreshes), the fast path is the common case only at steady traffic; at a call every few minutes most "
          "prepared pickups are misses and cost the miss row above.")
        a("")


def _failed(r: dict, part: str) -> str:
    tb = (r.get("errors") or {}).get(part)
    if tb:
        return f": the part failed (`{tb.strip().splitlines()[-1][:200]}`)"
    if part not in r.get("parts", []):
        return " (not run: --only)"
    return ""


# ----------------------------------------------------------------------------------- main

def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


PARTS = ("pickup", "booking", "replicas", "availability")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few samples, short replica run: a smoke run, not results")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sqlite, postgresql")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--samples", type=int, help="samples per timed loop (pickup, availability; bookings: "
                    "the same, at least 3); default 300 (--quick: 40)")
    ap.add_argument("--sim-minutes", type=float, help="simulated minutes of the replicas run (default 3; --quick 1)")
    ap.add_argument("--pg-tmpfs", action="store_true", help="PostgreSQL's data on tmpfs with fsync off (the tests' "
                    "setting) instead of on the disk with fsync on")
    ap.add_argument("--no-write", action="store_true", help="don't touch BENCHMARKS.md")
    ap.add_argument("--keep-state-dirs", action="store_true", help="keep the STATE_DIRs made under $TMPDIR/bench-state")
    ap.add_argument("--json", help="where to write the raw results (default bench/results/state-<timestamp>.json)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--render", metavar="RAW_JSON", help="only rewrite section 7 from an earlier run's raw results")
    args = ap.parse_args(argv)
    if args.render:
        raw = json.loads(Path(args.render).read_text())
        _write_section(Path(args.out), render(raw, os.path.relpath(args.render, ROOT)))
        log(f"wrote section 7 of {os.path.relpath(args.out, ROOT)} from {args.render}")
        return 0
    t_start = time.monotonic()
    q = args.quick
    wanted = [e.strip().lower().replace("postgres", "postgresql").replace("postgresqlql", "postgresql")
              for e in args.engines.split(",") if e.strip()]
    bad = [e for e in wanted if e not in ENGINES]
    if bad:
        ap.error(f"unknown engine(s) {bad}: choose from {', '.join(ENGINES)}")
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    n = args.samples or (40 if q else 300)
    n_avail = args.samples or (20 if q else 200)
    n_book = max(3, args.samples or (10 if q else 40))
    n_proc = max(2, min(n, 6 if q else 30))
    # the prepared pickup at 1,000 units (7e): processes per size and variant, one-process samples
    prep = {"processes": max(2, min(n, 4 if q else 30)), "one_process": n_avail,
            "miss_processes": max(2, min(n, 3 if q else 20)), "miss_one_process": max(3, min(n_avail, 5 if q else 30))}
    sim_minutes = args.sim_minutes or (1.0 if q else 3.0)
    compress = 20.0 if q else 6.0  # 6x: a 5 s TTL; at 10x a busy 2-core box started calls late

    _quiet()
    warnings = _Warnings()
    logging.getLogger().addHandler(warnings)
    uptime = _uptime()
    results: dict[str, Any] = {
        "machine": machine(), "uptime_at_start": uptime, "loadavg_at_start": list(os.getloadavg()),
        "command": " ".join(shlex.quote(x) for x in [os.path.relpath(sys.executable, ROOT), "bench/state.py", *argv]),
        "quick": q, "parts": parts, "engines": [], "timings": {}, "errors": {},
        "state_dir_base": str(_new_state_dir("probe").parent),
        "settings": {"samples": n, "availability_samples": n_avail, "bookings": n_book, "processes": n_proc,
                     "prepared": prep,
                     "sim_minutes": sim_minutes, "compress": compress},
    }
    log(f"machine: {results['machine']['cpu']}, {results['machine']['nproc']} cores; uptime: {uptime}")
    engines = Engines(wanted, pg_disk=not args.pg_tmpfs)
    results["engines"] = engines.names
    results["errors"].update(engines.errors)
    results["postgresql_server"] = engines.pg_info
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()  # started (and its imports done) before anything is timed

    def step(name: str, fn: Any) -> None:
        if name not in parts:
            return
        t0 = time.monotonic()
        log(f"== {name}")
        try:
            results[name] = fn()
        except Exception:
            results["errors"][name] = traceback.format_exc()[-3000:]
            log(f"{name} FAILED:\n{results['errors'][name]}")
        results["timings"][name] = time.monotonic() - t0
        log(f"== {name} done in {results['timings'][name]:.0f} s")

    try:
        step("pickup", lambda: asyncio.run(part_pickup(engines, n, n_proc)))
        step("booking", lambda: asyncio.run(part_booking(engines, n_book)))
        step("replicas", lambda: part_replicas(engines, sim_minutes, compress, hold=1.0 if q else 1.5))
        step("availability", lambda: asyncio.run(part_availability(engines, n_avail, RESERVATIONS, prep=prep)))
    finally:
        engines.stop()
        if not args.keep_state_dirs:
            import shutil

            for d in _STATE_DIRS:
                shutil.rmtree(d, ignore_errors=True)

    if "availability" in parts or "pickup" in parts:
        results["fast_path_model"] = fast_path_model()  # ~1 s of arithmetic: how often a prepared pickup is fast
    results["total_seconds"] = time.monotonic() - t_start
    results["loadavg_at_end"] = list(os.getloadavg())
    results["uptime_at_end"] = _uptime()
    results["warnings"] = dict(sorted(warnings.seen.items(), key=lambda kv: -kv[1]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.json:
        raw = Path(args.json)
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(results, indent=2, default=str))
    else:
        raw = write_json(f"state-{stamp}{'-quick' if q else ''}.json", results)
    log(f"raw results: {raw}")
    if not args.no_write:
        _write_section(Path(args.out), render(results, os.path.relpath(raw, ROOT)))
        log(f"wrote section 7 of {os.path.relpath(args.out, ROOT)}")
    log(f"total {results['total_seconds']:.0f} s; load average at end {results['loadavg_at_end']}")
    return 0


def _write_section(path: Path, text: str) -> None:
    from bench import report

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(report.with_state_block(old, f"{report.STATE_START}\n{text}\n{report.STATE_END}"),
                    encoding="utf-8")


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # daemon threads (a background refresh, the Sheets stand-in's) never hold the exit
