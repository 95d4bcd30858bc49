"""The entrypoint's own steps, driven with a FakeJob (no media server, no worker): pickup
(inventory load concurrent with the room connection), the caller-left room event, a session that
never starts, caller identification from SIP attributes, the summary line, and the pipeline.

`agent.entrypoint(ctx)` is `run_call(ctx, Settings.lenient())`; these tests call `run_call` with
the same ctx shape and inject only the inventory and the pipeline factory."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from livekit import rtc
from livekit.agents.metrics.usage import AgentSessionUsage, LLMModelUsage, STTModelUsage, TTSModelUsage

import agent as rental
import equipment
import voice
from call_control import CallState
from settings import Settings
from tests.fakes.inventory import FakeInventory
from tests.fakes.job import FakeJob, FakeParticipant, FakeRoom
from tests.fakes.llm import Reply
from tests.fakes.tts import FakeTTS
from tests.harness import CALLER, book_step, log_lines, phone_call, tool_step


class SpyInventory(FakeInventory):
    """Records when its snapshot is asked for, among the job's events."""

    def __init__(self, job: FakeJob) -> None:
        super().__init__(known=False)
        self.job = job

    async def snapshot(self) -> equipment.Snapshot:
        self.job.events.append("snapshot called")
        return await super().snapshot()


