"""The phone agent of the equipment-rental shop: one LiveKit Agents worker, one job per call.

    python agent.py start           production worker (JSON logs, health server on $PORT, drains on SIGTERM)
    python agent.py dev             development worker (use another LIVEKIT_AGENT_NAME than production)
    python agent.py console         talk to the agent in the terminal (no LiveKit server needed)
    python agent.py console --text  type to it instead (no microphone, no PortAudio, no Deepgram key)
    python agent.py check           preflight checks (preflight.py)
    python agent.py inventory ...   the inventory from a shell: list, quote, book, cancel, replay (inventory_cli.py)

Configuration comes from the environment (and `.env`, loaded before anything else when run as a
script). Bad configuration is named in one message and exits with status 2 before the worker
starts; a worker that cannot register with LiveKit exits with status 3 (worker.py): the
framework itself would exit 0 in both cases.

The life of a call (`run_call`): the inventory snapshot starts loading at once, concurrently with
the room connection; the session starts; the greeting is spoken without waiting on the LLM; any
end (caller hang-up, agent hang-up, error, time limit, silence) ends the job (call_control.py),
and the shutdown callback logs one summary line per call.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before livekit is imported: livekit-agents reads NUM_CPUS when it is imported, so `.env`
    # must be loaded and its empty framework variables dropped ("empty means the default") first.
    # Only when run as a script: importing agent (the tests, job processes as __mp_main__) must
    # not load a developer's .env.
    from dotenv import load_dotenv

    import settings as _settings

    load_dotenv()
    _settings.drop_empty_framework_vars()

import asyncio
import functools
import logging
import sys
from pathlib import Path
from typing import Callable

from dotenv import load_dotenv
from livekit.agents import AgentSession, JobContext, JobProcess
from livekit.agents.voice import SpeechHandle

import equipment
import logs
import prompts
import settings as config
import voice
import worker
from booking_desk import BookingDesk
from call_control import CallControl, CallState, sip_caller
from rental_agent import RentalAgent
from phone import mask
from settings import Settings

logger = logging.getLogger("rental-agent")


# --------------------------------------------------------------------------------------------
# one call


async def identify_caller(ctx: JobContext, call: CallState, agent: RentalAgent) -> None:
    """The caller's SIP attributes into the call state and the log context (masked)."""
    if voice.in_console():  # a mock room, no caller to identify
        return
    participant = sip_caller(ctx.room)
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
    ctx.log_context_fields = {**ctx.log_context_fields, "caller": mask(call.caller_number),
                              "sip_call_id": call.call_id, "dialled": call.dialled_number}
    logger.info(f"👤 Caller {mask(call.caller_number)} on {call.dialled_number or 'unknown line'} "
                f"(sip call {call.call_id or 'n/a'})")
    if call.caller_number:
        await agent.update_instructions(agent.build_instructions())


async def start_call(session: AgentSession, agent: RentalAgent, *, room: object | None = None,
                     greeting_audio: voice.GreetingAudio | None = None) -> SpeechHandle:
    """Start the session (bounded by SESSION_START_TIMEOUT) and speak the greeting at once."""
    await asyncio.wait_for(session.start(agent=agent, **({"room": room} if room is not None else {})),
                           agent.settings.session_start_timeout)
    agent.call.session_started = True
    return voice.say_greeting(session, prompts.greeting(agent.settings.business_name), greeting_audio,
                              agent.control.spawn)


def prewarm(proc: JobProcess) -> None:
    """Each call's process, before its call: the models (voice.prewarm), then the inventory with
    the stored snapshot parsed, and parsed again while the process waits if a refresh replaces it,
    so that at pickup it reads only what changed since (BENCHMARKS.md, "Shared state"). Blocking,
    bounded by DATABASE_TIMEOUT; nothing here fails the process."""
    settings = Settings.lenient()
    voice.prewarm(proc, settings)
    try:
        inventory = equipment.inventory_from_settings(settings.inventory)
    except Exception as e:  # noqa: BLE001 - the call builds it again, and says what is wrong
        logger.debug(f"inventory not prepared ahead of the call: {e!r}"[:300])
        return
    inventory.warm()
    proc.userdata["inventory"] = inventory
    proc.userdata["keep_warm"] = inventory.keep_warm()


def _inventory(ctx: JobContext, settings: Settings) -> equipment.Inventory:
    """The one prepared in prewarm when it is there (a process serves one call), else a new one."""
    if (keeping := ctx.proc.userdata.get("keep_warm")) is not None:
        keeping.set()  # the call reads for itself from now on
    prepared = ctx.proc.userdata.get("inventory")
    return prepared or equipment.inventory_from_settings(settings.inventory)


def _failure(e: BaseException, timeout: float, setting: str) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return f"timed out after {timeout:g}s ({setting})"
    return f"failed: {e!r}"[:240]


