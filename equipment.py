"""The shop's inventory: Google Sheets or the embedded CSV behind one small interface,
the cache shared by every call on the machine, and booking.

CONTRACT (agreed between equipment.py and agent.py; implementation in progress).
agent.py and the tests rely only on the names below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from typing import Mapping, Protocol


@dataclass(frozen=True)
class Unit:
    id: str
    name: str
    status: str  # upper-cased: AVAILABLE, RENTED, MAINTENANCE, PENDING (held by the outbox), or as written
    category: str = ""
    daily_rate: float | None = None
    weekly_rate: float | None = None
    description: str = ""

    @property
    def available(self) -> bool:
        return self.status == "AVAILABLE"


@dataclass(frozen=True)
class Snapshot:
    """What a call sees. units is None when the inventory is unknown (never read, and the
    sheet did not answer within EQUIPMENT_LOAD_TIMEOUT): unknown is not empty."""

    units: tuple[Unit, ...] | None
    age: float | None  # seconds since the data was read from its source, when handed out
    source: str  # "sheet" or "csv"

    @property
    def known(self) -> bool:
        return self.units is not None

    def find(self, equipment_id: str) -> Unit | None: ...
    def search(self, category: str | None = None, keyword: str | None = None,
               available_only: bool = True) -> list[Unit]: ...
    def categories(self) -> list[str]: ...


class BookingRefused(Exception):
    """A booking that cannot be made; `message` is a sentence the agent can say to the caller.

    code is one of: unknown_id, not_available, just_taken, bad_name, bad_phone, bad_date,
    past_date, end_before_start, inventory_unknown."""

    def __init__(self, code: str, message: str, alternatives: tuple[Unit, ...] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.alternatives = alternatives


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


class Inventory(Protocol):
    async def snapshot(self) -> Snapshot: ...

    async def book(self, equipment_id: str, renter_name: str, renter_phone: str,
                   start: str, end: str, call_id: str = "", *, today: date | None = None) -> Booking:
        """start/end are ISO dates (YYYY-MM-DD). Raises BookingRefused."""

    async def record_callback(self, name: str, phone: str, note: str, call_id: str = "") -> str:
        """Keeps a caller's details for staff to call back (Bookings tab, or the outbox). Returns a ref."""

    async def replay_outbox(self) -> int:
        """Writes kept bookings to the source; returns how many were settled."""


def config_errors(env: Mapping[str, str] = os.environ) -> list[str]:
    """Every missing or malformed inventory setting, one message each naming the variable."""
    ...


def inventory_from_env(env: Mapping[str, str] = os.environ) -> Inventory:
    ...
