"""The phone agent of the equipment-rental shop: one LiveKit Agents worker, one job per call.

    python agent.py start           production worker (JSON logs, health server on $PORT, drains on SIGTERM)
    python agent.py dev             development worker (use another LIVEKIT_AGENT_NAME than production)
    python agent.py console         talk to the agent in the terminal (no LiveKit server needed)
    python agent.py console --text  type to it instead (no microphone, no PortAudio, no Deepgram key)
    python agent.py check           preflight checks (preflight.py)

Configuration comes from the environment (and `.env`, loaded before anything else when run as a
script). Bad configuration is named in one message and exits with status 2 before the worker
starts; a worker that cannot register with LiveKit exits with status 3 (worker_health.py): the
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
import time
from pathlib import Path
from typing import Callable

import typer
from dotenv import load_dotenv
from livekit.agents import Agent, AgentSession, JobContext, RunContext, ToolError, function_tool
from livekit.agents.voice import SpeechHandle

import equipment
import logs
import prompts
import settings as config
import voice
from booking_desk import Booked, BookingDesk, NotBooked, Refused, Saved, SavingSlowly, StillWriting
from call_control import CallControl, CallState, sip_caller
from phone import mask
from settings import Settings
from worker_health import TruthfulServer

logger = logging.getLogger("rental-agent")


class RentalAgent(Agent):
    """The shop's phone agent. Tool docstrings are the model's contract; the rules live in the
    tools and the inventory, so a caller talking the model round changes nothing."""

    def __init__(self, *, settings: Settings, inventory: equipment.Inventory, call: CallState, desk: BookingDesk,
                 control: CallControl, first_snapshot: asyncio.Task[equipment.Snapshot] | None = None) -> None:
        self.settings = settings
        self.inventory = inventory
        self.call = call
        self.desk = desk
        self.control = control
        self._first_snapshot = first_snapshot
        super().__init__(instructions=self.build_instructions())

    def build_instructions(self) -> str:
        hint = self.call.caller_number[-4:] if len(self.call.caller_number) >= 4 else None
        return prompts.system_prompt(self.settings.business_name, self.settings.today(), hint)

    async def snapshot(self) -> equipment.Snapshot:
        """The inventory as this call sees it: the first use awaits the load started at pickup;
        later ones ask the inventory again (it caches, and sees our own bookings)."""
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

    def _contact(self, contact_number: str | None) -> str:
        number = (contact_number or "").strip() or self.call.caller_number
        if not number:
            raise ToolError(prompts.NEED_CONTACT_NUMBER)
        return number

    @function_tool()
    async def look_up_equipment(self, context: RunContext, category: str | None = None,
                                keyword: str | None = None) -> str:
        """Find equipment the shop has available to rent, with day and week rates.

        Use this whenever the caller asks what you have, whether something is available, or
        what it costs. Never answer those from memory.

        Args:
            category: A category to filter by, such as "excavator" or "generator". Optional.
            keyword: A word to search names and descriptions for, such as "mini" or "3000 watt". Optional.
        """
        snap = await self._known_snapshot()
        category, keyword = (category or "").strip() or None, (keyword or "").strip() or None
        if available := snap.search(category=category, keyword=keyword, available_only=True):
            return prompts.available_units(available)
        if matching := snap.search(category=category, keyword=keyword, available_only=False):
            return prompts.nothing_available(matching, snap.categories())
        return prompts.no_match(snap.categories())

    @function_tool()
    async def get_equipment_details(self, context: RunContext, equipment_id: str) -> str:
        """Details of one item: name, category, rates, description and whether it is available.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
        """
        snap = await self._known_snapshot()
        unit = snap.find(equipment_id.strip())
        if unit is None:
            raise ToolError(prompts.unknown_unit(equipment_id))
        return prompts.unit_details(unit)

    @function_tool()
    async def book_equipment(self, context: RunContext, equipment_id: str, renter_name: str, start_date: str,
                             end_date: str, contact_number: str | None = None) -> str:
        """Book one item for the caller. Call this ONLY after you have read the booking back to
        the caller (item, dates, name, contact number) and they said yes.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
            renter_name: The caller's full name.
            start_date: Pick-up date, YYYY-MM-DD.
            end_date: Return date, YYYY-MM-DD.
            contact_number: Best phone number to reach the caller. Leave empty to use the number they are calling from.
        """
        number = self._contact(contact_number)
        if self.desk.at_cap():  # the tools' rule, not the prompt's
            logger.warning(f"🚫 Booking of unit {equipment_id} refused: MAX_BOOKINGS_PER_CALL reached")
            raise ToolError(prompts.booking_limit(self.settings.max_bookings_per_call))
        # the write must not be cut short by a barge-in; a turn already interrupted books nothing
        try:
            context.disallow_interruptions()
        except RuntimeError:
            logger.info(f"🚫 Booking of unit {equipment_id} not made: the caller interrupted first")
            raise ToolError(prompts.BOOKING_INTERRUPTED) from None
        try:
            request = equipment.parse_booking(equipment_id, renter_name, number, start_date, end_date,
                                              self.call.call_id, today=self.settings.today())
        except equipment.BookingRefused as refused:
            raise ToolError(prompts.refusal(refused)) from None
        match await self.desk.book(request):
            case Booked(booking):
                return prompts.booked(booking)
            case Refused(refused):
                raise ToolError(prompts.refusal(refused))
            case StillWriting():
                raise ToolError(prompts.BOOKING_TIMED_OUT)
            case NotBooked(Saved(ref)):
                raise ToolError(prompts.booking_failed_recorded(ref))
            case NotBooked(SavingSlowly()):
                raise ToolError(prompts.BOOKING_FAILED_RECORD_SLOW)
            case _:
                raise ToolError(prompts.booking_failed_not_recorded(bool(self.settings.transfer_to)))

    @function_tool()
    async def take_message(self, context: RunContext, name: str, note: str,
                           contact_number: str | None = None) -> str:
        """Take a message so someone from the shop calls the caller back. Use it when you cannot
        check the inventory, cannot book, or the caller wants a person and no transfer is possible.

        Args:
            name: The caller's name.
            note: What they need, in a sentence (item, dates, question).
            contact_number: Best number to call back. Leave empty to use the number they are calling from.
        """
        try:
            request = equipment.parse_callback(name, self._contact(contact_number), note, self.call.call_id)
            outcome = await self.desk.take_message(request)
        except equipment.BookingRefused as refused:
            logger.info(f"🚫 Call-back request refused ({refused.code})")
            raise ToolError(prompts.refusal(refused)) from None
        match outcome:
            case Saved(ref):
                logger.info(f"📝 Call-back request {ref} recorded")
                return prompts.message_saved(ref)
            case SavingSlowly():
                raise ToolError(prompts.MESSAGE_SLOW)
            case _:
                logger.error(f"❌ Could not record a call-back request: {outcome}"[:300])
                raise ToolError(prompts.message_not_saved(bool(self.settings.transfer_to)))

    @function_tool()
    async def transfer_to_staff(self, context: RunContext) -> str:
        """Transfer the caller to a person at the shop. Use when the caller asks for a person, or
        when you cannot help them."""
        if not self.settings.transfer_to:
            logger.info("↪️ Transfer requested but TRANSFER_PHONE_NUMBER is not set: taking a message")
            return prompts.NO_TRANSFER_LINE
        # once the agent's short "transferring you" line has played
        context.speech_handle.add_done_callback(
            lambda _: self.control.spawn(self.control.transfer_then_end(), "transfer"))
        return prompts.TRANSFERRING

    @function_tool()
    async def end_call(self, context: RunContext) -> str:
        """End the call. Use only when the caller is done (they said goodbye or have no more
        questions). Say a short goodbye in the same reply."""
        logger.info("👋 Agent is ending the call")
        self.control.hang_up_after(context.speech_handle, "agent ended call")
        return prompts.END_CALL_SAY_GOODBYE


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
        inventory = (make_inventory or functools.partial(equipment.inventory_from_settings, settings.inventory))()
    except Exception as e:
        logger.error(f"❌ Inventory could not be set up: {e!r}"[:300])
        inventory = equipment.UnavailableInventory(repr(e))
    # the load runs concurrently with the connection: it never sits in front of pickup
    first_snapshot = asyncio.create_task(inventory.snapshot(), name="first_snapshot")

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

    try:
        pipeline = make_pipeline(settings, ctx.proc.userdata)
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
    return control


async def entrypoint(ctx: JobContext) -> None:
    # console runs the call in the worker's own process, where the job context has just added its
    # log-fields filter: the redaction must come after it (in a job process it is the first)
    logs.install()
    text_only = voice.text_console()
    await run_call(ctx, Settings.lenient(),
                   make_pipeline=voice.build_text_pipeline if text_only else voice.build_pipeline)


# --------------------------------------------------------------------------------------------
# the worker


def make_server(settings: Settings, entrypoint: Callable[[JobContext], object] = entrypoint) -> TruthfulServer:
    # The framework's default load is the machine's CPU (refuse above 70%): a busy moment on a
    # small Railway box would turn a caller away with nobody else to answer. Count calls instead.
    max_calls = settings.max_concurrent_calls
    server = TruthfulServer(setup_fnc=voice.prewarm, drain_timeout=settings.drain_timeout,
                            load_fnc=lambda s: len(s.active_jobs) / max_calls, load_threshold=1.0,
                            register_timeout=settings.register_timeout,
                            disconnect_timeout=settings.disconnect_timeout,
                            startup_line=settings.describe(config.version()),
                            startup_warnings=config.deployment_warnings(),
                            **({"port": settings.port} if settings.port else {}),
                            **({"num_idle_processes": settings.num_idle_processes}
                               if settings.num_idle_processes is not None else {}))
    server.rtc_session(entrypoint, agent_name=settings.agent_name)
    return server


def cli_app(server: TruthfulServer) -> typer.Typer:
    """The framework's own command line (what `cli.run_app` runs: `_legacy._build_cli`, pinned
    1.8.9) with `check` and `inventory` added, so `python agent.py --help` lists every command."""
    from livekit.agents.cli import _legacy

    app = _legacy._build_cli(server)

    # preflight parses its own options (--timeout, --help)
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                   "help_option_names": []})
    def check(ctx: typer.Context) -> None:
        """Check the settings, every credential (one request each) and the inventory before going live."""
        import preflight

        raise typer.Exit(int(preflight.main(list(ctx.args)) or 0))

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                   "help_option_names": []})
    def inventory(ctx: typer.Context) -> None:
        """The inventory from a shell: list, book, replay (add --json for scripts)."""
        import inventory_cli

        raise typer.Exit(inventory_cli.main(list(ctx.args)))

    return app


def settle_outbox_at_shutdown(timeout: float = 10.0) -> int | None:
    """Last chance for bookings kept in the outbox while Sheets was down (railway.json's
    drainingSeconds leaves room for it). Bounded; never raises. Returns how many entries were
    settled (None when it could not finish)."""

    async def settle() -> int:
        inventory = equipment.inventory_from_settings(Settings.lenient().inventory)
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
    server = make_server(settings, entrypoint)
    try:
        cli_app(server)(args=argv[1:], prog_name=Path(argv[0]).name if argv else "agent.py")
        code = 0
    except SystemExit as e:  # typer ends every command with sys.exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if command == "start" and not helping:
            settle_outbox_at_shutdown()
    return server.exit_code(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
