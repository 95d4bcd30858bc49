"""A worksheet as read, the columns we know, the history row, and the Store interface that the
Sheets and CSV stores share."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Protocol

from inventory.model import KNOWN_STATUSES, InventoryConfigError, Unit, fold
from inventory.reservations import RESERVATION_KEYS, Reservation, from_row, legacy

logger = logging.getLogger("equipment")

COLUMNS = {
    "id": "ID", "name": "Name", "category": "Category", "status": "Status",
    "dailyrate": "Daily Rate", "weeklyrate": "Weekly Rate", "4weekrate": "4-Week Rate", "deposit": "Deposit",
    "description": "Description",
    # a sheet from before the Reservations tab kept the rental on the unit's row
    "rentername": "Renter Name", "renterphone": "Renter Phone", "rentalstart": "Rental Start",
    "rentalend": "Rental End", "bookingref": "Booking Ref", "bookedat": "Booked At",
}
REQUIRED = ("id", "name", "status")
RESERVATIONS_REQUIRED = ("ref", "equipmentid", "start", "end", "status")
# The history tab (Bookings): one row per change the agent makes, and per call-back request.
LOG_HEADER = ["Booking Ref", "Booked At", "Equipment ID", "Equipment Name", "Renter Name", "Renter Phone",
              "Rental Start", "Rental End", "Call ID", "Kind", "Note", "Total"]


def header_key(header: str) -> str:
    """"Daily Rate", "daily_rate" and "DailyRate" are the same column."""
    return re.sub(r"[\s_\-]+", "", str(header)).casefold()


def parse_money(s: str) -> float | None:
    s = re.sub(r"[^\d.\-]", "", s or "")
    try:
        return float(s) if s else None
    except ValueError:
        return None


def column_letter(i: int) -> str:
    s, i = "", i + 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


@dataclass
class Table:
    """A worksheet as read: header and data rows padded to the header width. rows[i] is sheet row i+2."""

    header: list[str]
    rows: list[list[str]]
    where: str

    def __post_init__(self) -> None:
        self.cols: dict[str, int] = {}
        for i, h in enumerate(self.header):
            k = header_key(h)
            if k and k not in self.cols:
                self.cols[k] = i
        width = len(self.header)
        self.rows = [(list(r) + [""] * (width - len(r)))[:max(width, len(r))] for r in self.rows]

    def check_required(self) -> None:
        missing = [COLUMNS[k] for k in REQUIRED if k not in self.cols]
        if missing:
            found = ", ".join(repr(h) for h in self.header if h.strip()) or "no header row"
            raise InventoryConfigError(
                f"{self.where} has no {', '.join(repr(m) for m in missing)} column"
                f"{'s' if len(missing) > 1 else ''} (found: {found})")

    def get(self, row: list[str], key: str) -> str:
        i = self.cols.get(key)
        return str(row[i]).strip() if i is not None and i < len(row) else ""

    def history_keys(self) -> set[str]:
        """The history tab's rows as the outbox's keys: a booking or call-back by its ref; a change
        by ref, kind and time (one ref has several)."""
        keys = set()
        for r in self.rows:
            ref, kind, at = self.get(r, "bookingref"), self.get(r, "kind").upper(), self.get(r, "bookedat")
            if ref:
                keys.add(ref if kind in ("BOOKING", "CALLBACK", "") else f"{ref}|{kind}|{at}")
        return keys

    def find(self, equipment_id: str) -> tuple[int, list[str]] | None:
        want = fold(equipment_id)
        for i, r in enumerate(self.rows):
            if want and fold(self.get(r, "id")) == want:
                return i, r
        return None

    def unit(self, row: list[str]) -> Unit:
        return Unit(id=self.get(row, "id"), name=self.get(row, "name"),
                    status=self.get(row, "status").upper(), category=self.get(row, "category"),
                    daily_rate=parse_money(self.get(row, "dailyrate")),
                    weekly_rate=parse_money(self.get(row, "weeklyrate")),
                    description=self.get(row, "description"),
                    four_week_rate=parse_money(self.get(row, "4weekrate")),
                    deposit=parse_money(self.get(row, "deposit")))

    def legacy_reservations(self) -> list[Reservation]:
        """Rentals kept on the units' rows by a sheet from before the Reservations tab."""
        out = []
        for r in self.rows:
            found = legacy(self.get(r, "id"), self.get(r, "status"), self.get(r, "rentalstart"),
                           self.get(r, "rentalend"), self.get(r, "rentername"), self.get(r, "renterphone"),
                           self.get(r, "bookingref"))
            if found is not None and found.equipment_id:
                out.append(found)
        return out

    def cells(self, row: list[str]) -> dict[str, str]:
        return {k: self.get(row, k) for k in self.cols}

    def reservations(self, log_problems: bool = False, problems: list[str] | None = None) -> list[Reservation]:
        """The Reservations tab's rows; a row naming a unit with dates that can't be read is logged
        (a booking the agent can't see is one it could sell twice: staff must fix it)."""
        missing = [k for k in RESERVATIONS_REQUIRED if k not in self.cols]
        if missing:
            raise InventoryConfigError(f"{self.where} has no {', '.join(repr(k) for k in missing)} column(s) "
                                       f"(found: {', '.join(repr(h) for h in self.header if h.strip())})")
        out = []
        for i, r in enumerate(self.rows):
            try:
                found = from_row({k: self.get(r, k) for k in RESERVATION_KEYS}, f"{self.where} row {i + 2}")
            except ValueError as e:
                if log_problems:
                    logger.warning("%s - ignored: fix the row so the agent can see this booking", e)
                if problems is not None:
                    problems.append(str(e))
                continue
            if found is not None:
                out.append(found)
        return out

    def find_ref(self, ref: str) -> int | None:
        """The row index (0-based, data rows) holding this reservation Ref, if exactly one does."""
        want = fold(ref)
        found = [i for i, r in enumerate(self.rows) if want and fold(self.get(r, "ref")) == want]
        return found[0] if len(found) == 1 else None

    def row_for(self, values: dict[str, str]) -> list[str]:
        """Cells in this table's column order (by header, never by position)."""
        row = [""] * len(self.header)
        for k, v in values.items():
            if k in self.cols:
                row[self.cols[k]] = v
        return row

    def units(self, log_unknown: bool = False) -> list[Unit]:
        self.check_required()
        out = []
        for i, r in enumerate(self.rows):
            if not any(str(c).strip() for c in r):
                continue  # blank row
            u = self.unit(r)
            if not u.id:
                if log_unknown:
                    logger.warning("Equipment row %d has no ID - skipped", i + 2)
                continue
            if log_unknown and u.status not in KNOWN_STATUSES:
                logger.warning("Equipment row %d (ID %s): unknown status %r - treated as not available",
                               i + 2, u.id, u.status)
            out.append(u)
        return out


