"""An in-memory Inventory (the protocol in equipment.py), as LiveKit's frontdesk example keeps a
FakeCalendar beside the real calendar: units and reservations in lists, a ShopPolicy the test
sets (hours, tax, waiver, deposit), bookings that append a reservation (so the same unit can be
booked again for other dates), changes by Ref, scripted failures and delays, and a record of
every request it got.

It answers like CachedInventory: a unit that is not free for the dates is refused with its next
free date and the similar units free then; a change is checked by the same rules as the real
store's (inventory/changes.py: not started for a move or a cancellation, nothing overlapping)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import date, time, timedelta
from decimal import Decimal
from typing import Any, Coroutine, Iterable

from equipment import (
    Booking, BookingRefused, BookingRequest, CallbackRequest, ChangeRequest, NoPrice, RefusalCode, Reservation,
    ShopPolicy, Snapshot, Unit,
)
from inventory.changes import check as change_allowed

CONFIRMED, CANCELLED, PENDING = "CONFIRMED", "CANCELLED", "PENDING"


def unit(uid: str, name: str, category: str, status: str = "AVAILABLE", daily: float | None = 100.0,
         weekly: float | None = 400.0, description: str = "", four_week: float | None = None,
         deposit: float | None = None) -> Unit:
    return Unit(uid, name, status, category, daily, weekly, description, four_week, deposit)


SAMPLE_UNITS = (
    unit("EX-101", "Kubota KX040 Mini Excavator", "Excavators", daily=325, weekly=1300,
         description="4-ton mini excavator", deposit=500),
    unit("EX-102", "Kubota KX040 Mini Excavator", "Excavators", daily=325, weekly=1300, deposit=500),
    unit("EX-103", "Kubota KX040 Mini Excavator", "Excavators", daily=325, weekly=1300, deposit=500),
    unit("EX-301", "Bobcat E10 Micro Excavator", "Excavators", "MAINTENANCE", 210, 840),
    unit("GN-101", "Honda EU7000iS Generator", "Generators", daily=95, weekly=380,
         description="7 kW inverter generator, quiet"),
    unit("GN-102", "Honda EU7000iS Generator", "Generators", daily=95, weekly=380),
    unit("LF-101", "Genie GS-1930 Scissor Lift", "Lifts", daily=145, weekly=520),
)

# Open every day, all day: a test that is not about opening hours does not depend on the clock.
ALWAYS_OPEN = ShopPolicy(hours=((time(0, 0), time.max),) * 7)
# ALWAYS_OPEN with a 10% damage waiver, 8% tax and a $200 default deposit.
PRICED = replace(ALWAYS_OPEN, damage_waiver=Decimal("10"), tax_rate=Decimal("8"), default_deposit=Decimal("200"))


def reservation(ref: str, equipment_id: str, start: date, end: date, name: str = "Pat Jones",
                phone: str = "+15559870000", status: str = CONFIRMED, total: str = "") -> Reservation:
    return Reservation(ref, equipment_id, start, end, status, name, phone, total)


def sample_reservations(today: date | None = None) -> tuple[Reservation, ...]:
    """EX-102 is out now (another renter's), back in three days."""
    today = today or date.today()
    return (reservation("OUTEX2", "EX-102", today - timedelta(days=2), today + timedelta(days=3)),)


_refs = (f"FK{n:04d}" for n in itertools.count(1))


class FakeInventory:
    """`reservations`: None for sample_reservations(); `policy`: ALWAYS_OPEN unless given.
    Scripted failures: `book_error` / `change_error` / `callback_error` raised by the write
    (after `*_delay` seconds); `fail_to_start`: book() raises before it even returns a coroutine;
    `snapshot_error`: snapshot() raises; `known=False`: the inventory is unknown; `confirm=False`:
    bookings and changes are kept unconfirmed (as when the sheet is down)."""

    def __init__(self, units: Iterable[Unit] = SAMPLE_UNITS, *, reservations: Iterable[Reservation] | None = None,
                 policy: ShopPolicy = ALWAYS_OPEN, known: bool = True, snapshot_error: BaseException | None = None,
                 book_error: BaseException | None = None, book_delay: float = 0.0,
                 fail_to_start: BaseException | None = None, change_error: BaseException | None = None,
                 change_delay: float = 0.0, callback_error: BaseException | None = None,
                 callback_delay: float = 0.0, confirm: bool = True) -> None:
        self.units = list(units)
        self.reservations = list(sample_reservations() if reservations is None else reservations)
        self.policy = policy
        self.known = known
        self.snapshot_error = snapshot_error
        self.book_error = book_error
        self.book_delay = book_delay
        self.fail_to_start = fail_to_start
        self.change_error = change_error
        self.change_delay = change_delay
        self.callback_error = callback_error
        self.callback_delay = callback_delay
        self.confirm = confirm
        self.booking_requests: list[BookingRequest] = []
        self.bookings: list[Booking] = []
        self.change_requests: list[ChangeRequest] = []
        self.changes: list[Booking] = []
        self.callback_requests: list[CallbackRequest] = []
        self.callback_refs: list[str] = []
        self.snapshots = 0
        self.closed: list[float] = []

    # -- what a call sees ---------------------------------------------------------------------------
    def _snap(self) -> Snapshot:
        if not self.known:
            return Snapshot(None, None, "fake", policy=self.policy)
        return Snapshot(tuple(self.units), 0.0, "fake", tuple(self.reservations), self.policy)

    async def snapshot(self) -> Snapshot:
        self.snapshots += 1
        if self.snapshot_error is not None:
            raise self.snapshot_error
        return self._snap()

    def reservation(self, ref: str) -> Reservation | None:
        """The reservation as the fake holds it now (what staff would read on the sheet)."""
        return next((r for r in self.reservations if r.ref == ref), None)

    # -- writes -------------------------------------------------------------------------------------
    def book(self, request: BookingRequest) -> Coroutine[Any, Any, Booking]:
        if self.fail_to_start is not None:
            raise self.fail_to_start
        return self._book(request)

    async def _book(self, request: BookingRequest) -> Booking:
        self.booking_requests.append(request)
        if self.book_delay:
            await asyncio.sleep(self.book_delay)
        if self.book_error is not None:
            raise self.book_error
        snap = self._snap()
        if not snap.known:
            raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN)
        found = snap.find(request.equipment_id)
        if found is None:
            raise BookingRefused(RefusalCode.UNKNOWN_ID, requested_id=request.equipment_id)
        start, end = request.start, request.end
        if not snap.free(found, start, end):
            raise BookingRefused(RefusalCode.NOT_AVAILABLE, unit=found, start=start, end=end,
                                 next_free=snap.next_free(found, start, end),
                                 alternatives=snap.alternatives(found, start, end))
        try:
            q = snap.quote(found, start, end)
        except NoPrice:
            raise BookingRefused(RefusalCode.NO_PRICE, unit=found) from None
        ref = next(_refs)
        self.reservations.append(Reservation(ref, found.id, start, end, CONFIRMED if self.confirm else PENDING,
                                             request.renter_name, request.renter_phone, str(q.total),
                                             str(q.deposit), call_id=request.call_id))
        booking = Booking(ref, found.id, found.name, request.renter_name, request.renter_phone, start, end,
                          confirmed=self.confirm, total=str(q.total), deposit=str(q.deposit))
        self.bookings.append(booking)
        return booking

    async def change(self, request: ChangeRequest, today: date) -> Booking:
        self.change_requests.append(request)
        if self.change_delay:
            await asyncio.sleep(self.change_delay)
        if self.change_error is not None:
            raise self.change_error
        snap = self._snap()
        r, found = change_allowed(snap, snap.reservation(request.ref), request, today)
        if request.cancel:
            after = replace(r, status=CANCELLED)
        else:
            after = replace(r, start=request.start, end=request.end,
                            total=str(snap.quote(found, request.start, request.end).total))
        if self.confirm:
            self.reservations[self.reservations.index(r)] = after
        booking = Booking(after.ref, found.id, found.name, after.renter_name, after.renter_phone, after.start,
                          after.end, self.confirm, after.total, after.deposit, after.status)
        self.changes.append(booking)
        return booking

    async def record_callback(self, request: CallbackRequest) -> str:
        self.callback_requests.append(request)
        if self.callback_delay:
            await asyncio.sleep(self.callback_delay)
        if self.callback_error is not None:
            raise self.callback_error
        ref = next(_refs)
        self.callback_refs.append(ref)
        return ref

    async def replay_outbox(self) -> int:
        return 0

    async def check(self) -> int:
        return len(self.units)

    async def close(self, timeout: float = 5.0) -> None:
        self.closed.append(timeout)

