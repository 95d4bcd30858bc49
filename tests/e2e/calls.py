"""One call from start to end, by either caller, and what it proved.

`rtc_call` and `sip_call` place a call, wait for the greeting (or play a script), hang up, then
collect the outcome the tests assert (greeted, the job ended, the room deleted, no error in the
call's log) and the timings the tier records for the benchmark.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from livekit import api

from tests.e2e.rtc_caller import RtcCaller
from tests.e2e.sip_caller import SipCall
from tests.e2e.stack import Line, Stack, Worker
from tests.e2e.timeline import Heard

# Seconds of agent speech that count as "greeted". The greeting is ~4.5 s of espeak, ~2.8 s of it
# above the speech threshold when heard whole; under load (five calls on two cores, with the SFU
# and the SIP bridge on the same machine) it arrives chopped, and speech_heard_s records how much.
GREETING_SPEECH = 1.0
# Silence that ends what the agent was saying. Under load (five calls on two cores) the agent's
# audio arrives with holes of a second or more, so a shorter pause would hang up mid-greeting.
PAUSE_AFTER = 2.5
BURST_GAP = 0.6  # SIP calls are read after the fact: a pause this long separates two utterances


@dataclass
class Outcome:
    caller: str
    room: str = ""
    room_id: str = ""  # RM_...: how the worker's log names the call (it may redact the room name)
    answered_at: float | None = None  # monotonic: room joined (rtc) / 200 OK (sip)
    hung_up_at: float | None = None  # the caller hung up (rtc: left; sip: its BYE)
    shop_hung_up_at: float | None = None  # sip: the shop's BYE reached the caller
    greeting: tuple[float, float] | None = None  # first burst of agent speech (monotonic)
    greeted_speech: float = 0.0  # seconds of agent speech heard before hanging up
    summary: Line | None = None  # the worker's "📋 Call summary" line: the job ended
    room_deleted_after: float | None = None  # seconds after hang-up the room was gone
    error_lines: list[str] = field(default_factory=list)
    sip: dict[str, Any] = field(default_factory=dict)
    heard: Heard | None = None
    reached_worker: bool = False  # the worker logged something for this call's room
    min_speech: float = GREETING_SPEECH  # agent speech that counts as greeted
    replies: list[tuple[float, float]] = field(default_factory=list)  # agent bursts after the greeting

    @property
    def greeted(self) -> bool:
        return self.greeting is not None and self.greeted_speech >= self.min_speech

    @property
    def job_ended(self) -> bool:
        return self.summary is not None

    def describe(self) -> str:
        g = self.greeting
        ans = self.answered_at or 0.0
        return (f"{self.caller} call room={self.room!r} reached_worker={self.reached_worker} greeted_speech={self.greeted_speech:.2f}s "
                f"greeting={'none' if g is None else f'{g[0] - ans:.2f}..{g[1] - ans:.2f}s after answer'} "
                f"job_ended={self.job_ended} room_deleted_after={self.room_deleted_after} "
                f"errors={self.error_lines[:3]} sip={ {k: v for k, v in self.sip.items() if k != 'messages'} }")

    def timings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"room": self.room, "speech_heard_s": round(self.greeted_speech, 2)}
        if self.answered_at and self.greeting:
            out["answer_to_first_audio_s"] = self.greeting[0] - self.answered_at
        if self.hung_up_at and self.summary:
            out["hangup_to_job_end_s"] = self.summary.mono - self.hung_up_at
        if self.room_deleted_after is not None:
            out["hangup_to_room_gone_s"] = self.room_deleted_after
        if "invite_to_200_s" in self.sip:
            out["invite_to_200_s"] = self.sip["invite_to_200_s"]
        return out


async def wait_for_speech_end(heard: Heard, since: float, timeout: float,
                              pause: float = PAUSE_AFTER) -> tuple[float, float] | None:
    """The first burst of speech after `since` once it is followed by `pause` of silence (or
    the call stops delivering audio); None if no speech started within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bursts = heard.bursts(gap=pause, after=since)
        if bursts:
            start, end = bursts[0]
            if time.monotonic() - end >= pause:
                return start, end
        await asyncio.sleep(0.05)
    bursts = heard.bursts(gap=pause, after=since)
    return bursts[0] if bursts else None


