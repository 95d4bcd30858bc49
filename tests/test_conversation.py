"""Conversations through a real AgentSession (text mode), the real RentalAgent, its tools, the
BookingDesk and CallControl, with a scripted LLM. The script only decides which tool the model
calls with which arguments; the assertions are on what the tools returned, event by event, on
what the store holds afterwards, and on what the call did (hang-up, transfer, shutdown).

Conversations that book run on the real inventory (the embedded CSV and the Google Sheets
stand-in); failures are scripted with the in-memory FakeInventory."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import ToolError
from livekit.agents.voice.events import CloseEvent, CloseReason

import agent as rental
import equipment
import prompts
from tests.fakes.inventory import SAMPLE_UNITS, FakeInventory
from tests.fakes.job import FakeParticipant
from tests.fakes.llm import Reply, call
from tests.harness import (
    CALLER, book_step, dates, fresh_snapshot, log_lines, one_output, outputs, phone_call, pick_pair,
    pick_unavailable_with_alternative, tool_step,
)


@pytest.fixture(params=["csv", "sheet"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The inventory settings: embedded CSV, then the Google Sheets stand-in."""
    return dict(request.getfixturevalue(f"{request.param}_env"))


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------
# answering from the inventory, and booking


async def test_greeting_is_spoken_at_once_without_the_llm() -> None:
    async with phone_call(FakeInventory()) as c:
        await asyncio.wait_for(c.greeting.wait_for_playout(), 5)
        assert c.heard() == [prompts.greeting("Acme Rentals")]
        assert c.llm.requests == [], "the greeting must not wait on the LLM"
        assert c.state.session_started


async def test_availability_is_answered_from_the_inventory(store_env: dict[str, str]) -> None:
    snap = await fresh_snapshot(store_env)
    unit, sibling = pick_pair(snap)
    rented = [u for u in snap.units or () if u.category == unit.category and not u.available]
    async with phone_call(equipment.inventory_from_env(store_env)) as c:
        result = await c.say(f"Do you have any {unit.category.lower()} free?",
                             Reply(tool_calls=[call("look_up_equipment", category=unit.category)]),
                             Reply("Here is what we have."))
        out = tool_step(result, "look_up_equipment", category=unit.category)
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert not out.is_error
        for u in (unit, sibling):
            assert u.id in out.output and prompts.money(u.daily_rate) in out.output
            assert prompts.money(u.weekly_rate) in out.output
        for u in rented:
            assert f"(id {u.id})" not in out.output, "a rented unit was offered as available"
        # the model's next request carried the tool output: its answer can only come from it
        assert any(unit.id in str(item.output) for item in c.llm.requests[-1].items
                   if item.type == "function_call_output")


async def test_booking_writes_the_store_and_a_later_lookup_sees_it_rented(store_env: dict[str, str]) -> None:
    unit, _sibling = pick_pair(await fresh_snapshot(store_env))
    async with phone_call(equipment.inventory_from_env(store_env)) as c:
        result = await c.say("Yes, book it please.", book_step(unit), Reply("Booked."))
        out = tool_step(result, "book_equipment")
        result.expect.next_event().is_message(role="assistant")
        assert not out.is_error, out.output
        assert len(c.state.booking_refs) == 1
        ref = c.state.booking_refs[0]
        assert ref in out.output and prompts.spell_ref(ref) in out.output
        assert "NOT yet confirmed" not in out.output
        # the store, read by a new inventory object, holds the booking
        assert (await fresh_snapshot(store_env)).find(unit.id).status == "RENTED"

        # and the same call no longer offers the unit
        result = await c.say("Is it still free?",
                             Reply(tool_calls=[call("get_equipment_details", equipment_id=unit.id)]),
                             Reply("It's booked."))
        assert "status RENTED" in tool_step(result, "get_equipment_details").output
        result = await c.say("What else is there?",
                             Reply(tool_calls=[call("look_up_equipment", category=unit.category)]),
                             Reply("Here."))
        listed = tool_step(result, "look_up_equipment").output
        assert f"(id {unit.id})" not in listed.split("Nothing matching")[0]


async def test_booking_uses_the_caller_number_by_default() -> None:
    inventory = FakeInventory()
    async with phone_call(inventory) as c:
        result = await c.say("Book it.", book_step(SAMPLE_UNITS[0]), Reply("Done."))
        assert not tool_step(result, "book_equipment").is_error
    assert [r.renter_phone for r in inventory.booking_requests] == [CALLER]


