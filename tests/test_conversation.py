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
import os
import subprocess
import sys
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


@dataclass
class JobRecorder:
    deleted: list[str] = field(default_factory=list)
    transfers: list[tuple[str, str]] = field(default_factory=list)
    shutdowns: list[str] = field(default_factory=list)
    transfer_error: Exception | None = None

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
            self.deleted.append(room_name or jc.room.name or "room")
            return done()

        def transfer(participant: Any, transfer_to: str, play_dialtone: bool = False) -> Any:
            identity = participant if isinstance(participant, str) else participant.identity
            self.transfers.append((identity, transfer_to))
            return done(error=self.transfer_error)

        jc.delete_room = delete_room
        jc.transfer_sip_participant = transfer
        jc.shutdown = lambda reason="": self.shutdowns.append(reason)

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
        # the goodbye was spoken before the room went away
        assert c.session.history.items[-1].role == "assistant"
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
    assert rental.mask_phone("+15551234567") == "+1******4567"
    assert rental.mask_phone("tel:+447700900123") == "+4*******0123"
    assert rental.mask_phone("") == "unknown"
    assert "1234567" not in rental.mask_phone("5551234567")
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


def test_missing_configuration_exits_non_zero_naming_the_variable(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **GOOD}
    env["DEEPGRAM_API_KEY"] = ""  # set empty: a developer's .env must not fill it in
    proc = subprocess.run([sys.executable, str(ROOT / "agent.py"), "start"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "DEEPGRAM_API_KEY" in proc.stderr and "LIVEKIT_URL" not in proc.stderr
