"""The voice pipeline of a call: models loaded once per process (prewarm), the plugins with
their fallbacks, the greeting rendered once per machine, a line spoken straight into the room
when the session itself is gone, and the typed pipeline of `console --text`."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import sys
import time
import types
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Coroutine, Mapping, Sequence

import httpx2
import openai as openai_sdk
from livekit import rtc
from livekit.agents import AgentSession, JobContext, JobProcess, inference, llm, tts
from livekit.agents.voice import SpeechHandle

# Imported at module level, not inside the call: plugins imported here register in the worker,
# which preloads them in its forkserver for every job process. Imported lazily they cost ~1 s of
# dead air at pickup (the openai plugin pulls in the whole SDK).
from livekit.plugins import deepgram, openai, silero

# What a call still imported on its first use, with the event loop blocked (the framework names
# them in its "event loop blocked ... importing X" warnings; e2e/README.md finding 4): the openai
# SDK's lazily loaded resources (the LLM's and the TTS's requests), anyio (httpx's network
# backend), the framework's tool and report modules. Imported here, they load once in the
# forkserver (worker.PRELOAD): BENCHMARKS.md, "End to end", has the before and after.
CALL_TIME_IMPORTS = (
    "anyio", "anyio._backends._asyncio", "anyio.streams.memory", "anyio.streams.stapled", "jiter", "numpy.fft",
    "openai._resource", "openai.pagination", "openai.resources.audio.speech", "openai.resources.chat.chat",
    "openai.resources.chat.completions.completions", "openai.resources.models",
    "livekit.agents.llm.async_toolset", "livekit.agents.voice.report",
)
for _name in CALL_TIME_IMPORTS:  # `import openai.x` here would rebind `openai` (the plugin) to the SDK
    importlib.import_module(_name)

from settings import FALLBACK_LLM, STT_MODEL, VOICES, Settings  # noqa: E402

logger = logging.getLogger("rental-agent")


def prewarm(proc: JobProcess, settings: Settings | None = None) -> None:
    """Synchronous, models only, no network. VAD from the silero wheel (~0.1 s); the end-of-turn
    model's weights are compiled into livekit-local-inference (no hub download): init_eot() is a
    no-op when the forkserver already preloaded them, ~0.7 s otherwise."""
    started = time.perf_counter()
    proc.userdata["vad"] = silero.VAD.load(min_silence_duration=(settings or Settings()).vad_min_silence)
    try:
        import livekit.local_inference as li

        li.init_eot()
        proc.userdata["turn_detector"] = inference.TurnDetector(version="v1-mini")
    except Exception as e:  # the call still works with VAD-only turn taking
        logger.warning(f"⚠️ Turn detector not loaded, using VAD end-of-turn: {e!r}")
    # the CA bundle too (~20 ms, no network): loaded per client it would sit in front of pickup
    proc.userdata["tls"] = httpx2.create_ssl_context()
    try:  # and the framework's own (deepgram's and the room API's aiohttp sessions): cached per process
        from livekit.agents.utils import http_context

        http_context._create_ssl_context()
    except Exception as e:  # noqa: BLE001 - only a head start: the call builds it otherwise
        logger.debug(f"framework TLS context not preloaded: {e!r}")
    logger.debug("prewarm done", extra={"elapsed": round(time.perf_counter() - started, 3)})


def openai_client(tls: Any = None, base_url: str | None = None) -> openai_sdk.AsyncClient:
    """One OpenAI client for both LLMs and the TTS, on the TLS context loaded in prewarm. Left to
    themselves the plugins build a client each, and each loads the CA bundle again: ~60 ms in
    front of the greeting. Timeouts and pool limits are the plugins' own defaults."""
    return openai_sdk.AsyncClient(
        base_url=base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(
            verify=tls if tls is not None else True,
            timeout=httpx2.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
            follow_redirects=True,
            limits=httpx2.Limits(max_connections=50, max_keepalive_connections=50, keepalive_expiry=120),
        ),
    )


