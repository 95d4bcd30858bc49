"""A TTS stand-in: answers every request at once with a short tone (not silence, so a replayed
recording can be told apart from nothing), and counts the requests it was sent."""

from __future__ import annotations

import functools
import math
import struct

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, tts
from livekit.agents.voice import io as vio

SAMPLE_RATE = 24000


@functools.lru_cache(maxsize=8)
def tone(seconds: float = 0.5, hz: float = 440.0) -> bytes:
    n = int(SAMPLE_RATE * seconds)
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)))
                    for i in range(n))


class FakeTTS(tts.TTS):
    def __init__(self, seconds: float = 0.5) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False),
                         sample_rate=SAMPLE_RATE, num_channels=1)
        self.pcm = tone(seconds)
        self.requests: list[str] = []

    @property
    def model(self) -> str:
        return "fake-tts"

    @property
    def provider(self) -> str:
        return "tests"

    def synthesize(self, text, *, conn_options=DEFAULT_API_CONNECT_OPTIONS):  # type: ignore[override]
        self.requests.append(text)
        return _Chunked(tts=self, input_text=text, conn_options=conn_options)


class _Chunked(tts.ChunkedStream):
    async def _run(self, output_emitter) -> None:  # type: ignore[override]
        output_emitter.initialize(request_id="fake", sample_rate=SAMPLE_RATE, num_channels=1,
                                  mime_type="audio/pcm")
        output_emitter.push(self._tts.pcm)  # type: ignore[attr-defined]
        output_emitter.flush()


class RecordingAudioOutput(vio.AudioOutput):
    """An audio output that keeps every frame it is given and 'plays' it at once."""

    def __init__(self) -> None:
        super().__init__(label="recording-audio", capabilities=vio.AudioOutputCapabilities(pause=False),
                         sample_rate=SAMPLE_RATE)
        self.pcm = bytearray()

    async def capture_frame(self, frame) -> None:  # type: ignore[override]
        await super().capture_frame(frame)
        self.pcm += bytes(frame.data)

    def flush(self) -> None:
        super().flush()
        self.on_playback_finished(playback_position=len(self.pcm) / 2 / SAMPLE_RATE, interrupted=False)

    def clear_buffer(self) -> None:
        pass
