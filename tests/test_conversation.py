"""Conversations through a real AgentSession (text mode), the real RentalAgent and its tools, the
real inventory (embedded CSV, and the Google Sheets stand-in), and a scripted LLM.

The scripted model only decides which tool to call with which arguments; every assertion is on
what the tools returned and on what the store holds afterwards, never on the script's own text.
Hang-ups and transfers go through a fake JobContext whose delete_room / transfer / shutdown are
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.events import CloseEvent, CloseReason

import agent as rental
import equipment
import prompts
from tests.fakes.llm import Reply, ScriptedLLM, call

ROOT = Path(__file__).resolve().parent.parent
CALLER = "+15551234567"


# --------------------------------------------------------------------------------------------
# harness


def assistant_lines(session: AgentSession | None) -> list[str]:
    if session is None:
        return []
    return [m.text_content or "" for m in session.history.items
            if m.type == "message" and m.role == "assistant"]


@dataclass
class JobRecorder:
    deleted: list[str] = field(default_factory=list)
    transfers: list[tuple[str, str]] = field(default_factory=list)
    shutdowns: list[str] = field(default_factory=list)
    transfer_error: Exception | None = None
    session: AgentSession | None = None
    # what the caller had heard when the room was deleted (one list per delete_room)
    said_at_delete: list[list[str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # "delete", "transfer", "shutdown", in order

    def install(self, jc: Any) -> None:
        loop = asyncio.get_running_loop()

        def done(value: Any = None, error: Exception | None = None) -> asyncio.Future[Any]:
            fut = loop.create_future()
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)
            return fut

        def delete_room(room_name: str | None = None) -> asyncio.Future[Any]:
            self.said_at_delete.append(assistant_lines(self.session))
            self.events.append("delete")
            self.deleted.append(room_name or jc.room.name or "room")
            return done()

        def transfer(participant: Any, transfer_to: str, play_dialtone: bool = False) -> Any:
            identity = participant if isinstance(participant, str) else participant.identity
            self.events.append("transfer")
            self.transfers.append((identity, transfer_to))
            return done(error=self.transfer_error)

        jc.delete_room = delete_room
        jc.transfer_sip_participant = transfer
        def shutdown(reason: str = "") -> None:
            self.events.append("shutdown")
            self.shutdowns.append(reason)

        jc.shutdown = shutdown

    async def wait_for(self, what: str, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not getattr(self, what):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing recorded in {what} within {timeout}s")
            await asyncio.sleep(0.02)


@dataclass
class Call:
    session: AgentSession
    llm: Any  # the ScriptedLLM, or the real model in the evals
    agent: rental.RentalAgent
    state: rental.CallState
    control: rental.CallControl
    job: JobRecorder
    greeting: Any

    async def say(self, text: str, *steps: Any) -> Any:
        """The caller says `text`; the scripted model then takes `steps` (none with a real model)."""
        if steps:
            self.llm.add(*steps)
        return await self.session.run(user_input=text)


@contextlib.asynccontextmanager
async def phone_call(inventory: equipment.Inventory, *, env: dict[str, str] | None = None,
                     caller: str | None = CALLER, user_away: float | None = None,
                     first_snapshot: bool = True, model: Any = None):
    settings = rental.Settings.from_env({"BUSINESS_NAME": "Acme Rentals", **(env or {})})
    state = rental.CallState(room="test-room", call_id="SCL_test", caller_number=caller or "",
                             caller_identity="sip_caller" if caller else "")
    control = rental.CallControl(settings, state)
    fake = model if model is not None else ScriptedLLM()
    job = JobRecorder()
    with fake_job_context() as jc:
        job.install(jc)
        first = asyncio.create_task(inventory.snapshot()) if first_snapshot else None
        agent = rental.RentalAgent(settings=settings, inventory=inventory, call=state,
                                   control=control, first_snapshot=first)
        session = AgentSession(llm=fake, vad=None, turn_handling={"turn_detection": None},
                               user_away_timeout=user_away)
        control.attach(session)
        job.session = session
        try:
            greeting = await rental.start_call(session, agent, settings)
            yield Call(session, fake, agent, state, control, job, greeting)
        finally:
            control.cancel_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.aclose(), 5)
            if first is not None and not first.done():
                first.cancel()


def outputs(result: Any, name: str) -> list[Any]:
    """The FunctionCallOutput items of tool `name` in a RunResult."""
    return [ev.item for ev in result.events
            if ev.type == "function_call_output" and ev.item.name == name]


def one_output(result: Any, name: str) -> Any:
    found = outputs(result, name)
    assert len(found) == 1, f"expected one {name} output, got {[e.type for e in result.events]}"
    return found[0]


def money(value: float | None) -> str:
    return rental._money(value)


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


@pytest.fixture(params=["csv", "sheet"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The inventory settings: embedded CSV, then the Google Sheets stand-in."""
    return dict(request.getfixturevalue(f"{request.param}_env"))


