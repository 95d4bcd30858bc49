"""The phone agent of the equipment-rental shop: one LiveKit Agents worker, one job per call.

    python agent.py start     production worker (JSON logs, health server on $PORT, drains on SIGTERM)
    python agent.py dev       development worker (use another LIVEKIT_AGENT_NAME than production)
    python agent.py console   talk to the agent in the terminal (no LiveKit server needed)
    python agent.py check     preflight checks (preflight.py)

Configuration comes from the environment (and `.env`, loaded here). Bad configuration is named in
one message and exits with status 2 before the worker starts: the framework itself would exit 0.

The life of a call (see `entrypoint`): the inventory snapshot starts loading at once, concurrently
with the room connection; the session starts; the greeting is spoken without waiting on the LLM;
any end (caller hang-up, agent hang-up, error, time limit, silence) ends the job with
`ctx.shutdown`, and the shutdown callback logs one summary line per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import statistics
import sys
import time
import wave
from pathlib import Path
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, AsyncIterator, Callable, Mapping

from dotenv import load_dotenv
from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    JobContext,
    JobProcess,
    RunContext,
    ToolError,
    cli,
    function_tool,
    get_job_context,
    inference,
    llm,
    room_io,
    tts,
)
from livekit.agents.voice.events import CloseReason

# Imported here, not inside the call: plugins imported at module level register in the worker,
# which then preloads them in its forkserver for every job process. Imported lazily they cost
# ~1 s of dead air at pickup (the openai plugin pulls in the whole SDK).
from livekit.plugins import deepgram, openai, silero

import equipment
import prompts

load_dotenv()

logger = logging.getLogger("rental-agent")

DEFAULT_AGENT_NAME = "equipment-rental"
SUPPORTED_TTS = ("deepgram", "openai")

# name -> (parser kind, default). Kinds: "port", "int>=0", "int>0", "float>0".
NUMERIC_VARS: dict[str, tuple[str, float | int | None]] = {
    "PORT": ("port", 8081),
    "DRAIN_TIMEOUT": ("int>=0", 600),
    "NUM_IDLE_PROCESSES": ("int>=0", None),
    "MAX_CONCURRENT_CALLS": ("int>0", 10),
    "ROOM_CONNECT_TIMEOUT": ("float>0", 5.0),
    "SESSION_START_TIMEOUT": ("float>0", 10.0),
    "MAX_CALL_SECONDS": ("float>0", 900.0),
    "USER_AWAY_SECONDS": ("float>0", 20.0),
    "BOOKING_TIMEOUT": ("float>0", 30.0),
    "MAX_BOOKINGS_PER_CALL": ("int>0", 3),
}

WHERE = {
    "LIVEKIT_URL": "your LiveKit project's WebSocket URL, e.g. wss://<project>.livekit.cloud "
    "(LiveKit Cloud dashboard > Settings > Project)",
    "LIVEKIT_API_KEY": "LiveKit Cloud dashboard > Settings > API Keys",
    "LIVEKIT_API_SECRET": "LiveKit Cloud dashboard > Settings > API Keys (shown once at creation)",
    "OPENAI_API_KEY": "https://platform.openai.com/api-keys (needed for the LLM, and for TTS "
    "when TTS_PROVIDER=openai or as the TTS fallback)",
    "DEEPGRAM_API_KEY": "https://console.deepgram.com > API Keys (speech-to-text, and the default TTS)",
}


# --------------------------------------------------------------------------------------------
# configuration


def _parse_number(kind: str, raw: str) -> float | int:
    if kind == "float>0":
        value: float | int = float(raw)
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError
        return value
    value = int(raw)
    if kind == "port" and not 1 <= value <= 65535:
        raise ValueError
    if kind == "int>=0" and value < 0:
        raise ValueError
    if kind == "int>0" and value <= 0:
        raise ValueError
    return value


def _describe(kind: str) -> str:
    return {
        "port": "a port number between 1 and 65535",
        "int>=0": "a whole number, 0 or more",
        "int>0": "a whole number above 0",
        "float>0": "a number of seconds above 0",
    }[kind]


def config_errors(mode: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """Every missing or malformed setting for `mode` (dev, start, console, connect), one message
    each naming the variable and where to get it. Empty list: good to go."""
    errors: list[str] = []

    def missing(name: str) -> bool:
        return not (env.get(name) or "").strip()

    if mode != "console":
        for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            if missing(name):
                errors.append(f"{name} is not set: {WHERE[name]}.")
        url = (env.get("LIVEKIT_URL") or "").strip()
        if url and not url.startswith(("ws://", "wss://", "http://", "https://")):
            errors.append(
                f"LIVEKIT_URL must start with wss:// (or ws://, https://), got {url[:40]!r}: "
                f"{WHERE['LIVEKIT_URL']}."
            )

    provider = (env.get("TTS_PROVIDER") or "deepgram").strip().lower()
    if provider not in SUPPORTED_TTS:
        errors.append(
            f"TTS_PROVIDER must be one of {', '.join(SUPPORTED_TTS)} (default deepgram), "
            f"got {provider!r}."
        )
    # STT is Deepgram and the LLM is OpenAI whatever the TTS choice; each is the other's TTS fallback.
    for name in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY"):
        if missing(name):
            errors.append(f"{name} is not set: {WHERE[name]}.")

    for name, (kind, _default) in NUMERIC_VARS.items():
        raw = (env.get(name) or "").strip()
        if not raw:
            continue
        try:
            _parse_number(kind, raw)
        except ValueError:
            errors.append(f"{name} must be {_describe(kind)}, got {raw!r}.")

    transfer = (env.get("TRANSFER_PHONE_NUMBER") or "").strip()
    if transfer and not _valid_transfer_target(transfer):
        errors.append(
            "TRANSFER_PHONE_NUMBER must be a phone number in international format such as "
            f"+15551234567 (or a tel:/sip: URI), got {transfer!r}. Leave it empty to take "
            "messages instead of transferring."
        )

    tz = (env.get("SHOP_TIMEZONE") or "").strip()
    if tz:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(tz)
        except Exception:
            errors.append(
                f"SHOP_TIMEZONE must be an IANA time zone such as America/Chicago, got {tz!r}."
            )

    try:
        errors.extend(equipment.config_errors(env) or [])
    except Exception as e:  # the inventory module's own check must not hide ours
        errors.append(f"inventory settings could not be checked: {e}")
    return errors


def _valid_transfer_target(value: str) -> bool:
    if value.startswith(("tel:", "sip:")):
        return len(value) > 4
    digits = value[1:] if value.startswith("+") else ""
    return digits.isdigit() and 7 <= len(digits) <= 15


@dataclass(frozen=True)
class Settings:
    agent_name: str
    business_name: str
    llm_model: str
    tts_provider: str
    transfer_to: str
    room_connect_timeout: float
    session_start_timeout: float
    max_call_seconds: float
    user_away_seconds: float
    booking_timeout: float
    shop_timezone: str
    max_bookings_per_call: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            agent_name=(env.get("LIVEKIT_AGENT_NAME") or "").strip() or DEFAULT_AGENT_NAME,
            business_name=(env.get("BUSINESS_NAME") or "").strip() or prompts.DEFAULT_BUSINESS_NAME,
            llm_model=(env.get("LLM_MODEL") or "").strip() or "gpt-4o",
            tts_provider=(env.get("TTS_PROVIDER") or "deepgram").strip().lower(),
            transfer_to=_transfer_uri((env.get("TRANSFER_PHONE_NUMBER") or "").strip()),
            room_connect_timeout=float(_num("ROOM_CONNECT_TIMEOUT", env)),
            session_start_timeout=float(_num("SESSION_START_TIMEOUT", env)),
            max_call_seconds=float(_num("MAX_CALL_SECONDS", env)),
            user_away_seconds=float(_num("USER_AWAY_SECONDS", env)),
            booking_timeout=float(_num("BOOKING_TIMEOUT", env)),
            shop_timezone=(env.get("SHOP_TIMEZONE") or "").strip(),
            max_bookings_per_call=int(_num("MAX_BOOKINGS_PER_CALL", env)),
        )

    def today(self) -> date:
        if self.shop_timezone:
            with contextlib.suppress(Exception):
                from zoneinfo import ZoneInfo

                return datetime.now(ZoneInfo(self.shop_timezone)).date()
        return date.today()


def _num(name: str, env: Mapping[str, str] = os.environ) -> Any:
    """The variable's value, or its default when unset or malformed (validation reports those)."""
    kind, default = NUMERIC_VARS[name]
    raw = (env.get(name) or "").strip()
    if raw:
        with contextlib.suppress(ValueError):
            return _parse_number(kind, raw)
    return default


