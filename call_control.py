"""The control of one call: what it knows (CallState), and every way it ends (hang-up, caller
gone, transfer, silence, time limit, a broken session), each ending the job.

Hanging up the phone means deleting the room (the SIP caller is disconnected); ending the job
alone would leave the caller in a silent room. Every end goes through `_end`, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine

from livekit import rtc
from livekit.agents import AgentSession, JobContext
from livekit.agents.voice.events import CloseEvent, CloseReason

import phone
import prompts
from settings import Settings

logger = logging.getLogger("rental-agent")
Speaker = Callable[[str], Awaitable[bool]]


def sip_caller(room: rtc.Room) -> rtc.RemoteParticipant | None:
    for p in room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            return p
    return None


@dataclass
class CallState:
    """What this job knows about its call; read by the tools and by the summary line."""

    call_id: str = ""
    started_at: float = field(default_factory=time.monotonic)
    caller_number: str = ""  # full number: tools only, never logged
    caller_identity: str = ""  # the SIP participant, for transfers
    dialled_number: str = ""
    session_started: bool = False
    end_reason: str = ""
    user_turns: int = 0
    agent_turns: int = 0
    booking_refs: list[str] = field(default_factory=list)
    verified_refs: set[str] = field(default_factory=set)  # bookings found as the caller's: they may change them
    callback_refs: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    usage: Any = None
    transferred: bool = False

    def record_item(self, item: Any) -> None:
        """A conversation item: counts the turns and keeps each answer's end-to-end latency."""
        role = getattr(item, "role", None)
        if role == "user":
            self.user_turns += 1
        elif role == "assistant":
            self.agent_turns += 1
            metrics = getattr(item, "metrics", None) or {}
            e2e = metrics.get("e2e_latency") if isinstance(metrics, dict) else None
            if isinstance(e2e, (int, float)):
                self.latencies.append(float(e2e))

    def summary(self, reason: str) -> str:
        duration = time.monotonic() - self.started_at
        median = f"{statistics.median(self.latencies):.2f}s" if self.latencies else "n/a"
        return (
            f"📋 Call summary: duration={duration:.0f}s reason={self.end_reason or reason} "
            f"caller={phone.mask(self.caller_number)} turns={self.user_turns}/{self.agent_turns} "
            f"bookings={','.join(self.booking_refs) or '-'} "
            f"callbacks={','.join(self.callback_refs) or '-'} "
            f"transferred={'yes' if self.transferred else 'no'} "
            f"median_latency={median} usage={usage_text(self.usage)}"
        )


def usage_text(usage: Any) -> str:
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


