"""Conversations through a real AgentSession (text mode), the real RentalAgent, its tools, the
BookingDesk and CallControl, with a scripted LLM. The script only decides which tool the model
calls with which arguments; the assertions are on what the tools returned, event by event, on
what the store holds afterwards (read as staff would, not through the inventory), and on what
the call did (hang-up, transfer, shutdown).

Conversations that book, change or cancel run on the real inventory (the embedded CSV, and for
the older flows the Google Sheets stand-in too); dates questions, quotes, hours and failures are
scripted with the in-memory FakeInventory. Amounts expected below are worked out by hand from
the rates and the shop's Settings, not by the code under test."""

from __future__ import annotations

import asyncio
import re
from datetime import date, time, timedelta
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import ToolError
from livekit.agents.voice.events import CloseEvent, CloseReason

import worker
import equipment
import prompts
from tests.fakes.inventory import PRICED, SAMPLE_UNITS, FakeInventory, reservation
from tests.fakes.job import FakeParticipant
from tests.fakes.llm import Reply, call
from tests.harness import (
    CALLER, OTHER_CALLER, SHOP_SETTINGS, Clock, ShopFiles, book_step, dates, day, log_lines, one_output, outputs,
    phone_call, reservation_row, shop_files, tool_step, wednesday,
)

@pytest.fixture(params=["csv", "sheet"])
def shop(request: pytest.FixtureRequest) -> ShopFiles:
    """The embedded CSV, then the Google Sheets stand-in."""
    if request.param == "csv":
        return shop_files(dict(request.getfixturevalue("csv_env")))
    return shop_files(dict(request.getfixturevalue("sheet_env")), request.getfixturevalue("sheets"))


@pytest.fixture
def csv_shop(csv_env: dict[str, str]) -> ShopFiles:
    """The embedded CSV store (the sheet store's own tests cover the sheet)."""
    return shop_files(dict(csv_env))


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def lookup(category: str | None = None, keyword: str | None = None, start: date | None = None,
           end: date | None = None) -> Reply:
    args: dict[str, Any] = {}
    if category:
        args["category"] = category
    if keyword:
        args["keyword"] = keyword
    if start and end:
        args.update(start_date=start.isoformat(), end_date=end.isoformat())
    return Reply(tool_calls=[call("look_up_equipment", **args)])


def free_ids(output: str) -> list[str]:
    """The units a look-up lists as free (none when it says nothing matching is free)."""
    return re.findall(r"\(id ([^)]+)\)", output) if output.startswith("Free ") else []


def last_tool_output_seen(c: Any) -> str:
    """The newest tool output in the model's latest request: what its next words are based on."""
    return [item.output for item in c.llm.requests[-1].items if item.type == "function_call_output"][-1]


# --------------------------------------------------------------------------------------------
# answering from the inventory, and booking


async def test_greeting_is_spoken_at_once_without_the_llm() -> None:
    async with phone_call(FakeInventory()) as c:
        await asyncio.wait_for(c.greeting.wait_for_playout(), 5)
        assert c.heard() == [prompts.greeting("Acme Rentals")]
        assert c.llm.requests == [], "the greeting must not wait on the LLM"
        assert c.state.session_started


# Three identical units of one category in data/equipment.csv (the CSV default and the stand-in's sheet).
KUBOTA = ("EX-101", "EX-102", "EX-103")


async def test_availability_is_answered_from_the_inventory(shop: ShopFiles) -> None:
    free_a, free_b, busy = KUBOTA
    shop.set_reservations(reservation_row("WALK01", busy, day(-1), day(2)))
    async with phone_call(equipment.inventory_from_env(shop.env)) as c:
        result = await c.say("Do you have any excavators free today?",
                             lookup(category="Excavators"), Reply("Here is what we have."))
        out = tool_step(result, "look_up_equipment", category="Excavators")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert not out.is_error
        assert {free_a, free_b} <= set(free_ids(out.output)), out.output
        assert "$325 per day, $1,300 per week" in out.output
        assert busy not in out.output, "a unit out today was offered as free today"
        assert "EX-301" not in out.output, "a unit in maintenance was offered"
        # the model's next request carried the tool output: its answer can only come from it
        assert last_tool_output_seen(c) == out.output