async def run_call(ctx: JobContext, settings: Settings, *,
                   make_inventory: Callable[[], equipment.Inventory] | None = None,
                   make_pipeline: Callable[..., voice.Pipeline] = voice.build_pipeline) -> CallControl:
    """One call, from dispatch to "call in progress". Every way out ends the job."""
    call = CallState(call_id=ctx.room.name)
    control = CallControl(settings, call, ctx)
    logger.info("📞 INCOMING CALL - Entrypoint triggered")
    try:
        inventory = (make_inventory or functools.partial(_inventory, ctx, settings))()
    except Exception as e:
        logger.error(f"❌ Inventory could not be set up: {e!r}"[:300])
        inventory = equipment.UnavailableInventory(repr(e))
    # the load runs concurrently with the connection: it never sits in front of pickup
    first_snapshot = asyncio.create_task(inventory.snapshot(), name="first_snapshot")
    # a failed load is reported where it is used (RentalAgent.snapshot), not again at garbage collection
    first_snapshot.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def on_shutdown(reason: str) -> None:
        logger.info(f"🔄 CALL ENDED - Cleaning up (session_started={call.session_started})")
        control.cancel_all()
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
        logger.error(f"❌ Room connection {_failure(e, settings.room_connect_timeout, 'ROOM_CONNECT_TIMEOUT')}; "
                     "ending the job")
        call.end_reason = "room connect failed"
        ctx.shutdown(reason="room connect failed")
        return control

    if is_overflow_call(ctx):
        await answer_overflow(ctx, settings, control, first_snapshot)
        return control

    try:
        pipeline = make_pipeline(settings, ctx.proc.userdata)
        # the inventory's names as STT keyterms: loaded by now, mostly (no wait for it)
        voice.expect_words(pipeline.session, voice.inventory_keyterms(_result(first_snapshot)))
        desk = BookingDesk(inventory, call, timeout=settings.booking_timeout,
                           max_bookings=settings.max_bookings_per_call, spawn=control.spawn)
        agent = RentalAgent(settings=settings, inventory=inventory, call=call, desk=desk, control=control,
                            first_snapshot=first_snapshot)
        greeting = None
        if pipeline.tts is not None:  # a spoken call (not `console --text`)
            control.attach(pipeline.session, functools.partial(voice.speak_into_room, ctx, pipeline.tts))
            greeting = voice.GreetingAudio(settings.inventory.state_dir, prompts.greeting(settings.business_name),
                                           pipeline.primary_voice, settings.tts_provider)
        else:
            control.attach(pipeline.session)
        await start_call(pipeline.session, agent, room=ctx.room, greeting_audio=greeting)
    except Exception as e:
        why = _failure(e, settings.session_start_timeout, "SESSION_START_TIMEOUT")
        logger.error(f"❌ Agent session start {why}; hanging up")
        call.end_reason = "session start failed"
        await control.hang_up("session start failed")  # the caller may be in the room: no silence
        return control

    logger.info("✅ Agent session started - call in progress")
    control.spawn(identify_caller(ctx, call, agent), "identify_caller")
    control.spawn(control.max_duration_timer(), "max_duration_timer")
    if pipeline.primary_voice is not None:  # the overflow answer, rendered before it is ever needed
        control.spawn(voice.prerender(overflow_lines(settings, pipeline.primary_voice), delay=5.0),
                      "prerender_overflow")
    return control


def _result(task: asyncio.Task) -> object | None:
    """A finished task's result; None while it runs, or if it failed."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


# --------------------------------------------------------------------------------------------
# the overflow answer: a call taken past MAX_CONCURRENT_CALLS (worker.py)

OVERFLOW_HOURS_WAIT = 1.5  # seconds the overflow answer waits for the shop's hours (the inventory)


def is_overflow_call(ctx: JobContext) -> bool:
    """The worker accepted this call past MAX_CONCURRENT_CALLS: it set the attribute on our
    participant (read once connected)."""
    try:
        attrs = ctx.room.local_participant.attributes or {}
    except Exception:  # noqa: BLE001 - a mock room (console) has none
        return False
    return attrs.get(worker.OVERFLOW_ATTRIBUTE) == "1"


def overflow_lines(settings: Settings, engine: voice.tts.TTS) -> list[voice.GreetingAudio]:
    """The overflow answer's three lines, cached in STATE_DIR: busy, then transfer or call back."""
    return [voice.CachedLine(settings.inventory.state_dir, text, engine, settings.tts_provider)
            for text in (prompts.overflow_busy(settings.business_name), prompts.OVERFLOW_TRANSFER,
                         prompts.OVERFLOW_CALL_BACK)]