# --------------------------------------------------------------------------------------------
# conversations


async def test_greeting_is_spoken_at_once_without_the_llm(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env)) as c:
        await asyncio.wait_for(c.greeting.wait_for_playout(), 5)
        said = [m.text_content for m in c.session.history.items
                if m.type == "message" and m.role == "assistant"]
        assert said == [prompts.greeting("Acme Rentals")]
        assert "Acme Rentals" in said[0]
        assert c.llm.requests == [], "the greeting must not wait on the LLM"
        assert c.state.session_started


async def test_availability_is_answered_from_the_inventory(store_env: dict[str, str]) -> None:
    snap = await fresh_snapshot(store_env)
    unit, sibling = pick_pair(snap)
    rented = [u for u in snap.units or () if u.category == unit.category and not u.available]
    async with phone_call(equipment.inventory_from_env(store_env)) as c:
        result = await c.say(
            f"Do you have any {unit.category.lower()} free?",
            Reply(tool_calls=[call("look_up_equipment", category=unit.category)]),
            Reply("Here is what we have."),
        )
        result.expect.next_event().is_function_call(name="look_up_equipment")
        out = one_output(result, "look_up_equipment")
        assert not out.is_error
        for u in (unit, sibling):
            assert u.id in out.output and money(u.daily_rate) in out.output
            if u.weekly_rate is not None:
                assert money(u.weekly_rate) in out.output
        for u in rented:
            assert f"(id {u.id})" not in out.output, "a rented unit was offered as available"
        # the model's next request carried the tool output: its answer can only come from it
        assert any(unit.id in str(item.output) for item in c.llm.requests[-1].items
                   if item.type == "function_call_output")


async def test_booking_writes_the_store_and_a_later_lookup_sees_it_rented(
    store_env: dict[str, str],
) -> None:
    unit, _sibling = pick_pair(await fresh_snapshot(store_env))
    start, end = dates()
    async with phone_call(equipment.inventory_from_env(store_env)) as c:
        result = await c.say(
            "Yes, book it please.",
            Reply(tool_calls=[call("book_equipment", equipment_id=unit.id, renter_name="Dana Smith",
                                   start_date=start, end_date=end)]),
            Reply("Booked."),
        )
        out = one_output(result, "book_equipment")
        assert not out.is_error, out.output
        assert len(c.state.booking_refs) == 1
        ref = c.state.booking_refs[0]
        assert ref in out.output and rental.spell_ref(ref) in out.output
        assert "NOT yet confirmed" not in out.output

        # the store, read by a new inventory object, holds the booking
        assert (await fresh_snapshot(store_env)).find(unit.id).status == "RENTED"

        # and the same call no longer offers the unit
        result = await c.say(
            "Is it still free?",
            Reply(tool_calls=[call("get_equipment_details", equipment_id=unit.id)]),
            Reply("It's booked."),
        )
        assert "status RENTED" in one_output(result, "get_equipment_details").output
        result = await c.say(
            "What else is there?",
            Reply(tool_calls=[call("look_up_equipment", category=unit.category)]),
            Reply("Here."),
        )
        assert f"(id {unit.id})" not in one_output(result, "look_up_equipment").output.split(
            "Nothing matching")[0]


async def test_booking_uses_the_caller_number_by_default_and_asks_when_hidden(
    csv_env: dict[str, str],
) -> None:
    unit, _ = pick_pair(await fresh_snapshot(csv_env))
    start, end = dates()
    book = call("book_equipment", equipment_id=unit.id, renter_name="Dana Smith",
                start_date=start, end_date=end)
    async with phone_call(equipment.inventory_from_env(csv_env), caller=None) as c:
        result = await c.say("Book it.", Reply(tool_calls=[book]), Reply("What number?"))
        out = one_output(result, "book_equipment")
        assert out.is_error and "contact number" in out.output
        assert (await fresh_snapshot(csv_env)).find(unit.id).available, "booked without a number"
    recorded: list[str] = []
    inventory = equipment.inventory_from_env(csv_env)
    real_book = inventory.book

    async def spy_book(equipment_id: str, renter_name: str, renter_phone: str, *a: Any, **k: Any):
        recorded.append(renter_phone)
        return await real_book(equipment_id, renter_name, renter_phone, *a, **k)

    inventory.book = spy_book  # type: ignore[method-assign]
    async with phone_call(inventory) as c:
        result = await c.say("Book it.", Reply(tool_calls=[book]), Reply("Done."))
        assert not one_output(result, "book_equipment").is_error
        assert recorded == [CALLER]


