"""One simulated call per process, forked from a forkserver that preloaded the same modules the
worker preloads, as LiveKit does (PROCESS executor, forkserver on Linux, a process is never reused).

Children:
- pickup_child: runs one call's pickup (ours: agent.run_call, via bench/ours_call.py; baseline: the
  seed's order, bench/baseline_seed.py) with the room out of reach (connect is a no-op), the
  production pipeline with the fake TTS and audio output (bench/fake_providers.py); reports
  perf_counter marks.
- load_child: one call's inventory read (ours: equipment.inventory_from_env(env).snapshot();
  baseline: the seed's per-process cache), then stays alive `hold` seconds like a call would.

Every child ends with os._exit: the seed's hung gspread thread would otherwise keep the process
alive at interpreter shutdown (that is a finding of its own, reported in part 3).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

def _greeting() -> str:
    import prompts
    from settings import Settings

    return prompts.greeting(Settings.lenient().business_name)


def _quiet() -> None:
    """Silence the children's logs, and keep every connection on this machine (the project's
    network guard: a plugin trying to reach Deepgram or OpenAI fails at once, loudly, locally)."""
    from tests.fakes.sheets_server import install_network_guard

    install_network_guard()
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("livekit", "livekit.agents", "bench", "equipment", "rental-agent", "gspread", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


_USERDATA: dict = {}


def _prewarm() -> dict:
    """What an idle prewarmed process holds before any call: voice.prewarm's VAD, turn detector
    and TLS context. Done before the call's clock starts, both designs."""
    if not _USERDATA:
        import voice
        from livekit.agents import JobExecutorType, JobProcess

        proc = JobProcess(executor_type=JobExecutorType.PROCESS, user_arguments=None, http_proxy=None)
        voice.prewarm(proc)
        _USERDATA.update(proc.userdata)
    return _USERDATA


async def _baseline_session(items, marks: dict):
    """The seed's session: the same production pipeline as ours (voice.build_pipeline, through
    the bench's BenchPipeline: fake TTS and audio output), started with a plain Agent whose
    instructions carry the inventory it loaded. Returns (session, audio output)."""
    from livekit.agents import Agent

    from bench.fake_providers import BenchPipeline
    from settings import Settings

    pipeline = BenchPipeline(marks)
    session = pipeline(Settings.lenient(), _prewarm()).session
    n = "unknown" if items is None else len(items)
    await session.start(agent=Agent(instructions=f"You rent equipment. Inventory: {n} items."))
    return session, pipeline.audio


def _self_memory() -> dict:
    import psutil

    m = psutil.Process().memory_full_info()
    return {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}


def _turn_llm():
    """The memory run's model: the caller asks, the model looks the inventory up (a real tool
    call into the inventory), then answers."""
    from tests.fakes.llm import Reply, ScriptedLLM, call

    return ScriptedLLM([Reply(tool_calls=[call("look_up_equipment", category="Excavators")]),
                        Reply("We have a mini excavator available at 325 dollars a day.")])


async def _one_turn(session) -> str:
    """One scripted exchange in the call; the fake TTS speaks the answer."""
    try:
        await asyncio.wait_for(session.run(user_input="Do you have an excavator this weekend?"), 10)
        return "ok"
    except Exception as e:  # reported in the memory table, not fatal: the memory figure is still taken
        return f"{type(e).__name__}: {e}"[:300]


async def _wait_first_audio(out, marks: dict) -> None:
    """Bounded wait for the first greeting frame to reach the fake output."""
    deadline = time.perf_counter() + 2.0
    while out.first_frame_at is None and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    marks["first_audio"] = out.first_frame_at


async def _pickup(design: str, memory: bool = False) -> dict:
    from bench import baseline_seed, ours_call

    marks: dict = {}
    if memory:
        marks["mem_idle"] = _self_memory()
    if design == "baseline":
        async def connect():
            return None

        async def start_session(items):
            session, out = await _baseline_session(items, marks)
            holder["out"] = out
            return session

        holder: dict = {}
        await baseline_seed.seed_entrypoint(os.environ, connect, start_session, _greeting(), marks)
        await _wait_first_audio(holder["out"], marks)
    elif design == "ours":
        async with ours_call.call(marks, _prewarm(), llm=_turn_llm() if memory else None) as (_, pipeline):
            await _wait_first_audio(pipeline.audio, marks)
            if memory:
                marks["turn"] = await _one_turn(pipeline.session)
                marks["mem_call"] = _self_memory()
    else:
        raise ValueError(design)
    entry = marks["entry"]
    return {k: (v - entry if isinstance(v, float) else v) for k, v in marks.items() if k != "entry"}


