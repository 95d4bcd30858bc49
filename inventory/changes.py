"""Changing a booking by phone: extending it, moving it to other dates, or cancelling it before it
starts. Under the unit's lock, against the sheet as it is now: the reservation is found by its
Ref, checked (not started for a move or a cancellation, nothing else overlapping the new dates),
recorded in the outbox (write-ahead), changed on its own row by identity (inventory/sheet_rows.py:
never by row number), read back, and written to the history. Who may change it is the caller's
tools' business (by caller ID, or Ref plus surname); this module keeps the sheet right.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import date

import phone
from inventory.booking import AppendUncertain, Booker, now_iso
from inventory.model import Booking, BookingRefused, ChangeRequest, RefusalCode, Unit
from inventory.outbox import ChangeEntry, Settle
from inventory.quote import NoPrice
from inventory.reservations import CANCELLED, Reservation
from inventory.retry import failure, with_retries
from inventory.snapshot import Snapshot

logger = logging.getLogger("equipment")


def kind_of(old: Reservation, start: date, end: date, cancel: bool) -> str:
    if cancel:
        return "CANCELLED"
    return "EXTENDED" if start == old.start and end > old.end else "MOVED"


def check(fresh: Snapshot, r: Reservation | None, request: ChangeRequest, today: date) -> tuple[Reservation, Unit]:
    """The reservation and its unit if this change may be made now; else BookingRefused."""
    if r is None or r.status == "PENDING":
        raise BookingRefused(RefusalCode.NO_SUCH_BOOKING, requested_id=request.ref)
    unit = fresh.find(r.equipment_id)
    if r.legacy or unit is None:
        raise BookingRefused(RefusalCode.NO_SUCH_BOOKING, requested_id=request.ref, why="kept on the unit's row")
    if not r.blocking:
        raise BookingRefused(RefusalCode.ALREADY_CANCELLED, unit=unit, requested_id=request.ref)
    kind = kind_of(r, request.start, request.end, request.cancel)
    if kind != "EXTENDED" and r.start <= today:
        raise BookingRefused(RefusalCode.ALREADY_STARTED, unit=unit, requested_id=request.ref, today=today)
    if not request.cancel:
        if request.end < request.start:
            raise BookingRefused(RefusalCode.END_BEFORE_START)
        if request.start < today and request.start != r.start:
            raise BookingRefused(RefusalCode.PAST_DATE, today=today)
        if not fresh.free(unit, request.start, request.end, ignore_ref=r.ref):
            raise BookingRefused(RefusalCode.NOT_AVAILABLE, unit=unit, start=request.start, end=request.end,
                                 next_free=fresh.next_free(unit, request.start, request.end, ignore_ref=r.ref),
                                 alternatives=fresh.alternatives(unit, request.start, request.end), why="overlap")
    return r, unit


class Changes:
    def __init__(self, booker: Booker):
        self.b = booker

    def change(self, request: ChangeRequest, today: date, equipment_id: str = "") -> Booking:
        """Extends, moves or cancels; returns the booking as it now stands (confirmed False: kept
        in the outbox for staff to confirm). `equipment_id`: the booking's unit as the caller's
        snapshot has it (looked up on the sheet if not given). Raises BookingRefused."""
        b = self.b
        with b.unit_lock(equipment_id or self._unit_of(request)):
            fresh = b.fresh(time.monotonic() + b.budget)
            r, unit = check(fresh, fresh.reservation(request.ref), request, today)
            kind = kind_of(r, request.start, request.end, request.cancel)
            start, end = (r.start, r.end) if request.cancel else (request.start, request.end)
            try:
                total = r.total if request.cancel else str(fresh.quote(unit, start, end).total)
            except NoPrice:
                raise BookingRefused(RefusalCode.NO_PRICE, unit=unit) from None
            entry = ChangeEntry(f"{r.ref}|{kind}|{int(time.time() * 1000)}", r.ref, r.equipment_id, kind,  # type: ignore[arg-type]
                                start.isoformat(), end.isoformat(), r.start.isoformat(), r.end.isoformat(),
                                unit.name, r.renter_name, r.renter_phone, total, request.call_id, now_iso(), time.time())
            after = replace(r, start=start, end=end, total=total, status=CANCELLED if request.cancel else r.status)
            try:
                b.outbox.append(entry)  # write-ahead
            except Exception as e:  # noqa: BLE001 - nothing written yet, nothing promised
                raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN, why=f"outbox: {failure(e)}") from e
            try:
                self.write(entry, after)
            except Exception as e:  # noqa: BLE001 - kept: a replay writes it, staff confirm
                if isinstance(e, AppendUncertain):
                    b.outbox.mark_uncertain(entry.ref)
                logger.warning("Change %s of booking %s kept in the outbox, staff will confirm - not written "
                               "because: %s", kind, r.ref, failure(e))
                return self._booking(after, unit, confirmed=False)
            logger.info("Booking %s %s: %s %s..%s for %s", r.ref, kind.lower(), unit.id, start, end,
                        phone.mask(r.renter_phone))
            return self._booking(after, unit, confirmed=True)

    def write(self, entry: ChangeEntry, after: Reservation) -> None:
        """The row changed by identity (raises if it could not be), then the history row, the
        entry settled and the snapshot told (those never raise: a replay finishes them)."""
        b = self.b
        deadline = time.monotonic() + b.budget
        values = ({"status": CANCELLED} if entry.kind == "CANCELLED"
                  else {"start": entry.start, "end": entry.end, "total": entry.total})
        with_retries(lambda: b.store.update_reservation(entry.booking_ref, values, entry.equipment_id),
                     deadline, "write")
        b.cache.patch_quietly([after])
        note = f"was {entry.old_start} to {entry.old_end}" if entry.kind != "CANCELLED" else "cancelled by phone"
        try:
            b.append_log_once(b.history_row(after, entry.kind, entry.changed_at, entry.equipment_name, note), deadline)
        except Exception as e:  # noqa: BLE001 - the change is made; its history row comes with a replay
            if isinstance(e, AppendUncertain):
                b.outbox.mark_uncertain(entry.ref)
            logger.warning("Booking %s %s but its history row was not (%s) - kept in the outbox", entry.booking_ref,
                           entry.kind.lower(), failure(e))
            return
        b.outbox.settle_quietly(entry.ref, Settle.WRITTEN)

    def _unit_of(self, request: ChangeRequest) -> str:
        """The unit to lock: the one the snapshot says the booking is for (checked again, fresh)."""
        snap = self.b.fresh(time.monotonic() + self.b.budget)
        r = snap.reservation(request.ref)
        if r is None:
            raise BookingRefused(RefusalCode.NO_SUCH_BOOKING, requested_id=request.ref)
        return r.equipment_id

    @staticmethod
    def _booking(r: Reservation, unit: Unit, confirmed: bool) -> Booking:
        return Booking(r.ref, unit.id, unit.name, r.renter_name, r.renter_phone, r.start, r.end, confirmed,
                       r.total, r.deposit, r.status)
