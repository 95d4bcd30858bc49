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
from datetime import date, datetime
from typing import Iterable, NamedTuple

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


class Busy(NamedTuple):
    """Dates a unit is taken: what availability needs of a reservation, and nothing more."""

    equipment_id: str
    start: date
    end: date
    ref: str


def busy_of(reservations: Iterable[Reservation]) -> dict[str, list[list[object]]]:
    """The compact form of the blocking ones, for the shared snapshot: by folded unit id, sorted
    [start, end, ref] lists (day ordinals), ready for a Calendar with no work per reservation."""
    by_unit: dict[str, list[list[object]]] = {}
    for r in reservations:
        if r.blocking:
            by_unit.setdefault(fold(r.equipment_id), []).append([r.start.toordinal(), r.end.toordinal(), r.ref])
    for items in by_unit.values():
        items.sort()
    return by_unit


class Calendar:
    """What is taken when, by unit, sorted by start, for overlap and next-free questions. Built
    from Reservations, or from the snapshot's compact form (`busy_of`) plus the reservations
    changed since (they win by ref): a question touches only its unit's few entries, never the
    thousands of others."""

    def __init__(self, reservations: Iterable[Reservation] = (), busy: dict[str, list[list[object]]] | None = None):
        self._by_unit: dict[str, list[list[object]]] = dict(busy or {})
        changed = [r for r in reservations]
        refs = {r.ref for r in changed}
        for unit in {fold(r.equipment_id) for r in changed} | ({k for k, v in self._by_unit.items()
                                                                if any(e[2] in refs for e in v)} if refs else set()):
            kept = [e for e in self._by_unit.get(unit, []) if e[2] not in refs]
            kept += [[r.start.toordinal(), r.end.toordinal(), r.ref] for r in changed
                     if r.blocking and fold(r.equipment_id) == unit]
            self._by_unit[unit] = sorted(kept)
        self._starts: dict[str, list[int]] = {}

    def _entries(self, equipment_id: str) -> tuple[str, list[list[object]]]:
        key = fold(equipment_id)
        return key, self._by_unit.get(key, [])

    def conflicts(self, equipment_id: str, start: date, end: date, ignore_ref: str = "") -> list[Busy]:
        key, items = self._entries(equipment_id)
        if key not in self._starts:
            self._starts[key] = [int(e[0]) for e in items]  # type: ignore[call-overload]
        s, e = start.toordinal(), end.toordinal()
        upto = bisect.bisect_right(self._starts[key], e)  # those starting after `end` can't overlap
        return [Busy(equipment_id, date.fromordinal(int(a)), date.fromordinal(int(b)), str(ref))  # type: ignore[call-overload]
                for a, b, ref in items[:upto] if int(b) >= s and not _own(ref, ignore_ref)]  # type: ignore[call-overload]

    def next_free(self, equipment_id: str, start: date, days: int, ignore_ref: str = "") -> date | None:
        """The first day from `start` on that begins `days` free days, within HORIZON_DAYS."""
        candidate = start.toordinal()
        for a, b, ref in self._entries(equipment_id)[1]:
            if _own(ref, ignore_ref) or int(b) < candidate:  # type: ignore[call-overload]
                continue
            if int(a) > candidate + days - 1:  # type: ignore[call-overload]
                break
            candidate = int(b) + 1  # type: ignore[call-overload]
        limit = start.toordinal() + HORIZON_DAYS
        return date.fromordinal(candidate) if candidate <= min(limit, date.max.toordinal()) else None


CHANGE_HOLD = "~"  # a kept change holds its new dates as `ref~` until it is written


def _own(ref: object, ignore_ref: str) -> bool:
    """Whether a busy entry is the booking being changed, or the hold of its own pending change."""
    return bool(ignore_ref) and (ref == ignore_ref or ref == ignore_ref + CHANGE_HOLD)


def now_iso() -> str:
    return datetime.now().astimezone().replace(microsecond=0).isoformat()