async def room_gone(lk: api.LiveKitAPI, room: str, timeout: float) -> float | None:
    """When (monotonic) `room` was first seen no longer listed by the server, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        if not any(r.name == room for r in rooms.rooms):
            return time.monotonic()
        await asyncio.sleep(0.2)
    return None


# Logged at ERROR by the rtc SDK (Rust) in the agent's job when the room goes away at hang-up,
# whatever the agent does: not a failure of the call ("wrong state: closed": a renegotiation
# the closing room cut short; had it mattered, the caller would not have been greeted).
BENIGN_ERRORS = ("publisher data channel", "Called in wrong state: closed")


def call_errors(worker: Worker, room_id: str, start: int) -> list[str]:
    """ERROR lines of this call's job, less the rtc SDK's own noise at disconnect."""
    out = []
    for ln in worker.call_lines(room_id, start):
        if ln.json.get("level") not in ("ERROR", "CRITICAL"):
            continue
        msg = str(ln.json.get("message", ""))
        if ln.json.get("name") == "livekit" and any(b in msg for b in BENIGN_ERRORS):
            continue
        out.append(msg[:300])
    return out


async def finish(out: Outcome, stack: Stack, worker: Worker, mark: int, *, job_timeout: float = 40.0) -> Outcome:
    """After the caller hung up: the job's end in the worker's log, the room's deletion. A call
    that never reached the worker (refused, or never dispatched) has neither to wait for."""
    out.reached_worker = bool(worker.call_lines(out.room_id, mark))
    if not out.reached_worker:
        return out
    try:
        out.summary = await asyncio.to_thread(worker.wait_call_summary, out.room_id, job_timeout, mark)
    except TimeoutError:
        out.summary = None
    async with api.LiveKitAPI(stack.livekit_url.replace("ws", "http", 1), stack.api_key,
                              stack.api_secret) as lk:
        gone = await room_gone(lk, out.room, 30.0)
    ended = out.hung_up_at or out.shop_hung_up_at
    if gone is not None and ended is not None:
        out.room_deleted_after = gone - ended
    out.error_lines = call_errors(worker, out.room_id, mark)
    return out


# ------------------------------------------------------------------------------ rtc caller


async def rtc_call(stack: Stack, worker: Worker, *, phone: str, agent_name: str | None = None,
                   room: str | None = None, say: list[str] | None = None, dispatch: bool = True,
                   greeting_timeout: float = 30.0, reply_timeout: float = 20.0,
                   before_join: Any = None) -> Outcome:
    """An rtc caller: join, hear the greeting, say each line of `say` after the agent stopped
    talking (and hear each reply), hang up. `dispatch=False`: the room exists already, created
    with the agent's dispatch (the token then asks for none)."""
    room = room or f"call-_{phone}_{uuid.uuid4().hex[:8]}"
    mark = worker.mark()
    caller = RtcCaller(stack.livekit_url, stack.api_key, stack.api_secret, room,
                       agent_name or worker.agent_name, phone=phone, dispatch=dispatch)
    out = Outcome("rtc", room=room)
    await caller.join()
    out.room_id = await caller.room.sid
    out.answered_at = caller.connected_at
    out.heard = caller.heard
    try:
        if before_join is not None:  # e.g. start a worker while the caller waits
            await before_join()
        out.greeting = await wait_for_speech_end(caller.heard, caller.connected_at or 0.0, greeting_timeout)
        for line in say or []:
            said_at = await caller.say(line)
            reply = await wait_for_speech_end(caller.heard, said_at, reply_timeout)
            if reply is not None:
                out.replies.append(reply)
            caller_said = caller.said[-1]
            out.sip.setdefault("said", []).append({"text": line, "start": caller_said[0], "end": caller_said[1]})
    finally:
        out.greeted_speech = caller.heard.speech_seconds(after=out.answered_at or 0.0)
        await caller.hang_up()
        out.hung_up_at = caller.hung_up_at
    return await finish(out, stack, worker, mark)


