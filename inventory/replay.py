"""Writing what the outbox still holds: bookings, changes and call-back requests that were kept
while Sheets (or this machine's connection to the shared state) was down, or whose process died
half-way. One process replays at a time, wherever the State reaches; each entry on its own, and
each written at most once: a booking whose Ref is already on the sheet is settled as it is.
"""

from __future__ import annotations

import logging
import time
from datetime import date

import phone
from inventory.booking import UNCERTAIN_WAIT, Booker, reservation_of, taken_by
from inventory.model import SourceUnavailable, Unit, fold
from inventory.outbox import MAX_ATTEMPTS, BookEntry, ChangeEntry, Damaged, Pending, RowEntry, Settle
from inventory.reservations import CANCELLED, CHANGE_HOLD, Reservation
from inventory.retry import failure, with_retries
from inventory.snapshot import Snapshot
from inventory.state import StateUnavailable
from inventory.table import LogRow

logger = logging.getLogger("equipment")


def replay(booker: Booker) -> int:
    """Settles what it can of the outbox now; returns how many entries were settled."""
    with booker.state.replay_turn() as mine:
        if not mine:
            return 0  # another process is replaying
        try:
            return _Replay(booker).run()
        finally:
            booker.outbox.forget_old()


class _Replay:
    """One pass over the pending outbox entries."""

    def __init__(self, booker: Booker):
        self.b = booker
        self.deadline = time.monotonic() + booker.budget
        self.written: list[Reservation] = []  # for the shared snapshot
        self._keys: set[str] | None = None

    def log_keys(self, fresh: bool = False) -> set[str]:
        """What the history tab already holds: read once (or again when asked), only when needed."""
        if self._keys is None or fresh:
            self._keys = with_retries(self.b.store.log_keys, self.deadline, "read")
        return self._keys

    def log_once(self, row: LogRow, fresh: bool = False) -> None:
        if row.key not in self.log_keys() and (not fresh or row.key not in self.log_keys(fresh=True)):
            self.b.append_log_once(row, self.deadline)
            self.log_keys().add(row.key)

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
            self.b.cache.patch_quietly(self.written)
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
            row = entry.row
            kind = row[9] if len(row) > 9 else "CALLBACK"
            key = entry.ref if kind in ("BOOKING", "CALLBACK") else f"{entry.ref}|{kind}|{row[1]}"
            if key not in self.log_keys() and (not fresh or key not in self.log_keys(fresh=True)):
                self.b.store.append_log(list(row))
                self.log_keys().add(key)
            self.b.outbox.settle(entry.ref, Settle.WRITTEN)
            return True
        with self.b.state.unit_lock_if_free(fold(entry.equipment_id)) as mine:
            if not mine:
                return False  # a booking of this unit is in flight (maybe this very one): later
            if self.b.outbox.is_settled(entry.ref):
                return False  # its own process finished it while we waited
            if isinstance(entry, BookEntry):
                result = self.booking(entry, fresh)
            else:
                result = self.change(entry, fresh)
            self.b.outbox.settle(entry.ref, result)
            logger.info("Outbox: %s %s for %s settled (%s)", "booking" if isinstance(entry, BookEntry) else "change",
                        entry.ref, entry.equipment_id, result)
            return True

    def booking(self, entry: BookEntry, fresh: bool) -> Settle:
        snap = self.b.fresh(self.deadline)
        mine = reservation_of(entry)
        present = snap.reservation(entry.ref)
        unit = snap.find(entry.equipment_id) or _missing(entry)
        if present is not None:
            result = Settle.ALREADY
            self.written.append(present)  # its hold goes with the entry: the snapshot must have the row
        elif not snap.free(unit, mine.start, mine.end, ignore_ref=entry.ref):
            result = Settle.CONFLICT  # what took the dates goes into the snapshot: its hold goes now
            self.written.extend(taken_by(snap, unit.id, mine.start, mine.end, ignore=(entry.ref,)))
        else:
            self.b.append_reservation_once(mine, self.deadline)
            self.written.append(mine)
            result = Settle.WRITTEN
        if result is Settle.CONFLICT:
            logger.warning("Outbox conflict: booking %s for unit %s (%s) %s..%s could not be written - the dates were "
                           "taken meanwhile; staff must call the renter back at %s", entry.ref, entry.equipment_id,
                           entry.equipment_name, entry.start, entry.end, phone.mask(entry.phone))
        conflict = result is Settle.CONFLICT
        self.log_once(self.b.history_row(
            mine, "CONFLICT" if conflict else "BOOKING", entry.booked_at, entry.equipment_name,
            "kept offline; the dates were taken meanwhile - call the renter" if conflict
            else "kept offline, written on replay"), fresh=fresh or result is Settle.ALREADY)
        return result

    def change(self, entry: ChangeEntry, fresh: bool) -> Settle:
        snap = self.b.fresh(self.deadline)
        r = snap.reservation(entry.booking_ref)
        target = (r is not None and ((entry.kind == "CANCELLED" and r.status == CANCELLED)
                                     or (entry.kind != "CANCELLED" and r.start.isoformat() == entry.start
                                         and r.end.isoformat() == entry.end)))
        unit = snap.find(entry.equipment_id)
        new_start, new_end = date.fromisoformat(entry.start), date.fromisoformat(entry.end)
        if r is None or unit is None:
            result = Settle.CONFLICT
        elif target:
            result = Settle.ALREADY
            self.written.append(r)
        elif r.status == CANCELLED or (entry.old_start and (r.start.isoformat(), r.end.isoformat())
                                          != (entry.old_start, entry.old_end)):
            result = Settle.CONFLICT  # changed since (by staff, or by a later call): never written over
        elif entry.kind != "CANCELLED" and (not unit.rentable or _taking(snap, unit, new_start, new_end, r.ref)):
            result = Settle.CONFLICT
            self.written.extend(taken_by(snap, unit.id, new_start, new_end, ignore=(r.ref, r.ref + CHANGE_HOLD)))
        else:
            after = Reservation(**{**r.__dict__, "start": date.fromisoformat(entry.start),
                                   "end": date.fromisoformat(entry.end), "total": entry.total,
                                   "status": CANCELLED if entry.kind == "CANCELLED" else r.status})
            values = ({"status": CANCELLED} if entry.kind == "CANCELLED"
                      else {"start": entry.start, "end": entry.end, "total": entry.total})
            with_retries(lambda: self.b.store.update_reservation(entry.booking_ref, values, entry.equipment_id),
                         self.deadline, "write")
            self.written.append(after)
            result = Settle.WRITTEN
        shown = r or Reservation(entry.booking_ref, entry.equipment_id, date.fromisoformat(entry.start),
                                 date.fromisoformat(entry.end), renter_name=entry.name, renter_phone=entry.phone)
        if result is Settle.CONFLICT:
            logger.warning("Outbox conflict: %s of booking %s for unit %s could not be written - the booking or the "
                           "dates changed meanwhile; staff must call the renter back at %s", entry.kind.lower(),
                           entry.booking_ref, entry.equipment_id, phone.mask(entry.phone))
        self.log_once(self.b.history_row(
            shown, "CONFLICT" if result is Settle.CONFLICT else entry.kind, entry.changed_at, entry.equipment_name,
            f"{entry.kind.lower()} kept offline: " + ("the booking or the dates changed meanwhile - call the renter"
                                                       if result is Settle.CONFLICT else "written on replay")),
            fresh=fresh or result is Settle.ALREADY)
        return result

    def failed(self, item: Pending, why: Exception) -> bool:
        """A failed (not outage) replay of one entry; at MAX_ATTEMPTS it is settled FAILED so its
        dates are no longer held, and staff are told. True if settled now. Never raises."""
        entry, reason = item.entry, failure(why)
        count = item.attempts + 1
        number = getattr(entry, "phone", "") or (entry.row[5] if isinstance(entry, RowEntry) and len(entry.row) > 5
                                                 else "")
        what = (f"{entry.op} {entry.ref} for unit {entry.equipment_id}" if isinstance(entry, (BookEntry, ChangeEntry))
                else f"{entry.op} entry {entry.ref}")
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
                self.log_once(self.b.history_row(reservation_of(entry), "CONFLICT", entry.booked_at,
                                                 entry.equipment_name,
                                                 f"kept offline; could not be written after {count} attempts "
                                                 f"({reason[:200]}) - call the renter"), fresh=True)
                noted = "; a CONFLICT row is in the history tab"
            except Exception as e:  # noqa: BLE001
                noted = f"; its CONFLICT row could not be written either ({failure(e)})"
        logger.error("Outbox conflict: %s (%s) could not be written after %d attempts - last error: %s; "
                     "settled as failed, staff must call the renter back at %s%s", what,
                     getattr(entry, "equipment_name", ""), count, reason, phone.mask(number), noted)
        try:
            self.b.outbox.settle(entry.ref, Settle.FAILED)
        except Exception as e:  # noqa: BLE001
            logger.error("Outbox: could not settle %s as failed (%s); it will be retried", entry.ref, failure(e))
            return False
        return True


def _taking(snap: Snapshot, unit: Unit, start: date, end: date, ref: str) -> list[str]:
    """The refs of what else holds the unit on those dates: not this booking's own row, nor the
    holds of its own pending entries (a kept change holds its new dates as `ref~` until written)."""
    return [b.ref for b in snap.calendar.conflicts(unit.id, start, end) if b.ref not in (ref, ref + CHANGE_HOLD)]


def _missing(entry: BookEntry) -> Unit:
    """A unit no longer on the sheet: never free."""
    return Unit(entry.equipment_id, entry.equipment_name, "RETIRED")
