"""One simulated call per process, forked from a forkserver that preloaded the same modules the
worker preloads, as LiveKit does (PROCESS executor, forkserver on Linux, a process is never reused).

Children:
- pickup_child: runs one call's entrypoint (ours: agent.py's, via bench/ours_call.py; baseline: the
  seed's order, bench/baseline_seed.py) with the room out of reach (connect is a no-op), a real
  AgentSession, the fake TTS and the fake audio output; reports perf_counter marks.
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

GREETING_FALLBACK = "Thanks for calling the rental shop. How can I help you today?"


def _greeting() -> str:
    try:
        import prompts

        return prompts.greeting(prompts.DEFAULT_BUSINESS_NAME)
    except Exception:
        return GREETING_FALLBACK


def _quiet() -> None:
    """Silence the children's logs, and keep every connection on this machine (the project's
    network guard: a plugin trying to reach Deepgram or OpenAI fails at once, loudly, locally)."""
    from tests.fakes.sheets_server import install_network_guard

    install_network_guard()
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("livekit", "livekit.agents", "bench", "equipment", "agent", "gspread", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


_USERDATA: dict = {}


def _prewarm() -> dict:
    """What an idle prewarmed process holds before any call: agent.prewarm's VAD and turn
    detector (or, without agent.py, nothing). Done before the call's clock starts, both designs."""
    if not _USERDATA:
        try:
            import agent

            class _Proc:
                userdata: dict = _USERDATA

            agent.prewarm(_Proc())  # type: ignore[arg-type]
        except Exception:
            pass
        _USERDATA.setdefault("_prewarmed", True)
    return _USERDATA


async def _baseline_session(items):
    """The seed's session: the same production pipeline as ours (agent.build_session: Deepgram STT,
    OpenAI LLM with fallback, TTS, the prewarmed VAD and turn detector), TTS swapped for the fake,
    audio to the fake output; a plain Agent whose instructions carry the inventory it loaded."""
    from livekit.agents import Agent, AgentSession

    from bench.fake_providers import FakeAudioOutput, FakeTTS, scripted_llm

    try:
        import agent

        settings = agent.Settings.from_env()
        control = agent.CallControl(settings, agent.CallState())
        session = agent.build_session(settings, _prewarm(), control)
        session._tts = FakeTTS()
    except Exception:
        session = AgentSession(llm=scripted_llm(), tts=FakeTTS(), vad=None,
                               turn_handling={"turn_detection": None})
    out = FakeAudioOutput()
    session.output.audio = out
    session._bench_out = out  # type: ignore[attr-defined]
    n = "unknown" if items is None else len(items)
    await session.start(agent=Agent(instructions=f"You rent equipment. Inventory: {n} items."))
    return session


def _self_memory() -> dict:
    import psutil

    m = psutil.Process().memory_full_info()
    return {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}


async def _one_turn(session) -> str:
    """One scripted exchange in the call: the caller asks, the model looks the inventory up
    (a real tool call into equipment.py), then answers; the fake TTS speaks it."""
    from tests.fakes.llm import Reply, ScriptedLLM, call

    session._llm = ScriptedLLM([Reply(tool_calls=[call("look_up_equipment", category="Excavators")]),
                                Reply("We have a mini excavator available at 325 dollars a day.")])
    try:
        await asyncio.wait_for(session.run(user_input="Do you have an excavator this weekend?"), 10)
        return "ok"
    except Exception as e:  # reported, not fatal: the memory figure is still taken
        return f"{type(e).__name__}: {e}"[:300]


async def _pickup(design: str, env: dict, memory: bool = False) -> dict:
    from bench import baseline_seed

    marks: dict = {}
    if memory:
        marks["mem_idle"] = _self_memory()
    if design == "baseline":
        async def connect():
            return None
        session, handle = await baseline_seed.seed_entrypoint(env, connect, _baseline_session,
                                                              _greeting(), marks)
        out = session._bench_out  # type: ignore[attr-defined]
    elif design == "ours":
        from bench import ours_call

        session, handle, out = await ours_call.run_entrypoint(env, marks)
    else:
        raise ValueError(design)
    # wait (bounded) for the first greeting frame to reach the fake output
    deadline = time.perf_counter() + 2.0
    while out.first_frame_at is None and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    marks["first_audio"] = out.first_frame_at
    if memory:
        marks["turn"] = await _one_turn(session)
        marks["mem_call"] = _self_memory()
    entry = marks["entry"]
    res = {k: (v - entry if isinstance(v, float) else v) for k, v in marks.items() if k != "entry"}
    return res


def pickup_child(design: str, env: dict, conn, memory: bool = False) -> None:
    _quiet()
    os.environ.update(env)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-dummy")
    os.environ.setdefault("DEEPGRAM_API_KEY", "bench-dummy")
    _prewarm()
    try:
        res = asyncio.run(_run_and_send(_pickup(design, env, memory), conn))
    except BaseException:
        try:
            conn.send({"error": traceback.format_exc()[-2000:]})
        except Exception:
            pass
    finally:
        os._exit(0)


async def _run_and_send(coro, conn):
    res = await coro
    conn.send(res)
    conn.close()
    # leave at once: a hung Sheets thread must not hold this process (see module doc)
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
        pass
    finally:
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