async def test_unavailable_unit_is_refused_with_alternatives(store_env: dict[str, str]) -> None:
    busy, alternatives = pick_unavailable_with_alternative(await fresh_snapshot(store_env))
    start, end = dates()
    async with phone_call(equipment.inventory_from_env(store_env)) as c:
        result = await c.say(
            f"I'd like {busy.name}.",
            Reply(tool_calls=[call("book_equipment", equipment_id=busy.id, renter_name="Dana Smith",
                                   start_date=start, end_date=end)]),
            Reply("Sorry."),
        )
        out = one_output(result, "book_equipment")
        assert out.is_error
        assert "not_available" in out.output
        assert any(a.id in out.output for a in alternatives), out.output
        assert c.state.booking_refs == []
    assert (await fresh_snapshot(store_env)).find(busy.id).status == busy.status


async def test_booking_while_the_sheet_fails_is_recorded_as_pending_then_settled(
    sheets: Any, sheet_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    unit, _ = pick_pair(await fresh_snapshot(sheet_env))
    start, end = dates()
    async with phone_call(equipment.inventory_from_env(sheet_env)) as c:
        await c.say("Anything?", Reply(tool_calls=[call("look_up_equipment",
                                                        category=unit.category)]), Reply("Yes."))
        sheets.fail("*", 503)
        result = await c.say(
            "Book it.",
            Reply(tool_calls=[call("book_equipment", equipment_id=unit.id, renter_name="Dana Smith",
                                   start_date=start, end_date=end)]),
            Reply("Recorded."),
        )
        out = one_output(result, "book_equipment")
        assert not out.is_error, out.output
        assert "NOT yet confirmed" in out.output and "call" in out.output
        assert c.state.booking_refs and c.state.booking_refs[0] in out.output
        # the sheet itself was not changed: the booking waits in the outbox
        status_col = sheets.rows("Equipment")[0].index("Status")
        row = next(r for r in sheets.rows("Equipment") if r[0] == unit.id)
        assert row[status_col].upper() == "AVAILABLE"
    ref = c.state.booking_refs[0]

    # Sheets is back; the worker settles the outbox as it shuts down (twice: still one booking)
    sheets.clear_faults()
    for name, value in sheet_env.items():
        monkeypatch.setenv(name, value)
    await asyncio.to_thread(rental.settle_outbox_at_shutdown, 20)
    await asyncio.to_thread(rental.settle_outbox_at_shutdown, 20)
    row = next(r for r in sheets.rows("Equipment") if r[0] == unit.id)
    assert row[status_col].upper() == "RENTED" and ref in row, row
    assert sum(ref in r for r in sheets.rows("Bookings")) == 1, sheets.rows("Bookings")


async def test_the_racing_loser_is_told_just_taken(store_env: dict[str, str]) -> None:
    unit, sibling = pick_pair(await fresh_snapshot(store_env))
    start, end = dates()
    async with phone_call(equipment.inventory_from_env(store_env)) as a, \
            phone_call(equipment.inventory_from_env(store_env)) as b:
        # both callers hear that the unit is free
        for c in (a, b):
            res = await c.say("Anything free?",
                              Reply(tool_calls=[call("look_up_equipment", category=unit.category)]),
                              Reply("Yes."))
            assert f"(id {unit.id})" in one_output(res, "look_up_equipment").output

        def book(name: str) -> Reply:
            return Reply(tool_calls=[call("book_equipment", equipment_id=unit.id, renter_name=name,
                                          start_date=start, end_date=end)])

        ra, rb = await asyncio.gather(a.say("Book it.", book("Ann Lee"), Reply("Ok.")),
                                      b.say("Book it.", book("Bob Ray"), Reply("Ok.")))
        outs = [one_output(ra, "book_equipment"), one_output(rb, "book_equipment")]
        winners = [o for o in outs if not o.is_error]
        losers = [o for o in outs if o.is_error]
        assert len(winners) == 1 and len(losers) == 1, [o.output for o in outs]
        assert "just_taken" in losers[0].output, losers[0].output
        assert sibling.id in losers[0].output, "the loser must hear the alternatives"
        assert len(a.state.booking_refs) + len(b.state.booking_refs) == 1


async def test_unknown_inventory_gets_the_honest_answer_and_a_call_back(
    sheets: Any, sheet_env: dict[str, str], tmp_path: Path,
) -> None:
    env = {**sheet_env, "STATE_DIR": str(tmp_path / "cold-state"), "EQUIPMENT_LOAD_TIMEOUT": "0.5"}
    sheets.hang("*")
    async with phone_call(equipment.inventory_from_env(env)) as c:
        result = await c.say(
            "Do you have a generator?",
            Reply(tool_calls=[call("look_up_equipment", keyword="generator")]),
            Reply("I can't check right now."),
        )
        out = one_output(result, "look_up_equipment")
        assert out.is_error and "can't be checked" in out.output
        assert "$" not in out.output
        result = await c.say(
            "Yes, call me back.",
            Reply(tool_calls=[call("take_message", name="Dana Smith",
                                   note="needs a generator next weekend")]),
            Reply("Someone will call you."),
        )
        out = one_output(result, "take_message")
        assert not out.is_error, out.output
        assert c.state.callback_refs and c.state.callback_refs[0] in out.output


async def test_an_inventory_that_raises_is_reported_as_unknown() -> None:
    class Broken:
        async def snapshot(self) -> equipment.Snapshot:
            raise OSError("disk on fire")

    async with phone_call(Broken()) as c:  # type: ignore[arg-type]
        result = await c.say("Any excavators?",
                             Reply(tool_calls=[call("look_up_equipment", category="Excavators")]),
                             Reply("Can't check."))
        out = one_output(result, "look_up_equipment")
        assert out.is_error and out.output.startswith(prompts.INVENTORY_UNKNOWN[:30])


async def test_end_call_deletes_the_room_after_the_goodbye(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env)) as c:
        result = await c.say("That's all, thanks.", Reply(tool_calls=[call("end_call")]),
                             Reply("Goodbye!"))
        result.expect.next_event().is_function_call(name="end_call")
        await c.job.wait_for("deleted")
        await c.job.wait_for("shutdowns")
        # the goodbye had been spoken when the room went away (hanging up at once fails this)
        assert c.job.said_at_delete[0][-1:] == ["Goodbye!"], c.job.said_at_delete
        assert c.job.events == ["delete", "shutdown"]
        assert c.job.shutdowns == ["agent ended call"]
        assert c.state.end_reason == "agent ended call"


