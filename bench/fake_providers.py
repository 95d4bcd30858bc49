"""Fake providers for running a real AgentSession in-process with no network and no room:
the tests' TTS stand-in (tests/fakes/tts.py: 0.5 s of audio at once), and an audio output that
records when the first frame arrives. The LLM is the project's scripted one (tests/fakes/llm.py) when present.

The pickup measurements only need "the greeting is queued" (session.say() returned a handle)
and "its first audio frame reached the output"; neither depends on what the audio contains.
"""

from __future__ import annotations

import time

from livekit.agents.voice import io as vio

from tests.fakes.tts import SAMPLE_RATE, FakeTTS  # noqa: F401  (re-exported for the bench parts)


class FakeAudioOutput(vio.AudioOutput):
    """Accepts frames as fast as they come and reports playback finished on flush."""

    def __init__(self) -> None:
        super().__init__(label="bench-fake-audio",
                         capabilities=vio.AudioOutputCapabilities(pause=False),
                         sample_rate=SAMPLE_RATE)
        self.first_frame_at: float | None = None
        self.frames = 0

    async def capture_frame(self, frame) -> None:  # type: ignore[override]
        await super().capture_frame(frame)
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()
        self.frames += 1

    def flush(self) -> None:
        super().flush()
        self.on_playback_finished(playback_position=0.5, interrupted=False)

    def clear_buffer(self) -> None:
        pass


def scripted_llm():
    """The project's scripted LLM if it is importable, else None (the greeting needs no LLM)."""
    try:
        from tests.fakes import llm as fake_llm  # type: ignore
    except Exception:
        return None
    for name in ("ScriptedLLM", "FakeLLM", "ScriptLLM"):
        cls = getattr(fake_llm, name, None)
        if cls is not None:
            try:
                return cls([])
            except TypeError:
                try:
                    return cls()
                except Exception:
                    return None
    return None
