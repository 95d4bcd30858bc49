"""Booking and call-backs against the store, and replaying what the outbox still holds.

A booking runs under the unit's lock (the State's: a file lock on one machine, an advisory lock
across replicas): re-read the source, record it in the outbox (write-ahead), write the unit row
(one RAW request), append the Bookings row, settle. Any failure after validation that is not a
refusal keeps the booking in the outbox, unconfirmed, with the unit held PENDING until a replay
writes it. A Bookings append that timed out may still land: it is never sent again until
UNCERTAIN_WAIT has passed and the tab has been read again. All blocking: call off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import date, datetime, timezone

import requests

import phone
from inventory.cache import SnapshotCache
from inventory.model import (
    MAINTENANCE, PENDING, RENTED, Booking, BookingNotRecorded, BookingRefused, BookingRequest, CallbackRequest,
    RefusalCode, Snapshot, SourceUnavailable, Unit, fold, new_ref,
)
from inventory.outbox import MAX_ATTEMPTS, BookEntry, Damaged, Outbox, Pending, RowEntry, Settle
from inventory.retry import failure, with_retries
from inventory.state import LockTimeout, State, StateUnavailable
from inventory.table import LogRow, Store, Table
from settings import InventorySettings

logger = logging.getLogger("equipment")

UNCERTAIN_WAIT = 120.0  # seconds after a timed-out append before its ref is looked for again


class AppendUncertain(Exception):
    """A Bookings append got no answer: it may land later, so it must not be sent again yet."""


def uncertain(e: BaseException) -> bool:
    """Sent, but no answer: a read timeout, or the connection dropped after the request went out."""
    if isinstance(e, requests.exceptions.ReadTimeout):
        return True
    return (isinstance(e, requests.exceptions.ConnectionError)
            and not isinstance(e, requests.exceptions.ConnectTimeout) and "NewConnectionError" not in repr(e))


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().replace(microsecond=0).isoformat()


class Booker:
    def __init__(self, cfg: InventorySettings, store: Store, outbox: Outbox, cache: SnapshotCache, state: State):
        self.cfg = cfg
        self.store = store
        self.outbox = outbox
        self.cache = cache
        self.state = state
        self.budget = max(cfg.retry_budget, 0.5)

    # -- shared by booking and replay -------------------------------------------------------------
    def _rented_fields(self, entry: BookEntry) -> dict[str, str]:
        p = self.store.prepare_text
        return {"status": RENTED, "rentername": p(entry.name), "renterphone": p(entry.phone),
                "rentalstart": entry.start, "rentalend": entry.end, "bookingref": entry.ref,
                "bookedat": entry.booked_at}

    def _log_row(self, entry: BookEntry, kind: str = "BOOKING", note: str = "") -> list[str]:
        return LogRow(entry.ref, entry.booked_at, kind, entry.name, entry.phone, entry.equipment_id,
                      entry.equipment_name, entry.start, entry.end, entry.call_id, note).cells(self.store.prepare_text)

    def append_log_once(self, row: list[str], ref: str, deadline: float) -> None:
        """values:append is not idempotent: after a refused attempt, look for our ref first;
        after one that got no answer, stop (AppendUncertain) rather than risk a second row."""
        attempts = 0

        def once() -> None:
            nonlocal attempts
            if attempts > 0 and ref in self.store.log_refs():
                return
            attempts += 1
            try:
                self.store.append_log(row)
            except Exception as e:
                if uncertain(e):
                    raise AppendUncertain(f"Bookings append of {ref} got no answer ({type(e).__name__})") from e
                raise

        with_retries(once, deadline, "append")

    # -- booking ----------------------------------------------------------------------------------
    def book(self, request: BookingRequest, known: Unit | None, snap: Snapshot) -> Booking:
        """Any failure that is not a refusal keeps the booking in the outbox and returns it
        unconfirmed; BookingNotRecorded only if even the outbox cannot be written."""
        ref = new_ref()
        ahead = False  # the write-ahead entry is durably in the outbox
        eid = request.equipment_id

        def keep(e: Exception) -> Booking:
            if known is None:  # never read, and the source fails now: can't even verify the unit
                logger.warning("Booking of %s refused: the inventory cannot be checked (%s)", eid, failure(e))
                raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN, why=failure(e)) from e
            return self._keep(self._entry(ref, request, known, now_iso()), e, written=ahead)

        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.state.unit_lock(fold(eid), self.budget + self.cfg.http_timeout[1] + 2.0))
            except LockTimeout:
                raise BookingRefused(RefusalCode.JUST_TAKEN, unit=known, alternatives=snap.alternatives(known, eid),
                                     why="another booking of this unit is in progress") from None
            except Exception as e:  # noqa: BLE001 - the state is down or not writable: kept, not written
                return keep(e)
            try:
                if fold(eid) in self.outbox.held_units():
                    self.cache.patch_quietly({known.id if known else eid: PENDING})
                    raise BookingRefused(RefusalCode.JUST_TAKEN, unit=known,
                                         alternatives=snap.alternatives(known, eid), why="held by the outbox")
                deadline = time.monotonic() + self.budget
                table = with_retries(self.store.read_table, deadline, "read")
                table.check_required()
                found = table.find(eid)
                if found is None:
                    raise BookingRefused(RefusalCode.UNKNOWN_ID, requested_id=eid)
                row_index, row = found
                fresh = known = table.unit(row)
                if not fresh.available:
                    self.cache.patch_quietly({fresh.id: fresh.status})
                    fresh_snap = Snapshot(tuple(table.units()), 0.0, self.store.source)
                    raise BookingRefused(RefusalCode.JUST_TAKEN, unit=fresh,
                                         alternatives=fresh_snap.alternatives(fresh), why=f"now {fresh.status}")
                entry = self._entry(ref, request, fresh, now_iso())
                try:
                    self.outbox.append(entry)  # write-ahead: a process that dies from here loses nothing
                    ahead = True
                    # held while in flight (it is about to be RENTED), and held if this process dies
                    self.cache.patch_quietly({fresh.id: PENDING})
                except Exception as e:  # noqa: BLE001 - Sheets may still work: go on without it
                    logger.error("Outbox %s not writable (%s) - booking %s goes ahead without its write-ahead "
                                 "record", self.outbox.where, failure(e), ref)
                fields = self._rented_fields(entry)
                with_retries(lambda: self.store.write_unit(row_index, fresh.id, fields, table), deadline, "write")
            except BookingRefused:
                raise
            except Exception as e:  # noqa: BLE001 - "nothing is lost": kept in the outbox
                return keep(e)
            # written: the booking is confirmed whatever happens to the audit row or the cache
            self.cache.patch_quietly({fresh.id: RENTED})
            logger.info("Booked %s (%s) for %s, ref %s", fresh.id, fresh.name, phone.mask(request.renter_phone), ref)
            # still under the unit lock, so a replay waiting for it finds the entry settled
            self._log_booking(entry, ahead, time.monotonic() + self.budget)
        return Booking(ref, fresh.id, fresh.name, request.renter_name, request.renter_phone, request.start,
                       request.end, confirmed=True)

    @staticmethod
    def _entry(ref: str, request: BookingRequest, unit: Unit, booked_at: str) -> BookEntry:
        return BookEntry(ref, unit.id, unit.name, request.renter_name, request.renter_phone,
                         request.start.isoformat(), request.end.isoformat(), request.call_id, booked_at, time.time())

    def _log_booking(self, entry: BookEntry, ahead: bool, deadline: float) -> None:
        """The Bookings row of a written booking, then the outbox entry settled. Never raises."""
        row = self._log_row(entry)
        try:
            self.append_log_once(row, entry.ref, deadline)
        except Exception as e:  # noqa: BLE001
            try:
                if not ahead:  # with the entry pending, replay finds the unit row ours and appends the row
                    self.outbox.append(RowEntry("log", entry.ref, tuple(row), time.time()))
                if isinstance(e, AppendUncertain):
                    self.outbox.mark_uncertain(entry.ref)
                logger.warning("Booking %s written but its Bookings row was not (%s) - kept in the outbox",
                               entry.ref, failure(e))
            except Exception as oe:  # noqa: BLE001
                logger.error("Booking %s written but its Bookings row was not (%s) and the outbox failed too "
                             "(%s): staff must add it by hand", entry.ref, failure(e), failure(oe))
            return
        if ahead:
            self.outbox.settle_quietly(entry.ref, Settle.WRITTEN)

    def _keep(self, entry: BookEntry, why: Exception, written: bool = False) -> Booking:
        """Keeps a booking that could not be written (written=True: its write-ahead entry is
        already there), holds the unit PENDING, logs one line saying why."""
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
        self.cache.patch_quietly({entry.equipment_id: PENDING})
        logger.warning("Booking %s for %s (%s) kept in the outbox, staff will confirm - not written because: %s",
                       entry.ref, entry.equipment_id, masked, reason)
        return Booking(entry.ref, entry.equipment_id, entry.equipment_name, entry.name, entry.phone,
                       date.fromisoformat(entry.start), date.fromisoformat(entry.end), confirmed=False)

    def keep(self, request: BookingRequest, unit: Unit, why: Exception, ref: str | None = None) -> Booking:
        """A booking that could not even be attempted, kept in the outbox for staff to confirm."""
        return self._keep(self._entry(ref or new_ref(), request, unit, now_iso()), why)

    # -- call-backs -------------------------------------------------------------------------------
    def record_callback(self, request: CallbackRequest) -> str:
        ref = new_ref()
        row = LogRow(ref, now_iso(), "CALLBACK", request.name, request.phone, call_id=request.call_id,
                     note=request.note).cells(self.store.prepare_text)
        try:
            self.append_log_once(row, ref, time.monotonic() + self.budget)
            logger.info("Call-back request %s recorded for %s", ref, phone.mask(request.phone))
        except Exception as e:  # noqa: BLE001 - kept in the outbox
            try:
                self.outbox.append(RowEntry("callback", ref, tuple(row), time.time()))
                if isinstance(e, AppendUncertain):
                    self.outbox.mark_uncertain(ref)
            except Exception as oe:  # noqa: BLE001
                raise BookingNotRecorded(f"call-back request could not be written ({failure(e)}) nor kept in "
                                         f"the outbox {self.outbox.where} ({failure(oe)})") from oe
            logger.warning("Call-back request %s for %s kept in the outbox (%s)", ref, phone.mask(request.phone),
                           failure(e))
        return ref

    # -- replay -----------------------------------------------------------------------------------
    def replay(self) -> int:
        """Replays the outbox (one process at a time, wherever the State reaches). Each entry on
        its own: an outage (SourceUnavailable) stops the replay for a later one; any other failure
        is counted, and after MAX_ATTEMPTS the entry is settled FAILED (CONFLICT row for staff)."""
        with self.state.replay_turn() as mine:
            if not mine:
                return 0  # another process is replaying
            try:
                return _Replay(self).run()
            finally:
                self.outbox.forget_old()


class _Replay:
    """One pass over the pending outbox entries."""

    def __init__(self, booker: Booker):
        self.b = booker
        self.deadline = time.monotonic() + booker.budget
        self.changes: dict[str, str] = {}  # unit -> status for the shared snapshot
        self.seen: dict[str, str] = {}  # unit -> status read from the source during this replay
        self._refs: set[str] | None = None

    def log_refs(self, fresh: bool = False) -> set[str]:
        """Refs already on the Bookings tab: read once (or again when asked), only when needed."""
        if self._refs is None or fresh:
            self._refs = with_retries(self.b.store.log_refs, self.deadline, "read")
        return self._refs

    def append_once(self, row: list[str], ref: str, fresh: bool = False) -> None:
        if ref not in self.log_refs() and (not fresh or ref not in self.log_refs(fresh=True)):
            self.b.append_log_once(row, ref, self.deadline)
            self.log_refs().add(ref)

    def run(self) -> int:
        pending = self.b.outbox.pending()
        settled = 0
        try:
            for i, item in enumerate(pending):
                try:
                    if self.entry(item):
                        settled += 1
                except (SourceUnavailable, StateUnavailable) as e:
                    # an outage (Sheets, or the state: e.g. PostgreSQL refusing new connections), not
                    # this entry's fault: it is not counted against the entry
                    left = len(pending) - i
                    what = "Sheets" if isinstance(e, SourceUnavailable) else "the state"
                    logger.warning("Outbox replay stopped at %s: %s unavailable (%s); %d entr%s left for a "
                                   "later replay", item.entry.ref, what, failure(e), left, "y" if left == 1 else "ies")
                    raise
                except Exception as e:  # noqa: BLE001 - this entry's problem: the others go on
                    if self.failed(item, e):
                        settled += 1
        finally:
            self.b.cache.patch_quietly(self.changes)
        return settled

    def entry(self, item: Pending) -> bool:
        """One outbox entry. True if it was settled now. Raises on any failure."""
        entry = item.entry
        if isinstance(entry, Damaged):
            raise ValueError(f"damaged {entry.op} entry: {entry.why}")
        if item.uncertain_at is not None and time.time() - item.uncertain_at < UNCERTAIN_WAIT:
            return False  # its last append may still land: look again later
        fresh = item.uncertain_at is not None
        if isinstance(entry, RowEntry):
            self.append_once(list(entry.row), entry.ref, fresh=fresh)
            self.b.outbox.settle(entry.ref, Settle.WRITTEN)
            return True
        with self.b.state.unit_lock_if_free(fold(entry.equipment_id)) as mine:
            if not mine:
                return False  # a booking of this unit is in flight (maybe this very one): later
            if self.b.outbox.is_settled(entry.ref):
                return False  # its booking finished while we waited
            result, now_status = self._write_unit(entry)
            eid = entry.equipment_id
            if result is Settle.CONFLICT:
                logger.warning("Outbox conflict: booking %s for unit %s (%s) could not be written - the unit is "
                               "now %s; staff must call the renter back at %s", entry.ref, eid,
                               entry.equipment_name, now_status, phone.mask(entry.phone))
                self.changes[eid] = now_status if now_status != "missing" else MAINTENANCE
            else:
                self.changes[eid] = RENTED
            # a booking already written may have had its Bookings row appended (by its own process)
            # after the refs were read: read them again before appending, never a second row
            conflict = result is Settle.CONFLICT
            self.append_once(self.b._log_row(
                entry, "CONFLICT" if conflict else "BOOKING",
                "kept offline; unit was taken meanwhile - call the renter" if conflict
                else "kept offline, written on replay"), entry.ref, fresh=fresh or result is Settle.ALREADY)
            self.b.outbox.settle(entry.ref, result)
            logger.info("Outbox: booking %s for %s settled (%s)", entry.ref, eid, result)
            return True

    def _write_unit(self, entry: BookEntry) -> tuple[Settle, str]:
        table: Table = with_retries(self.b.store.read_table, self.deadline, "read")
        table.check_required()
        found = table.find(entry.equipment_id)
        if found is None:
            return Settle.CONFLICT, "missing"
        row_index, row = found
        cur = table.unit(row)
        self.seen[entry.equipment_id] = cur.status
        p = self.b.store.prepare_text
        ours = table.get(row, "bookingref") == entry.ref or (
            cur.status == RENTED and "bookingref" not in table.cols
            and table.get(row, "rentername") == p(entry.name) and table.get(row, "renterphone") == p(entry.phone))
        if ours:
            return Settle.ALREADY, cur.status
        if not cur.available:
            return Settle.CONFLICT, cur.status
        fields = self.b._rented_fields(entry)
        with_retries(lambda: self.b.store.write_unit(row_index, cur.id, fields, table), self.deadline, "write")
        self.seen[entry.equipment_id] = RENTED
        return Settle.WRITTEN, RENTED

    def failed(self, item: Pending, why: Exception) -> bool:
        """A failed (not outage) replay of one entry; at MAX_ATTEMPTS it is settled FAILED so its
        unit is no longer held, and staff are told. True if settled now. Never raises."""
        entry, reason = item.entry, failure(why)
        count = item.attempts + 1
        is_book = isinstance(entry, BookEntry)
        number = entry.phone if isinstance(entry, BookEntry) else (
            entry.row[5] if isinstance(entry, RowEntry) and len(entry.row) > 5 else "")
        what = f"booking {entry.ref} for unit {entry.equipment_id}" if is_book else f"{entry.op} entry {entry.ref}"
        logger.warning("Outbox: %s failed on replay (attempt %d/%d): %s", what, count, MAX_ATTEMPTS, reason)
        if count < MAX_ATTEMPTS:
            try:
                self.b.outbox.record_attempt(entry.ref, reason)
            except Exception as e:  # noqa: BLE001
                logger.warning("Outbox: could not record the failed attempt of %s (%s)", entry.ref, failure(e))
            return False
        noted = ""
        if isinstance(entry, BookEntry):
            try:  # a CONFLICT row for staff, once per ref
                self.deadline = time.monotonic() + self.b.budget
                self.append_once(self.b._log_row(
                    entry, "CONFLICT", f"kept offline; could not be written after {count} attempts "
                                       f"({reason[:200]}) - call the renter"), entry.ref, fresh=True)
                noted = "; a CONFLICT row is in the Bookings tab"
            except Exception as e:  # noqa: BLE001
                noted = f"; its CONFLICT row could not be written either ({failure(e)})"
            if entry.equipment_id in self.seen:
                self.changes[entry.equipment_id] = self.seen[entry.equipment_id]  # no longer held
        logger.error("Outbox conflict: %s (%s) could not be written after %d attempts - last error: %s; "
                     "settled as failed, staff must call the renter back at %s%s", what,
                     getattr(entry, "equipment_name", ""), count, reason, phone.mask(number), noted)
        try:
            self.b.outbox.settle(entry.ref, Settle.FAILED)
        except Exception as e:  # noqa: BLE001
            logger.error("Outbox: could not settle %s as failed (%s); it will be retried", entry.ref, failure(e))
            return False
        return True