def pickup_child(design: str, env: dict, conn, memory: bool = False) -> None:
    _quiet()
    os.environ.update(env)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-dummy")
    os.environ.setdefault("DEEPGRAM_API_KEY", "bench-dummy")
    try:
        _prewarm()
        asyncio.run(_run_and_send(_pickup(design, memory), conn))
    except BaseException:
        # a failed send leaves the parent an EOFError: "child exited without a result"
        conn.send({"error": traceback.format_exc()[-2000:]})
    os._exit(0)


async def _run_and_send(coro, conn):
    conn.send(await coro)
    conn.close()
    # leave at once, from inside the loop: asyncio.run would otherwise wait at its end for the
    # default executor, where the seed's hung gspread thread never returns (see module doc)
    os._exit(0)


async def _load(design: str, env: dict, hold: float, q) -> None:
    from bench import baseline_seed

    t0 = time.perf_counter()
    info: dict = {"design": design, "pid": os.getpid(), "t_start": time.time()}
    try:
        if design == "baseline":
            items, how = await baseline_seed.load_with_timeout(env)
            info.update(known=items is not None, how=how, n=None if items is None else len(items))
        else:
            import equipment

            inv = equipment.inventory_from_env(env)
            snap = await inv.snapshot()
            info.update(known=snap.known, age=snap.age, n=None if snap.units is None else len(snap.units))
    except Exception as e:
        info["error"] = f"{type(e).__name__}: {e}"
    info["wait"] = time.perf_counter() - t0
    q.put(info)
    await asyncio.sleep(hold)  # the call goes on; ours may finish a background refresh meanwhile


def load_child(design: str, env: dict, hold: float, q) -> None:
    _quiet()
    os.environ.update(env)
    try:
        asyncio.run(_load(design, env, hold, q))
    except BaseException:
        q.put({"design": design, "pid": os.getpid(), "error": traceback.format_exc()[-2000:]})
    os._exit(0)


# ----------------------------------------------------------------- parent side

_CTX = None


def context():
    """The forkserver context, preloading this module (and through it livekit, gspread, equipment,
    agent) once. Children are forked from it, like the worker's job processes."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["bench._child_preload"])
    return _CTX


def run_pickup(design: str, env: dict, timeout: float = 15.0, memory: bool = False) -> dict:
    ctx = context()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=pickup_child, args=(design, env, w, memory), daemon=True)
    t0 = time.perf_counter()
    p.start()
    w.close()
    res: dict
    if r.poll(timeout):
        try:
            res = r.recv()
        except EOFError:
            res = {"error": "child exited without a result"}
    else:
        res = {"error": f"no result within {timeout}s"}
    p.join(2)
    if p.is_alive():
        p.kill()
        p.join(2)
    res["fork_to_result"] = time.perf_counter() - t0
    r.close()
    return res


def start_pickups(design: str, env: dict, n: int, stagger: float = 0.0) -> list:
    """Start n pickup children, `stagger` seconds apart (for conditions where every call waits
    seconds anyway: their waits overlap, their CPU-bound parts don't)."""
    ctx = context()
    out = []
    for i in range(n):
        if i and stagger:
            time.sleep(stagger)
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=pickup_child, args=(design, env, w), daemon=True)
        p.start()
        w.close()
        out.append((p, r))
    return out


def collect_pickups(started: list, timeout: float = 15.0) -> list[dict]:
    results = []
    deadline = time.monotonic() + timeout
    for p, r in started:
        left = max(0.0, deadline - time.monotonic())
        if r.poll(left):
            try:
                results.append(r.recv())
            except EOFError:
                results.append({"error": "child exited without a result"})
        else:
            results.append({"error": f"no result within {timeout}s"})
        p.join(1)
        if p.is_alive():
            p.kill()
            p.join(1)
        r.close()
    return results


def run_load_once(design: str, env: dict, hold: float = 0.3, timeout: float = 20.0) -> dict:
    """One call's inventory read in its own process; returns what the child reported."""
    ctx = context()
    q = ctx.SimpleQueue()
    p = ctx.Process(target=load_child, args=(design, env, hold, q), daemon=True)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(2)
    return q.get() if not q.empty() else {"error": "no result"}
