"""Reservations, and which unit is free when. A unit is free for a date range when its Status
allows renting and no reservation that isn't cancelled overlaps the range. Dates are whole days,
both ends inclusive, in the shop's time zone.

Reservations come from the sheet's Reservations tab (the agent appends; staff add walk-ins and
cancel by hand) and, for a sheet from before the tab existed, from Equipment rows with Status
RENTED and Rental Start/End columns (read as reservations, never written).
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Iterable

from inventory.model import fold

logger = logging.getLogger("equipment")

CONFIRMED, CANCELLED, PENDING = "CONFIRMED", "CANCELLED", "PENDING"
NOT_BLOCKING = frozenset({"CANCELLED", "CANCELED"})
RESERVATION_HEADER = ["Ref", "Equipment ID", "Start", "End", "Renter Name", "Renter Phone", "Status", "Total",
                      "Deposit", "Created At", "Call ID", "Notes"]
RESERVATION_KEYS = ("ref", "equipmentid", "start", "end", "rentername", "renterphone", "status", "total",
                    "deposit", "createdat", "callid", "notes")
HORIZON_DAYS = 366  # how far ahead "next free" looks
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), start=1)}


def sheet_date(text: str) -> date:
    """A date as staff type it or Sheets formats it: 2030-05-01, 5/1/2030, 5/1/30, 2030/05/01,
    May 1, 2030, 1 May 2030 (month first when ambiguous, as US sheets show it)."""
    t = str(text).strip()
    try:
        return date.fromisoformat(t[:10])
    except ValueError:
        pass
    if m := re.fullmatch(r"(\d{4})/(\d{1,2})/(\d{1,2})", t):
        return date(int(m[1]), int(m[2]), int(m[3]))
    if m := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", t):
        year = int(m[3]) + (2000 if len(m[3]) == 2 else 0)
        return date(year, int(m[1]), int(m[2]))
    if m := re.fullmatch(r"([A-Za-z]{3})[a-z]*\.? (\d{1,2}),? (\d{4})", t):
        return date(int(m[3]), _MONTHS[m[1].casefold()], int(m[2]))
    if m := re.fullmatch(r"(\d{1,2}) ([A-Za-z]{3})[a-z]*\.?,? (\d{4})", t):
        return date(int(m[3]), _MONTHS[m[2].casefold()], int(m[1]))
    raise ValueError(f"not a date: {t!r}")


@dataclass(frozen=True)
class Reservation:
    ref: str
    equipment_id: str
    start: date
    end: date
    status: str = CONFIRMED
    renter_name: str = ""
    renter_phone: str = ""
    total: str = ""
    deposit: str = ""
    created_at: str = ""
    call_id: str = ""
    notes: str = ""
    legacy: bool = False  # read from an Equipment row (RENTED): changes go through staff

    @property
    def blocking(self) -> bool:
        return self.status.upper() not in NOT_BLOCKING

    def overlaps(self, start: date, end: date) -> bool:
        return self.start <= end and start <= self.end

    def to_row(self) -> list[str]:
        return [self.ref, self.equipment_id, self.start.isoformat(), self.end.isoformat(), self.renter_name,
                self.renter_phone, self.status, self.total, self.deposit, self.created_at, self.call_id, self.notes]

    def to_list(self) -> list[object]:
        """Compact form for the shared snapshot."""
        return [self.ref, self.equipment_id, self.start.toordinal(), self.end.toordinal(), self.status,
                self.renter_name, self.renter_phone, self.total, self.deposit, self.created_at, self.call_id,
                self.notes, int(self.legacy)]

    @classmethod
    def from_list(cls, data: list[object]) -> Reservation:
        ref, eid, start, end, status, name, phone, total, deposit, created, call_id, notes, legacy = data
        if not isinstance(start, int) or not isinstance(end, int) or not isinstance(eid, str):
            raise TypeError("reservation")
        return cls(str(ref), eid, date.fromordinal(start), date.fromordinal(end), str(status), str(name),
                   str(phone), str(total), str(deposit), str(created), str(call_id), str(notes), bool(legacy))


def from_row(cells: dict[str, str], where: str) -> Reservation | None:
    """One Reservations-tab row (cells by column key); None for a blank row. Raises ValueError
    for a row that names a unit but whose dates can't be read."""
    if not any(v.strip() for v in cells.values()):
        return None
    eid = cells.get("equipmentid", "").strip()
    if not eid:
        raise ValueError(f"{where}: no Equipment ID")
    start, end = sheet_date(cells.get("start", "")), sheet_date(cells.get("end", ""))
    if end < start:
        raise ValueError(f"{where}: End is before Start")
    return Reservation(
        ref=cells.get("ref", "").strip() or f"ROW-{fold(eid)}-{start.isoformat()}", equipment_id=eid, start=start,
        end=end, status=(cells.get("status", "").strip() or CONFIRMED).upper(),
        renter_name=cells.get("rentername", "").strip(), renter_phone=cells.get("renterphone", "").strip(),
        total=cells.get("total", "").strip(), deposit=cells.get("deposit", "").strip(),
        created_at=cells.get("createdat", "").strip(), call_id=cells.get("callid", "").strip(),
        notes=cells.get("notes", "").strip())


def legacy(equipment_id: str, status: str, start: str, end: str, name: str, phone: str, ref: str) -> Reservation | None:
    """An Equipment row from before the Reservations tab: RENTED with its Rental Start/End. Without
    readable dates the unit stays taken until staff change its Status (as before)."""
    if status.upper() != "RENTED":
        return None
    try:
        d_start, d_end = sheet_date(start), sheet_date(end)
    except ValueError:
        d_start, d_end = date.min, date.max
    return Reservation(ref or f"LEGACY-{equipment_id}", equipment_id, d_start, max(d_end, d_start), CONFIRMED,
                       name, phone, legacy=True)


class Calendar:
    """Blocking reservations by unit, sorted by start, for overlap and next-free questions."""

    def __init__(self, reservations: Iterable[Reservation]):
        self._by_unit: dict[str, list[Reservation]] = {}
        for r in reservations:
            if r.blocking:
                self._by_unit.setdefault(fold(r.equipment_id), []).append(r)
        for items in self._by_unit.values():
            items.sort(key=lambda r: (r.start, r.end))
        self._starts = {k: [r.start for r in v] for k, v in self._by_unit.items()}

    def conflicts(self, equipment_id: str, start: date, end: date, ignore_ref: str = "") -> list[Reservation]:
        key = fold(equipment_id)
        items = self._by_unit.get(key, [])
        upto = bisect.bisect_right(self._starts.get(key, []), end)  # those starting after `end` can't overlap
        return [r for r in items[:upto] if r.end >= start and r.ref != ignore_ref]

    def next_free(self, equipment_id: str, start: date, days: int, ignore_ref: str = "") -> date | None:
        """The first day from `start` on that begins `days` free days, within HORIZON_DAYS."""
        candidate = start
        for r in self._by_unit.get(fold(equipment_id), []):
            if r.ref == ignore_ref or r.end < candidate:
                continue
            if r.start > candidate + timedelta(days=days - 1):
                break
            candidate = r.end + timedelta(days=1)
        return candidate if candidate <= start + timedelta(days=HORIZON_DAYS) else None

    def of_unit(self, equipment_id: str) -> list[Reservation]:
        return list(self._by_unit.get(fold(equipment_id), []))


def now_iso() -> str:
    return datetime.now().astimezone().replace(microsecond=0).isoformat()
