"""The real worker (`agent.main`) whose calls put a caller's phone number everywhere a real call
can, for tests/test_logs.py to grep the whole output for it.

A dispatch with metadata ``conversation`` runs a booking conversation in the job process: the
real RentalAgent, BookingDesk and CallControl in a real AgentSession with a scripted LLM (no
media server, so no room; the caller's SIP participant is the one LiveKit's SIP service would
add). The number reaches the logs through the room name, the SIP participant's identity and
attributes (``identify_caller``), the job's log context (set here unmasked, as a careless change
would), the framework's ``executing tool`` record (tool arguments), the transcript, an exception,
and a credential that a bug logs. Any other dispatch runs agent.py's real entrypoint.

Usage: ``python tests/fakes/pii_agent.py start|dev`` (job processes re-import this script as
``__mp_main__`` and find ``pii_entrypoint`` by name).
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import agent  # noqa: E402
import equipment  # noqa: E402
import logs  # noqa: E402
from booking_desk import BookingDesk  # noqa: E402
from call_control import CallControl, CallState  # noqa: E402
from livekit.agents import AgentSession, JobContext  # noqa: E402
from settings import Settings  # noqa: E402
from tests.fakes.job import FakeParticipant  # noqa: E402
from tests.fakes.llm import Reply, ScriptedLLM, call  # noqa: E402

NUMBER = "+15551234567"
NATIONAL = "555-123-4567"
SHOP_LINE = "+15550000100"
logger = logging.getLogger("rental-agent")


async def conversation(ctx: JobContext) -> None:
    logs.install()
    settings = Settings.lenient()
    caller = FakeParticipant(identity=f"sip_{NUMBER}", attributes={
        "sip.phoneNumber": NUMBER, "sip.trunkPhoneNumber": SHOP_LINE, "sip.callID": "SCL_pii_test",
        "sip.trunkID": "ST_pii", "sip.ruleID": "SDR_pii"})
    agent.sip_caller = lambda room: caller  # what identify_caller finds in a SIP call's room
    ctx.log_context_fields = {"caller_unmasked": NUMBER, "sip": dict(caller.attributes)}

    inventory = equipment.inventory_from_settings(settings.inventory)
    state = CallState(call_id=ctx.room.name)
    control = CallControl(settings, state, ctx)
    desk = BookingDesk(inventory, state, timeout=settings.booking_timeout,
                       max_bookings=settings.max_bookings_per_call, spawn=control.spawn)
    rental = agent.RentalAgent(settings=settings, inventory=inventory, call=state, desk=desk,
                               control=control)
    start = date.today() + timedelta(days=7)
    model = ScriptedLLM([
        Reply(tool_calls=[call("look_up_equipment", category="excavator")]),
        Reply("The Kubota mini excavator is free."),
        Reply(tool_calls=[call("book_equipment", equipment_id="EX-101", renter_name="Ann Lee",
                               start_date=start.isoformat(), end_date=(start + timedelta(days=2)).isoformat(),
                               contact_number=NATIONAL)]),
        Reply(f"Booked. We will call you on {NATIONAL}."),
        Reply(tool_calls=[call("take_message", name="Ann Lee", note=f"call back on {NUMBER} about a trailer",
                               contact_number=NUMBER)]),
        Reply("Done."),
    ])
    session = AgentSession(llm=model, vad=None, turn_handling={"turn_detection": None})
    control.attach(session)
    await agent.start_call(session, rental)
    await agent.identify_caller(ctx, state, rental)
    await session.run(user_input="Do you have a mini excavator?")
    await session.run(user_input=f"Book it for Ann Lee, call me on {NATIONAL}")
    await session.run(user_input=f"And a message please, my mobile is {NUMBER}")
    logger.info("participant %s joined", caller.identity, extra={"identity": caller.identity,
                                                                   "attributes": caller.attributes})
    try:
        raise RuntimeError(f"a failure that names the caller {NUMBER}")
    except RuntimeError:
        logger.exception("an exception mentioning the caller")
    logger.debug(f"a bug that logs a key: {os.environ.get('OPENAI_API_KEY')}")
    await session.aclose()
    logger.info(state.summary("done"))
    ctx.shutdown(reason="done")


async def pii_entrypoint(ctx: JobContext) -> None:
    if ctx.job.metadata == "conversation":
        await conversation(ctx)
    else:
        await agent.entrypoint(ctx)


if __name__ == "__main__":
    sys.exit(agent.main(sys.argv, entrypoint=pii_entrypoint))
