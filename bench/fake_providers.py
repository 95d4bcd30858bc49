"""Fake providers for running a real AgentSession in-process with no network and no room:
a TTS that returns 0.5 s of silence at once, and an audio output that records when the first
frame arrives. The LLM is the project's scripted one (tests/fakes/llm.py) when present.

The pickup measurements only need "the greeting is queued" (session.say() returned a handle)
and "its first audio frame reached the output"; neither depends on what the audio contains.
"""

from __future__ import annotations

import time

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, tts
from livekit.agents.voice import io as vio

SAMPLE_RATE = 24000


class FakeTTS(tts.TTS):
    def __init__(self) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False),
                         sample_rate=SAMPLE_RATE, num_channels=1)
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-tts"

    @property
    def provider(self) -> str:
        return "bench"

    def synthesize(self, text, *, conn_options=DEFAULT_API_CONNECT_OPTIONS):  # type: ignore[override]
        self.requests += 1
        return _FakeChunked(tts=self, input_text=text, conn_options=conn_options)


class _FakeChunked(tts.ChunkedStream):
    async def _run(self, output_emitter) -> None:  # type: ignore[override]
        output_emitter.initialize(request_id="bench", sample_rate=SAMPLE_RATE, num_channels=1,
                                  mime_type="audio/pcm")
        output_emitter.push(b"\x00\x00" * (SAMPLE_RATE // 2))  # 0.5 s of silence
        output_emitter.flush()


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