@dataclass
class Pipeline:
    session: AgentSession
    tts: tts.TTS | None  # the voice with its fallback (None: a typed conversation)
    primary_voice: tts.TTS | None  # the chosen voice alone: the greeting is cached from it only


# A caller who hangs up having said nothing leaves no transcript to wait for: the framework's 2.0 s
# (session_close_transcript_timeout) held every ended call's job, and its capacity slot, that long.
CLOSE_TRANSCRIPT_TIMEOUT = 0.5
# livekit-agents 1.8.9 feeds the STT silence instead of the caller for the first 3 s of agent
# speech on an inbound SIP call ("AEC warm-up", against echo before a client's echo canceller
# settles): a caller who starts talking as the greeting starts lost their first words (e2e: the STT
# got 0.3 s of a 3 s question). The phone and the carrier cancel line echo; a stray echo that
# interrupts the greeting without words is a false interruption the greeting resumes after.
AEC_WARMUP = None


def voices(settings: Settings, client: openai_sdk.AsyncClient) -> list[tts.TTS]:
    """The voices, the chosen one (TTS_PROVIDER) first, then its fallback."""
    openai_model, openai_voice = VOICES["openai"].split("/")
    out: list[tts.TTS] = [deepgram.TTS(model=VOICES["deepgram"], base_url=f"{settings.deepgram_url}/v1/speak"),
                          openai.TTS(model=openai_model, voice=openai_voice, client=client)]
    if settings.tts_provider == "openai":
        out.reverse()
    return out


def turn_handling(settings: Settings, detector: Any) -> dict[str, Any]:
    """Turn-taking for a phone line (BENCHMARKS.md, "End to end"): the end-of-turn model when
    prewarm loaded it (VAD alone otherwise), within MIN/MAX_ENDPOINTING_DELAY."""
    return {"turn_detection": detector if detector is not None else "vad",
            "endpointing": {"min_delay": settings.min_endpointing_delay,
                            "max_delay": settings.max_endpointing_delay}}


def build_pipeline(settings: Settings, userdata: Mapping[str, Any]) -> Pipeline:
    """The production pipeline. Plugins are built inside the call (a missing key fails this call,
    not the worker) and make no network request until used."""
    client = openai_client(userdata.get("tls"), settings.openai_url)
    speakers = voices(settings, client)
    speech = tts.FallbackAdapter(speakers)
    session = AgentSession(
        stt=deepgram.STT(model=STT_MODEL, base_url=f"{settings.deepgram_url}/v1/listen"),
        llm=fallback_llm(settings, client),
        tts=speech,
        vad=userdata.get("vad"),
        turn_handling=turn_handling(settings, userdata.get("turn_detector")),  # type: ignore[arg-type]
        user_away_timeout=settings.user_away_seconds,
        session_close_transcript_timeout=CLOSE_TRANSCRIPT_TIMEOUT,
        aec_warmup_duration=AEC_WARMUP,
    )
    return Pipeline(session, speech, speakers[0])


# Deepgram keyterm prompting (nova-3): a bounded list, or the request is refused.
MAX_KEYTERMS = 50
MAX_KEYTERM_CHARS = 60


def expect_words(session: AgentSession, keyterms: Sequence[str]) -> bool:
    """Gives the session's Deepgram STT the words to expect, before the session starts (set
    later, the plugin would reconnect its stream). False when there is nothing to give it."""
    stt = getattr(session, "stt", None)  # a test double may have none
    if not keyterms or not isinstance(stt, deepgram.STT):
        return False
    stt.update_options(keyterm=list(keyterms))
    return True


def inventory_keyterms(snapshot: Any) -> list[str]:
    """The inventory's names (units, makes, categories) as STT keyterms, so "Kubota KX040" is not
    heard as "cuba taca x zero forty". Empty when the inventory is not known."""
    out: list[str] = []
    seen: set[str] = set()
    for unit in getattr(snapshot, "units", None) or ():
        for term in (getattr(unit, "name", ""), getattr(unit, "category", "")):
            term = " ".join(str(term or "").split())[:MAX_KEYTERM_CHARS]
            if term and term.casefold() not in seen:
                seen.add(term.casefold())
                out.append(term)
    return out[:MAX_KEYTERMS]