# ------------------------------------------------------------------------------ sip caller


def room_of_participant(stack: Stack, identity: str) -> tuple[str, str]:
    """(name, RM_ id) of the room livekit-server put `identity` in, from its log, or ("", "")."""
    lines = stack.procs["livekit"].find(lambda ln: ln.json.get("msg") == "starting RTC session"
                                        and ln.json.get("participant") == identity)
    if not lines:
        return "", ""
    return str(lines[-1].json.get("room", "")), str(lines[-1].json.get("roomID", ""))


def refused_by_worker(stack: Stack, room: str) -> bool:
    """livekit-server asked the worker to take this room's job and was told it is not available."""
    return bool(room) and bool(stack.procs["livekit"].find(
        lambda ln: ln.json.get("room") == room and ln.json.get("msg") in (
            "no worker available to handle job", "failed to assign job to worker")))


async def sip_call(stack: Stack, worker: Worker, sniffer: Any, run_dir: Any, *, phone: str,
                   name: str, script: list[tuple[float, str]] | None = None,
                   hang_up_after: float = 12.0, ring_for: float = 40.0, dialled: str | None = None) -> Outcome:
    """A sipp call to the shop's number (or `dialled`): INVITE, the script (what the caller says,
    when, after the answer), BYE after `hang_up_after` seconds unless the shop hung up first;
    CANCEL if unanswered after `ring_for`."""
    from tests.e2e.conftest import SHOP_NUMBER

    mark = worker.mark()
    call = SipCall(stack.sip_port, run_dir, sniffer, caller=phone, dialled=dialled or SHOP_NUMBER, name=name,
                   script=list(script or []), hang_up_after=hang_up_after, ring_for=ring_for)
    out = Outcome("sip")
    rc = await call.run()
    out.heard = call.heard
    invite = call.when("sent", "INVITE")
    ok = call.when("received", "SIP/2.0 200")
    bye = call.when("sent", "BYE")
    shop_bye = call.when("received", "BYE")  # the shop hung up (the agent's goodbye, the overflow answer)
    out.sip = {"sipp_rc": rc, "errors": call.errors()[-600:] if rc else "", "answered": ok is not None,
               "invite_to_200_s": (ok - invite) if ok and invite else None,
               "bye_from_shop": shop_bye is not None,
               "said": [{"text": t, "start": s, "end": e} for s, e, t in call.said]}
    out.answered_at = call.mono(ok)
    out.hung_up_at = call.mono(bye)
    out.shop_hung_up_at = call.mono(shop_bye)
    # the dispatch rule names the room (call-_<caller>_<random>) and livekit-sip the caller
    # (sip_<number>): livekit-server's log has both, the worker may never have seen the call
    out.room, out.room_id = room_of_participant(stack, f"sip_{phone}")
    if out.answered_at is not None:
        bursts = call.heard.bursts(gap=BURST_GAP, after=out.answered_at)
        out.greeting = bursts[0] if bursts else None
        before = out.hung_up_at or out.shop_hung_up_at or float("inf")
        out.greeted_speech = call.heard.speech_seconds(after=out.answered_at, before=before)
        out.replies = bursts[1:]
    if not out.room_id:
        return out
    return await finish(out, stack, worker, mark)


def voice_to_voice(out: Outcome) -> list[float]:
    """For each thing the caller said (sip: seconds after the answer; rtc: monotonic), the time
    from the end of its speech to the agent's first audio after it (before the caller spoke
    again): our whole turn-taking overhead, endpointing included, with zero-latency stand-ins."""
    said = out.sip.get("said", [])
    base = (out.answered_at or 0.0) if out.caller == "sip" else 0.0
    heard = out.heard
    found = []
    for k, s in enumerate(said):
        end = base + s["end"]
        nxt = base + said[k + 1]["start"] if k + 1 < len(said) and "start" in said[k + 1] else float("inf")
        first = heard.first_speech(after=end) if heard is not None else None
        if first is not None and first < nxt:
            found.append(first - end)
    return found