async def test_booking_writes_a_reservation_and_the_unit_stays_free_for_other_dates(shop: ShopFiles) -> None:
    unit = "EX-101"
    async with phone_call(equipment.inventory_from_env(shop.env)) as c:
        result = await c.say("Yes, book it please.", book_step(unit, start=day(7), end=day(9)), Reply("Booked."))
        out = tool_step(result, "book_equipment")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert not out.is_error, out.output
        [ref] = c.state.booking_refs
        assert ref in out.output and prompts.spell_ref(ref) in out.output
        assert "NOT yet confirmed" not in out.output
        # the store holds the reservation, with the total worked out from the shop's Settings:
        # 3 days at $325 = $975, waiver 12% = $117, tax 8.25% of $1,092 = $90.09
        row = shop.reservation(ref)
        assert (row["Equipment ID"], row["Start"], row["End"], row["Status"]) == (
            unit, day(7).isoformat(), day(9).isoformat(), "CONFIRMED")
        assert (row["Renter Name"], row["Renter Phone"]) == ("Dana Smith", CALLER)
        assert (row["Total"], row["Deposit"]) == ("1182.09", "500.00")
        assert [(h["Booking Ref"], h["Kind"]) for h in shop.history()] == [(ref, "BOOKING")]
        # booked for next week, the unit can still be rented today
        result = await c.say("Is it free today?",
                             Reply(tool_calls=[call("get_equipment_details", equipment_id=unit)]), Reply("Yes."))
        assert "free today" in tool_step(result, "get_equipment_details").output
        # the same call no longer offers it for those dates, but does for the days after
        result = await c.say("And those dates?", lookup("Excavators", start=day(8), end=day(8)), Reply("Others."))
        assert unit not in free_ids(tool_step(result, "look_up_equipment").output)
        result = await c.say("The week after?", lookup("Excavators", start=day(10), end=day(11)), Reply("Yes."))
        assert unit in free_ids(tool_step(result, "look_up_equipment").output)
        result = await c.say("Book that too.", book_step(unit, start=day(10), end=day(11)), Reply("Booked."))
        assert not tool_step(result, "book_equipment").is_error
    assert sorted((r["Start"], r["Ref"]) for r in shop.reservations() if r["Equipment ID"] == unit) == [
        (day(7).isoformat(), c.state.booking_refs[0]), (day(10).isoformat(), c.state.booking_refs[1])]


async def test_booking_uses_the_caller_number_by_default() -> None:
    inventory = FakeInventory()
    async with phone_call(inventory) as c:
        result = await c.say("Book it.", book_step(SAMPLE_UNITS[0]), Reply("Done."))
        assert not tool_step(result, "book_equipment").is_error
    assert [r.renter_phone for r in inventory.booking_requests] == [CALLER]
    assert [r.renter_phone for r in inventory.reservations if r.ref == inventory.bookings[0].ref] == [CALLER]


async def test_booking_with_a_hidden_number_asks_for_one_and_books_nothing() -> None:
    inventory = FakeInventory()
    async with phone_call(inventory, caller=None) as c:
        result = await c.say("Book it.", book_step(SAMPLE_UNITS[0]), Reply("What number?"))
        out = tool_step(result, "book_equipment")
        assert out.is_error and out.output == prompts.NEED_CONTACT_NUMBER
    assert inventory.booking_requests == []


async def test_an_overlap_is_refused_with_the_next_free_date_and_similar_units(shop: ShopFiles) -> None:
    shop.set_reservations(reservation_row("WALK01", "EX-101", day(10), day(12)))
    async with phone_call(equipment.inventory_from_env(shop.env)) as c:
        result = await c.say("I'd like the EX-101 from the 9th to the 11th.",
                             book_step("EX-101", start=day(9), end=day(11)), Reply("Sorry."))
        out = tool_step(result, "book_equipment")
        result.expect.next_event().is_message(role="assistant")
        assert out.is_error and "(not_available)" in out.output, out.output
        # free again for three days from the day after WALK01 ends (a date outside the request);
        # its twins are free then
        assert day(13).isoformat() in out.output
        assert "(id EX-102)" in out.output and "(id EX-103)" in out.output
        assert c.state.booking_refs == []
        assert [r["Ref"] for r in shop.reservations()] == ["WALK01"]
        # from the next free date, the same unit books
        result = await c.say("Then from the 13th.", book_step("EX-101", start=day(13), end=day(15)), Reply("Ok."))
        assert not tool_step(result, "book_equipment").is_error
    assert [(r["Equipment ID"], r["Start"]) for r in shop.reservations()] == [
        ("EX-101", day(10).isoformat()), ("EX-101", day(13).isoformat())]


