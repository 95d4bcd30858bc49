"""Caller (a): a participant on the LiveKit rtc SDK that looks like a phone caller to the agent.

It joins with a token of kind "sip" (the server takes the participant kind from the token) and the
attributes livekit-sip sets (sip.phoneNumber, sip.trunkPhoneNumber, sip.callID, ...); the token's
room configuration dispatches the agent by name, as a SIP dispatch rule does. It publishes a
microphone track that carries silence, and espeak-ng speech when told to `say` something, in real
time; and it listens to the agent's track, marking every 10 ms frame as speech or not by energy.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path

from livekit import api, rtc

from tests.e2e import audio
from tests.e2e.timeline import Heard

RATE = 48000  # what a LiveKit client sends; the agent resamples for its STT
FRAME = RATE // 100


@dataclass
class RtcCaller:
    url: str
    api_key: str
    api_secret: str
    room_name: str
    agent_name: str
    phone: str = "+15550100001"
    dialled: str = "+15551234567"
    identity: str = field(default_factory=lambda: f"sip_{uuid.uuid4().hex[:8]}")
    record_to: Path | None = None
    dispatch: bool = True  # the token's room configuration dispatches the agent (as a SIP rule does)

    def __post_init__(self) -> None:
        self.room = rtc.Room()
        self.heard = Heard()
        self.connected_at: float | None = None  # monotonic
        self.hung_up_at: float | None = None
        self.said: list[tuple[float, float, str]] = []  # (first, last voiced) monotonic of each utterance
        self._speech: asyncio.Queue[tuple[bytes, str, asyncio.Future]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._agent_pcm = bytearray()
        self.agent_identity: str | None = None
        self.disconnected = asyncio.Event()

    def token(self) -> str:
        call_id = f"SCL_{uuid.uuid4().hex[:12]}"
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(self.identity)
            .with_name(f"Phone {self.phone}")
            .with_kind("sip")
            .with_attributes({
                "sip.phoneNumber": self.phone,
                "sip.trunkPhoneNumber": self.dialled,
                "sip.callID": call_id,
                "sip.callStatus": "active",
                "sip.trunkID": "ST_e2e_rtc",
                "sip.ruleID": "SDR_e2e_rtc",
            })
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name, can_publish=True,
                                         can_subscribe=True, can_publish_data=True))
        )
        if self.dispatch:
            token = token.with_room_config(api.RoomConfiguration(
                agents=[api.RoomAgentDispatch(agent_name=self.agent_name)]))
        return token.to_jwt()

    async def join(self, timeout: float = 20.0) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("disconnected", lambda *_: self.disconnected.set())
        await asyncio.wait_for(self.room.connect(self.url, self.token(),
                                                 rtc.RoomOptions(auto_subscribe=True)), timeout)
        self.connected_at = time.monotonic()
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=100)
        track = rtc.LocalAudioTrack.create_audio_track("phone", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self._tasks.append(asyncio.create_task(self._mic(), name="mic"))

    def _on_track(self, track: rtc.Track, pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        self.agent_identity = participant.identity
        self._tasks.append(asyncio.create_task(self._listen(track), name="listen"))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=16000, num_channels=1, frame_size_ms=10)
        try:
            async for ev in stream:
                pcm = bytes(ev.frame.data)
                self.heard.add(time.monotonic(), audio.rms(pcm) > audio.SPEECH_RMS)
                if self.record_to is not None:
                    self._agent_pcm += pcm
        finally:
            await stream.aclose()

    async def _mic(self) -> None:
        """Real-time microphone: 10 ms frames of silence, or of the next queued utterance."""
        silent = rtc.AudioFrame(b"\x00\x00" * FRAME, RATE, 1, FRAME)
        while True:
            if self._speech.empty():
                await self.source.capture_frame(silent)
                continue
            pcm, text, done = self._speech.get_nowait()
            pcm += b"\x00\x00" * (-len(pcm) // 2 % FRAME)
            first, last = audio.voiced_bounds(pcm, RATE)  # espeak's own padding left out
            for i in range(0, len(pcm), FRAME * 2):
                await self.source.capture_frame(rtc.AudioFrame(pcm[i:i + FRAME * 2], RATE, 1, FRAME))
            # the source buffers up to 100 ms: the last frame leaves about then
            await self.source.wait_for_playout()
            ended = time.monotonic()
            # frames leave in real time: the last voiced one left (len - last) before the end
            self.said.append((ended - len(pcm) / 2 / RATE + first, ended - len(pcm) / 2 / RATE + last, text))
            done.set_result(time.monotonic())

    async def say(self, text: str) -> float:
        """Speak `text` (espeak-ng) into the call; returns when it has been sent (monotonic)."""
        pcm = await asyncio.get_running_loop().run_in_executor(None, audio.speak, text, RATE)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._speech.put((pcm, text, done))
        return await done

    async def hang_up(self) -> None:
        self.hung_up_at = time.monotonic()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()
        if self.record_to is not None and self._agent_pcm:
            with wave.open(str(self.record_to), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(bytes(self._agent_pcm))
