"""A worksheet as read, the columns we know, the Bookings-tab row, and the Store interface that
the Sheets and CSV stores share."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Protocol

from inventory.model import KNOWN_STATUSES, InventoryConfigError, Unit, fold

logger = logging.getLogger("equipment")

COLUMNS = {
    "id": "ID", "name": "Name", "category": "Category", "status": "Status",
    "dailyrate": "Daily Rate", "weeklyrate": "Weekly Rate", "description": "Description",
    "rentername": "Renter Name", "renterphone": "Renter Phone", "rentalstart": "Rental Start",
    "rentalend": "Rental End", "bookingref": "Booking Ref", "bookedat": "Booked At",
}
REQUIRED = ("id", "name", "status")
LOG_HEADER = ["Booking Ref", "Booked At", "Equipment ID", "Equipment Name", "Renter Name", "Renter Phone",
              "Rental Start", "Rental End", "Call ID", "Kind", "Note"]


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
                    description=self.get(row, "description"))

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
    """One row of the Bookings tab (LOG_HEADER order): a booking, a call-back request, or a
    conflict staff must sort out. The one place such a row is built."""

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

    def cells(self, prepare_text: Callable[[str], str]) -> list[str]:
        """Caller text prepared for the store (stored RAW in Sheets; neutralised in a CSV)."""
        p = prepare_text
        return [self.ref, self.at, self.equipment_id, p(self.equipment_name), p(self.name), p(self.phone),
                self.start, self.end, p(self.call_id), self.kind, p(self.note)]


class Store(Protocol):
    """The same small synchronous interface over the sheet and the CSV (always called off the loop)."""

    source: str  # "sheet" or "csv"
    origin: str  # identity of the data, so a snapshot of another source is never served

    def read_table(self) -> Table: ...
    def write_unit(self, row_index: int, equipment_id: str, fields: dict[str, str], table: Table) -> None: ...
    def log_refs(self) -> set[str]: ...
    def append_log(self, row: list[str]) -> None: ...
    def prepare_text(self, s: str) -> str: ...
