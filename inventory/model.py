"""The inventory's domain: units, snapshots, booking requests and their refusals.

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

AVAILABLE, RENTED, MAINTENANCE, PENDING = "AVAILABLE", "RENTED", "MAINTENANCE", "PENDING"
KNOWN_STATUSES = frozenset({AVAILABLE, RENTED, MAINTENANCE})

MAX_NAME = 100
MAX_NOTE = 500
MAX_CALL_ID = 100
REF_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read out over the phone
REF_LENGTH = 6


def fold(s: str) -> str:
    """For comparing ids, names and categories: whitespace collapsed, case folded."""
    return " ".join(str(s).split()).casefold()


def _singular(s: str) -> str:
    s = fold(s)
    return s[:-1] if s.endswith("s") else s


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
    status: str  # upper-cased: AVAILABLE, RENTED, MAINTENANCE, PENDING (held by the outbox), or as written
    category: str = ""
    daily_rate: float | None = None
    weekly_rate: float | None = None
    description: str = ""
    four_week_rate: float | None = None
    deposit: float | None = None

    @property
    def available(self) -> bool:
        return self.status == AVAILABLE


@dataclass(frozen=True)
class Snapshot:
    """What a call sees. units is None when the inventory is unknown (never read, and the
    sheet did not answer within EQUIPMENT_LOAD_TIMEOUT): unknown is not empty."""

    units: tuple[Unit, ...] | None
    age: float | None  # seconds since the data was read from its source, when handed out
    source: str  # "sheet", "csv", or why there is none ("none", "error")

    @property
    def known(self) -> bool:
        return self.units is not None

    def find(self, equipment_id: str) -> Unit | None:
        want = fold(equipment_id or "")
        for u in self.units or ():
            if want and fold(u.id) == want:
                return u
        return None

    def search(self, category: str | None = None, keyword: str | None = None,
               available_only: bool = True) -> list[Unit]:
        """Units matching a category (case-insensitive, singular or plural, or a part of it) and
        every word of keyword (in ID, name, category or description). [] when unknown."""
        out = []
        for u in self.units or ():
            if available_only and not u.available:
                continue
            if category and category.strip():
                c, uc = _singular(category), _singular(u.category)
                if not uc or (c != uc and c not in uc):
                    continue
            if keyword and keyword.strip():
                hay = fold(" ".join((u.id, u.name, u.category, u.description)))
                if not all(w in hay for w in fold(keyword).split()):
                    continue
            out.append(u)
        return out

    def categories(self) -> list[str]:
        seen: dict[str, str] = {}
        for u in self.units or ():
            if u.category.strip():
                seen.setdefault(fold(u.category), u.category.strip())
        return sorted(seen.values(), key=str.casefold)

    def alternatives(self, unit: Unit | None, exclude: str = "") -> tuple[Unit, ...]:
        """Available units of the same category, the same name first, then the cheapest."""
        if unit is None:
            return ()
        skip = fold(exclude or unit.id)
        same = [u for u in self.units or () if u.available and fold(u.id) != skip
                and fold(u.category) == fold(unit.category)]
        same.sort(key=lambda u: (fold(u.name) != fold(unit.name), u.daily_rate or 0.0, u.id))
        return tuple(same[:5])


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


class BookingRefused(Exception):
    """A booking (or call-back request) that cannot be made, for a reason the caller can act on.
    What the agent says about it is prompts.refusal(refused); this carries the facts."""

    def __init__(self, code: RefusalCode, *, unit: Unit | None = None, alternatives: tuple[Unit, ...] = (),
                 requested_id: str = "", today: date | None = None, why: str = ""):
        super().__init__(f"{code.value}{': ' + why if why else ''}")
        self.code = code
        self.unit = unit
        self.alternatives = alternatives
        self.requested_id = requested_id
        self.today = today
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
class Booking:
    ref: str  # short, for a caller to write down, e.g. "R7K3QX"
    equipment_id: str
    equipment_name: str
    renter_name: str
    renter_phone: str
    start: date
    end: date
    confirmed: bool  # False: Sheets was down, kept in the outbox; staff will confirm


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


def parse_booking(equipment_id: str, renter_name: str, renter_phone: str, start: str, end: str,
                  call_id: str = "", *, today: date) -> BookingRequest:
    """A booking request from a tool's arguments (ISO dates); raises BookingRefused."""
    name, number = _name(renter_name), _phone(renter_phone)
    try:
        d_start = date.fromisoformat(str(start).strip())
        d_end = date.fromisoformat(str(end).strip())
    except ValueError:
        raise BookingRefused(RefusalCode.BAD_DATE) from None
    if d_start < today:
        raise BookingRefused(RefusalCode.PAST_DATE, today=today)
    if d_end < d_start:
        raise BookingRefused(RefusalCode.END_BEFORE_START)
    return BookingRequest(str(equipment_id).strip(), name, number, d_start, d_end,
                          clean_text(call_id, MAX_CALL_ID)[:MAX_CALL_ID])


def parse_callback(name: str, renter_phone: str, note: str, call_id: str = "") -> CallbackRequest:
    """A call-back request: the phone must be plausible; name and note are cut to length."""
    return CallbackRequest(clean_text(name, MAX_NAME)[:MAX_NAME], _phone(renter_phone),
                           clean_text(note, MAX_NOTE)[:MAX_NOTE], clean_text(call_id, MAX_CALL_ID)[:MAX_CALL_ID])