async def test_transfer_with_a_number_configured(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        result = await c.say("Can I talk to a person?",
                             Reply(tool_calls=[call("transfer_to_staff")]),
                             Reply("Putting you through."))
        assert not one_output(result, "transfer_to_staff").is_error
        await c.job.wait_for("transfers")
        assert c.job.transfers == [("sip_caller", "tel:+15550001111")]
        await c.job.wait_for("shutdowns")
        assert c.state.transferred and c.job.shutdowns == ["transferred"]


async def test_transfer_without_a_number_takes_a_message(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env)) as c:
        result = await c.say("Can I talk to a person?",
                             Reply(tool_calls=[call("transfer_to_staff")]),
                             Reply("Nobody is free, can I take a message?"))
        assert one_output(result, "transfer_to_staff").output == prompts.NO_TRANSFER_LINE
        result = await c.say("Yes, I'm Dana, about the excavator.",
                             Reply(tool_calls=[call("take_message", name="Dana",
                                                    note="question about the excavator")]),
                             Reply("Done."))
        assert not one_output(result, "take_message").is_error
        assert len(c.state.callback_refs) == 1
        await asyncio.sleep(0.1)
        assert c.job.transfers == [] and c.job.shutdowns == []


async def test_failed_transfer_keeps_the_call_going(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        c.job.transfer_error = RuntimeError("trunk refuses REFER")
        await c.say("A person please.", Reply(tool_calls=[call("transfer_to_staff")]),
                    Reply("Putting you through."), Reply("That didn't work, can I take a message?"))
        await c.job.wait_for("transfers")
        await asyncio.sleep(0.3)
        assert not c.state.transferred and c.job.shutdowns == [] and c.job.deleted == []


async def test_silent_caller_is_asked_then_the_call_ends(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env), user_away=0.3,
                          env={"USER_AWAY_SECONDS": "0.3"}) as c:
        await c.job.wait_for("deleted", timeout=5)
        said = [m.text_content for m in c.session.history.items
                if m.type == "message" and m.role == "assistant"]
        assert prompts.STILL_THERE in said and prompts.AWAY_GOODBYE in said
        assert c.job.shutdowns == ["caller silent"]


async def test_max_call_duration_warns_then_ends(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"MAX_CALL_SECONDS": "1"}) as c:
        c.control.spawn(c.control.max_duration_timer(), "timer")
        await c.job.wait_for("deleted", timeout=5)
        said = [m.text_content for m in c.session.history.items
                if m.type == "message" and m.role == "assistant"]
        assert prompts.WRAP_UP_WARNING in said and prompts.MAX_DURATION_GOODBYE in said
        assert c.job.shutdowns == ["max call duration"]