def fallback_llm(settings: Settings, client: openai_sdk.AsyncClient) -> llm.FallbackAdapter:
    return llm.FallbackAdapter([openai.LLM(model=settings.llm_model, client=client),
                                openai.LLM(model=FALLBACK_LLM, client=client)])


def build_text_pipeline(settings: Settings, userdata: Mapping[str, Any]) -> Pipeline:
    """`console --text`: the same agent and LLM, typed in and printed out; no speech, so neither
    Deepgram nor a microphone is needed."""
    client = openai_client(userdata.get("tls"), settings.openai_url)
    session = AgentSession(llm=fallback_llm(settings, client), vad=None, turn_handling={"turn_detection": None},
                           user_away_timeout=None)
    return Pipeline(session, None, None)


# --------------------------------------------------------------------------------------------
# console


def in_console() -> bool:
    """Whether this call is `python agent.py console` (in the worker's process, a mock room)."""
    from livekit.agents.cli import AgentsConsole

    return bool(AgentsConsole.get_instance().enabled)


def text_console() -> bool:
    """Whether this call is `python agent.py console --text` (typed, no speech)."""
    from livekit.agents.cli import AgentsConsole

    return in_console() and AgentsConsole.get_instance().console_mode == "text"


PORTAUDIO_HINT = ("`console` needs the PortAudio library for the microphone and speaker: "
                  "apt-get install libportaudio2 (macOS: brew install portaudio). "
                  "Or type to the agent instead: python agent.py console --text")


def console_audio_available(text_only: bool) -> bool:
    """The framework's console imports `sounddevice` (PortAudio) even for `--text`, and crashes
    where PortAudio is not installed. For `--text`, a stand-in module that fails only if audio
    is actually used; for voice mode, say what to install. False: do not start."""
    try:
        import sounddevice  # noqa: F401
    except OSError:
        if not text_only:
            print(PORTAUDIO_HINT, file=sys.stderr)
            return False

        def no_audio(*_: Any, **__: Any) -> Any:
            raise OSError(PORTAUDIO_HINT)

        stub = types.ModuleType("sounddevice")
        stub.query_devices = stub.InputStream = stub.OutputStream = no_audio  # type: ignore[attr-defined]
        stub.default = types.SimpleNamespace(device=(None, None))  # type: ignore[attr-defined]
        sys.modules["sounddevice"] = stub
    return True