class HangingSession:
    """A session whose start never returns (a provider plugin stuck while starting)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def on(self, *_: Any) -> None:
        pass

    async def start(self, **_: Any) -> None:
        self.started.set()
        await asyncio.Event().wait()


def hanging_pipeline(session: HangingSession) -> Any:
    return lambda *_: voice.Pipeline(session, FakeTTS(), FakeTTS())  # type: ignore[arg-type]


def settings(**env: str) -> Settings:
    return Settings.lenient({"BUSINESS_NAME": "Acme Rentals", **env})


# --------------------------------------------------------------------------------------------


async def test_the_inventory_starts_loading_before_the_room_connection_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rental-agent")
    ctx = FakeJob(connect_delay=0.5)
    inventory = SpyInventory(ctx)
    session = HangingSession()
    task = asyncio.create_task(rental.run_call(
        ctx, settings(SESSION_START_TIMEOUT="30"),
        make_inventory=lambda: inventory, make_pipeline=hanging_pipeline(session)))
    await asyncio.wait_for(session.started.wait(), 5)
    assert "📞 INCOMING CALL - Entrypoint triggered" in log_lines(caplog)
    assert ctx.events[:3] in (["snapshot called", "connect started", "connect returned"],
                              ["connect started", "snapshot called", "connect returned"]), ctx.events
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_prewarm_prepares_the_inventory_and_the_call_uses_it(tmp_path: Any, monkeypatch: Any) -> None:
    """agent.prewarm (each call's process, before its call) builds the inventory and parses the
    stored snapshot; the call then takes that one, not a new one."""
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EQUIPMENT_CACHE_TTL", "300")
    await equipment.inventory_from_env().snapshot()  # an earlier call stored the snapshot
    ctx = FakeJob(connect_hangs=True)
    rental.prewarm(ctx.proc)  # type: ignore[arg-type]
    prepared = ctx.proc.userdata["inventory"]
    assert isinstance(prepared, equipment.CachedInventory) and ctx.proc.userdata["vad"] is not None
    snapshots: list[equipment.Snapshot] = []
    original = prepared.snapshot

    async def recording() -> equipment.Snapshot:
        snapshots.append(await original())
        return snapshots[-1]

    prepared.snapshot = recording  # type: ignore[method-assign]
    await asyncio.wait_for(rental.run_call(ctx, settings(ROOM_CONNECT_TIMEOUT="0.3")), 5)
    assert len(snapshots) == 1 and snapshots[0].known, "the call read the prepared inventory"
    await ctx.run_shutdown("room connect failed")


async def test_a_room_that_never_answers_ends_the_job_and_logs_the_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rental-agent")
    ctx = FakeJob(connect_hangs=True)
    inventory = SpyInventory(ctx)
    t0 = time.monotonic()
    await asyncio.wait_for(rental.run_call(ctx, settings(ROOM_CONNECT_TIMEOUT="0.3"),
                                           make_inventory=lambda: inventory), 5)
    assert time.monotonic() - t0 < 0.3 + 3
    assert ctx.events.index("snapshot called") < ctx.events.index("shutdown")
    assert ctx.shutdowns == ["room connect failed"] and ctx.deleted == []
    await ctx.run_shutdown("room connect failed")
    msgs = log_lines(caplog)
    assert [m for m in msgs if "❌" in m] == [
        "❌ Room connection timed out after 0.3s (ROOM_CONNECT_TIMEOUT); ending the job"]
    summary = [m for m in msgs if m.startswith("📋 Call summary")]
    assert len(summary) == 1 and "reason=room connect failed" in summary[0]
    assert msgs[-1] == "✅ Ready for next call"
    assert inventory.closed == [0.5], "a dead room needs no wait at clean-up"


async def test_a_session_that_never_starts_hangs_up_and_ends_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rental-agent")
    ctx = FakeJob()
    session = HangingSession()
    t0 = time.monotonic()
    await asyncio.wait_for(rental.run_call(
        ctx, settings(SESSION_START_TIMEOUT="0.5"),
        make_inventory=FakeInventory,
        make_pipeline=hanging_pipeline(session)), 10)
    elapsed = time.monotonic() - t0
    assert session.started.is_set()
    assert 0.4 < elapsed < 0.5 + 3, elapsed
    # the caller is hung up on (room deleted), then the job ends
    assert ctx.deleted == ["call-room"] and ctx.shutdowns == ["session start failed"]
    assert ctx.events.index("delete") < ctx.events.index("shutdown")
    await ctx.run_shutdown("session start failed")
    msgs = log_lines(caplog)
    errors = [m for m in msgs if "❌" in m]
    assert errors == ["❌ Agent session start timed out after 0.5s (SESSION_START_TIMEOUT); hanging up"]
    assert any(m.startswith("📋 Call summary") and "reason=session start failed" in m for m in msgs)
    assert "✅ Agent session started - call in progress" not in msgs


async def test_the_entrypoint_ends_the_job_when_the_caller_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The participant_disconnected handler is registered on the room by the entrypoint itself."""
    caplog.set_level(logging.INFO, logger="rental-agent")
    ctx = FakeJob()
    session = HangingSession()
    task = asyncio.create_task(rental.run_call(
        ctx, settings(SESSION_START_TIMEOUT="30"),
        make_inventory=lambda: SpyInventory(ctx), make_pipeline=hanging_pipeline(session)))
    await asyncio.wait_for(session.started.wait(), 5)
    ctx.room.emit("participant_disconnected", FakeParticipant(
        "sip_caller", disconnect_reason=rtc.DisconnectReason.MEDIA_FAILURE))
    assert ctx.shutdowns == ["caller left (MEDIA_FAILURE)"] and ctx.deleted == []
    assert [m for m in log_lines(caplog) if "📴" in m] == ["📴 Caller hung up (caller left (MEDIA_FAILURE))"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_identify_caller_masks_the_logs_and_offers_the_number_for_bookings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    inventory = FakeInventory()
    sip = FakeParticipant("sip_caller_1", attributes={
        "sip.phoneNumber": CALLER, "sip.callID": "SCL_abc123", "sip.trunkPhoneNumber": "+15550009999"})
    web = FakeParticipant("observer", kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
                          attributes={"sip.phoneNumber": "+19998887777"})
    ctx = FakeJob(room=FakeRoom(participants=(web, sip)))
    ctx.log_context_fields = {"job_tag": "kept"}
    async with phone_call(inventory, caller=None) as c:
        await rental.identify_caller(ctx, c.state, c.agent)  # type: ignore[arg-type]
        assert ctx.log_context_fields == {"job_tag": "kept", "caller": "+1******4567",
                                          "sip_call_id": "SCL_abc123", "dialled": "+15550009999"}
        assert c.state.caller_number == CALLER and c.state.caller_identity == "sip_caller_1"
        assert c.state.call_id == "SCL_abc123" and c.state.dialled_number == "+15550009999"
        assert "ending in 4567" in c.agent.instructions
        # booked with no contact number given: the caller ID is the default
        result = await c.say("Book it.", book_step(inventory.units[0]), Reply("Done."))
        assert not tool_step(result, "book_equipment").is_error
        assert [r.renter_phone for r in inventory.booking_requests] == [CALLER]
        assert CALLER not in c.state.summary("test")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "+1******4567" in logged and CALLER not in logged and "5551234567" not in logged


def test_the_call_summary_line_carries_every_field() -> None:
    state = CallState(caller_number=CALLER)
    state.started_at = time.monotonic() - 42.2
    state.booking_refs = ["R7K3QX", "Q2W3E4"]
    state.callback_refs = ["C9D8E7"]
    state.usage = AgentSessionUsage(model_usage=[
        LLMModelUsage(provider="openai", model="gpt-4o", input_tokens=1200, output_tokens=80),
        TTSModelUsage(provider="deepgram", model="aura-2", characters_count=340),
        STTModelUsage(provider="deepgram", model="nova-3", audio_duration=41.6),
    ])
    for latency in (0.8, 2.0, 1.2):  # as conversation_item_added delivers them
        state.record_item(SimpleNamespace(role="assistant", metrics={"e2e_latency": latency}))
    state.record_item(SimpleNamespace(role="user", metrics={}))
    assert state.agent_turns == 3 and state.user_turns == 1

    line = state.summary("job ended")
    assert line.startswith("📋 Call summary: duration=42s reason=job ended ")
    for part in ("caller=+1******4567", "turns=1/3", "bookings=R7K3QX,Q2W3E4", "callbacks=C9D8E7",
                 "transferred=no", "median_latency=1.20s",
                 "usage=llm[gpt-4o]=1200in/80out,tts[aura-2]=340ch,stt[nova-3]=42s"):
        assert part in line, (part, line)
    assert CALLER not in line
    state.end_reason = "caller hung up"
    assert "reason=caller hung up " in state.summary("job ended")
    empty = CallState().summary("room connect failed")
    for part in ("caller=unknown", "turns=0/0", "bookings=-", "median_latency=n/a", "usage=-"):
        assert part in empty, (part, empty)


async def test_a_write_that_lands_as_the_timeout_fires_keeps_its_own_outcome() -> None:
    """A booking written just as BOOKING_TIMEOUT fires is a booking: the caller must not be
    told "NOT booked" (nor a refusal be taken for a timeout)."""
    from booking_desk import wait_for_write

    loop = asyncio.get_running_loop()
    refused = equipment.BookingRefused(equipment.RefusalCode.JUST_TAKEN)
    for outcome in ("R7K3QX", refused):
        for _ in range(20):
            write = loop.create_future()
            waiting = asyncio.ensure_future(wait_for_write(write, 0.01))
            await asyncio.sleep(0)  # the timeout is armed before the write lands
            land = (write.set_exception if isinstance(outcome, Exception) else write.set_result)
            loop.call_later(0.01, lambda w=write, f=land: w.done() or f(outcome))
            if isinstance(outcome, Exception):
                with pytest.raises(equipment.BookingRefused):
                    await waiting
            else:
                assert await waiting == outcome


def test_prewarm_loads_the_models_and_the_tls_context() -> None:
    import ssl

    proc = SimpleNamespace(userdata={})
    voice.prewarm(proc)  # type: ignore[arg-type]
    assert isinstance(proc.userdata["tls"], ssl.SSLContext)
    assert proc.userdata["vad"] is not None and proc.userdata["turn_detector"] is not None


@pytest.mark.parametrize("provider", ["deepgram", "openai"])
async def test_the_greeting_is_cached_from_the_chosen_voice_alone(monkeypatch: pytest.MonkeyPatch,
                                                                  provider: str) -> None:
    """Rendered through the fallback adapter, a voice failing mid-sentence would leave a cut-off
    clip, or the other voice's greeting under this one's name, for every later caller."""
    from livekit.plugins import deepgram as lk_deepgram
    from livekit.plugins import openai as lk_openai

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test-dummy")
    pipeline = voice.build_pipeline(Settings.lenient({"TTS_PROVIDER": provider}), {})
    expected = lk_deepgram.TTS if provider == "deepgram" else lk_openai.TTS
    assert isinstance(pipeline.primary_voice, expected)
    assert pipeline.tts is not pipeline.primary_voice  # the call itself keeps its fallback
