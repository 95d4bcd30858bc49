"""OURS, one call in-process: `agent.run_call(ctx, Settings.lenient())`, which is all
`agent.entrypoint(ctx)` does, given the two seams run_call offers and nothing patched.

What is real: the settings parsed from the environment (inside the clock, as in the entrypoint),
run_call and everything it calls: the inventory (equipment.inventory_from_settings, its STATE_DIR
cache, gspread to the local Sheets stand-in) and its first snapshot task, voice.build_pipeline
with the real plugin objects, BookingDesk, RentalAgent, CallControl, GreetingAudio,
AgentSession.start and session.say(greeting). voice.prewarm runs before the call, as in an idle
process.

What stands in:
- `ctx`: livekit.agents.testing.fake_job_context() around an unconnected rtc.Room; its
  `connect()` returns at once (there is no media server here);
- `make_pipeline`: bench.fake_providers.BenchPipeline (the production pipeline built by
  voice.build_pipeline, then a session with the same parts but the fake TTS and audio output,
  started without the room);
- `make_inventory`: the production inventory, wrapped to note when the first snapshot resolved.

Marks (perf_counter): entry (before the settings are parsed), greeting_queued (say(greeting)
returned), inventory_ready (the first snapshot resolved; may be after the greeting), first_audio,
and the t_* steps for the breakdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator

import equipment
from bench.fake_providers import BenchPipeline


class TimedInventory:
    """The production inventory, noting when its first snapshot resolved (Inventory protocol)."""

    def __init__(self, inner: equipment.Inventory, marks: dict[str, Any]) -> None:
        self.inner = inner
        self.marks = marks

    async def snapshot(self) -> equipment.Snapshot:
        snap = await self.inner.snapshot()
        if "inventory_ready" not in self.marks:
            self.marks["inventory_ready"] = time.perf_counter()
            self.marks["inventory"] = "known" if snap.known else "unknown"
        return snap

    async def book(self, request: equipment.BookingRequest) -> equipment.Booking:
        return await self.inner.book(request)

    async def record_callback(self, request: equipment.CallbackRequest) -> str:
        return await self.inner.record_callback(request)

    async def replay_outbox(self) -> int:
        return await self.inner.replay_outbox()

    async def check(self) -> int:
        return await self.inner.check()

    async def close(self, timeout: float = 5.0) -> None:
        await self.inner.close(timeout)


@contextlib.asynccontextmanager
async def call(marks: dict[str, Any], userdata: dict[str, Any],
               llm: Any = None) -> AsyncIterator[tuple[Any, BenchPipeline]]:
    """One call's pickup; yields (CallControl, BenchPipeline) with the call still in progress
    (the job context stays installed). Raises when the call did not reach its greeting: run_call
    itself logs and hangs up rather than raising."""
    import agent
    from livekit import rtc
    from livekit.agents.testing import fake_job_context
    from settings import Settings

    pipeline = BenchPipeline(marks, llm=llm)
    with fake_job_context(room=rtc.Room()) as ctx:
        ctx.proc.userdata.update(userdata)  # as in an idle prewarmed process, before any job

        def make_inventory() -> TimedInventory:
            marks.setdefault("t_inventory_begin", time.perf_counter())
            inv = TimedInventory(equipment.inventory_from_settings(settings.inventory), marks)
            marks.setdefault("t_inventory_end", time.perf_counter())
            return inv

        marks["entry"] = time.perf_counter()
        settings = Settings.lenient()
        control = await agent.run_call(ctx, settings, make_inventory=make_inventory, make_pipeline=pipeline)
        if "greeting_queued" not in marks:
            raise RuntimeError(f"the call ended before its greeting: end_reason={control.call.end_reason!r}")
        # give the first snapshot a moment to resolve, to report when the inventory was ready
        deadline = time.perf_counter() + 0.5
        while "inventory_ready" not in marks and time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
        marks.setdefault("inventory", "pending after 0.5 s")
        yield control, pipeline
