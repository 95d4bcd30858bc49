"""Booking, changing and cancelling reservations, and call-back requests, against the store.

A booking runs under the unit's lock (the State's: a file lock on one machine, an advisory lock
across replicas): read the sheet again, check nothing overlaps (reservations, walk-ins staff typed,
and bookings still pending in the outbox), record the booking in the outbox (write-ahead), append
its Reservations row (RAW), look again, append the history row, settle. A walk-in staff typed in
the same moment wins: our row is cancelled and the caller hears it was just taken. Any failure
that is not a refusal keeps the booking in the outbox, unconfirmed, its dates held until a replay
(inventory/replay.py) writes it. An append that got no answer is never sent again until
UNCERTAIN_WAIT has passed and the sheet has been read again. Changes are inventory/changes.py.
All blocking: call off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import date, datetime, timezone

import requests

import phone
from inventory.cache import SnapshotCache, hold
from inventory.model import (
    Booking, BookingNotRecorded, BookingRefused, BookingRequest, CallbackRequest, RefusalCode, Unit, fold, new_ref,
)
from inventory.outbox import BookEntry, Outbox, RowEntry, Settle
from inventory.policy import ShopPolicy
from inventory.quote import NoPrice
from inventory.reservations import CANCELLED, CONFIRMED, PENDING, Reservation
from inventory.retry import failure, with_retries
from inventory.snapshot import Snapshot
from inventory.state import LockTimeout, State
from inventory.table import LogRow, SourceData, Store
from settings import InventorySettings

logger = logging.getLogger("equipment")

UNCERTAIN_WAIT = 120.0  # seconds after an append that got no answer before its ref is looked for again


class AppendUncertain(Exception):
    """An append got no answer: it may land later, so it must not be sent again yet."""


def uncertain(e: BaseException) -> bool:
    """Sent, but no answer: a read timeout, or the connection dropped after the request went out."""
    if isinstance(e, requests.exceptions.ReadTimeout):
        return True
    return (isinstance(e, requests.exceptions.ConnectionError)
            and not isinstance(e, requests.exceptions.ConnectTimeout) and "NewConnectionError" not in repr(e))


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().replace(microsecond=0).isoformat()


def taken_by(snap: Snapshot, equipment_id: str, start: date, end: date, ignore: tuple[str, ...] = ()
             ) -> list[Reservation]:
    """The reservations on the sheet (not the outbox's holds) that take the unit on those dates."""
    refs = {b.ref for b in snap.calendar.conflicts(equipment_id, start, end)} - set(ignore)
    return [r for r in snap.reservations if r.ref in refs and r.blocking and r.status != PENDING]


def reservation_of(entry: BookEntry, status: str = CONFIRMED) -> Reservation:
    return Reservation(entry.ref, entry.equipment_id, date.fromisoformat(entry.start), date.fromisoformat(entry.end),
                       status, entry.name, entry.phone, entry.total, entry.deposit, entry.booked_at, entry.call_id)


class Booker:
    def __init__(self, cfg: InventorySettings, store: Store, outbox: Outbox, cache: SnapshotCache, state: State):
        self.cfg = cfg
        self.store = store
        self.outbox = outbox
        self.cache = cache
        self.state = state
        self.budget = max(cfg.retry_budget, 0.5)
        self.lock_wait = self.budget + cfg.http_timeout[1] + 2.0

    # -- shared by booking, changes and replay -----------------------------------------------------
    def fresh(self, deadline: float) -> Snapshot:
        """The sheet as it is now (one request), with the outbox's pending holds."""
        source: SourceData = with_retries(self.store.read_all, deadline, "read")
        units = tuple(source.equipment.units())
        reservations = source.equipment.legacy_reservations()
        if source.reservations is not None:
            reservations += source.reservations.reservations()
        holds = [h for h in (hold(p) for p in self.state.holds()) if h is not None]
        return Snapshot(units, 0.0, self.store.source, tuple(reservations) + tuple(holds),
                        ShopPolicy.from_rows(source.settings or []))

    def reservation_values(self, r: Reservation) -> dict[str, str]:
        p = self.store.prepare_text
        return {"ref": r.ref, "equipmentid": r.equipment_id, "start": r.start.isoformat(), "end": r.end.isoformat(),
                "rentername": p(r.renter_name), "renterphone": p(r.renter_phone), "status": r.status,
                "total": r.total, "deposit": r.deposit, "createdat": r.created_at, "callid": p(r.call_id),
                "notes": p(r.notes)}

    def history_row(self, r: Reservation, kind: str, at: str, unit_name: str = "", note: str = "") -> LogRow:
        return LogRow(r.ref, at, kind, r.renter_name, r.renter_phone, r.equipment_id, unit_name, r.start.isoformat(),
                      r.end.isoformat(), r.call_id, note, r.total)

    def append_log_once(self, row: LogRow, deadline: float) -> None:
        """values:append is not idempotent: after a refused attempt, look for this row's key
        first; after one that got no answer, stop (AppendUncertain) rather than risk a second row."""
        self._append_once(lambda: self.store.append_log(row.cells(self.store.prepare_text)),
                          lambda: row.key in self.store.log_keys(), row.key, deadline)

    def _append_once(self, append, present, what: str, deadline: float) -> None:  # type: ignore[no-untyped-def]
        attempts = 0

        def once() -> None:
            nonlocal attempts
            if attempts > 0 and present():
                return
            attempts += 1
            try:
                append()
            except Exception as e:
                if uncertain(e):
                    raise AppendUncertain(f"append of {what} got no answer ({type(e).__name__})") from e
                raise

        with_retries(once, deadline, "append")

    def append_reservation_once(self, r: Reservation, deadline: float) -> None:
        def present() -> bool:
            table = self.store.read_reservations()
            return table is not None and table.find_ref(r.ref) is not None

        self._append_once(lambda: self.store.append_reservation(self.reservation_values(r)), present, r.ref, deadline)

    @contextlib.contextmanager
    def unit_lock(self, equipment_id: str):  # type: ignore[no-untyped-def]
        """The unit's lock wherever the State reaches; LockTimeout when another booking of it
        holds it longer than a booking may take."""
        with self.state.unit_lock(fold(equipment_id), self.lock_wait):
            yield

    # -- booking ----------------------------------------------------------------------------------
    def book(self, request: BookingRequest, known: Unit | None, snap: Snapshot) -> Booking:
        """Any failure that is not a refusal keeps the booking in the outbox and returns it
        unconfirmed; BookingNotRecorded only if even the outbox cannot be written."""
        ref = new_ref()
        ahead = False  # the write-ahead entry is durably in the outbox
        entry: BookEntry | None = None
        eid, start, end = request.equipment_id, request.start, request.end

        def keep(e: Exception) -> Booking:
            if known is None:  # never read, and the source fails now: can't even verify the unit
                logger.warning("Booking of %s refused: the inventory cannot be checked (%s)", eid, failure(e))
                raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN, why=failure(e)) from e
            try:
                q = snap.quote(known, start, end)
                total, deposit = str(q.total), str(q.deposit)
            except NoPrice:
                total, deposit = "", ""
            kept = entry or BookEntry(ref, known.id, known.name, request.renter_name, request.renter_phone,
                                      start.isoformat(), end.isoformat(), request.call_id, now_iso(), time.time(),
                                      total, deposit)
            return self._keep(kept, e, written=ahead)

        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.unit_lock(eid))
            except LockTimeout:
                raise BookingRefused(RefusalCode.JUST_TAKEN, unit=known, start=start, end=end,
                                     alternatives=snap.alternatives(known, start, end, eid),
                                     why="another booking of this unit is in progress") from None
            except Exception as e:  # noqa: BLE001 - the state is down or not writable: kept, not written
                return keep(e)
            try:
                deadline = time.monotonic() + self.budget
                fresh = self.fresh(deadline)
                unit = known = fresh.find(eid)
                if unit is None:
                    raise BookingRefused(RefusalCode.UNKNOWN_ID, requested_id=eid)
                if not fresh.free(unit, start, end):
                    self.refuse_taken(fresh, unit, start, end, "taken on the sheet" if unit.rentable else unit.status)
                q = fresh.quote(unit, start, end)
                entry = BookEntry(ref, unit.id, unit.name, request.renter_name, request.renter_phone,
                                  start.isoformat(), end.isoformat(), request.call_id, now_iso(), time.time(),
                                  str(q.total), str(q.deposit))
                try:
                    self.outbox.append(entry)  # write-ahead: a process that dies from here loses nothing
                    ahead = True
                except Exception as e:  # noqa: BLE001 - Sheets may still work: go on without it
                    logger.error("Outbox %s not writable (%s) - booking %s goes ahead without its write-ahead "
                                 "record", self.outbox.where, failure(e), ref)
                mine = reservation_of(entry)
                self.append_reservation_once(mine, deadline)
                self._beaten_by_a_walk_in(mine, unit, deadline)
            except NoPrice:
                raise BookingRefused(RefusalCode.NO_PRICE, unit=known) from None
            except BookingRefused:
                raise
            except Exception as e:  # noqa: BLE001 - "nothing is lost": kept in the outbox
                if isinstance(e, AppendUncertain) and ahead:
                    self.outbox.mark_uncertain(ref)
                return keep(e)
            # written: the booking is confirmed whatever happens to the history row or the cache
            self.cache.patch_quietly([mine])
            logger.info("Booked %s (%s) %s..%s for %s, ref %s, total %s", unit.id, unit.name, start, end,
                        phone.mask(request.renter_phone), ref, entry.total)
            # still under the unit lock, so a replay waiting for it finds the entry settled
            self._log_booking(entry, unit.name, ahead, time.monotonic() + self.budget)
        return Booking(ref, unit.id, unit.name, request.renter_name, request.renter_phone, start, end,
                       confirmed=True, total=entry.total, deposit=entry.deposit)

    def refuse_taken(self, fresh: Snapshot, unit: Unit, start: date, end: date, why: str) -> None:
        """Just taken, as the sheet read now says. What took it (a walk-in staff typed, another
        process' booking) goes into the shared snapshot too, so the next caller is not offered the
        unit for those dates until the TTL is up (the outbox's own holds are there already)."""
        self.cache.patch_quietly(taken_by(fresh, unit.id, start, end))
        raise BookingRefused(RefusalCode.JUST_TAKEN, unit=unit, start=start, end=end,
                             next_free=fresh.next_free(unit, start, end),
                             alternatives=fresh.alternatives(unit, start, end), why=why)

    def _beaten_by_a_walk_in(self, mine: Reservation, unit: Unit, deadline: float) -> None:
        """Looks again once our row is in: a walk-in staff typed for overlapping dates in the same
        moment wins; our row is then cancelled and the caller told it was just taken."""
        table = self.store.read_reservations()
        others = [r for r in (table.reservations() if table is not None else [])
                  if r.ref != mine.ref and r.blocking and fold(r.equipment_id) == fold(mine.equipment_id)
                  and r.overlaps(mine.start, mine.end)]
        if not others:
            return
        note = f"cancelled by the agent: {others[0].ref} was entered for the same dates at the same moment"
        try:
            self.store.update_reservation(mine.ref, {"status": CANCELLED, "notes": note}, mine.equipment_id)
            self.cache.patch_quietly([Reservation(**{**mine.__dict__, "status": CANCELLED, "notes": note})])
            logger.warning("Booking %s of %s gave way to %s, entered on the sheet at the same moment", mine.ref,
                           unit.id, others[0].ref)
        except Exception as e:  # noqa: BLE001 - the caller is not told it is booked either way
            logger.error("Outbox conflict: booking %s for unit %s overlaps %s, entered at the same moment, and could "
                         "not be cancelled (%s): staff must cancel one of them", mine.ref, unit.id, others[0].ref,
                         failure(e))
            with contextlib.suppress(Exception):
                self.append_log_once(self.history_row(mine, "CONFLICT", now_iso(), unit.name,
                                                      f"overlaps {others[0].ref}: cancel one"), deadline)
        self.outbox.settle_quietly(mine.ref, Settle.CONFLICT)
        fresh = self.fresh(deadline)
        self.refuse_taken(fresh, unit, mine.start, mine.end, f"walk-in {others[0].ref}")

    def _log_booking(self, entry: BookEntry, unit_name: str, ahead: bool, deadline: float) -> None:
        """The history row of a written booking, then the outbox entry settled. Never raises."""
        row = self.history_row(reservation_of(entry), "BOOKING", entry.booked_at, unit_name)
        try:
            self.append_log_once(row, deadline)
        except Exception as e:  # noqa: BLE001
            try:
                if not ahead:  # with the entry pending, replay finds the reservation and appends the row
                    self.outbox.append(RowEntry("log", entry.ref, tuple(row.cells(self.store.prepare_text)),
                                                time.time()))
                if isinstance(e, AppendUncertain):
                    self.outbox.mark_uncertain(entry.ref)
                logger.warning("Booking %s written but its history row was not (%s) - kept in the outbox",
                               entry.ref, failure(e))
            except Exception as oe:  # noqa: BLE001
                logger.error("Booking %s written but its history row was not (%s) and the outbox failed too "
                             "(%s): staff must add it by hand", entry.ref, failure(e), failure(oe))
            return
        if ahead:
            self.outbox.settle_quietly(entry.ref, Settle.WRITTEN)

    def _keep(self, entry: BookEntry, why: Exception, written: bool = False) -> Booking:
        """Keeps a booking that could not be written (written=True: its write-ahead entry is
        already there), its dates held, one log line saying why."""
        reason = failure(why)
        masked = phone.mask(entry.phone)
        if not written:
            try:
                self.outbox.append(entry)
            except Exception as e:  # noqa: BLE001
                logger.error("Booking %s for %s (%s) NOT RECORDED: the source failed (%s) and so did the "
                             "outbox %s (%s)", entry.ref, entry.equipment_id, masked, reason, self.outbox.where,
                             failure(e))
                raise BookingNotRecorded(
                    f"booking of {entry.equipment_id} could not be written to the inventory ({reason}) nor kept "
                    f"in the outbox {self.outbox.where} ({failure(e)})") from e
        logger.warning("Booking %s for %s (%s) kept in the outbox, staff will confirm - not written because: %s",
                       entry.ref, entry.equipment_id, masked, reason)
        return Booking(entry.ref, entry.equipment_id, entry.equipment_name, entry.name, entry.phone,
                       date.fromisoformat(entry.start), date.fromisoformat(entry.end), confirmed=False,
                       total=entry.total, deposit=entry.deposit)

    def keep(self, request: BookingRequest, unit: Unit, why: Exception, ref: str | None = None) -> Booking:
        """A booking that could not even be attempted, kept in the outbox for staff to confirm."""
        entry = BookEntry(ref or new_ref(), unit.id, unit.name, request.renter_name, request.renter_phone,
                          request.start.isoformat(), request.end.isoformat(), request.call_id, now_iso(), time.time())
        return self._keep(entry, why)

    # -- call-backs -------------------------------------------------------------------------------
    def record_callback(self, request: CallbackRequest) -> str:
        ref = new_ref()
        row = LogRow(ref, now_iso(), "CALLBACK", request.name, request.phone, call_id=request.call_id,
                     note=request.note)
        try:
            self.append_log_once(row, time.monotonic() + self.budget)
            logger.info("Call-back request %s recorded for %s", ref, phone.mask(request.phone))
        except Exception as e:  # noqa: BLE001 - kept in the outbox
            try:
                self.outbox.append(RowEntry("callback", ref, tuple(row.cells(self.store.prepare_text)), time.time()))
                if isinstance(e, AppendUncertain):
                    self.outbox.mark_uncertain(ref)
            except Exception as oe:  # noqa: BLE001
                raise BookingNotRecorded(f"call-back request could not be written ({failure(e)}) nor kept in "
                                         f"the outbox {self.outbox.where} ({failure(oe)})") from oe
            logger.warning("Call-back request %s for %s kept in the outbox (%s)", ref, phone.mask(request.phone),
                           failure(e))
        return ref