async def test_booking_while_the_sheet_fails_is_recorded_as_pending_then_settled(
    sheets: Any, sheet_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop = shop_files(sheet_env, sheets)
    unit = "EX-101"
    async with phone_call(equipment.inventory_from_env(sheet_env)) as c:
        await c.say("Anything?", lookup("Excavators"), Reply("Yes."))
        sheets.fail("*", 503)
        result = await c.say("Book it.", book_step(unit), Reply("Recorded."))
        out = tool_step(result, "book_equipment")
        assert not out.is_error, out.output
        assert "NOT yet confirmed" in out.output and "call" in out.output
        [ref] = c.state.booking_refs
        assert ref in out.output
        # the sheet itself was not changed: the booking waits in the outbox
        assert shop.reservations() == []
        # and its dates are held: this call does not offer the unit for them any more
        result = await c.say("Is it free?", lookup(keyword=unit, start=day(7), end=day(9)), Reply("No."))
        assert free_ids(tool_step(result, "look_up_equipment").output) == []

    # Sheets is back; the worker settles the outbox as it shuts down (twice: still one booking)
    sheets.clear_faults()
    for name, value in sheet_env.items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(worker.settle_outbox_at_shutdown, 20) == 1
    assert await asyncio.to_thread(worker.settle_outbox_at_shutdown, 20) == 0
    row = shop.reservation(ref)
    assert (row["Equipment ID"], row["Start"], row["End"]) == (unit, *dates())
    assert [h["Booking Ref"] for h in shop.history()] == [ref]


async def test_the_racing_loser_is_told_it_is_taken_and_hears_the_alternatives(shop: ShopFiles) -> None:
    unit = "EX-101"
    async with phone_call(equipment.inventory_from_env(shop.env)) as a, \
            phone_call(equipment.inventory_from_env(shop.env)) as b:
        for c in (a, b):  # both callers hear that the unit is free
            res = await c.say("Anything free?", lookup("Excavators", start=day(7), end=day(9)), Reply("Yes."))
            assert unit in free_ids(tool_step(res, "look_up_equipment").output)
        ra, rb = await asyncio.gather(a.say("Book it.", book_step(unit, "Ann Lee"), Reply("Ok.")),
                                      b.say("Book it.", book_step(unit, "Bob Ray"), Reply("Ok.")))
        outs = [one_output(ra, "book_equipment"), one_output(rb, "book_equipment")]
        winners = [o for o in outs if not o.is_error]
        losers = [o for o in outs if o.is_error]
        assert len(winners) == 1 and len(losers) == 1, [o.output for o in outs]
        # just taken under the unit's lock, or already seen in the shared snapshot
        assert "(just_taken)" in losers[0].output or "(not_available)" in losers[0].output, losers[0].output
        assert "(id EX-102)" in losers[0].output, "the loser must hear the alternatives"
        assert len(a.state.booking_refs) + len(b.state.booking_refs) == 1
    assert [r["Equipment ID"] for r in shop.reservations() if r["Status"] == "CONFIRMED"] == [unit]


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
# the rental desk: dates, quotes, changes and cancellations, opening hours


async def test_a_dates_question_gets_the_free_units_with_totals_and_when_a_busy_one_is_free_again() -> None:
    inventory = FakeInventory(policy=PRICED)  # EX-102 is out until day(3); EX-301 is in maintenance
    async with phone_call(inventory) as c:
        result = await c.say("Any mini excavators tomorrow and the day after?",
                             lookup("Excavators", start=day(1), end=day(2)), Reply("Two are free."))
        out = tool_step(result, "look_up_equipment", category="Excavators", start_date=day(1).isoformat(),
                        end_date=day(2).isoformat())
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert free_ids(out.output) == ["EX-101", "EX-103"], out.output
        # 2 days at $325 = $650, waiver 10% = $65, tax 8% of $715 = $57.20
        assert out.output.count("total $772.20 for 2 days") == 2, out.output

        result = await c.say("I wanted that one, the EX-102.", lookup(keyword="EX-102", start=day(1), end=day(2)),
                             Reply("It's out."))
        out = tool_step(result, "look_up_equipment")
        assert free_ids(out.output) == [] and "(id EX-102)" in out.output
        assert day(4).isoformat() in out.output, "the busy unit's next free date"
        assert "(id EX-101)" in out.output, "a similar unit free on those dates"
        assert "(id EX-301)" not in out.output, "a unit in maintenance is no alternative"
        assert last_tool_output_seen(c) == out.output

        # once it is back, the same unit is offered
        result = await c.say("From the 4th then?", lookup(keyword="EX-102", start=day(4), end=day(5)), Reply("Yes."))
        assert free_ids(tool_step(result, "look_up_equipment").output) == ["EX-102"]
    assert inventory.booking_requests == [] and inventory.change_requests == []


async def test_a_quote_is_worked_out_in_code_read_in_words_with_the_deposit_apart() -> None:
    inventory = FakeInventory(policy=PRICED)
    start, end = day(7), day(16)  # ten days
    async with phone_call(inventory) as c:
        result = await c.say("How much is the scissor lift for ten days from next week?",
                             Reply(tool_calls=[call("get_quote", equipment_id="LF-101", start_date=start.isoformat(),
                                                    end_date=end.isoformat())]),
                             Reply("Here's the price."))
        out = tool_step(result, "get_quote", equipment_id="LF-101", start_date=start.isoformat(),
                        end_date=end.isoformat())
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert not out.is_error, out.output
        # a week ($520) and three days ($435) beat ten days or two weeks; waiver 10% = $95.50;
        # tax 8% of $1,050.50 = $84.04; the unit has no deposit of its own: the shop's $200
        for part in ("10 days", "1 week at $520.00 = $520.00", "3 days at $145.00 = $435.00",
                     "damage waiver $95.50", "tax $84.04", "Total $1,134.54",
                     "one thousand, one hundred and thirty-four dollars and fifty-four cents",
                     "deposit $200.00 (two hundred dollars)"):
            assert part in out.output, (part, out.output)
        # the model's next request carries exactly that total, and no other
        seen = last_tool_output_seen(c)
        assert seen == out.output and re.findall(r"Total \$\d[\d,]*\.\d\d", seen) == ["Total $1,134.54"]

        # a unit that is out then: the price, and when it is free
        result = await c.say("And the EX-102 tomorrow?",
                             Reply(tool_calls=[call("get_quote", equipment_id="EX-102", start_date=day(1).isoformat(),
                                                    end_date=day(1).isoformat())]), Reply("It's out."))
        out = tool_step(result, "get_quote")
        assert "Total $386.10" in out.output and "not free" in out.output, out.output  # 325 + 32.50 + 28.60
        assert day(4).isoformat() in out.output
    assert inventory.booking_requests == []


async def test_the_total_written_on_the_reservation_is_the_quoted_total(csv_shop: ShopFiles) -> None:
    start, end = day(10), day(18)  # nine days
    async with phone_call(equipment.inventory_from_env(csv_shop.env)) as c:
        result = await c.say("How much is the EX-101 for nine days?",
                             Reply(tool_calls=[call("get_quote", equipment_id="EX-101", start_date=start.isoformat(),
                                                    end_date=end.isoformat())]),
                             Reply("That would be..."))
        quote = tool_step(result, "get_quote")
        result.expect.next_event().is_message(role="assistant")
        # a week and two days; waiver 12% of $1,950 = $234; tax 8.25% of $2,184 = $180.18
        for part in ("9 days", "1 week at $1,300.00 = $1,300.00", "2 days at $325.00 = $650.00",
                     "damage waiver $234.00", "tax $180.18", "Total $2,364.18",
                     "two thousand, three hundred and sixty-four dollars and eighteen cents",
                     "Refundable deposit $500.00"):
            assert part in quote.output, (part, quote.output)
        result = await c.say("Book it.", book_step("EX-101", start=start, end=end), Reply("Booked."))
        out = tool_step(result, "book_equipment")
        result.expect.next_event().is_message(role="assistant")
        assert not out.is_error, out.output
        assert "Total $2,364.18 (two thousand, three hundred and sixty-four dollars and eighteen cents)" in out.output
        [ref] = c.state.booking_refs
    row = csv_shop.reservation(ref)
    assert (row["Total"], row["Deposit"], row["Start"], row["End"]) == (
        "2364.18", "500.00", start.isoformat(), end.isoformat())
    assert [(h["Booking Ref"], h["Total"]) for h in csv_shop.history()] == [(ref, "2364.18")]


# Bookings on the CSV store: the caller's (booked with another way of writing their number) and another's.
MINE = reservation_row("MINE01", "EX-101", day(5), day(7), "Dana Smith", "(555) 123-4567", total="1182.09")
THEIRS = reservation_row("THEM01", "EX-102", day(5), day(7), "Pat Jones", "+15559870000", total="1182.09")


def find(**arguments: str) -> Reply:
    return Reply(tool_calls=[call("find_bookings", **arguments)])


def change(ref: str, start: date, end: date) -> Reply:
    return Reply(tool_calls=[call("change_booking", reference=ref, new_start_date=start.isoformat(),
                                  new_end_date=end.isoformat())])


def cancel(ref: str) -> Reply:
    return Reply(tool_calls=[call("cancel_booking", reference=ref)])


def untouched(shop: ShopFiles, *rows: dict[str, str]) -> None:
    for row in rows:
        stored = shop.reservation(row["Ref"])
        assert {k: stored[k] for k in row} == row, stored


async def test_extending_a_booking_found_by_caller_id(csv_shop: ShopFiles) -> None:
    csv_shop.set_reservations(MINE, THEIRS)
    async with phone_call(equipment.inventory_from_env(csv_shop.env)) as c:
        result = await c.say("Can I keep my excavator a day longer?", find(), Reply("I found your booking."))
        found = tool_step(result, "find_bookings")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert "Reference MINE01" in found.output and day(7).isoformat() in found.output
        assert "THEM01" not in found.output, "another caller's booking was read out"

        result = await c.say("Yes, until the 8th.", change("MINE01", day(5), day(8)), Reply("Done."))
        out = tool_step(result, "change_booking", reference="MINE01", new_start_date=day(5).isoformat(),
                        new_end_date=day(8).isoformat())
        result.expect.next_event().is_message(role="assistant")
        assert not out.is_error, out.output
        # four days at $325 ($1,300, the week's price too); waiver $156; tax 8.25% of $1,456 = $120.12
        assert "Total $1,576.12 (one thousand, five hundred and seventy-six dollars and twelve cents)" in out.output
    untouched(csv_shop, {**MINE, "End": day(8).isoformat(), "Total": "1576.12"}, THEIRS)
    assert [(h["Booking Ref"], h["Kind"], h["Rental End"]) for h in csv_shop.history()] == [
        ("MINE01", "EXTENDED", day(8).isoformat())]


async def test_moving_a_booking_onto_another_one_is_refused_with_the_next_free_date_then_moved(
    csv_shop: ShopFiles,
) -> None:
    later = reservation_row("THEM02", "EX-101", day(20), day(22))
    csv_shop.set_reservations(MINE, later)
    async with phone_call(equipment.inventory_from_env(csv_shop.env)) as c:
        result = await c.say("I need to move my booking.", find(), Reply("Found it."))
        assert "MINE01" in tool_step(result, "find_bookings").output

        result = await c.say("To the 19th through the 21st.", change("MINE01", day(19), day(21)), Reply("Sorry."))
        out = tool_step(result, "change_booking")
        result.expect.next_event().is_message(role="assistant")
        assert out.is_error and "(not_available)" in out.output, out.output
        assert day(23).isoformat() in out.output, "the next date it is free for three days"
        assert "(id EX-102)" in out.output, "a similar unit free on those dates"
        untouched(csv_shop, MINE, later)

        result = await c.say("The 14th to the 16th then.", change("MINE01", day(14), day(16)), Reply("Moved."))
        out = tool_step(result, "change_booking")
        assert not out.is_error, out.output
        assert day(14).isoformat() in out.output and "Total $1,182.09" in out.output
    untouched(csv_shop, {**MINE, "Start": day(14).isoformat(), "End": day(16).isoformat(), "Total": "1182.09"},
              later)
    assert [(h["Booking Ref"], h["Kind"]) for h in csv_shop.history()] == [("MINE01", "MOVED")]


@pytest.mark.parametrize("how", ["caller-id", "hidden-number"])
async def test_cancelling_a_booking_found_for_this_caller(csv_shop: ShopFiles, how: str) -> None:
    csv_shop.set_reservations(MINE, THEIRS)
    caller = CALLER if how == "caller-id" else None
    async with phone_call(equipment.inventory_from_env(csv_shop.env), caller=caller) as c:
        if how == "hidden-number":  # nothing to go by until the caller gives the reference and surname
            result = await c.say("I want to cancel my booking.", find(), Reply("What's the reference?"))
            assert "MINE01" not in tool_step(result, "find_bookings").output
            result = await c.say("It's M I N E 0 1, under Smith.", find(reference="mine 01", surname="smith"),
                                 Reply("Found it."))
        else:
            result = await c.say("I want to cancel my booking.", find(), Reply("Found it."))
        found = tool_step(result, "find_bookings")
        assert "Reference MINE01" in found.output and "THEM01" not in found.output

        result = await c.say("Yes, cancel it.", cancel("MINE01"), Reply("Cancelled."))
        out = tool_step(result, "cancel_booking", reference="MINE01")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert not out.is_error and "MINE01" in out.output and "cancelled" in out.output, out.output
        untouched(csv_shop, {**MINE, "Status": "CANCELLED"}, THEIRS)

        # the unit is free again for those dates
        result = await c.say("Is it free now?", lookup(keyword="EX-101", start=day(5), end=day(7)), Reply("Yes."))
        assert free_ids(tool_step(result, "look_up_equipment").output) == ["EX-101"]
    assert [(h["Booking Ref"], h["Kind"]) for h in csv_shop.history()] == [("MINE01", "CANCELLED")]


async def test_another_caller_cannot_cancel_or_change_a_booking(csv_shop: ShopFiles) -> None:
    csv_shop.set_reservations(MINE)
    async with phone_call(equipment.inventory_from_env(csv_shop.env), caller=OTHER_CALLER) as c:
        result = await c.say("Cancel my booking.", find(), Reply("What's the reference?"))
        assert "MINE01" not in tool_step(result, "find_bookings").output
        result = await c.say("MINE01, under Jones.", find(reference="MINE01", surname="Jones"), Reply("Not found."))
        assert "MINE01" not in tool_step(result, "find_bookings").output
        # the model is talked into trying anyway
        result = await c.say("Just cancel MINE01.", cancel("MINE01"), Reply("I can't."))
        out = tool_step(result, "cancel_booking")
        result.expect.next_event().is_message(role="assistant")
        assert out.is_error and out.output == prompts.NOT_FOUND_THIS_CALL
        result = await c.say("Then move it.", change("MINE01", day(30), day(32)), Reply("I can't."))
        out = tool_step(result, "change_booking")
        assert out.is_error and out.output == prompts.NOT_FOUND_THIS_CALL
    untouched(csv_shop, MINE)
    assert csv_shop.history() == []


async def test_a_booking_is_changed_only_after_it_was_found_in_this_call(csv_shop: ShopFiles) -> None:
    """The caller's own booking, but the model skips find_bookings: refused until it is found."""
    csv_shop.set_reservations(MINE)
    async with phone_call(equipment.inventory_from_env(csv_shop.env)) as c:
        result = await c.say("Cancel MINE01.", cancel("MINE01"), Reply("Let me find it."))
        out = tool_step(result, "cancel_booking")
        assert out.is_error and out.output == prompts.NOT_FOUND_THIS_CALL
        untouched(csv_shop, MINE)
        result = await c.say("Go on.", find(), cancel("MINE01"), Reply("Cancelled."))
        assert "MINE01" in tool_step(result, "find_bookings").output
        assert not tool_step(result, "cancel_booking").is_error
    untouched(csv_shop, {**MINE, "Status": "CANCELLED"})


async def test_a_started_booking_is_not_cancelled_or_moved_but_can_be_extended(csv_shop: ShopFiles) -> None:
    out_now = reservation_row("OUT001", "EX-101", day(-1), day(2), "Dana Smith", CALLER, total="1182.09")
    csv_shop.set_reservations(out_now)
    async with phone_call(equipment.inventory_from_env(csv_shop.env)) as c:
        result = await c.say("When is my excavator due back?", find(), Reply("On..."))
        found = tool_step(result, "find_bookings")
        assert "OUT001" in found.output and "out now, due back" in found.output
        assert day(2).isoformat() in found.output

        result = await c.say("Actually cancel it.", cancel("OUT001"), Reply("I can't."))
        out = tool_step(result, "cancel_booking")
        result.expect.next_event().is_message(role="assistant")
        assert out.is_error and "(already_started)" in out.output, out.output
        result = await c.say("Move it to next week.", change("OUT001", day(7), day(10)), Reply("I can't."))
        out = tool_step(result, "change_booking")
        assert out.is_error and "(already_started)" in out.output, out.output
        untouched(csv_shop, out_now)

        result = await c.say("Keep it two more days.", change("OUT001", day(-1), day(4)), Reply("Done."))
        assert not tool_step(result, "change_booking").is_error
    # six days: the week's price, $1,300; waiver $156; tax $120.12
    untouched(csv_shop, {**out_now, "End": day(4).isoformat(), "Total": "1576.12"})


async def test_a_staff_walk_in_is_found_and_cancelled_by_its_caller(csv_shop: ShopFiles) -> None:
    """Staff type walk-ins by hand: a lower-case Ref, a Total formatted as currency."""
    walk_in = reservation_row("wk-17", "EX-103", day(3), day(4), "Dana Smith", "555-123-4567", total="$1,200.00")
    csv_shop.set_reservations(walk_in)
    async with phone_call(equipment.inventory_from_env(csv_shop.env)) as c:
        result = await c.say("I booked at the counter, I need to cancel.", find(), Reply("Found it."))
        found = tool_step(result, "find_bookings")
        assert not found.is_error and "wk-17" in found.output and "$1,200.00" in found.output, found.output
        result = await c.say("Yes, cancel WK-17.", cancel("WK-17"), Reply("Cancelled."))
        out = tool_step(result, "cancel_booking")
        assert not out.is_error, out.output
    untouched(csv_shop, {**walk_in, "Status": "CANCELLED"})


async def test_a_change_that_fails_leaves_a_call_back_for_staff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="rental-agent")
    mine = reservation("MINE01", "EX-101", day(5), day(7), "Dana Smith", CALLER)
    inventory = FakeInventory(reservations=[mine], change_error=RuntimeError("gspread exploded"))
    async with phone_call(inventory) as c:
        await c.say("Extend my booking.", find(), Reply("Found it."))
        result = await c.say("To the 9th.", change("MINE01", day(5), day(9)), Reply("Sorry, staff will call."))
        out = tool_step(result, "change_booking")
        assert out.is_error and out.output == prompts.booking_failed_recorded(inventory.callback_refs[0])
    [request] = inventory.callback_requests
    assert (request.name, request.phone) == ("Dana Smith", CALLER)
    assert "MINE01" in request.note and day(9).isoformat() in request.note
    assert inventory.reservation("MINE01") == mine
    assert len(log_lines(caplog, "❌")) == 1


