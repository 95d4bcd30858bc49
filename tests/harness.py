"""A phone call in a test: the real RentalAgent, its tools, BookingDesk and CallControl in a real
AgentSession (text mode), a scripted LLM (or a real one in the evals), and a FakeJob recording
every hang-up, transfer and shutdown. Shared by the conversation, lifecycle and eval tests."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, AsyncIterator

import pytest
from livekit.agents import AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice import SpeechHandle

import agent as rental
import equipment
from booking_desk import BookingDesk
from call_control import CallControl, CallState
from settings import Settings
from tests.fakes.job import FakeJob
from tests.fakes.llm import Reply, ScriptedLLM, call

CALLER = "+15551234567"


def assistant_lines(session: AgentSession) -> list[str]:
    return [m.text_content or "" for m in session.history.items if m.type == "message" and m.role == "assistant"]


@dataclass
class Call:
    session: AgentSession
    llm: Any  # the ScriptedLLM, or the real model in the evals
    agent: rental.RentalAgent
    state: CallState
    control: CallControl
    desk: BookingDesk
    job: FakeJob
    greeting: SpeechHandle

    async def say(self, text: str, *steps: Any) -> Any:
        """The caller says `text`; the scripted model then takes `steps` (none with a real model)."""
        if steps:
            self.llm.add(*steps)
        return await self.session.run(user_input=text)

    def heard(self) -> list[str]:
        return assistant_lines(self.session)


@contextlib.asynccontextmanager
async def phone_call(inventory: equipment.Inventory, *, env: dict[str, str] | None = None,
                     caller: str | None = CALLER, user_away: float | None = None,
                     first_snapshot: bool = True, model: Any = None) -> AsyncIterator[Call]:
    settings = Settings.lenient({"BUSINESS_NAME": "Acme Rentals", **(env or {})})
    state = CallState(call_id="SCL_test", caller_number=caller or "",
                      caller_identity="sip_caller" if caller else "")
    fake = model if model is not None else ScriptedLLM()
    job = FakeJob()
    with fake_job_context():
        control = CallControl(settings, state, job)  # type: ignore[arg-type]
        desk = BookingDesk(inventory, state, timeout=settings.booking_timeout,
                           max_bookings=settings.max_bookings_per_call, spawn=control.spawn)
        first = asyncio.create_task(inventory.snapshot()) if first_snapshot else None
        agent = rental.RentalAgent(settings=settings, inventory=inventory, call=state, desk=desk,
                                   control=control, first_snapshot=first)
        session = AgentSession(llm=fake, vad=None, turn_handling={"turn_detection": None},
                               user_away_timeout=user_away)
        control.attach(session, speak_apology=job.play)
        job.said = lambda: assistant_lines(session)
        try:
            greeting = await rental.start_call(session, agent)
            yield Call(session, fake, agent, state, control, desk, job, greeting)
        finally:
            control.cancel_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.aclose(), 5)
            if first is not None and not first.done():
                first.cancel()


def outputs(result: Any, name: str) -> list[Any]:
    """The FunctionCallOutput items of tool `name` in a RunResult."""
    return [ev.item for ev in result.events if ev.type == "function_call_output" and ev.item.name == name]


def one_output(result: Any, name: str) -> Any:
    found = outputs(result, name)
    assert len(found) == 1, f"expected one {name} output, got {[e.type for e in result.events]}"
    return found[0]


def tool_step(result: Any, name: str, **arguments: Any) -> Any:
    """The next two events are the call of `name` and its output; returns the output item."""
    result.expect.next_event().is_function_call(name=name, **({"arguments": arguments} if arguments else {}))
    return result.expect.next_event().is_function_call_output().event().item


async def fresh_snapshot(env: dict[str, str]) -> equipment.Snapshot:
    """What the store holds, read by a new inventory object (as a later call would)."""
    snap = await equipment.inventory_from_env(env).snapshot()
    assert snap.known
    return snap


def pick_pair(snap: equipment.Snapshot) -> tuple[equipment.Unit, equipment.Unit]:
    """Two available units of the same category (one to book, one to offer as the alternative)."""
    by_cat: dict[str, list[equipment.Unit]] = {}
    for u in snap.units or ():
        if u.available and u.daily_rate is not None:
            by_cat.setdefault(u.category, []).append(u)
    for units in by_cat.values():
        if len(units) >= 2:
            return units[0], units[1]
    raise AssertionError("the test inventory needs two available units in one category")


def pick_unavailable_with_alternative(snap: equipment.Snapshot) -> tuple[equipment.Unit, list[equipment.Unit]]:
    for u in snap.units or ():
        if not u.available:
            alts = [a for a in snap.units or () if a.available and a.category == u.category]
            if alts:
                return u, alts
    raise AssertionError("the test inventory needs a non-available unit with an available sibling")


def dates(days_ahead: int = 7, length: int = 2) -> tuple[str, str]:
    start = date.today() + timedelta(days=days_ahead)
    return start.isoformat(), (start + timedelta(days=length)).isoformat()


def book_step(unit: equipment.Unit, name: str = "Dana Smith", **extra: Any) -> Reply:
    start, end = dates()
    return Reply(tool_calls=[call("book_equipment", equipment_id=unit.id, renter_name=name,
                                  start_date=start, end_date=end, **extra)])


def log_lines(caplog: pytest.LogCaptureFixture, marker: str = "", logger: str = "rental-agent") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and marker in r.getMessage()]
