"""The bench's `make_pipeline` for `agent.run_call`: the production pipeline with a fake voice.

`BenchPipeline` calls `voice.build_pipeline(settings, userdata)` itself, so building the real
plugin objects (Deepgram STT, two OpenAI LLMs behind a FallbackAdapter, Deepgram and OpenAI TTS
behind a FallbackAdapter, the session) stays in the measured path exactly as production runs it.
No plugin makes a request until used, and none is used: the greeting needs no LLM, and no audio
comes in. It then builds one more AgentSession with the same STT, LLM, VAD and options but the
tests' TTS stand-in (tests/fakes/tts.py: 0.5 s of tone at once) and an audio output that notes
when the first frame arrives. That second construction is bench-only work, timed apart (the mark
"t_session_built", its own row in the report); public LiveKit API only, no private attribute is
touched. The LLM's connection prewarm is idempotent, so the second session adds no request.

`BenchSession` is that session. Its `start()` leaves the room out: there is no media server here,
and a RoomIO on an unconnected room would wait forever for it and start the STT on no audio.
`start()` and `say()` also note their times. The pickup clock stops when `say(greeting)` returns.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any, Mapping

from livekit.agents import AgentSession, llm as lk_llm
from livekit.agents.voice import io as vio

import voice
from settings import Settings
from tests.fakes.tts import SAMPLE_RATE, FakeTTS


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


class BenchSession(AgentSession):
    """An AgentSession that starts without the room (out of reach here) and notes when it
    started and when the first `say()` returned."""

    def __init__(self, bench_marks: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bench_marks = bench_marks

    async def start(self, agent, *, room=None, **kwargs):  # type: ignore[override]
        self.bench_marks.setdefault("t_session_start_begin", time.perf_counter())
        try:
            return await super().start(agent, **kwargs)
        finally:
            self.bench_marks.setdefault("t_session_start_end", time.perf_counter())

    def say(self, text, **kwargs):  # type: ignore[override]
        handle = super().say(text, **kwargs)
        self.bench_marks.setdefault("greeting_queued", time.perf_counter())
        return handle


def same_options(session: AgentSession) -> dict[str, Any]:
    """AgentSession keyword arguments that rebuild `session`'s options (its public `options` and
    `turn_detection`), whatever build_pipeline chose: every option the constructor takes under the
    same name, and the turn handling from its parts. tests/test_bench_smoke.py checks that the
    result equals the production session's options, so an option this cannot carry fails there."""
    opts = session.options
    params = inspect.signature(AgentSession.__init__).parameters
    kwargs: dict[str, Any] = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)
                              if f.name in params and f.name not in ("turn_handling", "recording_options")}
    handling = dict(opts.turn_handling)
    handling["turn_detection"] = session.turn_detection
    handling["endpointing"] = opts.endpointing_overrides  # only what build_pipeline set
    kwargs["turn_handling"] = handling
    return kwargs


class BenchPipeline:
    """`make_pipeline` for `agent.run_call` (see the module doc). `llm` replaces the production
    LLM in the session (the memory run's scripted turn); by default the real one is kept."""

    def __init__(self, marks: dict[str, Any], llm: lk_llm.LLM | None = None) -> None:
        self.marks = marks
        self.llm = llm
        self.audio = FakeAudioOutput()
        self.voice = FakeTTS()
        self.production: voice.Pipeline | None = None  # what build_pipeline returned
        self.session: BenchSession | None = None

    def __call__(self, settings: Settings, userdata: Mapping[str, Any]) -> voice.Pipeline:
        self.marks.setdefault("t_build_begin", time.perf_counter())
        real = voice.build_pipeline(settings, userdata)
        self.marks.setdefault("t_build_end", time.perf_counter())
        self.production = real
        session = BenchSession(
            self.marks,
            stt=real.session.stt,
            llm=self.llm if self.llm is not None else real.session.llm,
            tts=self.voice,
            vad=real.session.vad,
            **same_options(real.session),
        )
        session.output.audio = self.audio
        self.session = session
        self.marks.setdefault("t_session_built", time.perf_counter())
        return voice.Pipeline(session, self.voice, self.voice)