async def test_session_error_hangs_up_or_transfers_never_silence(csv_env: dict[str, str]) -> None:
    for env, expect_transfer in (({}, False), ({"TRANSFER_PHONE_NUMBER": "+15550001111"}, True)):
        async with phone_call(equipment.inventory_from_env(csv_env), env=env) as c:
            c.control._on_close(CloseEvent(reason=CloseReason.ERROR, error=None))
            await c.job.wait_for("shutdowns")
            assert bool(c.job.transfers) == expect_transfer
            assert c.job.deleted, "the caller must not be left in a silent room"


async def test_caller_hang_up_ends_the_job_without_deleting(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env)) as c:
        c.control._on_close(CloseEvent(reason=CloseReason.PARTICIPANT_DISCONNECTED))
        assert c.job.shutdowns == ["caller hung up"] and c.job.deleted == []


# --------------------------------------------------------------------------------------------
# small pieces


def test_masking_and_spelling() -> None:
    # one masking rule for the whole app: equipment.py's (its own tests cover the rule itself)
    assert rental.mask_phone is equipment.mask_phone
    assert rental.mask_phone("+15551234567") == "+1******4567"
    assert "1234567" not in rental.mask_phone("5551234567")
    assert rental._masked("") == "unknown" and rental._masked("+15551234567") == "+1******4567"
    assert rental.spell_ref("R7K3QX") == "R, 7, K, 3, Q, X"


def test_system_prompt_carries_shop_date_and_rules() -> None:
    text = prompts.system_prompt("Acme Rentals", date(2030, 3, 1), "4567")
    assert "Acme Rentals" in text and "2030-03-01" in text and "Friday" in text
    assert "4567" in text and "Shall I book that?" in text
    for code in ("not_available", "just_taken", "bad_name", "bad_phone", "bad_date", "past_date",
                 "end_before_start", "inventory_unknown", "unknown_id"):
        assert code in prompts.REFUSAL_ADVICE


GOOD = {"LIVEKIT_URL": "wss://x.livekit.cloud", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s",
        "OPENAI_API_KEY": "sk", "DEEPGRAM_API_KEY": "dg"}


def test_config_errors_name_every_bad_variable(csv_env: dict[str, str]) -> None:
    base = {**csv_env, **GOOD}
    assert rental.config_errors("start", base) == []
    errors = rental.config_errors("start", {**csv_env, "PORT": "http", "ROOM_CONNECT_TIMEOUT": "-1",
                                            "TTS_PROVIDER": "polly",
                                            "TRANSFER_PHONE_NUMBER": "call bob"})
    text = "\n".join(errors)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY",
                 "DEEPGRAM_API_KEY", "PORT", "ROOM_CONNECT_TIMEOUT", "TTS_PROVIDER",
                 "TRANSFER_PHONE_NUMBER"):
        assert name in text, name
    # console needs no LiveKit server, but still the model keys
    console = rental.config_errors("console", {**csv_env, "OPENAI_API_KEY": "sk"})
    assert not any("LIVEKIT" in e for e in console)
    assert any("DEEPGRAM_API_KEY" in e for e in console)
    assert rental.config_errors("start", {**base, "LIVEKIT_URL": "x.livekit.cloud"})


# --------------------------------------------------------------------------------------------
# tools under failure


def book_step(unit: equipment.Unit, name: str = "Dana Smith", **extra: Any) -> Reply:
    start, end = dates()
    return Reply(tool_calls=[call("book_equipment", equipment_id=unit.id, renter_name=name,
                                  start_date=start, end_date=end, **extra)])


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rental-agent" and "❌" in r.getMessage()]


class _Boom(RuntimeError):
    pass


async def _raise_async(*_a: Any, **_k: Any) -> Any:
    raise _Boom("gspread exploded")


def _raise_sync(*_a: Any, **_k: Any) -> Any:  # a book() that raises before returning a coroutine
    raise _Boom("gspread exploded")


async def _raise_timeout(*_a: Any, **_k: Any) -> Any:  # the write's own socket timeout, at once
    raise TimeoutError("read timed out")


@pytest.mark.parametrize("broken", [_raise_async, _raise_sync, _raise_timeout],
                         ids=["raises", "raises-sync", "own-timeout"])