def _transfer_uri(value: str) -> str:
    if not value:
        return ""
    return value if value.startswith(("tel:", "sip:")) else f"tel:{value}"


# One masking rule for every log line (equipment.py owns it): +15551234567 -> +1******4567.
mask_phone = equipment.mask_phone


def _masked(number: str | None) -> str:
    """The masked number for a log line, or "unknown" when there is none."""
    return mask_phone(number) if number else "unknown"


def spell_ref(ref: str) -> str:
    """R7K3QX -> 'R, 7, K, 3, Q, X': read slowly, one character at a time."""
    return ", ".join(ch for ch in ref if not ch.isspace())


def _money(value: float | None) -> str:
    if value is None:
        return "rate not listed"
    return f"${value:,.0f}" if float(value).is_integer() else f"${value:,.2f}"


def describe_unit(unit: equipment.Unit, *, with_status: bool = False) -> str:
    parts = [f"{unit.name} (id {unit.id})"]
    if unit.category:
        parts.append(f"category {unit.category}")
    parts.append(f"{_money(unit.daily_rate)} per day, {_money(unit.weekly_rate)} per week")
    if with_status:
        parts.append(f"status {unit.status}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# one call


@dataclass
class CallState:
    """What this job knows about its call; read by the tools and by the summary line."""

    room: str = ""
    started_at: float = field(default_factory=time.monotonic)
    call_id: str = ""
    caller_number: str = ""  # full number: tools only, never logged
    caller_identity: str = ""  # the SIP participant, for transfers
    dialled_number: str = ""
    session_started: bool = False
    end_reason: str = ""
    user_turns: int = 0
    agent_turns: int = 0
    booking_refs: list[str] = field(default_factory=list)
    callback_refs: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    usage: Any = None
    transferred: bool = False

    def summary(self, reason: str) -> str:
        duration = time.monotonic() - self.started_at
        median = f"{statistics.median(self.latencies):.2f}s" if self.latencies else "n/a"
        return (
            f"📋 Call summary: duration={duration:.0f}s reason={self.end_reason or reason} "
            f"caller={_masked(self.caller_number)} turns={self.user_turns}/{self.agent_turns} "
            f"bookings={','.join(self.booking_refs) or '-'} "
            f"callbacks={','.join(self.callback_refs) or '-'} "
            f"transferred={'yes' if self.transferred else 'no'} "
            f"median_latency={median} usage={_usage_text(self.usage)}"
        )


def _usage_text(usage: Any) -> str:
    if usage is None:
        return "-"
    parts: list[str] = []
    for mu in getattr(usage, "model_usage", []) or []:
        model = getattr(mu, "model", "?") or "?"
        if hasattr(mu, "characters_count"):
            parts.append(f"tts[{model}]={mu.characters_count}ch")
        elif hasattr(mu, "output_tokens") and hasattr(mu, "input_cached_tokens"):
            parts.append(f"llm[{model}]={mu.input_tokens}in/{mu.output_tokens}out")
        elif hasattr(mu, "audio_duration"):
            parts.append(f"stt[{model}]={mu.audio_duration:.0f}s")
    return ",".join(parts) or "-"


class _UnavailableInventory:
    """Stands in when the inventory could not even be constructed: every answer is 'unknown'."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def snapshot(self) -> equipment.Snapshot:
        return equipment.Snapshot(units=None, age=None, source="none")

    async def book(self, *args: Any, **kwargs: Any) -> equipment.Booking:
        raise equipment.BookingRefused("inventory_unknown", "The inventory can't be reached.")

    async def record_callback(self, name: str, phone: str, note: str, call_id: str = "") -> str:
        raise RuntimeError(f"inventory unavailable: {self.why}")

    async def replay_outbox(self) -> int:
        return 0

    async def close(self, timeout: float = 5.0) -> None:
        return None


class CallControl:
    """Hang-up, transfer and the timers of one call. Tools reach it through the agent.

    `job` is the call's JobContext (the entrypoint passes it); None means the current one
    (`get_job_context()`), which is what the in-process tests install."""

    def __init__(self, settings: Settings, call: CallState, job: Any = None) -> None:
        self.settings = settings
        self.call = call
        self.job = job
        self.session: AgentSession | None = None
        self.tts_engine: tts.TTS | None = None
        # the greeting is cached from this voice alone: through the fallback adapter a voice
        # failing mid-sentence yields a cut-off clip, or the other voice under this one's name
        self.primary_voice: tts.TTS | None = None
        self._ending = False
        self._transferring = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._away_task: asyncio.Task[Any] | None = None

    def _job(self) -> Any:
        return self.job if self.job is not None else get_job_context()

    # -- helpers ---------------------------------------------------------------------------
    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def _done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error(f"❌ {name} failed: {t.exception()!r}")

        task.add_done_callback(_done)
        return task

    def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    @property
    def ending(self) -> bool:
        return self._ending

    # -- ending the call -------------------------------------------------------------------
    async def hang_up(self, reason: str) -> None:
        """Hang up the phone: delete the room (disconnects the SIP caller), then end the job."""
        if self._ending:
            return
        self._ending = True
        self.call.end_reason = self.call.end_reason or reason
        logger.info(f"📴 Hanging up ({reason})")
        job = self._job()
        try:
            await asyncio.wait_for(asyncio.ensure_future(job.delete_room()), 5.0)
        except Exception as e:
            logger.warning(f"⚠️ Could not delete the room while hanging up: {e!r}")
        job.shutdown(reason=reason)

    def end_job(self, reason: str) -> None:
        """End the job without deleting the room (the caller is already gone)."""
        if self._ending:
            return
        self._ending = True
        self.call.end_reason = self.call.end_reason or reason
        self._job().shutdown(reason=reason)

    def caller_hung_up(self, reason: str) -> None:
        """The caller is gone (whichever of the session close or the room event says so first):
        one log line, then the job ends. No room to delete and nobody to say goodbye to."""
        if self._ending or self._transferring:
            return  # we are hanging up or transferring: the caller leaving is expected
        logger.info(f"📴 Caller hung up ({reason})")
        self.end_job(reason)

    def is_caller(self, participant: Any) -> bool:
        if self.call.caller_identity:
            return getattr(participant, "identity", None) == self.call.caller_identity
        return getattr(participant, "kind", None) == rtc.ParticipantKind.PARTICIPANT_KIND_SIP

    def on_participant_disconnected(self, participant: Any) -> None:
        """Room event `participant_disconnected`. RoomIO closes the session only for the
        disconnect reasons CLIENT_INITIATED, ROOM_DELETED and USER_REJECTED; a caller lost to
        SIP_TRUNK_FAILURE, MEDIA_FAILURE, CONNECTION_TIMEOUT, PARTICIPANT_REMOVED... would
        otherwise leave the job running until MAX_CALL_SECONDS."""
        if not self.is_caller(participant):
            return
        code = getattr(participant, "disconnect_reason", None)
        try:
            name = rtc.DisconnectReason.Name(code or rtc.DisconnectReason.UNKNOWN_REASON)
        except (ValueError, TypeError):
            name = str(code)
        self.caller_hung_up(f"caller left ({name})")

    def hang_up_after(self, handle: Any, reason: str) -> None:
        """Hang up once `handle` (a SpeechHandle: the goodbye) has played out."""

        def _done(_: Any) -> None:
            self.spawn(self.hang_up(reason), "hang_up")

        handle.add_done_callback(_done)

    async def say_then_hang_up(self, text: str, reason: str) -> None:
        if self._ending:
            return
        session = self.session
        try:
            assert session is not None
            handle = session.say(text, allow_interruptions=False)
            await asyncio.wait_for(handle.wait_for_playout(), 20.0)
        except Exception as e:
            logger.warning(f"⚠️ Could not say goodbye before hanging up: {e!r}")
        await self.hang_up(reason)

    # -- transfer --------------------------------------------------------------------------
    async def transfer(self) -> bool:
        """Cold-transfer the caller to TRANSFER_PHONE_NUMBER. True when the transfer went through."""
        identity = self.call.caller_identity or _find_sip_identity(self._job())
        if not self.settings.transfer_to or not identity:
            logger.warning("⚠️ Transfer not possible (no number configured or no SIP caller)")
            return False
        logger.info(f"↪️ Transferring caller to {mask_phone(self.settings.transfer_to)}")
        self._transferring = True  # the caller leaving the room now is the transfer working
        try:
            await asyncio.wait_for(
                asyncio.ensure_future(
                    self._job().transfer_sip_participant(identity, self.settings.transfer_to)
                ),
                30.0,
            )
        except Exception as e:
            logger.error(f"❌ Transfer failed: {e!r}")
            return False
        finally:
            self._transferring = False
        self.call.transferred = True
        return True

    async def transfer_then_end(self) -> None:
        if await self.transfer():
            self.call.end_reason = "transferred"
            await self.hang_up("transferred")
        elif self.session is not None and not self._ending:
            with contextlib.suppress(Exception):
                self.session.generate_reply(instructions=prompts.TRANSFER_FAILED)

    # -- session events --------------------------------------------------------------------
    def attach(self, session: AgentSession) -> None:
        self.session = session
        session.on("close", self._on_close)
        session.on("conversation_item_added", self._on_item)
        session.on("session_usage_updated", self._on_usage)
        session.on("user_state_changed", self._on_user_state)
        session.on("error", self._on_error)

    def _on_item(self, ev: Any) -> None:
        item = ev.item
        role = getattr(item, "role", None)
        if role == "user":
            self.call.user_turns += 1
        elif role == "assistant":
            self.call.agent_turns += 1
            metrics = getattr(item, "metrics", None) or {}
            e2e = metrics.get("e2e_latency") if isinstance(metrics, dict) else None
            if isinstance(e2e, (int, float)):
                self.call.latencies.append(float(e2e))

    def _on_usage(self, ev: Any) -> None:
        self.call.usage = ev.usage

    def _on_error(self, ev: Any) -> None:
        err = ev.error
        recoverable = getattr(err, "recoverable", True)
        source = type(ev.source).__name__
        # one line per provider error: a 429 from the LLM otherwise looks like a silent agent
        (logger.warning if recoverable else logger.error)(
            f"{'⚠️' if recoverable else '❌'} {source} error "
            f"({'recoverable' if recoverable else 'unrecoverable'}): "
            f"{getattr(err, 'error', err)!r}"[:300]
        )

    def _on_user_state(self, ev: Any) -> None:
        if ev.new_state == "away" and not self._ending:
            if self._away_task is None or self._away_task.done():
                self._away_task = self.spawn(self._still_there(), "still_there")
        elif ev.new_state == "speaking" and self._away_task is not None:
            self._away_task.cancel()
            self._away_task = None

    async def _still_there(self) -> None:
        session = self.session
        if session is None:
            return
        logger.info("🔇 Caller silent, asking if they are still there")
        with contextlib.suppress(Exception):
            handle = session.say(prompts.STILL_THERE)
            await asyncio.wait_for(handle.wait_for_playout(), 10.0)
        await asyncio.sleep(min(10.0, self.settings.user_away_seconds))
        if session.user_state == "away":
            await self.say_then_hang_up(prompts.AWAY_GOODBYE, "caller silent")

    async def max_duration_timer(self) -> None:
        limit = self.settings.max_call_seconds
        warn_at = max(limit - 60.0, limit * 0.8)
        await asyncio.sleep(warn_at)
        if self.session is not None and not self._ending:
            logger.info("⏱️ Call nearing MAX_CALL_SECONDS, warning the caller")
            with contextlib.suppress(Exception):
                self.session.say(prompts.WRAP_UP_WARNING)
        await asyncio.sleep(limit - warn_at)
        logger.warning(f"⏱️ Call reached MAX_CALL_SECONDS={limit:.0f}, ending it")
        await self.say_then_hang_up(prompts.MAX_DURATION_GOODBYE, "max call duration")

    def _on_close(self, ev: Any) -> None:
        reason = ev.reason.value if hasattr(ev.reason, "value") else str(ev.reason)
        if self._ending:
            return
        if ev.reason == CloseReason.ERROR:
            logger.error(f"❌ Session closed with an error: {ev.error!r}"[:300])
            self.call.end_reason = "session error"
            self.spawn(self._recover_from_error(), "recover_from_error")
            return
        if ev.reason == CloseReason.PARTICIPANT_DISCONNECTED:
            self.caller_hung_up("caller hung up")
        else:
            self.end_job(f"session closed: {reason}")

    async def _recover_from_error(self) -> None:
        """The session is gone; speak the apology straight into the room, then transfer or hang up."""
        can_transfer = bool(self.settings.transfer_to and
                            (self.call.caller_identity or _find_sip_identity(self._job())))
        text = prompts.APOLOGY_TRANSFER if can_transfer else prompts.APOLOGY_HANGUP
        try:
            await asyncio.wait_for(self._speak_direct(text), 12.0)
        except Exception as e:
            logger.warning(f"⚠️ Could not play the apology: {e!r}"[:200])
        if can_transfer and await self.transfer():
            await self.hang_up("session error, transferred")
        else:
            await self.hang_up("session error")

    async def _speak_direct(self, text: str) -> bool:
        """Synthesise `text` with the call's TTS and play it through `open_apology_output`,
        waiting until it has played. False when there is no voice or no room to play it in."""
        engine = self.tts_engine
        if engine is None:
            return False
        out = await self.open_apology_output(engine)
        if out is None:
            return False
        async with engine.synthesize(text) as stream:
            async for ev in stream:
                await out.capture_frame(ev.frame)
        await out.wait_for_playout()
        return True

    async def open_apology_output(self, engine: tts.TTS) -> Any:
        """Where the apology plays once the session is gone: a new audio track published in the
        room (an `rtc.AudioSource`: `capture_frame`, `wait_for_playout`). None without a room.
        Tests replace this with a recorder."""
        job = self._job()
        if job.is_fake_job():
            return None
        source = rtc.AudioSource(engine.sample_rate, engine.num_channels)
        track = rtc.LocalAudioTrack.create_audio_track("apology", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await job.room.local_participant.publish_track(track, opts)
        return source


def _find_sip_identity(job: Any = None) -> str:
    with contextlib.suppress(Exception):
        job = job if job is not None else get_job_context()
        for p in job.room.remote_participants.values():
            if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
                return p.identity
    return ""


# --------------------------------------------------------------------------------------------
# the agent and its tools


class RentalAgent(Agent):
    """The shop's phone agent. Tool docstrings are the model's contract; the rules live in the
    tools and in equipment.py, so a caller talking the model round changes nothing."""

    def __init__(
        self,
        *,
        settings: Settings,
        inventory: equipment.Inventory,
        call: CallState,
        control: CallControl,
        first_snapshot: asyncio.Task[equipment.Snapshot] | None = None,
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self.call = call
        self.control = control
        self._first_snapshot = first_snapshot
        self._open_writes: set[asyncio.Future[Any]] = set()  # bookings being written (count to the cap)
        super().__init__(instructions=self.build_instructions())

    def build_instructions(self) -> str:
        hint = self.call.caller_number[-4:] if len(self.call.caller_number) >= 4 else None
        return prompts.system_prompt(self.settings.business_name, self.settings.today(), hint)

    async def snapshot(self) -> equipment.Snapshot:
        """The inventory as this call sees it. The first call to this awaits the load started at
        pickup; later calls ask the inventory again (it caches, and sees our own bookings)."""
        first = self._first_snapshot
        try:
            if first is not None and not first.done():
                return await asyncio.shield(first)
            self._first_snapshot = None
            return await self.inventory.snapshot()
        except Exception as e:
            logger.error(f"❌ Inventory snapshot failed: {e!r}"[:300])
            return equipment.Snapshot(units=None, age=None, source="error")

    async def _known_snapshot(self) -> equipment.Snapshot:
        snap = await self.snapshot()
        if not snap.known:
            logger.warning("⚠️ Inventory unknown: told the caller we can't check right now")
            raise ToolError(prompts.INVENTORY_UNKNOWN)
        return snap

    @function_tool()
    async def look_up_equipment(
        self, context: RunContext, category: str | None = None, keyword: str | None = None
    ) -> str:
        """Find equipment the shop has available to rent, with day and week rates.

        Use this whenever the caller asks what you have, whether something is available, or
        what it costs. Never answer those from memory.

        Args:
            category: A category to filter by, such as "excavator" or "generator". Optional.
            keyword: A word to search names and descriptions for, such as "mini" or "3000 watt". Optional.
        """
        snap = await self._known_snapshot()
        category = (category or "").strip() or None
        keyword = (keyword or "").strip() or None
        available = snap.search(category=category, keyword=keyword, available_only=True)
        if available:
            lines = [describe_unit(u) for u in available[:8]]
            more = f" ({len(available) - 8} more not listed)" if len(available) > 8 else ""
            return f"Available now{more}:\n" + "\n".join(lines)
        matching = snap.search(category=category, keyword=keyword, available_only=False)
        if matching:
            busy = "; ".join(f"{u.name} (id {u.id}) is {u.status}" for u in matching[:5])
            return (
                f"Nothing matching is available right now. {busy}. Offer something similar if "
                f"the caller wants; categories we carry: {', '.join(snap.categories())}."
            )
        return (
            "No equipment matches that. Categories we carry: "
            f"{', '.join(snap.categories()) or 'none listed'}. Ask the caller which fits."
        )

    @function_tool()
    async def get_equipment_details(self, context: RunContext, equipment_id: str) -> str:
        """Details of one item: name, category, rates, description and whether it is available.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
        """
        snap = await self._known_snapshot()
        unit = snap.find(equipment_id.strip())
        if unit is None:
            raise ToolError(
                f"There is no item with id {equipment_id!r}. Look it up by name or category first."
            )
        text = describe_unit(unit, with_status=True)
        if unit.description:
            text += f"; description: {unit.description}"
        return text

    @function_tool()
    async def book_equipment(
        self,
        context: RunContext,
        equipment_id: str,
        renter_name: str,
        start_date: str,
        end_date: str,
        contact_number: str | None = None,
    ) -> str:
        """Book one item for the caller. Call this ONLY after you have read the booking back to
        the caller (item, dates, name, contact number) and they said yes.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
            renter_name: The caller's full name.
            start_date: Pick-up date, YYYY-MM-DD.
            end_date: Return date, YYYY-MM-DD.
            contact_number: Best phone number to reach the caller. Leave empty to use the number they are calling from.
        """
        phone = (contact_number or "").strip() or self.call.caller_number
        if not phone:
            raise ToolError(prompts.NEED_CONTACT_NUMBER)
        unit_id = equipment_id.strip()
        # the cap is the tools' rule, not the prompt's: bookings made plus those being written
        cap = self.settings.max_bookings_per_call
        if len(self.call.booking_refs) + len(self._open_writes) >= cap:
            logger.warning(f"🚫 Booking of unit {unit_id} refused: MAX_BOOKINGS_PER_CALL={cap} reached")
            raise ToolError(prompts.booking_limit(cap))
        # the write must not be cut short by a barge-in (it is shielded from hang-ups anyway);
        # a turn already interrupted ("no, wait") books nothing
        try:
            context.disallow_interruptions()
        except RuntimeError:
            logger.info(f"🚫 Booking of unit {unit_id} not made: the caller interrupted first")
            raise ToolError(prompts.BOOKING_INTERRUPTED) from None
        try:
            write: asyncio.Future[equipment.Booking] = asyncio.ensure_future(self.inventory.book(
                unit_id, renter_name, phone, start_date, end_date,
                self.call.call_id, today=self.settings.today(),
            ))
        except Exception as e:  # book() could not even be started
            raise ToolError(await self._booking_failed(e, unit_id, renter_name, phone,
                                                       start_date, end_date)) from None
        self._open_writes.add(write)
        try:
            # shielded: on timeout the write carries on (it may be mid-request in a thread) and
            # is logged when it lands, rather than being cut in half
            booking = await wait_for_write(write, self.settings.booking_timeout)
        except equipment.BookingRefused as refused:
            self._open_writes.discard(write)
            logger.info(f"🚫 Booking refused ({refused.code}) for unit {unit_id}")
            raise ToolError(refusal_text(refused)) from None
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError) and not write.done():
                logger.error(f"❌ Booking of unit {unit_id} still not done after "
                             f"{self.settings.booking_timeout:.0f}s (BOOKING_TIMEOUT); left running")
                write.add_done_callback(functools.partial(
                    self._late_booking, details=(unit_id, renter_name, phone, start_date, end_date)))
                raise ToolError(prompts.BOOKING_TIMED_OUT) from None
            # anything else (a bug, a store error that escaped): never livekit's bare
            # "internal error"; keep the details so staff can call back
            self._open_writes.discard(write)
            raise ToolError(await self._booking_failed(e, unit_id, renter_name, phone,
                                                       start_date, end_date)) from None
        self._open_writes.discard(write)
        self.call.booking_refs.append(booking.ref)
        state = "confirmed" if booking.confirmed else "PENDING (kept in the outbox)"
        logger.info(f"📝 Booking {booking.ref} {state}: unit {booking.equipment_id} "
                    f"{booking.start.isoformat()}..{booking.end.isoformat()}")
        when = f"from {booking.start.isoformat()} to {booking.end.isoformat()}"
        if booking.confirmed:
            return (
                f"Booked: {booking.equipment_name} {when} for {booking.renter_name}. "
                f"Reference {booking.ref}. Tell the caller the reference slowly, one character "
                f"at a time: {spell_ref(booking.ref)}."
            )
        return (
            f"The booking of {booking.equipment_name} {when} is RECORDED but NOT yet confirmed: "
            "the booking system is slow, so the shop will call the caller to confirm. Say exactly "
            f"that, and give the reference slowly: {spell_ref(booking.ref)}. Reference {booking.ref}."
        )

    async def _booking_failed(self, error: BaseException, unit_id: str, name: str, phone: str,
                              start_date: str, end_date: str) -> str:
        """A booking that failed unexpectedly: one ❌ line, the request kept as a call-back for
        staff, and what the agent should tell the caller."""
        logger.error(f"❌ Booking of unit {unit_id} failed: {error!r}"[:300])
        note = (f"Booking request not completed (system error): unit {unit_id}, "
                f"{start_date} to {end_date}. Call back to confirm.")
        try:
            outcome, ref = await self._save_callback(name, phone, note)
        except equipment.BookingRefused as refused:
            outcome, ref = "failed", f"refused ({refused.code})"
        if outcome == "saved":
            logger.info(f"📝 Call-back request {ref} recorded for the failed booking")
            return prompts.booking_failed_recorded(str(ref))
        if outcome == "slow":
            return prompts.BOOKING_FAILED_RECORD_SLOW
        logger.warning(f"⚠️ The failed booking could not be recorded for a call-back: {ref}"[:300])
        return prompts.booking_failed_not_recorded(bool(self.settings.transfer_to))

    def _late_booking(self, write: asyncio.Future[equipment.Booking],
                      details: tuple[str, str, str, str, str]) -> None:
        self._open_writes.discard(write)
        if write.cancelled() or write.exception() is not None:
            error = write.exception() if not write.cancelled() else asyncio.CancelledError()
            logger.warning(f"⚠️ Late booking did not complete: {error!r}"[:300])
            # the caller was told the shop will call to confirm: make sure staff know to
            self.control.spawn(self._booking_failed(error, *details), "late_booking_callback")
            return
        booking = write.result()
        self.call.booking_refs.append(booking.ref)
        logger.warning(f"📝 Booking {booking.ref} completed late "
                       f"({'confirmed' if booking.confirmed else 'pending'}): unit {booking.equipment_id}")

    async def _save_callback(self, name: str, phone: str, note: str) -> tuple[str, str]:
        """Record a call-back request. ("saved", ref), ("slow", "") when it is still being
        written after BOOKING_TIMEOUT (it carries on and is logged when it lands), or
        ("failed", why). A refusal (bad phone number...) is raised as BookingRefused."""
        try:
            write: asyncio.Future[str] = asyncio.ensure_future(
                self.inventory.record_callback(name, phone, note, self.call.call_id))
        except Exception as e:
            return "failed", repr(e)
        try:
            ref = await wait_for_write(write, self.settings.booking_timeout)
        except equipment.BookingRefused:
            raise
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError) and not write.done():
                logger.warning(f"⚠️ Call-back request still being saved after "
                               f"{self.settings.booking_timeout:.0f}s (BOOKING_TIMEOUT); left running")
                write.add_done_callback(self._late_callback)
                return "slow", ""
            return "failed", repr(e)
        self.call.callback_refs.append(str(ref))
        return "saved", str(ref)

    def _late_callback(self, write: asyncio.Future[str]) -> None:
        if write.cancelled() or write.exception() is not None:
            logger.error(f"❌ Late call-back request did not complete: {write.exception() if not write.cancelled() else 'cancelled'!r}"[:300])
            return
        self.call.callback_refs.append(str(write.result()))
        logger.info(f"📝 Call-back request {write.result()} recorded late")

    @function_tool()
    async def take_message(
        self, context: RunContext, name: str, note: str, contact_number: str | None = None
    ) -> str:
        """Take a message so someone from the shop calls the caller back. Use it when you cannot
        check the inventory, cannot book, or the caller wants a person and no transfer is possible.

        Args:
            name: The caller's name.
            note: What they need, in a sentence (item, dates, question).
            contact_number: Best number to call back. Leave empty to use the number they are calling from.
        """
        phone = (contact_number or "").strip() or self.call.caller_number
        if not phone:
            raise ToolError(prompts.NEED_CONTACT_NUMBER)
        try:
            outcome, ref = await self._save_callback(name, note=note, phone=phone)
        except equipment.BookingRefused as refused:
            logger.info(f"🚫 Call-back request refused ({refused.code})")
            raise ToolError(refusal_text(refused)) from None
        if outcome == "slow":
            raise ToolError(prompts.MESSAGE_SLOW)
        if outcome == "failed":
            logger.error(f"❌ Could not record a call-back request: {ref}"[:300])
            raise ToolError(prompts.message_not_saved(bool(self.settings.transfer_to)))
        logger.info(f"📝 Call-back request {ref} recorded")
        return f"Message saved (reference {ref}). Tell the caller the shop will call them back."

    @function_tool()
    async def transfer_to_staff(self, context: RunContext) -> str:
        """Transfer the caller to a person at the shop. Use when the caller asks for a person, or
        when you cannot help them."""
        if not self.settings.transfer_to:
            logger.info("↪️ Transfer requested but TRANSFER_PHONE_NUMBER is not set: taking a message")
            return prompts.NO_TRANSFER_LINE
        # transfer once the agent's short "transferring you" line has played (not awaited here:
        # this tool's own speech waits on the tool)
        context.speech_handle.add_done_callback(
            lambda _: self.control.spawn(self.control.transfer_then_end(), "transfer")
        )
        return "Transferring now. Tell the caller, in one short sentence, that you're putting them through."

    @function_tool()
    async def end_call(self, context: RunContext) -> str:
        """End the call. Use only when the caller is done (they said goodbye or have no more
        questions). Say a short goodbye in the same reply."""
        logger.info("👋 Agent is ending the call")
        self.control.hang_up_after(context.speech_handle, "agent ended call")
        return prompts.END_CALL_SAY_GOODBYE


def refusal_text(refused: equipment.BookingRefused) -> str:
    text = f"Booking refused ({refused.code}): {refused.message}"
    if refused.alternatives:
        alts = "; ".join(describe_unit(u) for u in refused.alternatives[:3])
        text += f" Alternatives available: {alts}."
    elif refused.code in ("not_available", "just_taken"):
        text += " There are no alternatives available right now."
    advice = prompts.REFUSAL_ADVICE.get(refused.code)
    if advice:
        text += f" What to do: {advice}"
    return text


# --------------------------------------------------------------------------------------------
# the worker


def prewarm(proc: JobProcess) -> None:
    """Synchronous, models only, no network. VAD from the silero wheel (~0.1 s); the end-of-turn
    model's weights are compiled into livekit-local-inference (no hub download): init_eot() is a
    no-op when the forkserver already preloaded them, ~0.7 s otherwise."""
    started = time.perf_counter()
    proc.userdata["vad"] = silero.VAD.load()
    try:
        import livekit.local_inference as li

        li.init_eot()
        proc.userdata["turn_detector"] = inference.TurnDetector(version="v1-mini")
    except Exception as e:  # the call still works with VAD-only turn taking
        logger.warning(f"⚠️ Turn detector not loaded, using VAD end-of-turn: {e!r}")
    # the CA bundle too (~20 ms, no network): loaded per client it would sit in front of pickup
    import httpx2

    proc.userdata["tls"] = httpx2.create_ssl_context()
    logger.debug("prewarm done", extra={"elapsed": round(time.perf_counter() - started, 3)})


def openai_client(tls: Any = None) -> Any:
    """One OpenAI client for both LLMs and the TTS, on the TLS context loaded in prewarm. Left to
    themselves the plugins build a client each, and each loads the CA bundle again: ~60 ms in
    front of the greeting. Timeouts and pool limits are the plugins' own defaults."""
    import httpx2
    import openai as openai_sdk

    return openai_sdk.AsyncClient(
        max_retries=0,
        http_client=httpx2.AsyncClient(
            verify=tls if tls is not None else True,
            timeout=httpx2.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
            follow_redirects=True,
            limits=httpx2.Limits(max_connections=50, max_keepalive_connections=50,
                                 keepalive_expiry=120),
        ),
    )


def build_session(settings: Settings, userdata: Mapping[str, Any], control: CallControl) -> AgentSession:
    """The production pipeline. Plugins are built here, inside the call (a missing key fails
    this call, not the worker), and make no network request until used."""
    client = openai_client(userdata.get("tls"))
    fallback_llm = llm.FallbackAdapter(
        [openai.LLM(model=settings.llm_model, client=client),
         openai.LLM(model="gpt-4o-mini", client=client)]
    )
    deepgram_root = (os.environ.get("DEEPGRAM_BASE_URL") or "").strip().rstrip("/") or "https://api.deepgram.com"
    voices: list[tts.TTS] = [deepgram.TTS(base_url=f"{deepgram_root}/v1/speak"), openai.TTS(client=client)]
    if settings.tts_provider == "openai":
        voices.reverse()
    speech = tts.FallbackAdapter(voices)
    control.tts_engine = speech
    control.primary_voice = voices[0]
    detector = userdata.get("turn_detector")
    turn_handling: dict[str, Any] = {"turn_detection": detector if detector is not None else "vad"}
    return AgentSession(
        stt=deepgram.STT(model="nova-3", base_url=f"{deepgram_root}/v1/listen"),
        llm=fallback_llm,
        tts=speech,
        vad=userdata.get("vad"),
        turn_handling=turn_handling,  # type: ignore[arg-type]
        user_away_timeout=settings.user_away_seconds,
    )


async def identify_caller(ctx: JobContext, call: CallState, agent: RentalAgent) -> None:
    """Read the SIP attributes of the caller into the log context and the call state."""
    participant: rtc.RemoteParticipant | None = None
    for p in ctx.room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            participant = p
            break
    if participant is None:
        try:
            participant = await asyncio.wait_for(ctx.wait_for_participant(), 15.0)
        except asyncio.TimeoutError:
            logger.warning("⚠️ No caller joined the room within 15 s")
            return
    attrs = participant.attributes or {}
    call.caller_identity = participant.identity
    call.caller_number = attrs.get("sip.phoneNumber", "")
    call.call_id = attrs.get("sip.callID", "") or call.call_id
    call.dialled_number = attrs.get("sip.trunkPhoneNumber", "")
    ctx.log_context_fields = {
        **ctx.log_context_fields,
        "caller": _masked(call.caller_number),
        "sip_call_id": call.call_id,
        "dialled": call.dialled_number,
    }
    logger.info(f"👤 Caller {_masked(call.caller_number)} on {call.dialled_number or 'unknown line'} "
                f"(sip call {call.call_id or 'n/a'})")
    if call.caller_number:
        with contextlib.suppress(Exception):
            await agent.update_instructions(agent.build_instructions())


class GreetingAudio:
    """The greeting rendered once per machine (a WAV in STATE_DIR) and replayed to every later
    caller, so they hear it without waiting for a TTS first byte. The file name is a hash of the
    text and the voice: changing BUSINESS_NAME or TTS_PROVIDER renders a new one."""

    FRAME_MS = 20

    def __init__(self, state_dir: Path, text: str, engine: tts.TTS, voice: str) -> None:
        self.text = text
        self.engine = engine
        key = f"{text}|{voice}|{engine.sample_rate}|{engine.num_channels}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = Path(state_dir) / "greetings" / f"{digest}.wav"

    def frames(self) -> list[rtc.AudioFrame] | None:
        """The cached greeting as 20 ms frames, or None when not rendered yet (or unreadable)."""
        try:
            with wave.open(str(self.path), "rb") as w:
                rate, channels = w.getframerate(), w.getnchannels()
                pcm = w.readframes(w.getnframes())
        except (OSError, EOFError, wave.Error):
            return None
        step = rate * self.FRAME_MS // 1000 * channels * 2
        return [
            rtc.AudioFrame(pcm[i:i + step], rate, channels, len(pcm[i:i + step]) // (2 * channels))
            for i in range(0, len(pcm), step)
        ] or None

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


async def wait_for_write(write: asyncio.Future[Any], timeout: float) -> Any:
    """Waits up to `timeout` for a shielded write. A write that finished just as the timeout
    fired counts with its own outcome (result or error), not as "still running"."""
    try:
        return await asyncio.wait_for(asyncio.shield(write), timeout)
    except asyncio.TimeoutError:
        if write.done() and not write.cancelled():
            return write.result()
        raise


async def _replay(frames: list[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    for frame in frames:
        yield frame


async def start_call(session: AgentSession, agent: RentalAgent, settings: Settings,
                     room: rtc.Room | None = None,
                     greeting_audio: GreetingAudio | None = None) -> Any:
    """Start the session (bounded by SESSION_START_TIMEOUT) and speak the greeting at once: a
    static line, no LLM round trip, and no TTS either once `greeting_audio` has been rendered.
    Returns the greeting's SpeechHandle."""
    kwargs: dict[str, Any] = {"room": room} if room is not None else {}
    await asyncio.wait_for(session.start(agent=agent, **kwargs), settings.session_start_timeout)
    agent.call.session_started = True
    text = prompts.greeting(settings.business_name)
    frames = greeting_audio.frames() if greeting_audio is not None else None
    if frames:
        return session.say(text, audio=_replay(frames))
    if greeting_audio is not None:
        agent.control.spawn(greeting_audio.render(), "render_greeting")
    return session.say(text)


async def entrypoint(ctx: JobContext) -> None:
    await run_call(ctx, Settings.from_env())


@dataclass
class Pickup:
    """What `pick_up` leaves for the rest of the call."""

    inventory: Any
    first_snapshot: asyncio.Task[equipment.Snapshot]
    connected: bool


async def pick_up(ctx: Any, settings: Settings, control: CallControl,
                  make_inventory: Callable[[], Any] | None = None) -> Pickup:
    """Start loading the inventory, register the clean-up and the caller-left handler, then join
    the room (bounded by ROOM_CONNECT_TIMEOUT). The load runs concurrently with the connection:
    it never sits in front of pickup. On a failed connect: one ❌ line and the job ends."""
    call = control.call
    try:
        # looked up at call time (not bound as a default) so a patched module attribute counts
        inventory = (make_inventory or equipment.inventory_from_env)()
    except Exception as e:
        logger.error(f"❌ Inventory could not be set up: {e!r}"[:300])
        inventory = _UnavailableInventory(repr(e))
    first_snapshot = asyncio.create_task(inventory.snapshot(), name="first_snapshot")

    async def on_shutdown(reason: str) -> None:
        logger.info(f"🔄 CALL ENDED - Cleaning up (session_started={call.session_started})")
        control.cancel_all()
        if not first_snapshot.done():
            first_snapshot.cancel()
        # bookings kept in the outbox get another chance now; a dead room needs no wait
        try:
            await asyncio.wait_for(inventory.close(timeout=3.0 if call.session_started else 0.5), 5.0)
        except Exception as e:
            logger.warning(f"⚠️ Inventory not closed cleanly at call end: {e!r}"[:300])
        logger.info(call.summary(reason))
        logger.info("✅ Ready for next call")

    ctx.add_shutdown_callback(on_shutdown)
    # a caller lost to a trunk or media failure closes no session: the room event still fires
    ctx.room.on("participant_disconnected", control.on_participant_disconnected)

    try:
        await asyncio.wait_for(ctx.connect(), settings.room_connect_timeout)
    except Exception as e:
        why = _failure(e, settings.room_connect_timeout, "ROOM_CONNECT_TIMEOUT")
        logger.error(f"❌ Room connection {why}; ending the job")
        call.end_reason = "room connect failed"
        ctx.shutdown(reason="room connect failed")
        return Pickup(inventory, first_snapshot, connected=False)
    return Pickup(inventory, first_snapshot, connected=True)


def _failure(e: BaseException, timeout: float, setting: str) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return f"timed out after {timeout:g}s ({setting})"
    return f"failed: {e!r}"[:240]


async def run_call(ctx: Any, settings: Settings, *,
                   make_inventory: Callable[[], Any] | None = None,
                   make_session: Callable[..., AgentSession] | None = None) -> CallControl:
    """One call, from dispatch to "call in progress". Every way out ends the job."""
    call = CallState(room=ctx.room.name, call_id=ctx.room.name)
    control = CallControl(settings, call, job=ctx)
    logger.info("📞 INCOMING CALL - Entrypoint triggered")

    pickup = await pick_up(ctx, settings, control, make_inventory)
    if not pickup.connected:
        return control
    inventory = pickup.inventory

    try:
        session = (make_session or build_session)(settings, ctx.proc.userdata, control)
        agent = RentalAgent(settings=settings, inventory=inventory, call=call, control=control,
                            first_snapshot=pickup.first_snapshot)
        control.attach(session)
        greeting_audio = None
        state_dir = getattr(inventory, "state_dir", None)
        if control.primary_voice is not None and state_dir is not None:
            greeting_audio = GreetingAudio(state_dir, prompts.greeting(settings.business_name),
                                           control.primary_voice, settings.tts_provider)
        await start_call(session, agent, settings, room=ctx.room, greeting_audio=greeting_audio)
    except Exception as e:
        why = _failure(e, settings.session_start_timeout, "SESSION_START_TIMEOUT")
        logger.error(f"❌ Agent session start {why}; hanging up")
        call.end_reason = "session start failed"
        # the caller may be in the room: hang up rather than leave them in silence
        await control.hang_up("session start failed")
        return control

    logger.info("✅ Agent session started - call in progress")
    control.spawn(identify_caller(ctx, call, agent), "identify_caller")
    control.spawn(control.max_duration_timer(), "max_duration_timer")
    return control


def _make_server() -> AgentServer:
    kwargs: dict[str, Any] = {"setup_fnc": prewarm, "drain_timeout": int(_num("DRAIN_TIMEOUT"))}
    if (os.environ.get("PORT") or "").strip():
        kwargs["port"] = int(_num("PORT"))  # Railway's $PORT; unset: 8081 in start, random in dev
    idle = _num("NUM_IDLE_PROCESSES")
    if idle is not None:
        kwargs["num_idle_processes"] = int(idle)
    # The framework's default load is the machine's CPU (refuse above 70%): a busy moment on a
    # small Railway box would turn a caller away with nobody else to answer. Count calls instead.
    max_calls = int(_num("MAX_CONCURRENT_CALLS"))
    kwargs["load_fnc"] = lambda s: len(s.active_jobs) / max_calls
    kwargs["load_threshold"] = 1.0
    srv = AgentServer(**kwargs)
    srv.rtc_session(entrypoint, agent_name=Settings.from_env().agent_name)
    return srv


server = _make_server()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "check":
        import preflight

        return int(preflight.main(argv[2:]) or 0)
    if command in ("dev", "start", "console", "connect"):
        errors = config_errors(command)
        if errors:
            print(
                f"Configuration problem, the agent was not started ({command}):\n"
                + "\n".join(f"  - {e}" for e in errors)
                + "\nSet them in the environment, or copy .env.example to .env and fill them in.",
                file=sys.stderr,
            )
            return 2
    if command == "dev" and Settings.from_env().agent_name == DEFAULT_AGENT_NAME:
        print(f"⚠️  dev worker registering as {DEFAULT_AGENT_NAME!r}, the production agent name: in "
              "the production LiveKit project it takes real callers. Set LIVEKIT_AGENT_NAME to "
              f"another name (e.g. {DEFAULT_AGENT_NAME}-dev) and dispatch to that.", file=sys.stderr)
    try:
        cli.run_app(server)  # exits through SystemExit
    finally:
        if command == "start":
            settle_outbox_at_shutdown()
    return 0


def settle_outbox_at_shutdown(timeout: float = 10.0) -> int | None:
    """Last chance for bookings kept in the outbox while Sheets was down (railway.json's
    drainingSeconds leaves room for it). Bounded; never raises. Logs and returns how many
    entries were settled (None when it could not finish)."""

    async def settle() -> int:
        inventory = equipment.inventory_from_env()
        started = time.monotonic()
        settled = await asyncio.wait_for(inventory.replay_outbox(), timeout)
        # anything still pending (another process held the replay lock) gets the time left
        await inventory.close(timeout=max(timeout - (time.monotonic() - started), 0.0))
        return int(settled or 0)

    try:
        settled = asyncio.run(settle())
    except Exception as e:
        logger.warning(f"⚠️ Outbox not settled at shutdown: {e!r}"[:300])
        return None
    logger.info(f"📤 Outbox at worker exit: {settled} settled")
    return settled


if __name__ == "__main__":
    sys.exit(main(sys.argv))
