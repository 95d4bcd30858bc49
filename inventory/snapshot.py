"""What a call sees: the units, their reservations (and the bookings still pending in the
outbox), and the shop's policies, as read at one moment. Answers "what is free when" and "what does
it cost" without any I/O. `units is None` means unknown (never read, and the sheet did not answer
in time): unknown is never empty."""

from __future__ import annotations

import json
import logging
from datetime import date
from functools import cached_property
from typing import Sequence

import phone
from inventory.model import Unit, fold
from inventory.policy import ShopPolicy
from inventory.quote import Quote, quote, rental_days
from inventory.reservations import Calendar, Reservation

logger = logging.getLogger("equipment")


def _singular(s: str) -> str:
    s = fold(s)
    return s[:-1] if s.endswith("s") else s


def _readable(details: str) -> list[Reservation]:
    """The stored reservations; one this version can't read is left out (its dates still count:
    availability comes from `busy`), so a look-up never fails on another's row."""
    found = []
    try:
        items = json.loads(details)
    except ValueError:
        items = []
    for item in items if isinstance(items, list) else ():
        try:
            found.append(Reservation.from_list(item))
        except (TypeError, ValueError, OverflowError):
            continue
    if len(found) != (len(items) if isinstance(items, list) else -1):
        logger.warning("Snapshot: %d stored reservation(s) unreadable - left out of look-ups",
                       (len(items) if isinstance(items, list) else 1) - len(found))
    return found


class Snapshot:
    """`reservations`: blocking or not, the outbox's pending ones as PENDING. The shared snapshot
    hands its reservations over compactly (`busy`: the blocking ones by unit, as `busy_of` makes
    them, enough for every availability question; `details`: the full rows as JSON text, parsed
    only when a caller's bookings are looked up), so a call's start costs no object per reservation."""

    def __init__(self, units: tuple[Unit, ...] | None, age: float | None, source: str,
                 reservations: Sequence[Reservation] = (), policy: ShopPolicy | None = None, *,
                 busy: dict[str, list[list[object]]] | None = None, details: str | None = None,
                 changed: Sequence[Reservation] = ()):
        self.units = units
        self.age = age  # seconds since the data was read from its source, when handed out
        self.source = source  # "sheet", "csv", or why there is none ("none", "error")
        self.policy = policy or ShopPolicy()
        self._given = tuple(reservations)
        self._busy = busy
        self._details = details
        self._changed = tuple(changed)  # written, changed or held since the read: they win by ref

    def __repr__(self) -> str:
        return f"Snapshot(units={len(self.units) if self.units is not None else None}, source={self.source!r})"

    @property
    def known(self) -> bool:
        return self.units is not None

    @cached_property
    def reservations(self) -> tuple[Reservation, ...]:
        if self._details is None:
            return self._given
        by_ref = {r.ref: r for r in _readable(self._details)}
        by_ref.update((r.ref, r) for r in self._changed)
        return tuple(by_ref.values())

    @cached_property
    def calendar(self) -> Calendar:
        if self._busy is None:
            return Calendar(self.reservations)
        return Calendar(self._changed, self._busy)

    # -- units --------------------------------------------------------------------------------
    def find(self, equipment_id: str) -> Unit | None:
        want = fold(equipment_id or "")
        for u in self.units or ():
            if want and fold(u.id) == want:
                return u
        return None

    def search(self, category: str | None = None, keyword: str | None = None) -> list[Unit]:
        """Units matching a category (case-insensitive, singular or plural, or a part of it) and
        every word of keyword (in ID, name, category or description), whatever their state."""
        out = []
        for u in self.units or ():
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

    # -- when -------------------------------------------------------------------------------
    def free(self, unit: Unit, start: date, end: date, ignore_ref: str = "") -> bool:
        """Its Status allows renting and nothing that isn't cancelled overlaps the dates."""
        return unit.rentable and not self.calendar.conflicts(unit.id, start, end, ignore_ref)

    def free_units(self, start: date, end: date, category: str | None = None,
                   keyword: str | None = None) -> list[Unit]:
        return [u for u in self.search(category, keyword) if self.free(u, start, end)]

    def next_free(self, unit: Unit, start: date, end: date, ignore_ref: str = "") -> date | None:
        """The first day from `start` on when the unit is free for as many days (None: not
        within a year, or not rentable at all)."""
        if not unit.rentable:
            return None
        return self.calendar.next_free(unit.id, start, rental_days(start, end), ignore_ref)

    def alternatives(self, unit: Unit | None, start: date, end: date, exclude: str = "") -> tuple[Unit, ...]:
        """Free units of the same category for the same dates, the same name first, then the cheapest."""
        if unit is None:
            return ()
        skip = fold(exclude or unit.id)
        same = [u for u in self.units or () if fold(u.id) != skip and fold(u.category) == fold(unit.category)
                and self.free(u, start, end)]
        same.sort(key=lambda u: (fold(u.name) != fold(unit.name), u.daily_rate or 0.0, u.id))
        return tuple(same[:5])

    def quote(self, unit: Unit, start: date, end: date) -> Quote:
        """Raises NoPrice when the unit has no day rate on file."""
        return quote(unit, start, end, self.policy)

    # -- bookings ---------------------------------------------------------------------------
    def reservation(self, ref: str) -> Reservation | None:
        want = fold(ref or "").replace(" ", "").replace(",", "")
        matches = [r for r in self.reservations if fold(r.ref) == want and r.status != "PENDING"]
        return matches[-1] if matches else None

    def reservations_of(self, number: str, today: date) -> list[Reservation]:
        """The caller's current and future bookings (not cancelled), by the number they booked with."""
        return sorted((r for r in self.reservations if r.blocking and r.end >= today and not r.legacy
                       and r.status != "PENDING" and phone.same_number(r.renter_phone, number)),
                      key=lambda r: (r.start, r.ref))