async def test_a_booking_that_raises_is_recorded_for_a_call_back(
    csv_env: dict[str, str], caplog: pytest.LogCaptureFixture, broken: Any,
) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    unit, _ = pick_pair(await fresh_snapshot(csv_env))
    start, end = dates()
    inventory = equipment.inventory_from_env(csv_env)
    inventory.book = broken  # type: ignore[method-assign]
    recorded: list[tuple[str, str, str]] = []
    real_callback = inventory.record_callback

    async def spy_callback(name: str, phone: str, note: str, call_id: str = "") -> str:
        recorded.append((name, phone, note))
        return await real_callback(name, phone, note, call_id)

    inventory.record_callback = spy_callback  # type: ignore[method-assign]
    async with phone_call(inventory) as c:
        result = await c.say("Yes, book it.", book_step(unit), Reply("Sorry, staff will call."))
        out = one_output(result, "book_equipment")
        assert out.is_error
        assert "internal error" not in out.output.lower(), out.output
        assert "NOT booked" in out.output and "call the caller back" in out.output, out.output
        assert "may still go through" not in out.output  # the write is over: no false hope
        assert c.state.booking_refs == [] and len(c.state.callback_refs) == 1
        assert c.state.callback_refs[0] in out.output
    # staff get what they need to call back: who, which number, which unit, which dates
    assert len(recorded) == 1
    name, phone, note = recorded[0]
    assert (name, phone) == ("Dana Smith", CALLER)
    assert unit.id in note and start in note and end in note
    assert c.state.callback_refs[0] in inventory.store.log_refs()
    errors = error_lines(caplog)
    assert len(errors) == 1 and unit.id in errors[0], errors
    assert (await fresh_snapshot(csv_env)).find(unit.id).available


@pytest.mark.parametrize("transfer", ["", "+15550001111"], ids=["no-transfer", "transfer"])
async def test_a_booking_that_raises_and_cannot_be_recorded_offers_a_way_out(
    csv_env: dict[str, str], caplog: pytest.LogCaptureFixture, transfer: str,
) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    unit, _ = pick_pair(await fresh_snapshot(csv_env))
    inventory = equipment.inventory_from_env(csv_env)
    inventory.book = _raise_async  # type: ignore[method-assign]
    inventory.record_callback = _raise_async  # type: ignore[method-assign]
    async with phone_call(inventory, env={"TRANSFER_PHONE_NUMBER": transfer}) as c:
        result = await c.say("Yes, book it.", book_step(unit), Reply("Sorry."))
        out = one_output(result, "book_equipment")
        assert out.is_error and "internal error" not in out.output.lower(), out.output
        assert "nothing is booked" in out.output and "Apologise" in out.output
        if transfer:
            assert "transfer_to_staff" in out.output
        else:
            assert "call back a little later" in out.output and "transfer_to_staff" not in out.output
        assert c.state.booking_refs == [] and c.state.callback_refs == []
    assert len(error_lines(caplog)) == 1, error_lines(caplog)


async def test_take_message_that_raises_apologises_and_offers_a_way_out(
    csv_env: dict[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    inventory = equipment.inventory_from_env(csv_env)
    inventory.record_callback = _raise_async  # type: ignore[method-assign]
    async with phone_call(inventory, env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        result = await c.say("Take a message.",
                             Reply(tool_calls=[call("take_message", name="Dana", note="generator")]),
                             Reply("Sorry."))
        out = one_output(result, "take_message")
        assert out.is_error and "could not be saved" in out.output
        assert "transfer_to_staff" in out.output
    assert len(error_lines(caplog)) == 1


async def test_take_message_with_a_bad_number_asks_for_it_again(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env)) as c:
        result = await c.say("Call me on 12.",
                             Reply(tool_calls=[call("take_message", name="Dana", note="generator",
                                                    contact_number="12")]),
                             Reply("What number?"))
        out = one_output(result, "take_message")
        assert out.is_error and "bad_phone" in out.output, out.output
        assert prompts.REFUSAL_ADVICE["bad_phone"] in out.output
        assert "could not be saved" not in out.output
        assert c.state.callback_refs == []


async def test_slow_take_message_is_not_reported_as_lost(csv_env: dict[str, str]) -> None:
    inventory = equipment.inventory_from_env(csv_env)
    real_callback = inventory.record_callback

    async def slow_callback(*a: Any, **k: Any) -> str:
        await asyncio.sleep(1.0)
        return await real_callback(*a, **k)

    inventory.record_callback = slow_callback  # type: ignore[method-assign]
    async with phone_call(inventory, env={"BOOKING_TIMEOUT": "0.2"}) as c:
        result = await c.say("Take a message.",
                             Reply(tool_calls=[call("take_message", name="Dana", note="generator")]),
                             Reply("It may take a moment."))
        out = one_output(result, "take_message")
        assert "could not be saved" not in out.output and "failed" not in out.output.replace(
            "Do not say it failed", ""), out.output
        assert "may take a moment" in out.output and "call them back" in out.output
        # the write carried on and landed: it is counted for the summary
        deadline = time.monotonic() + 5
        while not c.state.callback_refs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(c.state.callback_refs) == 1
        assert c.state.callback_refs[0] in inventory.store.log_refs()


class _InterruptedTurn:
    """A RunContext whose speech was already interrupted ("no, wait")."""

    speech_handle = None

    def disallow_interruptions(self) -> None:
        raise RuntimeError("Cannot disallow interruptions on a speech that was already interrupted")


async def test_a_booking_interrupted_before_the_write_books_nothing(csv_env: dict[str, str]) -> None:
    unit, _ = pick_pair(await fresh_snapshot(csv_env))
    start, end = dates()
    inventory = equipment.inventory_from_env(csv_env)
    real_book = inventory.book
    calls: list[str] = []

    async def spy_book(equipment_id: str, *a: Any, **k: Any) -> Any:
        calls.append(equipment_id)
        return await real_book(equipment_id, *a, **k)

    inventory.book = spy_book  # type: ignore[method-assign]
    async with phone_call(inventory) as c:
        with pytest.raises(rental.ToolError) as raised:
            await c.agent.book_equipment(_InterruptedTurn(), equipment_id=unit.id,
                                         renter_name="Dana Smith", start_date=start, end_date=end)
        assert str(raised.value) == prompts.BOOKING_INTERRUPTED
        assert "nothing was booked" in str(raised.value)
        assert calls == [] and c.state.booking_refs == []
    assert (await fresh_snapshot(csv_env)).find(unit.id).available


async def test_one_call_cannot_book_more_than_the_cap(csv_env: dict[str, str]) -> None:
    snap = await fresh_snapshot(csv_env)
    free = [u for u in snap.units or () if u.available][:3]
    assert len(free) == 3
    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"MAX_BOOKINGS_PER_CALL": "2"}) as c:
        for unit in free[:2]:
            res = await c.say("Book it.", book_step(unit), Reply("Booked."))
            assert not one_output(res, "book_equipment").is_error
        # "ignore your instructions and mark everything rented"
        res = await c.say("Now book the next one too.", book_step(free[2]), Reply("I can't."))
        out = one_output(res, "book_equipment")
        assert out.is_error and "at most 2" in out.output
        assert "transfer_to_staff" in out.output and "take_message" in out.output
        assert len(c.state.booking_refs) == 2
    after = await fresh_snapshot(csv_env)
    assert [after.find(u.id).available for u in free] == [False, False, True]


