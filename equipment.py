"""The shop's inventory, as the rest of the agent sees it: the domain types, the `Inventory`
protocol, and `inventory_from_env`, which picks the Google Sheet (GOOGLE_SHEET_ID set) or the
embedded CSV.

The machinery is in the `inventory/` package (named so it does not shadow this module):
    model.py        units, snapshots, booking requests, refusal codes (re-exported here)
    sheets.py       the Google Sheet as a store (gspread, one values GET per read, RAW writes)
    csv_store.py    the embedded CSV as a store, same columns and behaviour
    table.py        a worksheet as read; the Bookings row; the Store interface both implement
    snapshot.py     what a call sees: units, reservations, policies; free when, for how much
    reservations.py reservations and the calendar of who has what when
    quote.py        what a rental costs, worked out in code
    policy.py       the shop's policies from its Settings tab (hours, tax, waiver, deposit)
    cache.py        the snapshot every call shares, single-flight refresh
    outbox.py       the write-ahead outbox: nothing a caller was told is lost
    booking.py      booking and call-backs against a store
    changes.py      extending, moving and cancelling a booking
    replay.py       writing what the outbox holds
    sheet_rows.py   rows changed by identity (developer metadata), never by row number
    google_http.py  the Sheets API client: credentials, bounded requests
    background.py   blocking work off the event loop, tracked, late outcomes logged
    retry.py        our bounded retry (gspread's never gives up on a 429)
    files.py        durable writes and file locks under STATE_DIR
    state.py        the State interface: snapshot, locks, outbox, shared by every call
    sqlite_state.py the State on one machine (SQLite in STATE_DIR, file locks)
    postgres_state.py the State across replicas (PostgreSQL, advisory locks)
    engines.py      which State (DATABASE_URL or not); PostgreSQL with a local fallback
    legacy.py       old STATE_DIR files imported once
    cached.py       CachedInventory: when to refresh, book, replay, wait
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Mapping, Protocol

import settings
from inventory.cached import CachedInventory
from inventory import legacy
from inventory.csv_store import CsvStore
from inventory.engines import open_state
from inventory.files import Locks
from inventory.model import (
    AVAILABLE, KNOWN_STATUSES, MAINTENANCE, MAX_NAME, RENTABLE, RENTED, RETIRED, Booking, BookingNotRecorded, BookingRefused,
    BookingRequest, CallbackRequest, ChangeRequest, InventoryConfigError, RefusalCode, SourceUnavailable, Unit,
    parse_booking, parse_callback, parse_dates,
)
from inventory.policy import ShopPolicy
from inventory.quote import NoPrice, Quote
from inventory.reservations import Reservation
from inventory.snapshot import Snapshot
from inventory.sheets import SheetStore
from inventory.table import CheckReport, Store

__all__ = [
    "AVAILABLE", "KNOWN_STATUSES", "MAINTENANCE", "MAX_NAME", "RENTABLE", "RENTED", "RETIRED", "Booking", "BookingNotRecorded",
    "BookingRefused", "BookingRequest", "CachedInventory", "CheckReport", "CallbackRequest", "ChangeRequest", "Inventory",
    "InventoryConfigError", "NoPrice", "Quote", "RefusalCode", "Reservation", "ShopPolicy", "Snapshot",
    "SourceUnavailable", "UnavailableInventory", "Unit", "inventory_from_env", "inventory_from_settings",
    "parse_booking", "parse_callback", "parse_dates",
]


class Inventory(Protocol):
    async def snapshot(self) -> Snapshot:
        """What a call sees; `units` is None when unknown (never "empty" for "can't tell")."""

    async def book(self, request: BookingRequest) -> Booking:
        """Raises BookingRefused; a booking the source could not take is kept, unconfirmed."""

    async def change(self, request: ChangeRequest, today: date) -> Booking:
        """Extends, moves or cancels a booking; raises BookingRefused."""

    async def record_callback(self, request: CallbackRequest) -> str:
        """Keeps a caller's details for staff to call back. Returns a reference."""

    async def replay_outbox(self) -> int:
        """Writes kept bookings to the source; returns how many were settled."""

    async def check(self) -> CheckReport:
        """Reads the source directly: what it holds, or an error naming what is wrong."""

    async def close(self, timeout: float = 5.0) -> None:
        """At call end and worker shutdown: settles what it can (bounded), never raises."""


class UnavailableInventory:
    """Stands in when the inventory could not even be constructed: every answer is "unknown"."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def snapshot(self) -> Snapshot:
        return Snapshot(units=None, age=None, source="none")

    async def book(self, request: BookingRequest) -> Booking:
        raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN, why=self.why)

    async def change(self, request: ChangeRequest, today: date) -> Booking:
        raise BookingRefused(RefusalCode.INVENTORY_UNKNOWN, why=self.why)

    async def record_callback(self, request: CallbackRequest) -> str:
        raise BookingNotRecorded(f"the inventory is unavailable: {self.why}")

    async def replay_outbox(self) -> int:
        return 0

    async def check(self) -> CheckReport:
        raise InventoryConfigError(self.why)

    async def close(self, timeout: float = 5.0) -> None:
        return None


def inventory_from_settings(cfg: settings.InventorySettings) -> CachedInventory:
    """No network: the first request is made when a snapshot or a booking needs it (old
    STATE_DIR files are imported into the State here, once)."""
    locks = Locks(Path(cfg.state_dir))
    store: Store = SheetStore(cfg) if cfg.sheet_id else CsvStore(cfg, locks)
    state = open_state(cfg, locks)
    legacy.import_files(Path(cfg.state_dir), state, store.origin)
    return CachedInventory(cfg, store, state)


def inventory_from_env(env: Mapping[str, str] = os.environ) -> CachedInventory:
    """The inventory configured by env. Raises settings.ConfigError naming each bad variable."""
    return inventory_from_settings(settings.inventory_settings(env))
