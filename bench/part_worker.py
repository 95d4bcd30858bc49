"""Parts 1a, 3 and 4 (worker side): the real `python agent.py start`, driven by the project's
dispatch stand-in (tests/fakes/dispatch_server.py), with the inventory on the local Sheets stand-in.

Measured from the stand-in's own protocol timestamps:
- dispatch → accepted: AvailabilityRequest sent → AvailabilityResponse(available) received;
- assignment → job end: JobAssignment sent → final update_job (JS_SUCCESS/FAILED) received,
  for a room URL that refuses and one that accepts and never answers (ROOM_CONNECT_TIMEOUT given);
- worker start: spawn → `register` received; idle processes' prewarm from the worker's own
  `process initialized elapsed_time` log lines;
- SIGTERM → worker process gone, idle and with one job in progress (drain);
- memory (psutil): the worker, its forkserver, each idle prewarmed process, a job process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from bench.common import PY, ROOT, Budget, summary
from bench.standins import CONDITIONS, Sheets, new_state_dir
from tests.fakes.dispatch_server import (AgentProcess, DispatchServer, HangingListener, free_port,
                                         refusing_url)

API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
CONNECT_TIMEOUT = 5.0  # ROOM_CONNECT_TIMEOUT given to the worker: the production default

_STRIP_PREFIXES = ("LIVEKIT_", "GOOGLE_", "OPENAI_", "DEEPGRAM_", "EQUIPMENT_")
_STRIP = {"PORT", "STATE_DIR", "ROOM_CONNECT_TIMEOUT", "SESSION_START_TIMEOUT", "DRAIN_TIMEOUT",
          "NUM_IDLE_PROCESSES", "TRANSFER_PHONE_NUMBER"}


def worker_env(srv: DispatchServer, sheets: Sheets, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP}
    env.update(sheets.env(state_dir))
    env.update(
        LIVEKIT_URL=srv.url, LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=API_SECRET,
        OPENAI_API_KEY="sk-bench-dummy", DEEPGRAM_API_KEY="dg-bench-dummy",
        ROOM_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT), PORT=str(free_port()), PYTHONUNBUFFERED="1",
    )
    return env


def _mem(p: psutil.Process) -> dict:
    try:
        m = p.memory_full_info()
        return {"pid": p.pid, "rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {"pid": p.pid, "rss": None, "uss": None, "pss": None}


def _tree(worker_pid: int) -> dict:
    """Classify the worker's process tree: worker, forkserver, resource tracker, job processes."""
    w = psutil.Process(worker_pid)
    res: dict = {"worker": _mem(w), "forkserver": None, "resource_tracker": None, "procs": []}
    for c in w.children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" in cmd:
            res["resource_tracker"] = _mem(c)
        elif "forkserver" in cmd and c.ppid() == worker_pid:
            res["forkserver"] = _mem(c)
        else:
            res["procs"].append(_mem(c))
    return res


def _start_worker(srv, sheets, tag, budget_s=90.0):
    state = new_state_dir(tag)
    logf = ROOT / "bench" / "results" / f"worker-{tag}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    wall0 = time.time()
    proc = AgentProcess([str(ROOT / "agent.py"), "start"], env=worker_env(srv, sheets, state),
                        cwd=str(ROOT), python=PY, log_path=logf, inherit_env=False)
    try:
        reg = srv.wait_registered(timeout=budget_s)
    except TimeoutError:
        tail = proc.log()[-3000:]
        proc.close()
        raise RuntimeError(f"worker did not register within {budget_s}s (exit={proc.poll()}):\n{tail}")
    proc.wall0 = wall0  # type: ignore[attr-defined]
    return proc, reg.t - t0, t0


def _wait_idle_ready(proc, n: int, timeout: float = 30.0) -> tuple[list[float], float | None]:
    """The first n `process initialized` log lines: their elapsed_time, and spawn → the last of
    them (from the log's own timestamps)."""
    from datetime import datetime

    deadline = time.monotonic() + timeout
    recs: list = []
    while time.monotonic() < deadline:
        recs = [r for r in proc.records() if r.get("message") == "process initialized"]
        if len(recs) >= n:
            break
        time.sleep(0.1)
    recs = recs[:n]
    if len(recs) < n:  # the caller reports it; the rest of the part still runs
        return [r.get("elapsed_time") for r in recs], None
    ready = max(datetime.fromisoformat(r["timestamp"]).timestamp() for r in recs) - proc.wall0
    return [r.get("elapsed_time") for r in recs], ready