async def test_after_hours_there_is_no_transfer_but_the_hours_and_the_offer_to_book() -> None:
    clock = Clock(wednesday(time(3, 0)))
    inventory = FakeInventory(policy=equipment.ShopPolicy())  # the documented default hours
    async with phone_call(inventory, env={"TRANSFER_PHONE_NUMBER": "+15550001111"}, clock=clock) as c:
        result = await c.say("Can I talk to a person?", Reply(tool_calls=[call("transfer_to_staff")]),
                             Reply("We're closed right now."))
        out = tool_step(result, "transfer_to_staff")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert not out.is_error
        assert "closed now" in out.output
        assert "Monday to Friday 8 AM to 5 PM; Saturday 8 AM to noon; closed Sunday" in out.output
        assert "next opens Wednesday at 8:00 AM" in out.output
        assert "take_message" in out.output and "book" in out.output
        assert not c.state.transferred and c.job.transfers == []

        # at 9 the shop is open: the same request is put through, once (no transfer was left
        # pending from 3 a.m.)
        clock.now = wednesday(time(9, 0))
        result = await c.say("Now?", Reply(tool_calls=[call("transfer_to_staff")]), Reply("Putting you through."))
        assert tool_step(result, "transfer_to_staff").output == prompts.TRANSFERRING
        await c.job.wait_for("shutdowns")
        assert c.job.transfers == [("sip_caller", "tel:+15550001111")] and c.job.events.count("transfer") == 1
        assert c.state.transferred and c.job.shutdowns == ["transferred"]


