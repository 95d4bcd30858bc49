"""What a rental costs, worked out in code (never by the model): the cheapest mix of 4-week,
week and day rates covering the days (both ends inclusive), then the damage waiver on the rental,
then tax on both; the deposit is stated apart, refundable. Amounts are Decimal, to the cent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from inventory.model import Unit
from inventory.policy import ShopPolicy

CENT = Decimal("0.01")
PERIODS = ((28, "four-week period", "four_week_rate"), (7, "week", "weekly_rate"), (1, "day", "daily_rate"))


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def rental_days(start: date, end: date) -> int:
    """Whole days, both ends inclusive: a rental from Monday to Monday is one day."""
    return (end - start).days + 1


@dataclass(frozen=True)
class QuoteLine:
    label: str
    amount: Decimal


@dataclass(frozen=True)
class Quote:
    equipment_id: str
    start: date
    end: date
    days: int
    rental: tuple[QuoteLine, ...]  # e.g. "2 weeks at $1,300.00", "3 days at $325.00"
    waiver: Decimal
    tax: Decimal
    total: Decimal  # rental + waiver + tax
    deposit: Decimal  # refundable, not in the total

    @property
    def rental_total(self) -> Decimal:
        return sum((line.amount for line in self.rental), Decimal(0))

    @property
    def lines(self) -> tuple[QuoteLine, ...]:
        extra = [QuoteLine("damage waiver", self.waiver)] if self.waiver else []
        extra += [QuoteLine("tax", self.tax)] if self.tax else []
        return self.rental + tuple(extra)


class NoPrice(Exception):
    """The unit has no day rate on file: no quote can be given."""


def _rates(unit: Unit) -> list[tuple[int, str, Decimal]]:
    out = []
    for length, label, attr in PERIODS:
        value = getattr(unit, attr, None)
        if value is not None and value > 0:
            out.append((length, label, Decimal(str(value))))
    if not any(length == 1 for length, _, _ in out):
        raise NoPrice(unit.id)
    return out


def cheapest_mix(days: int, rates: list[tuple[int, str, Decimal]]) -> list[tuple[int, str, Decimal]]:
    """(count, label, rate) per period: the cheapest combination covering at least `days` days
    (a week can be cheaper than six single days). At the same price, the mix covering fewer extra
    days wins (four days, not a week), then the one with fewer periods."""
    options = sorted(rates, key=lambda r: -r[0])  # the day rate last: it covers what is left
    lengths = {label: length for length, label, _ in options}
    best: tuple[Decimal, int, int, list[tuple[int, str, Decimal]]] | None = None

    def search(i: int, left: int, chosen: list[tuple[int, str, Decimal]], cost: Decimal) -> None:
        nonlocal best
        length, label, rate = options[i]
        counts = [max(left, 0)] if length == 1 else range(max(left, 0) // length + 2)
        for n in counts:
            mix = chosen + [(n, label, rate)] if n else chosen
            if length == 1:
                covered = sum(c * lengths[lab] for c, lab, _ in mix)
                candidate = (cost + rate * n, covered, sum(c for c, _, _ in mix), mix)
                if best is None or candidate[:3] < best[:3]:
                    best = candidate
            else:
                search(i + 1, left - n * length, mix, cost + rate * n)

    search(0, days, [], Decimal(0))
    assert best is not None
    return best[3]


def quote(unit: Unit, start: date, end: date, policy: ShopPolicy) -> Quote:
    """Raises NoPrice when the unit has no day rate."""
    days = rental_days(start, end)
    mix = cheapest_mix(days, _rates(unit))
    rental = tuple(QuoteLine(f"{n} {label}{'s' if n > 1 else ''} at ${rate:,.2f}", cents(rate * n))
                   for n, label, rate in mix)
    subtotal = sum((line.amount for line in rental), Decimal(0))
    waiver = cents(subtotal * policy.damage_waiver / 100)
    tax = cents((subtotal + waiver) * policy.tax_rate / 100)
    deposit = Decimal(str(unit.deposit)) if getattr(unit, "deposit", None) is not None else policy.default_deposit
    return Quote(unit.id, start, end, days, rental, waiver, tax, cents(subtotal + waiver + tax), cents(deposit))
