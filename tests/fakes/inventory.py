"""An in-memory Inventory (the protocol in equipment.py), as LiveKit's frontdesk example keeps a
FakeCalendar beside the real calendar: units in a list, bookings that mark them RENTED, scripted
failures and delays, and a record of every request it got."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Coroutine

import equipment
from equipment import Booking, BookingRefused, BookingRequest, CallbackRequest, RefusalCode, Snapshot, Unit


def unit(uid: str, name: str, category: str, status: str = "AVAILABLE", daily: float | None = 100.0,
         weekly: float | None = 400.0, description: str = "") -> Unit:
    return Unit(uid, name, status, category, daily, weekly, description)


SAMPLE_UNITS = (
    unit("EX-101", "Kubota KX040 Mini Excavator", "Excavators", daily=325, weekly=1300,
         description="4-ton mini excavator"),
    unit("EX-102", "Kubota KX040 Mini Excavator", "Excavators", "RENTED", 325, 1300),
    unit("EX-103", "Kubota KX040 Mini Excavator", "Excavators", daily=325, weekly=1300),
    unit("EX-301", "Bobcat E10 Micro Excavator", "Excavators", "MAINTENANCE", 210, 840),
    unit("GN-101", "Honda EU7000iS Generator", "Generators", daily=95, weekly=380,
         description="7 kW inverter generator, quiet"),
    unit("GN-102", "Honda EU7000iS Generator", "Generators", daily=95, weekly=380),
    unit("LF-101", "Genie GS-1930 Scissor Lift", "Lifts", daily=145, weekly=520),
)

_refs = (f"FK{n:04d}" for n in itertools.count(1))


class FakeInventory:
    """`book_error` / `callback_error`: an exception raised by the write (after `*_delay`
    seconds); `fail_to_start`: book() raises before it even returns a coroutine;
    `snapshot_error`: snapshot() raises; `known=False`: the inventory is unknown."""

    def __init__(self, units: tuple[Unit, ...] = SAMPLE_UNITS, *, known: bool = True,
                 snapshot_error: BaseException | None = None, book_error: BaseException | None = None,
                 book_delay: float = 0.0, fail_to_start: BaseException | None = None,
                 callback_error: BaseException | None = None, callback_delay: float = 0.0,
                 confirm: bool = True) -> None:
        self.units = list(units)
        self.known = known
        self.snapshot_error = snapshot_error
        self.book_error = book_error
        self.book_delay = book_delay
        self.fail_to_start = fail_to_start
        self.callback_error = callback_error
        self.callback_delay = callback_delay
        self.confirm = confirm
        self.booking_requests: list[BookingRequest] = []
        self.bookings: list[Booking] = []
        self.callback_requests: list[CallbackRequest] = []
        self.callback_refs: list[str] = []
        self.snapshots = 0
        self.closed: list[float] = []

    def _snap(self) -> Snapshot:
        return Snapshot(tuple(self.units) if self.known else None, 0.0 if self.known else None, "fake")

    async def snapshot(self) -> Snapshot:
        self.snapshots += 1
        if self.snapshot_error is not None:
            raise self.snapshot_error
        return self._snap()

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
        found = snap.find(request.equipment_id)
        if not snap.known:
            raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN)
        if found is None:
            raise BookingRefused(RefusalCode.UNKNOWN_ID, requested_id=request.equipment_id)
        if not found.available:
            raise BookingRefused(RefusalCode.NOT_AVAILABLE, unit=found, alternatives=snap.alternatives(found))
        self.units[self.units.index(found)] = Unit(found.id, found.name, equipment.RENTED, found.category,
                                                   found.daily_rate, found.weekly_rate, found.description)
        booking = Booking(next(_refs), found.id, found.name, request.renter_name, request.renter_phone,
                          request.start, request.end, confirmed=self.confirm)
        self.bookings.append(booking)
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