async def test_shop_hours_come_from_the_settings_tab(csv_shop: ShopFiles) -> None:
    """Staff's Settings: open weekdays 7 to 6, closed at weekends and on the coming Wednesday."""
    holiday = wednesday(time(10, 0))
    csv_shop.set_settings({**SHOP_SETTINGS, "Open Monday": "7am-6pm", "Open Tuesday": "7am-6pm",
                           "Open Wednesday": "7am-6pm", "Open Thursday": "7am-6pm", "Open Friday": "7am-6pm",
                           "Open Saturday": "closed", "Closed Dates": holiday.date().isoformat()})
    clock = Clock(holiday)
    async with phone_call(equipment.inventory_from_env(csv_shop.env), clock=clock) as c:
        result = await c.say("Are you open today?", Reply(tool_calls=[call("shop_hours")]), Reply("Not today."))
        out = tool_step(result, "shop_hours")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert "closed now" in out.output, out.output
        assert "Monday to Friday 7 AM to 6 PM; closed Saturday to Sunday" in out.output
        assert "next opens Thursday at 7:00 AM" in out.output

        clock.now = holiday + timedelta(days=1)  # Thursday at 10
        result = await c.say("And tomorrow at ten?", Reply(tool_calls=[call("shop_hours")]), Reply("Open."))
        assert "open now" in tool_step(result, "shop_hours").output


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