async def shop_open(settings: Settings, first_snapshot: asyncio.Task) -> bool:
    """Whether the shop is open now, by its hours in the inventory (bounded: unknown is closed)."""
    try:
        snap = await asyncio.wait_for(asyncio.shield(first_snapshot), OVERFLOW_HOURS_WAIT)
        return bool(snap.policy.is_open(settings.now()))
    except Exception as e:  # noqa: BLE001 - no hours, no transfer: the caller is asked to call back
        logger.warning(f"⚠️ Shop hours unknown for the overflow answer: {e!r}"[:200])
        return False


async def answer_overflow(ctx: JobContext, settings: Settings, control: CallControl,
                          first_snapshot: asyncio.Task, *, engine: voice.tts.TTS | None = None,
                          player: voice.LinePlayer | None = None) -> None:
    """Every line is taken: the busy line at once (pre-rendered), then a transfer to staff when
    TRANSFER_PHONE_NUMBER is set and the shop is open, else "please call back"; then hang up.
    No AgentSession (no STT, no LLM): a few seconds of audio, never silence or endless ringing.
    `engine` (the voice lines are rendered with when not cached) and `player` are for tests."""
    call = control.call
    call.end_reason = "overflow"
    logger.warning("📵 Overflow call: every line is taken (MAX_CONCURRENT_CALLS); playing the overflow answer")
    deciding = asyncio.ensure_future(shop_open(settings, first_snapshot)) if settings.transfer_to else None
    try:
        if engine is None:
            client = voice.openai_client(ctx.proc.userdata.get("tls"), settings.openai_url)
            engine = voice.voices(settings, client)[0]
        busy, transfer_line, call_back = overflow_lines(settings, engine)
        player = player or voice.LinePlayer(ctx, "overflow")
        await asyncio.wait_for(player.play(busy), 30.0)
        call.session_started = True  # the caller heard us: the summary says so
        if deciding is not None and await deciding:
            await asyncio.wait_for(player.play(transfer_line), 30.0)
            if await control.transfer():
                call.end_reason = "overflow, transferred"
                await control.hang_up("overflow, transferred")
                return
        await asyncio.wait_for(player.play(call_back), 30.0)
    except Exception as e:  # noqa: BLE001 - whatever failed, the caller is not left on the line
        logger.error(f"❌ Overflow answer failed: {e!r}"[:300])
    finally:
        if deciding is not None:
            deciding.cancel()
    await control.hang_up("overflow")


async def entrypoint(ctx: JobContext) -> None:
    # console runs the call in the worker's own process, where the job context has just added its
    # log-fields filter: the redaction must come after it (in a job process it is the first)
    logs.install()
    text_only = voice.text_console()
    await run_call(ctx, Settings.lenient(),
                   make_pipeline=voice.build_text_pipeline if text_only else voice.build_pipeline)


def main(argv: list[str], entrypoint: Callable[[JobContext], object] = entrypoint) -> int:
    """`python agent.py ...`; `entrypoint` is what each call runs (the real one but in tests).
    Returns the exit status: 2 for bad configuration, 3 when LiveKit could not be reached in
    time, 1 when the framework gave up, else the command's own."""
    load_dotenv()  # already done when run as a script; for callers such as tests/fakes/*_agent.py
    config.drop_empty_framework_vars()
    command = argv[1] if len(argv) > 1 else ""
    helping = bool({"--help", "-h"} & set(argv[2:]))
    text_console = command == "console" and "--text" in argv[2:]
    if command in ("dev", "start", "console", "connect") and not helping:
        errors = config.config_errors(config.TEXT_CONSOLE if text_console else command)
        if errors:
            print(f"Configuration problem, the agent was not started ({command}):\n"
                  + "\n".join(f"  - {e}" for e in errors)
                  + "\nSet them in the environment, or copy .env.example to .env and fill them in.",
                  file=sys.stderr)
            return 2
    if command == "console" and not helping and not voice.console_audio_available(text_console):
        return 2
    settings = Settings.lenient()
    if command == "dev" and not helping and settings.agent_name == config.DEFAULT_AGENT_NAME:
        print(f"⚠️  dev worker registering as {config.DEFAULT_AGENT_NAME!r}, the production agent name: in "
              "the production LiveKit project it takes real callers. Set LIVEKIT_AGENT_NAME to "
              f"another name (e.g. {config.DEFAULT_AGENT_NAME}-dev) and dispatch to that.", file=sys.stderr)
    server = worker.make_server(settings, entrypoint, prewarm)
    import commands  # here, not at the top: a call's process never runs the command line

    try:
        commands.cli_app(server)(args=argv[1:], prog_name=Path(argv[0]).name if argv else "agent.py")
        code = 0
    except SystemExit as e:  # typer ends every command with sys.exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if command == "start" and not helping:
            worker.settle_outbox_at_shutdown()
    return server.exit_code(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
