"""OURS, one call in-process: agent.py's real `entrypoint(ctx)` with the room out of reach.

What is real: agent.py's entrypoint and everything it calls (Settings, equipment.inventory_from_env
and the first snapshot task, build_session with the real plugin objects, RentalAgent, CallControl,
AgentSession.start, session.say(greeting)), equipment.py and its STATE_DIR cache, gspread to the
local Sheets stand-in. prewarm(proc) runs before the call, as in an idle process.

What is faked (bench-only patches, in the forked child only):
- `ctx`: livekit.agents.testing.fake_job_context() around an unconnected rtc.Room; `ctx.connect()`
  returns at once (there is no media server here);
- `AgentSession.start(room=...)` drops the room and attaches the fake audio output instead;
- the session's TTS is replaced by the fake TTS after build_session built the real ones (the
  plugin objects are still constructed, so their cost is counted);
- the dummy OPENAI_API_KEY / DEEPGRAM_API_KEY are set (no request is made: nothing is heard).

Marks: entry (just before entrypoint(ctx)), greeting_queued (session.say(greeting) called),
inventory_ready (the first snapshot resolved; may be after the greeting), first_audio.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.fake_providers import FakeAudioOutput, FakeTTS

_PATCHED = False
_STATE: dict = {}


def _patch(agent_mod, equipment_mod) -> None:
    global _PATCHED
    if _PATCHED:
        return
    from livekit.agents import AgentSession

    orig_start = AgentSession.start
    orig_say = AgentSession.say

    async def start(self, agent=None, *, room=None, **kw):  # type: ignore[no-untyped-def]
        out = FakeAudioOutput()
        self.output.audio = out
        if not isinstance(self._tts, FakeTTS):  # whatever TTS agent.py built, the fake one speaks
            self._tts = FakeTTS()
        _STATE["out"] = out
        _STATE["session"] = self
        _STATE.setdefault("t_session_start_begin", time.perf_counter())
        try:
            return await orig_start(self, agent=agent, **kw)
        finally:
            _STATE.setdefault("t_session_start_end", time.perf_counter())

    def say(self, text, *a, **kw):  # type: ignore[no-untyped-def]
        h = orig_say(self, text, *a, **kw)
        _STATE.setdefault("greeting_queued", time.perf_counter())
        _STATE.setdefault("handle", h)
        return h

    AgentSession.start = start  # type: ignore[method-assign]
    AgentSession.say = say  # type: ignore[method-assign]

    orig_build = getattr(agent_mod, "build_session", None)

    def build_session(*a, **kw):  # type: ignore[no-untyped-def]
        _STATE.setdefault("t_build_begin", time.perf_counter())
        session = orig_build(*a, **kw)
        _STATE.setdefault("t_build_end", time.perf_counter())
        fake = FakeTTS()
        session._tts = fake  # the real TTS objects were built; the fake one speaks
        control = a[2] if len(a) > 2 else kw.get("control")
        if control is not None and hasattr(control, "tts_engine"):
            control.tts_engine = fake
            control.primary_voice = fake
        return session

    if orig_build is not None:  # timing marks only; the TTS swap also happens in start()
        agent_mod.build_session = build_session

    orig_inv = equipment_mod.inventory_from_env

    def inventory_from_env(env=os.environ):  # type: ignore[no-untyped-def]
        _STATE.setdefault("t_inventory_begin", time.perf_counter())
        inv = orig_inv(env)
        _STATE.setdefault("t_inventory_end", time.perf_counter())
        orig_snapshot = inv.snapshot

        async def snapshot():
            snap = await orig_snapshot()
            if "inventory_ready" not in _STATE:
                _STATE["inventory_ready"] = time.perf_counter()
                _STATE["inventory"] = ("known" if snap.known else "unknown")
                _STATE["age"] = snap.age
            return snap

        try:
            inv.snapshot = snapshot  # type: ignore[method-assign]
        except AttributeError:
            pass
        return inv

    equipment_mod.inventory_from_env = inventory_from_env
    _PATCHED = True


async def run_entrypoint(env: dict, marks: dict):
    import agent as agent_mod
    import equipment as equipment_mod
    from livekit import rtc
    from livekit.agents.testing import fake_job_context

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-dummy")
    os.environ.setdefault("DEEPGRAM_API_KEY", "bench-dummy")
    _patch(agent_mod, equipment_mod)

    room = rtc.Room()
    cm = fake_job_context(room=room)
    ctx = cm.__enter__()
    _STATE["cm"] = cm

    async def connect(*a, **kw):  # the room is out of reach: no media server here
        return None

    ctx.connect = connect  # type: ignore[method-assign]
    from bench.callproc import _prewarm

    ctx.proc.userdata.update(_prewarm())  # as in an idle prewarmed process, before any job

    marks["entry"] = time.perf_counter()
    await agent_mod.entrypoint(ctx)
    if "greeting_queued" in _STATE:
        marks["greeting_queued"] = _STATE["greeting_queued"]
    for k, v in _STATE.items():
        if k.startswith("t_"):
            marks[k] = v
    # give the first snapshot a moment to resolve, to report when the inventory was ready
    deadline = time.perf_counter() + 0.5
    while "inventory_ready" not in _STATE and time.perf_counter() < deadline:
        await asyncio.sleep(0.002)
    if "inventory_ready" in _STATE:
        marks["inventory_ready"] = _STATE["inventory_ready"]
        marks["inventory"] = _STATE["inventory"]
    else:
        marks["inventory"] = "pending after 0.5 s"
    return _STATE.get("session"), _STATE.get("handle"), _STATE.get("out") or FakeAudioOutput()