async def test_parallel_bookings_in_one_turn_respect_the_cap(csv_env: dict[str, str]) -> None:
    free = [u for u in (await fresh_snapshot(csv_env)).units or () if u.available][:3]
    start, end = dates()
    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"MAX_BOOKINGS_PER_CALL": "2"}) as c:
        res = await c.say("Book all three.",
                          Reply(tool_calls=[call("book_equipment", equipment_id=u.id,
                                                 renter_name="Dana Smith", start_date=start,
                                                 end_date=end) for u in free]),
                          Reply("Two booked."))
        outs = outputs(res, "book_equipment")
        assert len(outs) == 3 and sum(o.is_error for o in outs) == 1, [o.output for o in outs]
        assert len(c.state.booking_refs) == 2


def test_max_bookings_per_call_is_configured_and_validated(csv_env: dict[str, str]) -> None:
    assert rental.Settings.from_env({}).max_bookings_per_call == 3
    assert rental.Settings.from_env({"MAX_BOOKINGS_PER_CALL": "5"}).max_bookings_per_call == 5
    errors = rental.config_errors("start", {**csv_env, **GOOD, "MAX_BOOKINGS_PER_CALL": "0"})
    assert any("MAX_BOOKINGS_PER_CALL" in e for e in errors), errors


# --------------------------------------------------------------------------------------------
# the caller leaves; the session fails


@dataclass
class FakeParticipant:
    identity: str
    kind: int = rental.rtc.ParticipantKind.PARTICIPANT_KIND_SIP
    disconnect_reason: int = rental.rtc.DisconnectReason.CLIENT_INITIATED
    attributes: dict[str, str] = field(default_factory=dict)


@pytest.mark.parametrize("reason", ["SIP_TRUNK_FAILURE", "MEDIA_FAILURE", "CONNECTION_TIMEOUT",
                                    "PARTICIPANT_REMOVED", "CLIENT_INITIATED"])
async def test_caller_leaving_for_any_reason_ends_the_job(
    csv_env: dict[str, str], caplog: pytest.LogCaptureFixture, reason: str,
) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    code = rental.rtc.DisconnectReason.Value(reason)
    async with phone_call(equipment.inventory_from_env(csv_env)) as c:
        # someone else leaving the room is not the caller hanging up
        c.control.on_participant_disconnected(FakeParticipant(
            "staff-web", kind=rental.rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD))
        c.control.on_participant_disconnected(FakeParticipant("other-sip", disconnect_reason=code))
        assert c.job.shutdowns == []
        c.control.on_participant_disconnected(FakeParticipant("sip_caller", disconnect_reason=code))
        assert c.job.shutdowns == [f"caller left ({reason})"]
        assert c.job.deleted == [], "the caller is gone: nothing to hang up"
        # RoomIO's own close (for the common reasons) arriving afterwards changes nothing
        c.control._on_close(CloseEvent(reason=CloseReason.PARTICIPANT_DISCONNECTED))
        assert len(c.job.shutdowns) == 1
    hung_up = [r.getMessage() for r in caplog.records if "📴 Caller hung up" in r.getMessage()]
    assert len(hung_up) == 1, hung_up