class CallControl:
    def __init__(self, settings: Settings, call: CallState, job: JobContext) -> None:
        self.settings = settings
        self.call = call
        self.job = job
        self.session: AgentSession | None = None
        self._speak_apology: Speaker | None = None
        self._ending = False
        self._transferring = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._away_task: asyncio.Task[Any] | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
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

    # -- ending the call -------------------------------------------------------------------
    def _claim_end(self, reason: str) -> bool:
        """True for the first end of the call (the others are its echoes)."""
        if self._ending:
            return False
        self._ending = True
        self.call.end_reason = self.call.end_reason or reason
        return True

    async def hang_up(self, reason: str) -> None:
        """Hang up the phone: delete the room (disconnects the SIP caller), then end the job."""
        if not self._claim_end(reason):
            return
        logger.info(f"📴 Hanging up ({reason})")
        try:
            await asyncio.wait_for(asyncio.ensure_future(self.job.delete_room()), 5.0)
        except Exception as e:
            logger.warning(f"⚠️ Could not delete the room while hanging up: {e!r}")
        self.job.shutdown(reason=reason)

    def end_job(self, reason: str) -> None:
        """End the job without deleting the room (the caller is already gone)."""
        if self._claim_end(reason):
            self.job.shutdown(reason=reason)

    def caller_hung_up(self, reason: str) -> None:
        """The caller is gone (whichever of the session close or the room event says so first)."""
        if self._ending or self._transferring:
            return  # we are hanging up or transferring: the caller leaving is expected
        logger.info(f"📴 Caller hung up ({reason})")
        self.end_job(reason)

    def _is_caller(self, participant: rtc.RemoteParticipant) -> bool:
        if self.call.caller_identity:
            return participant.identity == self.call.caller_identity
        return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        """Room event. RoomIO closes the session only for CLIENT_INITIATED, ROOM_DELETED and
        USER_REJECTED; a caller lost to a trunk or media failure would otherwise leave the job
        running until MAX_CALL_SECONDS."""
        if not self._is_caller(participant):
            return
        code = participant.disconnect_reason
        try:
            name = rtc.DisconnectReason.Name(code or rtc.DisconnectReason.UNKNOWN_REASON)
        except (ValueError, TypeError):
            name = str(code)
        self.caller_hung_up(f"caller left ({name})")

    def hang_up_after(self, handle: Any, reason: str) -> None:
        """Hang up once `handle` (a SpeechHandle: the goodbye) has played out. Not awaited by the
        tool that asks: the tool's own speech waits on the tool."""
        handle.add_done_callback(lambda _: self.spawn(self.hang_up(reason), "hang_up"))

    async def say_then_hang_up(self, text: str, reason: str) -> None:
        if self._ending:
            return
        try:
            assert self.session is not None
            handle = self.session.say(text, allow_interruptions=False)
            await asyncio.wait_for(handle.wait_for_playout(), 20.0)
        except Exception as e:
            logger.warning(f"⚠️ Could not say goodbye before hanging up: {e!r}")
        await self.hang_up(reason)

    # -- transfer --------------------------------------------------------------------------
    def _caller_identity(self) -> str:
        if self.call.caller_identity:
            return self.call.caller_identity
        with contextlib.suppress(Exception):
            found = sip_caller(self.job.room)
            return found.identity if found else ""
        return ""

    async def transfer(self) -> bool:
        """Cold-transfer the caller to TRANSFER_PHONE_NUMBER. True when the transfer went through."""
        identity = self._caller_identity()
        if not self.settings.transfer_to or not identity:
            logger.warning("⚠️ Transfer not possible (no number configured or no SIP caller)")
            return False
        logger.info(f"↪️ Transferring caller to {phone.mask(self.settings.transfer_to)}")
        self._transferring = True  # the caller leaving the room now is the transfer working
        try:
            await asyncio.wait_for(asyncio.ensure_future(
                self.job.transfer_sip_participant(identity, self.settings.transfer_to)), 30.0)
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
    def attach(self, session: AgentSession, speak_apology: Speaker | None = None) -> None:
        """Follow the session's events. `speak_apology` plays a line once the session is gone
        (voice.speak_into_room in a call)."""
        self.session = session
        self._speak_apology = speak_apology
        session.on("close", self.on_session_close)
        session.on("conversation_item_added", lambda ev: self.call.record_item(ev.item))
        session.on("session_usage_updated", self._on_usage)
        session.on("user_state_changed", self._on_user_state)
        session.on("error", self._on_error)

    def _on_usage(self, ev: Any) -> None:
        self.call.usage = ev.usage

    def _on_error(self, ev: Any) -> None:
        err = ev.error
        recoverable = getattr(err, "recoverable", True)
        # one line per provider error: a 429 from the LLM otherwise looks like a silent agent
        (logger.warning if recoverable else logger.error)(
            f"{'⚠️' if recoverable else '❌'} {type(ev.source).__name__} error "
            f"({'recoverable' if recoverable else 'unrecoverable'}): {getattr(err, 'error', err)!r}"[:300])

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
            await asyncio.wait_for(session.say(prompts.STILL_THERE).wait_for_playout(), 10.0)
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

    def on_session_close(self, ev: CloseEvent) -> None:
        if self._ending:
            return
        if ev.reason == CloseReason.ERROR:
            logger.error(f"❌ Session closed with an error: {ev.error!r}"[:300])
            self.call.end_reason = "session error"
            self.spawn(self._recover_from_error(), "recover_from_error")
        elif ev.reason == CloseReason.PARTICIPANT_DISCONNECTED:
            self.caller_hung_up("caller hung up")
        else:
            self.end_job(f"session closed: {getattr(ev.reason, 'value', ev.reason)}")

    async def _recover_from_error(self) -> None:
        """The session is gone: the apology straight into the room, then transfer or hang up,
        never silence."""
        can_transfer = bool(self.settings.transfer_to and self._caller_identity())
        text = prompts.APOLOGY_TRANSFER if can_transfer else prompts.APOLOGY_HANGUP
        if self._speak_apology is not None:
            try:
                await asyncio.wait_for(self._speak_apology(text), 12.0)
            except Exception as e:
                logger.warning(f"⚠️ Could not play the apology: {e!r}"[:200])
        if can_transfer and await self.transfer():
            await self.hang_up("session error, transferred")
        else:
            await self.hang_up("session error")