def _wait_no_jobs(srv, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(j.ended for j in srv.jobs.values()):
            return
        time.sleep(0.05)


_SEED_CALL = (
    "import sys, asyncio; sys.path.insert(0, %r)\n"
    "from bench import baseline_seed as b\n"
    "async def call():\n"
    "    print((await b.load_with_timeout())[1], flush=True)  # the call goes on after 3 s...\n"
    "asyncio.run(call())  # ...but the process cannot end while gspread's thread hangs\n"
)


def _start_seed_hung_exit() -> tuple:
    """The seed's call path in a plain process against a hung sheet: does the process end after its
    3 s timeout? (The timeout stops the waiting, not gspread's thread, which has timeout=None.)"""
    hung = Sheets(rows=10)
    hung.set_condition("hung")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES)}
    env.update(hung.env(new_state_dir("seed-hung")))
    p = subprocess.Popen([PY, "-c", _SEED_CALL % str(ROOT)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
    return hung, p, time.monotonic()


def _finish_seed_hung_exit(hung, p, t0) -> dict:
    alive_after = time.monotonic() - t0
    code = p.poll()
    res = {"alive": code is None, "checked_after": alive_after, "exit_code": code}
    p.kill()
    res["printed"] = (p.communicate(timeout=5)[0] or "").strip()
    hung.stop()
    return res


def run(sheets: Sheets, budget: Budget, per_condition: int = 12, hung_jobs: int = 6) -> dict:
    out: dict = {"connect_timeout": CONNECT_TIMEOUT, "errors": []}
    n_idle = os.cpu_count() or 2
    seed_hung = _start_seed_hung_exit()
    try:
        return _run(sheets, budget, per_condition, hung_jobs, out, n_idle)
    finally:
        out["seed_process_hung_sheets"] = _finish_seed_hung_exit(*seed_hung)


def _run(sheets, budget, per_condition, hung_jobs, out, n_idle) -> dict:
    with DispatchServer(api_key=API_KEY, api_secret=API_SECRET) as srv, HangingListener() as hang:
        # ---------------------------------------------------------------- worker 1
        sheets.set_condition("healthy")
        proc, t_reg, t0 = _start_worker(srv, sheets, "w1")
        try:
            out["start_to_registered"] = t_reg
            inits, ready = _wait_idle_ready(proc, n_idle)
            if ready is None:
                out["errors"].append(f"worker 1: only {len(inits)} of {n_idle} idle processes initialized "
                                     f"within 30 s (log: {proc.log_path})")
            out["idle_prewarm_elapsed"] = inits
            out["start_to_idle_ready"] = ready
            time.sleep(1.0)
            out["memory_idle"] = _tree(proc.pid)

            # dispatch → accepted, per Sheets condition; refused rooms (each job also runs the
            # entrypoint's first snapshot against the faulted sheet)
            acc: dict = {}
            refused_run: list = []
            for cond in CONDITIONS:
                sheets.set_condition(cond)
                lat, runs = [], []
                for i in range(per_condition):
                    jid = srv.dispatch(f"bench-{cond}-{i}", url=refusing_url())
                    rec = srv.wait_job_end(jid, timeout=CONNECT_TIMEOUT + 15)
                    lat.append(rec.accept_latency)
                    runs.append(rec.run_time)
                    if rec.end_status != "JS_SUCCESS":
                        out["errors"].append(f"{cond} job {i}: {rec.end_status} {rec.end_error}")
                    time.sleep(0.25)  # let the pool replace the used process
                acc[cond] = {"accept": summary(lat), "refused_run": summary(runs)}
                refused_run.extend(runs)
                sheets.s.release()
            sheets.set_condition("healthy")
            out["accept"] = acc
            out["refused_room"] = summary(refused_run)

            # hanging rooms: assignment → job end
            hung, hung_status, job_mem = [], [], None
            for i in range(hung_jobs):
                jid = srv.dispatch(f"bench-hung-{i}", url=hang.url)
                if i == 0:
                    time.sleep(min(1.0, CONNECT_TIMEOUT / 2))
                    job_mem = _tree(proc.pid)
                rec = srv.wait_job_end(jid, timeout=CONNECT_TIMEOUT + 15)
                hung.append(rec.run_time)
                hung_status.append(rec.end_status)
                time.sleep(0.25)
            out["hung_room"] = summary(hung)
            out["hung_room_statuses"] = hung_status
            out["memory_during_job"] = job_mem

            # SIGTERM, idle
            _wait_no_jobs(srv)
            time.sleep(0.5)
            ts = time.monotonic()
            proc.signal(signal.SIGTERM)
            try:
                proc.wait(60)
                out["sigterm_idle"] = time.monotonic() - ts
                gone = time.monotonic()
                while proc.group_alive() and time.monotonic() - gone < 10:
                    time.sleep(0.02)
                out["sigterm_idle_group_gone"] = time.monotonic() - ts
                out["sigterm_idle_exit_code"] = proc.poll()
            except subprocess.TimeoutExpired:
                out["sigterm_idle"] = None
                out["errors"].append("idle worker did not exit within 60 s of SIGTERM")
            out["worker1_log"] = str(proc.log_path)
        finally:
            proc.close()
        srv.wait_disconnected(10)

        # ---------------------------------------------------------------- worker 2: drain
        if budget.left() > 40:
            proc, _, _ = _start_worker(srv, sheets, "w2")
            try:
                inits, ready = _wait_idle_ready(proc, n_idle)
                if ready is None:
                    out["errors"].append(f"worker 2: only {len(inits)} of {n_idle} idle processes initialized "
                                         f"within 30 s (log: {proc.log_path})")
                jid = srv.dispatch("bench-drain", url=hang.url)
                time.sleep(0.3)
                ts = time.monotonic()
                proc.signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                    out["sigterm_drain"] = time.monotonic() - ts
                    out["sigterm_drain_exit_code"] = proc.poll()
                except subprocess.TimeoutExpired:
                    out["sigterm_drain"] = None
                    out["errors"].append("worker with a job did not exit within 60 s of SIGTERM")
                rec = srv.jobs.get(jid)
                out["drain_job"] = {"status": rec.end_status if rec else None,
                                    "run_time": rec.run_time if rec else None,
                                    "sigterm_after_assignment": (ts - rec.assigned_at) if rec and rec.assigned_at else None}
                out["worker2_log"] = str(proc.log_path)
            finally:
                proc.close()
        else:
            out["errors"].append("drain: skipped (time budget)")
    return out


def import_and_prewarm(n: int = 3) -> dict:
    """Cold process start outside the forkserver: a fresh interpreter importing agent.py (and
    through it voice.py and the plugins) and running voice.prewarm(), n times (the worst case for
    the 10 s initialize_process_timeout; under the forkserver the imports are shared and only
    prewarm runs in the new process)."""
    code = (
        "import time,sys; t0=time.perf_counter(); sys.path.insert(0,%r)\n"
        "import agent, voice; t1=time.perf_counter()\n"
        "class P: userdata={}\n"
        "voice.prewarm(P()); t2=time.perf_counter()\n"
        "print(t1-t0, t2-t1)" % str(ROOT)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES)}
    env.update(OPENAI_API_KEY="x", DEEPGRAM_API_KEY="x", LIVEKIT_URL="ws://127.0.0.1:9",
               LIVEKIT_API_KEY="k", LIVEKIT_API_SECRET="s")
    imp, pre, tot = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                           timeout=60)
        total = time.perf_counter() - t0
        try:
            a, b = (float(x) for x in r.stdout.split()[-2:])
        except ValueError:
            return {"error": (r.stdout + r.stderr)[-1500:]}
        imp.append(a)
        pre.append(b)
        tot.append(total)
    return {"import": summary(imp), "prewarm": summary(pre), "interpreter_total": summary(tot)}