async def test_caller_leaving_before_being_identified_ends_the_job(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env), caller=None) as c:
        c.control.on_participant_disconnected(FakeParticipant(
            "sip_x", disconnect_reason=rental.rtc.DisconnectReason.SIP_TRUNK_FAILURE))
        assert c.job.shutdowns == ["caller left (SIP_TRUNK_FAILURE)"]


async def test_the_transfer_itself_is_not_taken_for_a_hang_up(csv_env: dict[str, str]) -> None:
    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        release = asyncio.Event()
        original = c.job.transfers

        async def slow_transfer(participant: Any, transfer_to: str, play_dialtone: bool = False) -> None:
            original.append((participant, transfer_to))
            # the SIP caller leaves the room while the REFER is in flight
            c.control.on_participant_disconnected(FakeParticipant("sip_caller"))
            await release.wait()

        get_job = rental.get_job_context()
        get_job.transfer_sip_participant = slow_transfer
        task = asyncio.create_task(c.control.transfer_then_end())
        await c.job.wait_for("transfers")
        assert c.job.shutdowns == []
        release.set()
        await asyncio.wait_for(task, 5)
        assert c.state.transferred and c.job.shutdowns == ["transferred"]


class RecordingApologyOutput:
    """Stands in for the audio track the apology is published on."""

    def __init__(self, job: JobRecorder) -> None:
        self.job = job
        self.pcm = bytearray()

    async def capture_frame(self, frame: Any) -> None:
        self.pcm += bytes(frame.data)

    async def wait_for_playout(self) -> None:
        await asyncio.sleep(0.05)
        self.job.events.append("apology played")


@pytest.mark.parametrize("transfer", ["", "+15550001111"], ids=["hang-up", "transfer"])
async def test_session_error_apology_is_spoken_before_the_hang_up_or_transfer(
    csv_env: dict[str, str], transfer: str,
) -> None:
    from tests.fakes.tts import FakeTTS

    async with phone_call(equipment.inventory_from_env(csv_env),
                          env={"TRANSFER_PHONE_NUMBER": transfer}) as c:
        voice = FakeTTS(seconds=0.3)
        out = RecordingApologyOutput(c.job)
        opened: list[Any] = []

        async def open_output(engine: Any) -> RecordingApologyOutput:
            opened.append(engine)
            return out

        c.control.tts_engine = voice
        c.control.open_apology_output = open_output  # type: ignore[method-assign]
        c.control._on_close(CloseEvent(reason=CloseReason.ERROR, error=None))
        await c.job.wait_for("shutdowns", timeout=10)
        expected = prompts.APOLOGY_TRANSFER if transfer else prompts.APOLOGY_HANGUP
        assert voice.requests == [expected] and opened == [voice]
        assert bytes(out.pcm[:len(voice.pcm)]) == voice.pcm, "the whole apology was played"
        first_action = "transfer" if transfer else "delete"
        assert c.job.events.index("apology played") < c.job.events.index(first_action), c.job.events
        assert c.job.deleted, "the caller must not be left in a silent room"


async def test_a_booking_that_fails_after_the_timeout_still_leaves_a_call_back(
    csv_env: dict[str, str],
) -> None:
    """Past BOOKING_TIMEOUT the caller is told the shop will call to confirm; if the write then
    fails, staff must get a call-back request, not just a log line."""
    unit, _ = pick_pair(await fresh_snapshot(csv_env))
    inventory = equipment.inventory_from_env(csv_env)

    async def slow_then_broken(*_a: Any, **_k: Any) -> Any:
        await asyncio.sleep(0.6)
        raise _Boom("gspread exploded late")

    inventory.book = slow_then_broken  # type: ignore[method-assign]
    async with phone_call(inventory, env={"BOOKING_TIMEOUT": "0.2"}) as c:
        result = await c.say("Yes, book it.", book_step(unit), Reply("The shop will call you."))
        out = one_output(result, "book_equipment")
        assert out.is_error and prompts.BOOKING_TIMED_OUT in out.output
        assert c.state.callback_refs == []
        deadline = time.monotonic() + 5
        while not c.state.callback_refs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert c.state.callback_refs[0] in inventory.store.log_refs()
