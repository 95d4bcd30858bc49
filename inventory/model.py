"""The inventory's domain: units, booking and change requests, and their refusals (the snapshot
a call sees is inventory/snapshot.py).

Defined here (not in equipment.py, which re-exports them) so the machinery in this package can
use them without importing its own front. No I/O.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import phone

# A unit's Status says whether it can be rented at all; what is out when is in Reservations.
AVAILABLE, MAINTENANCE, RETIRED = "AVAILABLE", "MAINTENANCE", "RETIRED"
RENTED = "RENTED"  # a sheet from before the Reservations tab: rentable, its dates read as a reservation
KNOWN_STATUSES = frozenset({AVAILABLE, MAINTENANCE, RETIRED, RENTED})
RENTABLE = frozenset({AVAILABLE, RENTED})

MAX_NAME = 100
MAX_NOTE = 500
MAX_CALL_ID = 100
REF_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read out over the phone
REF_LENGTH = 6


def fold(s: str) -> str:
    """For comparing ids, names and categories: whitespace collapsed, case folded."""
    return " ".join(str(s).split()).casefold()


def clean_text(s: str, limit: int) -> str:
    """Caller text as data: control characters removed, whitespace collapsed, at most
    `limit` + 1 characters (one more than allowed, so a caller can tell "too long")."""
    s = re.sub(r"[\x00-\x1f\x7f]", " ", str(s or ""))
    return " ".join(s.split())[: limit + 1]


def new_ref() -> str:
    return "".join(secrets.choice(REF_ALPHABET) for _ in range(REF_LENGTH))


@dataclass(frozen=True)
class Unit:
    id: str
    name: str
    status: str  # upper-cased: AVAILABLE, MAINTENANCE, RETIRED, RENTED (an old sheet), or as written
    category: str = ""
    daily_rate: float | None = None
    weekly_rate: float | None = None
    description: str = ""
    four_week_rate: float | None = None
    deposit: float | None = None

    @property
    def rentable(self) -> bool:
        """Its Status allows renting (whether it is free on given dates is the calendar's)."""
        return self.status in RENTABLE


class RefusalCode(StrEnum):
    UNKNOWN_ID = "unknown_id"
    NOT_AVAILABLE = "not_available"
    JUST_TAKEN = "just_taken"
    BAD_NAME = "bad_name"
    BAD_PHONE = "bad_phone"
    BAD_DATE = "bad_date"
    PAST_DATE = "past_date"
    END_BEFORE_START = "end_before_start"
    INVENTORY_UNKNOWN = "inventory_unknown"
    NO_PRICE = "no_price"  # no day rate on file: nothing can be quoted or booked
    NO_SUCH_BOOKING = "no_such_booking"
    NOT_YOURS = "not_yours"  # the booking is not this caller's
    ALREADY_STARTED = "already_started"  # cancelled or moved only by staff once it has begun
    ALREADY_CANCELLED = "already_cancelled"


class BookingRefused(Exception):
    """A booking (or call-back request) that cannot be made, for a reason the caller can act on.
    What the agent says about it is prompts.refusal(refused); this carries the facts."""

    def __init__(self, code: RefusalCode, *, unit: Unit | None = None, alternatives: tuple[Unit, ...] = (),
                 requested_id: str = "", today: date | None = None, why: str = "", next_free: date | None = None,
                 start: date | None = None, end: date | None = None):
        super().__init__(f"{code.value}{': ' + why if why else ''}")
        self.code = code
        self.unit = unit
        self.alternatives = alternatives  # free for the same dates
        self.requested_id = requested_id
        self.today = today
        self.next_free = next_free  # the first day the unit is free for as many days
        self.start, self.end = start, end  # the dates asked for
        self.why = why  # for logs


class InventoryConfigError(Exception):
    """The inventory source is misconfigured (sheet not shared, missing worksheet or column).
    The message names what is wrong; retrying does not help."""


class SourceUnavailable(Exception):
    """The source did not answer within the retry budget (429/5xx/timeouts/connection errors)."""


class BookingNotRecorded(Exception):
    """A booking (or call-back request) could be neither written to the source nor kept in the
    outbox (STATE_DIR not writable, disk full): it is stored nowhere. The message says why."""


@dataclass(frozen=True)
class BookingRequest:
    """A booking the caller confirmed, already validated (parse_booking)."""

    equipment_id: str
    renter_name: str
    renter_phone: str
    start: date
    end: date
    call_id: str = ""


@dataclass(frozen=True)
class CallbackRequest:
    name: str
    phone: str
    note: str
    call_id: str = ""


@dataclass(frozen=True)
class ChangeRequest:
    """Move or extend a booking to new dates (cancel: `cancel=True`, dates ignored). Only for a
    booking this call identified as the caller's (the tool checks that before)."""

    ref: str
    start: date
    end: date
    cancel: bool = False
    call_id: str = ""


@dataclass(frozen=True)
class Booking:
    ref: str  # short, for a caller to write down, e.g. "R7K3QX"
    equipment_id: str
    equipment_name: str
    renter_name: str
    renter_phone: str
    start: date
    end: date
    confirmed: bool  # False: Sheets was down, kept in the outbox; staff will confirm
    total: str = ""  # what the rental costs, as written on the reservation ("412.50")
    deposit: str = ""
    status: str = "CONFIRMED"  # or CANCELLED, after a cancellation


def _name(raw: str) -> str:
    name = clean_text(raw, MAX_NAME)
    if not name or len(name) > MAX_NAME:
        raise BookingRefused(RefusalCode.BAD_NAME, why="empty" if not name else "too long")
    return name


def _phone(raw: str) -> str:
    try:
        return phone.clean_booking_phone(raw)
    except ValueError:
        raise BookingRefused(RefusalCode.BAD_PHONE) from None


def parse_dates(start: str, end: str, *, today: date) -> tuple[date, date]:
    """A rental's dates from a tool's arguments (ISO, both ends inclusive); raises BookingRefused."""
    try:
        d_start = date.fromisoformat(str(start).strip())
        d_end = date.fromisoformat(str(end).strip())
    except ValueError:
        raise BookingRefused(RefusalCode.BAD_DATE) from None
    if d_start < today:
        raise BookingRefused(RefusalCode.PAST_DATE, today=today)
    if d_end < d_start:
        raise BookingRefused(RefusalCode.END_BEFORE_START)
    return d_start, d_end


def parse_booking(equipment_id: str, renter_name: str, renter_phone: str, start: str, end: str,
                  call_id: str = "", *, today: date) -> BookingRequest:
    """A booking request from a tool's arguments (ISO dates); raises BookingRefused."""
    name, number = _name(renter_name), _phone(renter_phone)
    d_start, d_end = parse_dates(start, end, today=today)
    return BookingRequest(str(equipment_id).strip(), name, number, d_start, d_end,
                          clean_text(call_id, MAX_CALL_ID)[:MAX_CALL_ID])


def parse_callback(name: str, renter_phone: str, note: str, call_id: str = "") -> CallbackRequest:
    """A call-back request: the phone must be plausible; name and note are cut to length."""
    return CallbackRequest(clean_text(name, MAX_NAME)[:MAX_NAME], _phone(renter_phone),
                           clean_text(note, MAX_NOTE)[:MAX_NOTE], clean_text(call_id, MAX_CALL_ID)[:MAX_CALL_ID])