@dataclass(frozen=True)
class LogRow:
    """One row of the history (Bookings) tab, LOG_HEADER order: a booking, a change to one
    (EXTENDED, MOVED, CANCELLED), a call-back request, or a conflict staff must sort out. The one
    place such a row is built."""

    ref: str
    at: str
    kind: str  # BOOKING | CALLBACK | CONFLICT
    name: str
    phone: str
    equipment_id: str = ""
    equipment_name: str = ""
    start: str = ""
    end: str = ""
    call_id: str = ""
    note: str = ""
    total: str = ""

    @property
    def key(self) -> str:
        """What makes this row unique (a ref has one BOOKING row, and one row per later change)."""
        return self.ref if self.kind in ("BOOKING", "CALLBACK") else f"{self.ref}|{self.kind}|{self.at}"

    def cells(self, prepare_text: Callable[[str], str]) -> list[str]:
        """Caller text prepared for the store (stored RAW in Sheets; neutralised in a CSV)."""
        p = prepare_text
        return [self.ref, self.at, self.equipment_id, p(self.equipment_name), p(self.name), p(self.phone),
                self.start, self.end, p(self.call_id), self.kind, p(self.note), self.total]


@dataclass
class CheckReport:
    """What `check` found on a direct read of the source."""

    units: list[Unit]
    reservations: int
    problems: list[str]  # reservation rows the agent cannot read
    has_reservations: bool  # the Reservations tab exists (else the first booking creates it)
    has_settings: bool  # the Settings tab exists (else the documented defaults apply)


@dataclass
class SourceData:
    """Everything a refresh reads, in one request where the store allows it."""

    equipment: Table
    reservations: Table | None  # None: no Reservations tab yet (an old sheet)
    settings: list[list[str]] | None  # None: no Settings tab (the documented defaults)


class Store(Protocol):
    """The same small synchronous interface over the sheet and the CSV (always called off the loop).
    Reservations are appended, and changed by their Ref, never by a row number."""

    source: str  # "sheet" or "csv"
    origin: str  # identity of the data, so a snapshot of another source is never served

    def read_all(self) -> SourceData: ...
    def read_reservations(self) -> Table | None: ...
    def append_reservation(self, values: dict[str, str]) -> None: ...
    def update_reservation(self, ref: str, values: dict[str, str], equipment_id: str) -> None: ...
    def log_keys(self) -> set[str]: ...
    def append_log(self, row: list[str]) -> None: ...
    def prepare_text(self, s: str) -> str: ...