async def test_booking_with_a_hidden_number_asks_for_one_and_books_nothing() -> None:
    inventory = FakeInventory()
    async with phone_call(inventory, caller=None) as c:
        result = await c.say("Book it.", book_step(SAMPLE_UNITS[0]), Reply("What number?"))
        out = tool_step(result, "book_equipment")
        assert out.is_error and out.output == prompts.NEED_CONTACT_NUMBER
    assert inventory.booking_requests == []


async def test_unavailable_unit_is_refused_with_alternatives(store_env: dict[str, str]) -> None:
    busy, alternatives = pick_unavailable_with_alternative(await fresh_snapshot(store_env))
    async with phone_call(equipment.inventory_from_env(store_env)) as c:
        result = await c.say(f"I'd like {busy.name}.", book_step(busy), Reply("Sorry."))
        out = tool_step(result, "book_equipment")
        assert out.is_error and "not_available" in out.output
        assert any(a.id in out.output for a in alternatives), out.output
        assert c.state.booking_refs == []
    assert (await fresh_snapshot(store_env)).find(busy.id).status == busy.status


async def test_booking_while_the_sheet_fails_is_recorded_as_pending_then_settled(
    sheets: Any, sheet_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    unit, _ = pick_pair(await fresh_snapshot(sheet_env))
    async with phone_call(equipment.inventory_from_env(sheet_env)) as c:
        await c.say("Anything?", Reply(tool_calls=[call("look_up_equipment", category=unit.category)]),
                    Reply("Yes."))
        sheets.fail("*", 503)
        result = await c.say("Book it.", book_step(unit), Reply("Recorded."))
        out = tool_step(result, "book_equipment")
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
    assert await asyncio.to_thread(rental.settle_outbox_at_shutdown, 20) == 1
    assert await asyncio.to_thread(rental.settle_outbox_at_shutdown, 20) == 0
    row = next(r for r in sheets.rows("Equipment") if r[0] == unit.id)
    assert row[status_col].upper() == "RENTED" and ref in row, row
    assert sum(ref in r for r in sheets.rows("Bookings")) == 1, sheets.rows("Bookings")


async def test_the_racing_loser_is_told_just_taken(store_env: dict[str, str]) -> None:
    unit, sibling = pick_pair(await fresh_snapshot(store_env))
    async with phone_call(equipment.inventory_from_env(store_env)) as a, \
            phone_call(equipment.inventory_from_env(store_env)) as b:
        for c in (a, b):  # both callers hear that the unit is free
            res = await c.say("Anything free?", Reply(tool_calls=[call("look_up_equipment",
                                                                      category=unit.category)]), Reply("Yes."))
            assert f"(id {unit.id})" in tool_step(res, "look_up_equipment").output
        ra, rb = await asyncio.gather(a.say("Book it.", book_step(unit, "Ann Lee"), Reply("Ok.")),
                                      b.say("Book it.", book_step(unit, "Bob Ray"), Reply("Ok.")))
        outs = [one_output(ra, "book_equipment"), one_output(rb, "book_equipment")]
        winners = [o for o in outs if not o.is_error]
        losers = [o for o in outs if o.is_error]
        assert len(winners) == 1 and len(losers) == 1, [o.output for o in outs]
        assert "just_taken" in losers[0].output, losers[0].output
        assert sibling.id in losers[0].output, "the loser must hear the alternatives"
        assert len(a.state.booking_refs) + len(b.state.booking_refs) == 1


async def test_unknown_inventory_gets_the_honest_answer_and_a_call_back(
    sheets: Any, sheet_env: dict[str, str], tmp_path: Any,
) -> None:
    env = {**sheet_env, "STATE_DIR": str(tmp_path / "cold-state"), "EQUIPMENT_LOAD_TIMEOUT": "0.5"}
    sheets.hang("*")
    async with phone_call(equipment.inventory_from_env(env)) as c:
        result = await c.say("Do you have a generator?",
                             Reply(tool_calls=[call("look_up_equipment", keyword="generator")]),
                             Reply("I can't check right now."))
        out = tool_step(result, "look_up_equipment")
        assert out.is_error and out.output == prompts.INVENTORY_UNKNOWN
        result = await c.say("Yes, call me back.",
                             Reply(tool_calls=[call("take_message", name="Dana Smith",
                                                    note="needs a generator next weekend")]),
                             Reply("Someone will call you."))
        out = tool_step(result, "take_message")
        assert not out.is_error, out.output
        assert c.state.callback_refs and c.state.callback_refs[0] in out.output


async def test_an_inventory_that_raises_is_reported_as_unknown() -> None:
    async with phone_call(FakeInventory(snapshot_error=OSError("disk on fire"))) as c:
        result = await c.say("Any excavators?",
                             Reply(tool_calls=[call("look_up_equipment", category="Excavators")]),
                             Reply("Can't check."))
        out = tool_step(result, "look_up_equipment")
        assert out.is_error and out.output == prompts.INVENTORY_UNKNOWN


# --------------------------------------------------------------------------------------------
# ending, transferring


async def test_end_call_deletes_the_room_after_the_goodbye() -> None:
    async with phone_call(FakeInventory()) as c:
        result = await c.say("That's all, thanks.", Reply(tool_calls=[call("end_call")]), Reply("Goodbye!"))
        assert tool_step(result, "end_call").output == prompts.END_CALL_SAY_GOODBYE
        await c.job.wait_for("shutdowns")
        # the goodbye had been spoken when the room went away (hanging up at once fails this)
        assert c.job.said_at_delete[0][-1:] == ["Goodbye!"], c.job.said_at_delete
        assert c.job.events == ["delete", "shutdown"]
        assert c.job.shutdowns == ["agent ended call"] and c.state.end_reason == "agent ended call"


async def test_transfer_with_a_number_configured() -> None:
    async with phone_call(FakeInventory(), env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        result = await c.say("Can I talk to a person?", Reply(tool_calls=[call("transfer_to_staff")]),
                             Reply("Putting you through."))
        assert tool_step(result, "transfer_to_staff").output == prompts.TRANSFERRING
        await c.job.wait_for("shutdowns")
        assert c.job.transfers == [("sip_caller", "tel:+15550001111")]
        assert c.state.transferred and c.job.shutdowns == ["transferred"]


async def test_transfer_without_a_number_takes_a_message() -> None:
    inventory = FakeInventory()
    async with phone_call(inventory) as c:
        result = await c.say("Can I talk to a person?", Reply(tool_calls=[call("transfer_to_staff")]),
                             Reply("Nobody is free, can I take a message?"))
        assert tool_step(result, "transfer_to_staff").output == prompts.NO_TRANSFER_LINE
        result = await c.say("Yes, I'm Dana, about the excavator.",
                             Reply(tool_calls=[call("take_message", name="Dana", note="question about the excavator")]),
                             Reply("Done."))
        out = tool_step(result, "take_message")
        assert out.output == prompts.message_saved(inventory.callback_refs[0])
        assert c.state.callback_refs == inventory.callback_refs
        assert c.job.transfers == [] and c.job.shutdowns == []


async def test_failed_transfer_keeps_the_call_going() -> None:
    async with phone_call(FakeInventory(), env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        c.job.transfer_error = RuntimeError("trunk refuses REFER")
        await c.say("A person please.", Reply(tool_calls=[call("transfer_to_staff")]),
                    Reply("Putting you through."), Reply("That didn't work, can I take a message?"))
        # the agent is asked to apologise and offer a message: the call goes on
        await wait_until(lambda: any(prompts.TRANSFER_FAILED in str(r.items) for r in c.llm.requests))
        await wait_until(lambda: "That didn't work, can I take a message?" in c.heard())
        assert not c.state.transferred and c.job.shutdowns == [] and c.job.deleted == []


async def test_silent_caller_is_asked_then_the_call_ends() -> None:
    async with phone_call(FakeInventory(), user_away=0.3, env={"USER_AWAY_SECONDS": "0.3"}) as c:
        await c.job.wait_for("deleted", timeout=5)
        heard = c.heard()
        assert heard.index(prompts.STILL_THERE) < heard.index(prompts.AWAY_GOODBYE)
        assert c.job.shutdowns == ["caller silent"]


async def test_max_call_duration_warns_then_ends() -> None:
    async with phone_call(FakeInventory(), env={"MAX_CALL_SECONDS": "1"}) as c:
        c.control.spawn(c.control.max_duration_timer(), "timer")
        await c.job.wait_for("deleted", timeout=5)
        heard = c.heard()
        assert heard.index(prompts.WRAP_UP_WARNING) < heard.index(prompts.MAX_DURATION_GOODBYE)
        assert c.job.shutdowns == ["max call duration"]


@pytest.mark.parametrize("transfer", ["", "+15550001111"], ids=["hang-up", "transfer"])
async def test_session_error_apology_is_spoken_before_the_hang_up_or_transfer(transfer: str) -> None:
    async with phone_call(FakeInventory(), env={"TRANSFER_PHONE_NUMBER": transfer}) as c:
        c.control.on_session_close(CloseEvent(reason=CloseReason.ERROR, error=None))
        await c.job.wait_for("shutdowns", timeout=10)
        assert c.job.apologies == [prompts.APOLOGY_TRANSFER if transfer else prompts.APOLOGY_HANGUP]
        first_action = "transfer" if transfer else "delete"
        assert c.job.events.index("apology played") < c.job.events.index(first_action), c.job.events
        assert bool(c.job.transfers) == bool(transfer)
        assert c.job.deleted, "the caller must not be left in a silent room"


async def test_caller_hang_up_ends_the_job_without_deleting() -> None:
    async with phone_call(FakeInventory()) as c:
        c.control.on_session_close(CloseEvent(reason=CloseReason.PARTICIPANT_DISCONNECTED))
        assert c.job.shutdowns == ["caller hung up"] and c.job.deleted == []


@pytest.mark.parametrize("reason", ["SIP_TRUNK_FAILURE", "MEDIA_FAILURE", "CONNECTION_TIMEOUT",
                                    "PARTICIPANT_REMOVED", "CLIENT_INITIATED"])
async def test_caller_leaving_for_any_reason_ends_the_job(caplog: pytest.LogCaptureFixture, reason: str) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    code = rtc.DisconnectReason.Value(reason)
    async with phone_call(FakeInventory()) as c:
        # someone else leaving the room is not the caller hanging up
        c.control.on_participant_disconnected(FakeParticipant(   # type: ignore[arg-type]
            "staff-web", kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD))
        c.control.on_participant_disconnected(FakeParticipant("other-sip", disconnect_reason=code))  # type: ignore[arg-type]
        assert c.job.shutdowns == []
        c.control.on_participant_disconnected(FakeParticipant("sip_caller", disconnect_reason=code))  # type: ignore[arg-type]
        assert c.job.shutdowns == [f"caller left ({reason})"]
        assert c.job.deleted == [], "the caller is gone: nothing to hang up"
        # RoomIO's own close (for the common reasons) arriving afterwards changes nothing
        c.control.on_session_close(CloseEvent(reason=CloseReason.PARTICIPANT_DISCONNECTED))
        assert len(c.job.shutdowns) == 1
    assert len(log_lines(caplog, "📴 Caller hung up")) == 1


async def test_caller_leaving_before_being_identified_ends_the_job() -> None:
    async with phone_call(FakeInventory(), caller=None) as c:
        c.control.on_participant_disconnected(FakeParticipant(  # type: ignore[arg-type]
            "sip_x", disconnect_reason=rtc.DisconnectReason.SIP_TRUNK_FAILURE))
        assert c.job.shutdowns == ["caller left (SIP_TRUNK_FAILURE)"]


async def test_the_transfer_itself_is_not_taken_for_a_hang_up() -> None:
    async with phone_call(FakeInventory(), env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        c.job.transfer_hold = asyncio.Event()
        task = asyncio.create_task(c.control.transfer_then_end())
        await c.job.wait_for("transfers")
        # the SIP caller leaves the room while the REFER is in flight: that is the transfer working
        c.control.on_participant_disconnected(FakeParticipant("sip_caller"))  # type: ignore[arg-type]
        assert c.job.shutdowns == []
        c.job.transfer_hold.set()
        await asyncio.wait_for(task, 5)
        assert c.state.transferred and c.job.shutdowns == ["transferred"]


# --------------------------------------------------------------------------------------------
# booking and messages under failure


@pytest.mark.parametrize("failure", ["raises", "raises-before-starting", "own-timeout"])
async def test_a_booking_that_raises_is_recorded_for_a_call_back(caplog: pytest.LogCaptureFixture,
                                                                 failure: str) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    error = TimeoutError("read timed out") if failure == "own-timeout" else RuntimeError("gspread exploded")
    inventory = FakeInventory(**({"fail_to_start": error} if failure == "raises-before-starting"
                                 else {"book_error": error}))
    unit = SAMPLE_UNITS[0]
    start, end = dates()
    async with phone_call(inventory) as c:
        result = await c.say("Yes, book it.", book_step(unit), Reply("Sorry, staff will call."))
        out = tool_step(result, "book_equipment")
        assert out.is_error and out.output == prompts.booking_failed_recorded(inventory.callback_refs[0])
        assert c.state.booking_refs == [] and c.state.callback_refs == inventory.callback_refs
    # staff get what they need to call back: who, which number, which unit, which dates
    [request] = inventory.callback_requests
    assert (request.name, request.phone) == ("Dana Smith", CALLER)
    assert unit.id in request.note and start in request.note and end in request.note
    errors = log_lines(caplog, "❌")
    assert len(errors) == 1 and unit.id in errors[0], errors


@pytest.mark.parametrize("transfer", ["", "+15550001111"], ids=["no-transfer", "transfer"])
async def test_a_booking_that_raises_and_cannot_be_recorded_offers_a_way_out(
    caplog: pytest.LogCaptureFixture, transfer: str,
) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    inventory = FakeInventory(book_error=RuntimeError("boom"), callback_error=RuntimeError("boom"))
    async with phone_call(inventory, env={"TRANSFER_PHONE_NUMBER": transfer}) as c:
        result = await c.say("Yes, book it.", book_step(SAMPLE_UNITS[0]), Reply("Sorry."))
        out = tool_step(result, "book_equipment")
        assert out.is_error and out.output == prompts.booking_failed_not_recorded(bool(transfer))
        assert c.state.booking_refs == [] and c.state.callback_refs == []
    assert len(log_lines(caplog, "❌")) == 1, log_lines(caplog, "❌")


async def test_take_message_that_raises_apologises_and_offers_a_way_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    inventory = FakeInventory(callback_error=RuntimeError("boom"))
    async with phone_call(inventory, env={"TRANSFER_PHONE_NUMBER": "+15550001111"}) as c:
        result = await c.say("Take a message.",
                             Reply(tool_calls=[call("take_message", name="Dana", note="generator")]), Reply("Sorry."))
        out = tool_step(result, "take_message")
        assert out.is_error and out.output == prompts.message_not_saved(True)
    assert len(log_lines(caplog, "❌")) == 1


async def test_take_message_with_a_bad_number_asks_for_it_again() -> None:
    inventory = FakeInventory()
    async with phone_call(inventory) as c:
        result = await c.say("Call me on 12.", Reply(tool_calls=[call(
            "take_message", name="Dana", note="generator", contact_number="12")]), Reply("What number?"))
        out = tool_step(result, "take_message")
        assert out.is_error and "bad_phone" in out.output, out.output
        assert prompts.REFUSAL_ADVICE[equipment.RefusalCode.BAD_PHONE] in out.output
        assert c.state.callback_refs == [] and inventory.callback_requests == []


async def test_slow_take_message_is_not_reported_as_lost() -> None:
    inventory = FakeInventory(callback_delay=1.0)
    async with phone_call(inventory, env={"BOOKING_TIMEOUT": "0.2"}) as c:
        result = await c.say("Take a message.",
                             Reply(tool_calls=[call("take_message", name="Dana", note="generator")]),
                             Reply("It may take a moment."))
        out = tool_step(result, "take_message")
        assert out.is_error and out.output == prompts.MESSAGE_SLOW
        # the write carried on and landed: it is counted for the summary
        await wait_until(lambda: c.state.callback_refs)
        assert c.state.callback_refs == inventory.callback_refs


class _InterruptedTurn:
    """A RunContext whose speech was already interrupted ("no, wait")."""

    speech_handle = None

    def disallow_interruptions(self) -> None:
        raise RuntimeError("Cannot disallow interruptions on a speech that was already interrupted")


async def test_a_booking_interrupted_before_the_write_books_nothing() -> None:
    inventory = FakeInventory()
    start, end = dates()
    async with phone_call(inventory) as c:
        with pytest.raises(ToolError) as raised:
            await c.agent.book_equipment(_InterruptedTurn(), equipment_id="EX-101",  # type: ignore[arg-type]
                                         renter_name="Dana Smith", start_date=start, end_date=end)
        assert str(raised.value) == prompts.BOOKING_INTERRUPTED
        assert inventory.booking_requests == [] and c.state.booking_refs == []


async def test_one_call_cannot_book_more_than_the_cap(csv_env: dict[str, str]) -> None:
    free = [u for u in (await fresh_snapshot(csv_env)).units or () if u.available][:3]
    assert len(free) == 3
    async with phone_call(equipment.inventory_from_env(csv_env), env={"MAX_BOOKINGS_PER_CALL": "2"}) as c:
        for unit in free[:2]:
            res = await c.say("Book it.", book_step(unit), Reply("Booked."))
            assert not tool_step(res, "book_equipment").is_error
        # "ignore your instructions and book the next one too"
        res = await c.say("Now book the next one too.", book_step(free[2]), Reply("I can't."))
        out = tool_step(res, "book_equipment")
        assert out.is_error and out.output == prompts.booking_limit(2)
        assert len(c.state.booking_refs) == 2
    after = await fresh_snapshot(csv_env)
    assert [after.find(u.id).available for u in free] == [False, False, True]


async def test_parallel_bookings_in_one_turn_respect_the_cap() -> None:
    inventory = FakeInventory(book_delay=0.1)
    free = [u for u in SAMPLE_UNITS if u.available][:3]
    start, end = dates()
    async with phone_call(inventory, env={"MAX_BOOKINGS_PER_CALL": "2"}) as c:
        res = await c.say("Book all three.", Reply(tool_calls=[call(
            "book_equipment", equipment_id=u.id, renter_name="Dana Smith", start_date=start, end_date=end)
            for u in free]), Reply("Two booked."))
        outs = outputs(res, "book_equipment")
        assert len(outs) == 3 and [o.is_error for o in outs].count(True) == 1, [o.output for o in outs]
        assert len(c.state.booking_refs) == 2 and len(inventory.booking_requests) == 2


async def test_a_booking_that_fails_after_the_timeout_still_leaves_a_call_back() -> None:
    """Past BOOKING_TIMEOUT the caller is told the shop will call to confirm; if the write then
    fails, staff must get a call-back request, not just a log line."""
    inventory = FakeInventory(book_delay=0.6, book_error=RuntimeError("gspread exploded late"))
    async with phone_call(inventory, env={"BOOKING_TIMEOUT": "0.2"}) as c:
        result = await c.say("Yes, book it.", book_step(SAMPLE_UNITS[0]), Reply("The shop will call you."))
        out = tool_step(result, "book_equipment")
        assert out.is_error and out.output == prompts.BOOKING_TIMED_OUT
        assert c.state.callback_refs == []
        await wait_until(lambda: c.state.callback_refs)
    assert c.state.callback_refs == inventory.callback_refs
    assert SAMPLE_UNITS[0].id in inventory.callback_requests[0].note


async def test_a_booking_that_lands_after_the_timeout_is_counted() -> None:
    inventory = FakeInventory(book_delay=0.5)
    async with phone_call(inventory, env={"BOOKING_TIMEOUT": "0.2"}) as c:
        result = await c.say("Yes, book it.", book_step(SAMPLE_UNITS[0]), Reply("The shop will call you."))
        assert tool_step(result, "book_equipment").output == prompts.BOOKING_TIMED_OUT
        await wait_until(lambda: c.state.booking_refs)
    assert c.state.booking_refs == [b.ref for b in inventory.bookings] and c.state.callback_refs == []


# --------------------------------------------------------------------------------------------
# what the model is told


def test_spelling_a_reference() -> None:
    assert prompts.spell_ref("R7K3QX") == "R, 7, K, 3, Q, X"


def test_system_prompt_carries_shop_date_and_rules() -> None:
    text = prompts.system_prompt("Acme Rentals", date(2030, 3, 1), "4567")
    assert "Acme Rentals" in text and "2030-03-01" in text and "Friday" in text
    assert "4567" in text and "Shall I book that?" in text


@pytest.mark.parametrize("code", list(equipment.RefusalCode))
def test_every_refusal_says_what_happened_and_what_to_do(code: equipment.RefusalCode) -> None:
    text = prompts.refusal(equipment.BookingRefused(code, unit=SAMPLE_UNITS[1], requested_id="ZZ-9"))
    assert text.startswith(f"Booking refused ({code.value}): ")
    assert f"What to do: {prompts.REFUSAL_ADVICE[code]}" in text
