"""The greeting is rendered once per machine and replayed to later callers with no TTS request."""

from __future__ import annotations

import asyncio
from pathlib import Path

from livekit.agents import AgentSession
from livekit.agents.testing import fake_job_context

import agent as rental
import prompts
from booking_desk import BookingDesk
from call_control import CallControl, CallState
from settings import Settings
from tests.fakes.inventory import FakeInventory
from tests.fakes.job import FakeJob
from tests.fakes.llm import ScriptedLLM
from tests.fakes.tts import FakeTTS, RecordingAudioOutput
from voice import GreetingAudio

TEXT = prompts.greeting("Acme Rentals")


def same_audio(heard: bytes, spoken: bytes) -> bool:
    """The TTS's audio, give or take the silence that pads its last 10 ms frame."""
    return heard[:len(spoken)] == spoken and not heard[len(spoken):].strip(b"\x00") \
        and len(heard) - len(spoken) < 2 * 24000 // 100 * 2


async def test_rendered_greeting_is_the_tts_audio_and_keyed_by_text_and_voice(tmp_path: Path) -> None:
    voice = FakeTTS()
    cached = GreetingAudio(tmp_path, TEXT, voice, "deepgram")
    assert cached.frames() is None
    await cached.render()
    assert voice.requests == [TEXT]
    frames = cached.frames()
    assert frames and all(f.sample_rate == voice.sample_rate for f in frames)
    assert same_audio(b"".join(bytes(f.data) for f in frames), voice.pcm)
    # another shop name or another voice is another recording
    assert GreetingAudio(tmp_path, TEXT + " Hi.", voice, "deepgram").frames() is None
    assert GreetingAudio(tmp_path, TEXT, voice, "openai").frames() is None
    # a damaged file is ignored, not played
    cached.path.write_bytes(b"RIFF garbage")
    assert cached.frames() is None


async def _call(state_dir: Path, voice: FakeTTS) -> bytes:
    """One call's greeting, through a real AgentSession with an audio output; returns what the
    caller heard once the greeting played and the first call's background render finished."""
    settings = Settings.lenient({"BUSINESS_NAME": "Acme Rentals"})
    call = CallState()
    control = CallControl(settings, call, FakeJob())  # type: ignore[arg-type]
    inventory = FakeInventory()
    desk = BookingDesk(inventory, call, timeout=1.0, max_bookings=1, spawn=control.spawn)
    agent = rental.RentalAgent(settings=settings, inventory=inventory, call=call, desk=desk, control=control)
    heard = RecordingAudioOutput()
    greeting = GreetingAudio(state_dir, TEXT, voice, "deepgram")
    rendered_before = greeting.frames() is not None
    with fake_job_context():
        session = AgentSession(llm=ScriptedLLM(), tts=voice, vad=None, turn_handling={"turn_detection": None})
        session.output.audio = heard
        control.attach(session)
        handle = await rental.start_call(session, agent, greeting_audio=greeting)
        await asyncio.wait_for(handle.wait_for_playout(), 10)
        for _ in range(500):  # the first call renders the greeting in the background
            if rendered_before or greeting.frames() is not None:
                break
            await asyncio.sleep(0.02)
        await session.aclose()
    return bytes(heard.pcm)


async def test_first_call_renders_the_greeting_and_later_calls_need_no_tts(tmp_path: Path) -> None:
    voice = FakeTTS()
    first = await _call(tmp_path, voice)
    # spoken live (sentence by sentence) and, once, rendered whole for later calls
    assert voice.requests.count(TEXT) == 1 and len(voice.requests) >= 2, voice.requests
    assert first and first.strip(b"\x00")

    voice.requests.clear()
    second = await _call(tmp_path, voice)
    assert voice.requests == [], "a later call's greeting must not wait on the TTS"
    assert same_audio(second, voice.pcm), "the caller hears the rendered greeting"
