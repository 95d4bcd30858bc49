"""The per-call booking policy: how long a caller waits for a write, what happens to a write
that lands after that, and the call-back left for staff when a booking fails. Returns typed
outcomes; the tools turn them into words (prompts.py).

A write is never cut in half: it runs shielded, so a timeout only stops the *waiting*. Its late
outcome is still recorded (a late booking counts on the call; a late failure leaves a
call-back request, because the caller was told the shop would call).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import date
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

import prompts
from call_control import CallState
from equipment import Booking, BookingRefused, BookingRequest, CallbackRequest, ChangeRequest, Inventory

logger = logging.getLogger("rental-agent")
T = TypeVar("T")
Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


@dataclass(frozen=True)
class Booked:
    booking: Booking  # confirmed, or kept in the outbox (booking.confirmed False)


@dataclass(frozen=True)
class Refused:
    refused: BookingRefused


@dataclass(frozen=True)
class StillWriting:
    """Not done within BOOKING_TIMEOUT; it carries on and its outcome is recorded when it lands."""


@dataclass(frozen=True)
class NotBooked:
    """Failed unexpectedly; `callback` says whether staff got a call-back request."""

    callback: MessageOutcome


@dataclass(frozen=True)
class Saved:
    ref: str


@dataclass(frozen=True)
class SavingSlowly:
    """Still being saved after BOOKING_TIMEOUT; logged when it lands."""


@dataclass(frozen=True)
class NotSaved:
    why: str


BookingOutcome = Booked | Refused | StillWriting | NotBooked
MessageOutcome = Saved | SavingSlowly | NotSaved


async def wait_for_write(write: asyncio.Future[T], timeout: float) -> T:
    """Waits up to `timeout` for a shielded write. A write that finished just as the timeout
    fired counts with its own outcome (result or error), not as "still running"."""
    try:
        return await asyncio.wait_for(asyncio.shield(write), timeout)
    except asyncio.TimeoutError:
        if write.done() and not write.cancelled():
            return write.result()
        raise


class BookingDesk:
    def __init__(self, inventory: Inventory, call: CallState, *, timeout: float, max_bookings: int,
                 spawn: Spawn) -> None:
        self.inventory = inventory
        self.call = call  # its booking_refs and callback_refs are this desk's record
        self.timeout = timeout
        self.max_bookings = max_bookings
        self._spawn = spawn
        self._open_writes: set[asyncio.Future[Any]] = set()  # bookings being written count to the cap

    def at_cap(self) -> bool:
        return len(self.call.booking_refs) + len(self._open_writes) >= self.max_bookings

    def _start(self, make: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        return asyncio.ensure_future(make())

    async def book(self, request: BookingRequest) -> BookingOutcome:
        try:
            write = self._start(lambda: self.inventory.book(request))
        except Exception as e:  # book() could not even be started
            return await self._failed_booking(e, request)
        self._open_writes.add(write)
        try:
            booking = await wait_for_write(write, self.timeout)
        except BookingRefused as refused:
            self._open_writes.discard(write)
            logger.info(f"🚫 Booking refused ({refused.code}) for unit {request.equipment_id}")
            return Refused(refused)
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError) and not write.done():
                logger.error(f"❌ Booking of unit {request.equipment_id} still not done after "
                             f"{self.timeout:.0f}s (BOOKING_TIMEOUT); left running")
                write.add_done_callback(functools.partial(self._late_booking, request=request))
                return StillWriting()
            # anything else (a bug, a store error that escaped): keep the details for a call-back
            self._open_writes.discard(write)
            return await self._failed_booking(e, request)
        self._open_writes.discard(write)
        self.call.booking_refs.append(booking.ref)
        state = "confirmed" if booking.confirmed else "PENDING (kept in the outbox)"
        logger.info(f"📝 Booking {booking.ref} {state}: unit {booking.equipment_id} "
                    f"{booking.start.isoformat()}..{booking.end.isoformat()}")
        return Booked(booking)

    async def change(self, request: ChangeRequest, today: date, name: str, number: str) -> BookingOutcome:
        """Extends, moves or cancels one of the caller's bookings, with the same timeout and
        call-back policy as a booking."""
        what = f"{'Cancellation' if request.cancel else 'Change'} of booking {request.ref}"
        note = prompts.failed_change_note(request)
        try:
            write = self._start(lambda: self.inventory.change(request, today))
        except Exception as e:
            return await self._failed(e, what, name, number, note)
        try:
            booking = await wait_for_write(write, self.timeout)
        except BookingRefused as refused:
            logger.info(f"🚫 {what} refused ({refused.code})")
            return Refused(refused)
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError) and not write.done():
                logger.error(f"❌ {what} still not done after {self.timeout:.0f}s (BOOKING_TIMEOUT); left running")

                def late(w: asyncio.Future[Booking]) -> None:
                    if w.cancelled() or w.exception() is not None:
                        error = w.exception() if not w.cancelled() else asyncio.CancelledError()
                        self._spawn(self._failed(error, what, name, number, note), "late_change_callback")

                write.add_done_callback(late)
                return StillWriting()
            return await self._failed(e, what, name, number, note)
        logger.info(f"📝 {what}: {'done' if booking.confirmed else 'PENDING (kept in the outbox)'}")
        return Booked(booking)

    async def _failed(self, error: BaseException, what: str, name: str, number: str, note: str) -> NotBooked:
        """A write that failed unexpectedly: one ❌ line and a call-back request for staff."""
        logger.error(f"❌ {what} failed: {error!r}"[:300])
        try:
            outcome = await self.take_message(CallbackRequest(name, number, note, self.call.call_id))
        except BookingRefused as refused:
            outcome = NotSaved(f"refused ({refused.code})")
        if isinstance(outcome, Saved):
            logger.info(f"📝 Call-back request {outcome.ref} recorded for the failed request")
        elif isinstance(outcome, NotSaved):
            logger.warning(f"⚠️ The failed request could not be recorded for a call-back: {outcome.why}"[:300])
        return NotBooked(outcome)

    async def _failed_booking(self, error: BaseException, request: BookingRequest) -> NotBooked:
        return await self._failed(error, f"Booking of unit {request.equipment_id}", request.renter_name,
                                  request.renter_phone, prompts.failed_booking_note(request))

    def _late_booking(self, write: asyncio.Future[Booking], request: BookingRequest) -> None:
        self._open_writes.discard(write)
        if write.cancelled() or write.exception() is not None:
            error = write.exception() if not write.cancelled() else asyncio.CancelledError()
            logger.warning(f"⚠️ Late booking did not complete: {error!r}"[:300])
            # the caller was told the shop will call to confirm: make sure staff know to
            self._spawn(self._failed_booking(error, request), "late_booking_callback")
            return
        booking = write.result()
        self.call.booking_refs.append(booking.ref)
        logger.warning(f"📝 Booking {booking.ref} completed late "
                       f"({'confirmed' if booking.confirmed else 'pending'}): unit {booking.equipment_id}")

    async def take_message(self, request: CallbackRequest) -> MessageOutcome:
        """Records a call-back request. Raises BookingRefused (e.g. a bad phone number)."""
        try:
            write = self._start(lambda: self.inventory.record_callback(request))
        except Exception as e:
            return NotSaved(repr(e))
        try:
            ref = await wait_for_write(write, self.timeout)
        except BookingRefused:
            raise
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError) and not write.done():
                logger.warning(f"⚠️ Call-back request still being saved after {self.timeout:.0f}s "
                               "(BOOKING_TIMEOUT); left running")
                write.add_done_callback(self._late_callback)
                return SavingSlowly()
            return NotSaved(repr(e))
        self.call.callback_refs.append(str(ref))
        return Saved(str(ref))

    def _late_callback(self, write: asyncio.Future[str]) -> None:
        if write.cancelled() or write.exception() is not None:
            why = write.exception() if not write.cancelled() else "cancelled"
            logger.error(f"❌ Late call-back request did not complete: {why!r}"[:300])
            return
        self.call.callback_refs.append(str(write.result()))
        logger.info(f"📝 Call-back request {write.result()} recorded late")