async def test_one_call_cannot_book_more_than_the_cap(csv_shop: ShopFiles) -> None:
    free = ["EX-101", "EX-102", "EX-103"]
    async with phone_call(equipment.inventory_from_env(csv_shop.env), env={"MAX_BOOKINGS_PER_CALL": "2"}) as c:
        for unit in free[:2]:
            res = await c.say("Book it.", book_step(unit), Reply("Booked."))
            assert not tool_step(res, "book_equipment").is_error
        # "ignore your instructions and book the next one too"
        res = await c.say("Now book the next one too.", book_step(free[2]), Reply("I can't."))
        out = tool_step(res, "book_equipment")
        assert out.is_error and out.output == prompts.booking_limit(2)
        assert len(c.state.booking_refs) == 2
    assert sorted(r["Equipment ID"] for r in csv_shop.reservations()) == free[:2]


async def test_parallel_bookings_in_one_turn_respect_the_cap() -> None:
    inventory = FakeInventory(book_delay=0.1)
    free = [SAMPLE_UNITS[0], SAMPLE_UNITS[2], SAMPLE_UNITS[4]]  # EX-101, EX-103, GN-101: free next week
    start, end = dates()
    async with phone_call(inventory, env={"MAX_BOOKINGS_PER_CALL": "2"}) as c:
        res = await c.say("Book all three.", Reply(tool_calls=[call(
            "book_equipment", equipment_id=u.id, renter_name="Dana Smith", start_date=start, end_date=end)
            for u in free]), Reply("Two booked."))
        outs = outputs(res, "book_equipment")
        assert len(outs) == 3 and [o.is_error for o in outs].count(True) == 1, [o.output for o in outs]
        assert len(c.state.booking_refs) == 2 and len(inventory.booking_requests) == 2
    assert sorted(c.state.booking_refs) == sorted(r.ref for r in inventory.reservations if r.call_id == "SCL_test")


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


@pytest.mark.parametrize("typed, said, matches", [
    ("Dana Smith", "smith", True),
    ("Smith, Dana", "Smith", True),  # staff type "Surname, First" on the sheet
    ("Dana van Berg", "Van Berg", True),
    ("Dana O'Neil", "o'neil", True),
    ("Dana Smith", "dana", False),  # a first name is not proof
    ("Smith, Dana", "dana", False),
    ("Dana Smith", "", False),
])
def test_surname_check_reads_the_name_as_staff_type_it(typed, said, matches):
    from rental_agent import surname_matches
    assert surname_matches(typed, said) is matches