class GreetingAudio:
    """A line (the greeting, the overflow answer) rendered once per machine (a WAV in STATE_DIR)
    and replayed to every later caller, so they hear it without waiting for a TTS first byte. The
    file name is a hash of the text and the voice: changing BUSINESS_NAME or TTS_PROVIDER renders
    a new one."""

    FRAME_MS = 20

    def __init__(self, state_dir: Path, text: str, engine: tts.TTS, voice: str) -> None:
        self.text = text
        self.engine = engine
        key = f"{text}|{voice}|{engine.sample_rate}|{engine.num_channels}"
        self.path = Path(state_dir) / "greetings" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.wav"

    def frames(self) -> list[rtc.AudioFrame] | None:
        """The cached greeting as 20 ms frames, or None when not rendered yet (or unreadable)."""
        try:
            with wave.open(str(self.path), "rb") as w:
                rate, channels = w.getframerate(), w.getnchannels()
                pcm = w.readframes(w.getnframes())
        except (OSError, EOFError, wave.Error):
            return None
        step = rate * self.FRAME_MS // 1000 * channels * 2
        return [rtc.AudioFrame(pcm[i:i + step], rate, channels, len(pcm[i:i + step]) // (2 * channels))
                for i in range(0, len(pcm), step)] or None

    async def render(self) -> None:
        """Synthesises the greeting and stores it atomically (a half-written file never plays)."""
        pcm = bytearray()
        rate, channels = self.engine.sample_rate, self.engine.num_channels
        async with self.engine.synthesize(self.text) as stream:
            async for ev in stream:
                rate, channels = ev.frame.sample_rate, ev.frame.num_channels
                pcm += bytes(ev.frame.data)
        if not pcm:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(bytes(pcm))
        os.replace(tmp, self.path)
        logger.info(f"🎙️ Greeting audio rendered for later calls ({len(pcm) / (2 * channels * rate):.1f}s)")


CachedLine = GreetingAudio


async def prerender(lines: Sequence[GreetingAudio], delay: float = 0.0) -> int:
    """Renders the lines not cached yet (in a call, after its pickup: the overflow answer is
    ready before the machine is ever at capacity). Returns how many were rendered."""
    if delay:
        await asyncio.sleep(delay)
    rendered = 0
    for line in lines:
        if not line.path.exists():
            await line.render()
            rendered += 1
    return rendered


class LinePlayer:
    """Plays pre-rendered lines on an audio track of its own, with no AgentSession (the overflow
    answer): published once, each line waited for until it has played out."""

    def __init__(self, job: JobContext, track_name: str = "announcement") -> None:
        self.job = job
        self.track_name = track_name
        self.source: rtc.AudioSource | None = None
        self.listened = False  # the caller subscribed to the track before the first line

    async def _publish(self, rate: int, channels: int, listener_timeout: float) -> rtc.AudioSource:
        room = self.job.room
        source = rtc.AudioSource(rate, channels)
        track = rtc.LocalAudioTrack.create_audio_track(self.track_name, source)
        subscribed = asyncio.get_running_loop().create_future()

        def on_subscribed(t: Any) -> None:
            if getattr(t, "sid", None) == track.sid and not subscribed.done():
                subscribed.set_result(True)

        room.on("local_track_subscribed", on_subscribed)
        try:
            await room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            # frames captured before the caller subscribes are lost: wait for them (bounded)
            await asyncio.wait_for(subscribed, listener_timeout)
            self.listened = True
        except asyncio.TimeoutError:
            logger.warning(f"⚠️ Nobody subscribed to the {self.track_name} track within {listener_timeout:g}s; "
                           "playing anyway")
        finally:
            room.off("local_track_subscribed", on_subscribed)
        return source

    async def play(self, line: GreetingAudio, *, listener_timeout: float = 5.0) -> float:
        """Plays `line` (rendered now if it is not cached yet); returns its seconds."""
        frames = line.frames()
        if not frames:
            await line.render()
            frames = line.frames()
        if not frames:
            raise RuntimeError(f"no audio for {line.text!r}")
        if self.source is None:
            self.source = await self._publish(frames[0].sample_rate, frames[0].num_channels, listener_timeout)
        seconds = 0.0
        for frame in frames:
            await self.source.capture_frame(frame)
            seconds += frame.samples_per_channel / frame.sample_rate
        await self.source.wait_for_playout()
        return seconds


async def _replay(frames: list[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    for frame in frames:
        yield frame


def say_greeting(session: AgentSession, text: str, audio: GreetingAudio | None,
                 spawn: Callable[[Coroutine[Any, Any, Any], str], Any]) -> SpeechHandle:
    """The greeting at once: no LLM round trip, and no TTS either once it has been rendered
    (the first call on a machine renders it for the next ones)."""
    frames = audio.frames() if audio is not None else None
    if frames:
        return session.say(text, audio=_replay(frames))
    if audio is not None:
        spawn(audio.render(), "render_greeting")
    return session.say(text)


async def speak_into_room(job: JobContext, engine: tts.TTS, text: str) -> bool:
    """Synthesises `text` and plays it on a new audio track in the room, waiting until it has
    played: for when the session itself is gone. False when there is no room to play it in."""
    if job.is_fake_job():
        return False
    source = rtc.AudioSource(engine.sample_rate, engine.num_channels)
    track = rtc.LocalAudioTrack.create_audio_track("apology", source)
    await job.room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    async with engine.synthesize(text) as stream:
        async for ev in stream:
            await source.capture_frame(ev.frame)
    await source.wait_for_playout()
    return True
