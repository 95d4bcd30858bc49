"""A phone call in a test: the real RentalAgent, its tools, BookingDesk and CallControl in a real
AgentSession (text mode), a scripted LLM (or a real one in the evals), and a FakeJob recording
every hang-up, transfer and shutdown. Shared by the conversation, lifecycle and eval tests."""

from __future__ import annotations

import asyncio
import contextlib
import csv
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from pathlib import Path
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


class Clock:
    """The shop's clock in a test: `now` (time-zone aware) is what Settings.now() answers, and
    the test may move it during a call."""

    def __init__(self, now: datetime) -> None:
        assert now.tzinfo is not None
        self.now = now


@dataclass(frozen=True)
class _ClockedSettings(Settings):
    clock: Clock | None = None

    def now(self) -> datetime:
        return self.clock.now if self.clock is not None else super().now()


def settings_at(settings: Settings, clock: Clock) -> Settings:
    return _ClockedSettings(**{f.name: getattr(settings, f.name) for f in fields(Settings)}, clock=clock)


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
                     first_snapshot: bool = True, model: Any = None, clock: Clock | None = None) -> AsyncIterator[Call]:
    settings = Settings.lenient({"BUSINESS_NAME": "Acme Rentals", **(env or {})})
    if clock is not None:
        settings = settings_at(settings, clock)
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
            elif first is not None and not first.cancelled():
                first.exception()  # a load that failed was answered as "unknown": nothing to report


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


def dates(days_ahead: int = 7, length: int = 2) -> tuple[str, str]:
    """A rental `days_ahead` from today, `length` + 1 days long (both ends count), as ISO text."""
    start = date.today() + timedelta(days=days_ahead)
    return start.isoformat(), (start + timedelta(days=length)).isoformat()


def day(days_ahead: int) -> date:
    return date.today() + timedelta(days=days_ahead)


def book_step(unit: equipment.Unit | str, name: str = "Dana Smith", start: date | None = None,
              end: date | None = None, **extra: Any) -> Reply:
    """The model books `unit` (dates() unless given)."""
    first, last = (start.isoformat(), end.isoformat()) if start and end else dates()
    return Reply(tool_calls=[call("book_equipment", equipment_id=unit if isinstance(unit, str) else unit.id,
                                  renter_name=name, start_date=first, end_date=last, **extra)])


def log_lines(caplog: pytest.LogCaptureFixture, marker: str = "", logger: str = "rental-agent") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and marker in r.getMessage()]


# --------------------------------------------------------------------------------------------
# the store behind a call, as staff see it

OTHER_CALLER = "+15550001234"
# The shop's Settings tab in the real-store tests (its keys as staff write them).
SHOP_SETTINGS = {
    "Open Monday": "07:00-17:00", "Open Tuesday": "07:00-17:00", "Open Wednesday": "07:00-17:00",
    "Open Thursday": "07:00-17:00", "Open Friday": "07:00-17:00", "Open Saturday": "08:00-12:00",
    "Open Sunday": "closed", "Tax Rate": "8.25%", "Damage Waiver": "12%", "Default Deposit": "200",
}


RESERVATION_COLUMNS = ["Ref", "Equipment ID", "Start", "End", "Renter Name", "Renter Phone", "Status", "Total",
                       "Deposit", "Created At", "Call ID", "Notes"]


def reservation_row(ref: str, equipment_id: str, start: date, end: date, name: str = "Pat Jones",
                    phone: str = "+15559870000", status: str = "CONFIRMED", total: str = "") -> dict[str, str]:
    """A Reservations row as staff (or an earlier call) left it."""
    return {"Ref": ref, "Equipment ID": equipment_id, "Start": start.isoformat(), "End": end.isoformat(),
            "Renter Name": name, "Renter Phone": phone, "Status": status, "Total": total}


def _as_typed(cell: str) -> str:
    """A CSV cell as it was typed (the store puts an apostrophe before = + - @)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in ("=", "+", "-", "@") else cell


@dataclass
class ShopFiles:
    """The store behind `env`: the embedded CSV's files (reservations.csv and settings.csv beside
    EQUIPMENT_CSV, the history in STATE_DIR/bookings.csv), or the sheet stand-in's tabs. Read and
    written directly, as staff would, never through the inventory."""

    env: dict[str, str]
    sheets: Any = None  # the SheetsStandIn, or None for the CSV

    def _path(self, name: str) -> Path:
        return Path(self.env["EQUIPMENT_CSV"]).with_name(name)

    def _write(self, tab: str, rows: list[list[str]]) -> None:
        if self.sheets is not None:
            self.sheets.set_rows(tab, rows)
            return
        with open(self._path(f"{tab.lower()}.csv"), "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)

    def _records(self, tab: str, path: Path) -> list[dict[str, str]]:
        if self.sheets is not None:
            return self.sheets.records(tab)
        if not path.exists():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _as_typed(v or "") for k, v in r.items()} for r in csv.DictReader(f)]

    def set_reservations(self, *rows: dict[str, str]) -> None:
        self._write("Reservations", [RESERVATION_COLUMNS] + [[r.get(c, "") for c in RESERVATION_COLUMNS]
                                                            for r in rows])

    def set_settings(self, settings: dict[str, str]) -> None:
        self._write("Settings", [["Key", "Value"]] + [[k, v] for k, v in settings.items()])

    def reservations(self) -> list[dict[str, str]]:
        return self._records("Reservations", self._path("reservations.csv") if self.sheets is None else Path())

    def reservation(self, ref: str) -> dict[str, str]:
        found = [r for r in self.reservations() if r["Ref"] == ref]
        assert len(found) == 1, (ref, self.reservations())
        return found[0]

    def history(self) -> list[dict[str, str]]:
        """The Bookings tab, or STATE_DIR/bookings.csv: every booking and change, appended."""
        return self._records("Bookings", Path(self.env["STATE_DIR"]) / "bookings.csv")


def shop_files(env: dict[str, str], sheets: Any = None) -> ShopFiles:
    """The store with SHOP_SETTINGS and an empty Reservations tab: what a test adds is all there is."""
    files = ShopFiles(env, sheets)
    files.set_settings(SHOP_SETTINGS)
    files.set_reservations()
    return files


def wednesday(at: time) -> datetime:
    """The coming Wednesday at `at`, in this machine's time zone (the shop's, in these tests)."""
    today = date.today()
    return datetime.combine(today + timedelta(days=(2 - today.weekday()) % 7 or 7), at,
                            tzinfo=datetime.now().astimezone().tzinfo)
