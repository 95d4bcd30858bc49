"""The write-ahead outbox: bookings and call-back requests recorded before the source is
written, settled after. A process that dies mid-booking, or a source that is down, loses nothing:
what is still pending is replayed later (inventory/booking.py decides how).

Entries live in the State (SQLite or PostgreSQL): one row per ref, unique, with its attempts,
whether a Bookings append may still land, and its outcome once settled. What is read back is
validated: an entry another version wrote that lacks what a replay needs is reported and
settled as failed after MAX_ATTEMPTS, never written half-empty to the shop's sheet.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import date
from enum import StrEnum
from typing import Any, Literal

from inventory.model import fold
from inventory.retry import failure
from inventory.state import OutboxRow, State

logger = logging.getLogger("equipment")

MAX_ATTEMPTS = 5  # failed replays (not outages) of one entry before it is settled "failed"
KEEP_SETTLED_DAYS = 30  # settled entries are history for ops; older ones are forgotten


class Settle(StrEnum):
    WRITTEN = "written"  # written now
    ALREADY = "already"  # the source already holds it (its own process wrote it)
    CONFLICT = "conflict"  # the unit was taken meanwhile: staff call the renter back
    FAILED = "failed"  # gave up after MAX_ATTEMPTS


@dataclass(frozen=True)
class BookEntry:
    ref: str
    equipment_id: str
    equipment_name: str
    name: str
    phone: str
    start: str
    end: str
    call_id: str = ""
    booked_at: str = ""
    at: float = 0.0
    total: str = ""  # the quote's total, written on the reservation
    deposit: str = ""
    op: Literal["book"] = "book"


@dataclass(frozen=True)
class ChangeEntry:
    """A change to a reservation still to be written: new dates (EXTENDED, MOVED) or CANCELLED.
    `ref` is this change's own key in the outbox; `booking_ref` the reservation's Ref."""

    ref: str
    booking_ref: str
    equipment_id: str
    kind: Literal["EXTENDED", "MOVED", "CANCELLED"]
    start: str  # the dates after the change (a cancellation keeps the booking's)
    end: str
    old_start: str
    old_end: str
    equipment_name: str = ""
    name: str = ""
    phone: str = ""
    total: str = ""
    call_id: str = ""
    changed_at: str = ""
    at: float = 0.0
    op: Literal["change"] = "change"


@dataclass(frozen=True)
class RowEntry:
    """A Bookings-tab row still to append: a call-back request, or the row of a written booking."""

    op: Literal["callback", "log"]
    ref: str
    row: tuple[str, ...] = ()
    at: float = 0.0


@dataclass(frozen=True)
class Damaged:
    """An entry that cannot be replayed as read (another version wrote it, or it was damaged)."""

    ref: str
    op: str
    why: str


Entry = BookEntry | ChangeEntry | RowEntry


@dataclass(frozen=True)
class Pending:
    entry: Entry | Damaged
    attempts: int = 0
    uncertain_at: float | None = None  # a Bookings append timed out then: it may still land


def payload(entry: Entry) -> dict[str, Any]:
    data = asdict(entry)
    if isinstance(entry, RowEntry):
        data["row"] = list(entry.row)
    return data


def parse_entry(ref: str, op: str, data: dict[str, Any]) -> Entry | Damaged:
    try:
        if op == "book":
            fields = {k: data[k] for k in BookEntry.__dataclass_fields__ if k in data and k != "op"}
            entry = BookEntry(**{**fields, "ref": ref})
            for k in ("equipment_id", "name", "phone", "start", "end"):
                if not isinstance(getattr(entry, k), str) or not getattr(entry, k).strip():
                    return Damaged(ref, op, f"no {k}")
            date.fromisoformat(entry.start), date.fromisoformat(entry.end)
            return entry
        if op == "change":
            fields = {k: data[k] for k in ChangeEntry.__dataclass_fields__ if k in data and k != "op"}
            change = ChangeEntry(**{**fields, "ref": ref})
            for k in ("booking_ref", "equipment_id", "start", "end", "old_start", "old_end"):
                if not isinstance(getattr(change, k), str) or not getattr(change, k).strip():
                    return Damaged(ref, op, f"no {k}")
            if change.kind not in ("EXTENDED", "MOVED", "CANCELLED"):
                return Damaged(ref, op, f"unknown change {change.kind!r}")
            date.fromisoformat(change.start), date.fromisoformat(change.end)
            return change
        if op in ("callback", "log"):
            row = data.get("row")
            if not isinstance(row, list) or not row:
                return Damaged(ref, op, "no row")
            return RowEntry(op, ref, tuple(str(c) for c in row), float(data.get("at") or 0.0))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        return Damaged(ref, op, f"unreadable ({e})"[:120])
    return Damaged(ref, op, "unknown kind")


class Outbox:
    def __init__(self, state: State):
        self.state = state

    @property
    def where(self) -> str:
        return self.state.where

    def append(self, entry: Entry) -> None:
        unit = fold(entry.equipment_id) if isinstance(entry, (BookEntry, ChangeEntry)) else ""
        self.state.add(entry.ref, entry.op, unit, payload(entry))

    def pending(self) -> list[Pending]:
        return [self._pending(row) for row in self.state.pending()]

    @staticmethod
    def _pending(row: OutboxRow) -> Pending:
        return Pending(parse_entry(row.ref, row.kind, row.payload), row.attempts, row.uncertain_at)

    def held_units(self) -> set[str]:
        """Units held by a pending booking (folded ids)."""
        return self.state.held_units()

    def record_attempt(self, ref: str, reason: str) -> int:
        return self.state.attempt(ref, reason)

    def mark_uncertain(self, ref: str) -> None:
        self.state.mark_uncertain(ref, time.time())

    def settle(self, ref: str, result: Settle) -> None:
        self.state.settle(ref, str(result))

    def settle_quietly(self, ref: str, result: Settle) -> None:
        """settle(), logged instead of raised: a later replay finds the row and the Bookings entry
        already carrying the ref and settles it without writing again."""
        try:
            self.settle(ref, result)
        except Exception as e:  # noqa: BLE001
            logger.warning("Outbox: could not mark %s settled (%s); a replay will", ref, failure(e))

    def is_settled(self, ref: str) -> bool:
        return self.state.is_settled(ref)

    def forget_old(self) -> None:
        """Settled entries older than KEEP_SETTLED_DAYS go (housekeeping: never raises)."""
        try:
            self.state.forget_settled(time.time() - KEEP_SETTLED_DAYS * 86400)
        except Exception as e:  # noqa: BLE001
            logger.warning("Outbox housekeeping skipped (%s)", failure(e))
