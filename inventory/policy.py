"""The shop's policies, from the sheet's Settings tab (key, value), which staff change without a
deploy: opening hours per weekday, closed dates, tax rate, damage-waiver percent, default deposit.

Absent keys take the documented defaults (DEFAULTS). A value staff mistyped is logged and its
default used: a typo in the Settings tab must never take the phone line down.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Iterable

logger = logging.getLogger("equipment")

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# What the shop gets when its Settings tab is absent or silent on a key.
DEFAULTS = {
    **{f"open {d}": "08:00-17:00" for d in WEEKDAYS[:5]},
    "open saturday": "08:00-12:00",
    "open sunday": "closed",
    "closed dates": "",
    "tax rate": "0%",
    "damage waiver": "0%",
    "default deposit": "0",
}
SETTINGS_HEADER = ["Key", "Value"]


def _key(text: str) -> str:
    return " ".join(re.sub(r"[_\-:]+", " ", str(text)).split()).casefold()


def _clock(text: str) -> time:
    """08:00, 8:00, 8am, 8:30 pm, 17, noon."""
    t = text.strip().casefold().replace(".", "")
    if t == "noon":
        return time(12, 0)
    m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?\s*(am|pm)?", t)
    if not m:
        raise ValueError(text)
    hour, minute, half = int(m.group(1)), int(m.group(2) or 0), m.group(3)
    if half == "pm" and hour != 12:
        hour += 12
    if half == "am" and hour == 12:
        hour = 0
    if hour == 24 and minute == 0:
        return time(23, 59, 59)
    return time(hour, minute)


def parse_hours(text: str) -> tuple[time, time] | None:
    """'08:00-17:00', '8am to 5pm' -> (open, close); 'closed' or '' -> None."""
    t = text.strip().casefold()
    if t in ("", "closed", "-", "none"):
        return None
    parts = re.split(r"\s*(?:-|–|to)\s*", t)
    if len(parts) != 2:
        raise ValueError(text)
    opens, closes = _clock(parts[0]), _clock(parts[1])
    if closes <= opens:
        raise ValueError(text)
    return opens, closes


def _percent(text: str) -> Decimal:
    value = Decimal(text.strip().rstrip("%").strip() or "0")
    if not Decimal(0) <= value <= Decimal(100):
        raise ValueError(text)
    return value


def _amount(text: str) -> Decimal:
    value = Decimal(re.sub(r"[$,\s]", "", text) or "0")
    if value < 0:
        raise ValueError(text)
    return value


def _dates(text: str) -> frozenset[date]:
    out = set()
    for part in re.split(r"[,;\n]+", text):
        if part.strip():
            out.add(date.fromisoformat(part.strip()))
    return frozenset(out)


def _clock_words(t: time) -> str:
    if t == time(12, 0):
        return "noon"
    hour = t.hour % 12 or 12
    minutes = f":{t.minute:02d}" if t.minute else ""
    return f"{hour}{minutes} {'AM' if t.hour < 12 else 'PM'}"


@dataclass(frozen=True)
class ShopPolicy:
    hours: tuple[tuple[time, time] | None, ...] = field(default_factory=lambda: tuple(
        parse_hours(DEFAULTS[f"open {d}"]) for d in WEEKDAYS))  # Monday first
    closed_dates: frozenset[date] = frozenset()
    tax_rate: Decimal = Decimal(0)  # percent
    damage_waiver: Decimal = Decimal(0)  # percent of the rental
    default_deposit: Decimal = Decimal(0)

    @classmethod
    def from_rows(cls, rows: Iterable[list[str]]) -> ShopPolicy:
        """From the Settings tab's rows (a header row is ignored). Unknown keys are ignored."""
        given = {_key(r[0]): (str(r[1]) if len(r) > 1 else "") for r in rows if r and str(r[0]).strip()}
        values = {k: given.get(k, v) for k, v in DEFAULTS.items()}

        def parsed(key: str, parse, default_value):  # type: ignore[no-untyped-def]
            try:
                return parse(values[key])
            except (ValueError, InvalidOperation):
                logger.warning("Settings tab: %r for %r is not understood - using the default %r",
                               values[key], key, DEFAULTS[key])
                return default_value

        defaults = cls()
        return cls(
            hours=tuple(parsed(f"open {d}", parse_hours, defaults.hours[i]) for i, d in enumerate(WEEKDAYS)),
            closed_dates=parsed("closed dates", _dates, frozenset()),
            tax_rate=parsed("tax rate", _percent, Decimal(0)),
            damage_waiver=parsed("damage waiver", _percent, Decimal(0)),
            default_deposit=parsed("default deposit", _amount, Decimal(0)),
        )

    def to_dict(self) -> dict[str, object]:
        return {"hours": [[h[0].isoformat(), h[1].isoformat()] if h else None for h in self.hours],
                "closed_dates": sorted(d.isoformat() for d in self.closed_dates),
                "tax_rate": str(self.tax_rate), "damage_waiver": str(self.damage_waiver),
                "default_deposit": str(self.default_deposit)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ShopPolicy:
        hours = tuple((time.fromisoformat(h[0]), time.fromisoformat(h[1])) if h else None
                      for h in data["hours"])  # type: ignore[union-attr]
        if len(hours) != 7:
            raise ValueError("hours")
        return cls(hours=hours, closed_dates=frozenset(date.fromisoformat(d) for d in data["closed_dates"]),  # type: ignore[union-attr]
                   tax_rate=Decimal(str(data["tax_rate"])), damage_waiver=Decimal(str(data["damage_waiver"])),
                   default_deposit=Decimal(str(data["default_deposit"])))

    def open_on(self, day: date) -> tuple[time, time] | None:
        return None if day in self.closed_dates else self.hours[day.weekday()]

    def is_open(self, now: datetime) -> bool:
        hours = self.open_on(now.date())
        return hours is not None and hours[0] <= now.time() < hours[1]

    def next_opening(self, now: datetime) -> datetime | None:
        """When the shop next opens after `now` (within two weeks), in now's time zone."""
        for ahead in range(15):
            day = now.date() + timedelta(days=ahead)
            hours = self.open_on(day)
            if hours is None:
                continue
            opens = datetime.combine(day, hours[0], tzinfo=now.tzinfo)
            if opens > now:
                return opens
        return None

    def hours_text(self) -> str:
        """'Monday to Friday 8 AM to 5 PM; Saturday 8 AM to noon; closed Sunday'."""
        spans: list[tuple[int, int, tuple[time, time] | None]] = []
        for i, hours in enumerate(self.hours):
            if spans and spans[-1][2] == hours:
                spans[-1] = (spans[-1][0], i, hours)
            else:
                spans.append((i, i, hours))
        parts = []
        for first, last, hours in spans:
            days = WEEKDAYS[first].title() if first == last else f"{WEEKDAYS[first].title()} to {WEEKDAYS[last].title()}"
            parts.append(f"closed {days}" if hours is None
                         else f"{days} {_clock_words(hours[0])} to {_clock_words(hours[1])}")
        return "; ".join(parts)
