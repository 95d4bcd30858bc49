"""The rental desk's rules, worked out in code: quotes (table-driven), the shop's policies from
its Settings tab, and which unit is free when."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from inventory.model import Unit
from inventory.policy import DEFAULTS, ShopPolicy, parse_hours
from inventory.quote import NoPrice, cheapest_mix, quote, rental_days
from inventory.reservations import Calendar, Reservation, from_row, legacy, sheet_date

D = Decimal
START = date(2030, 5, 6)  # a Monday


def unit(daily: float | None = 100, weekly: float | None = 400, four_week: float | None = None,
         deposit: float | None = None) -> Unit:
    return Unit("EX-1", "Excavator", "AVAILABLE", "Excavators", daily, weekly, "", four_week, deposit)


def policy(**settings: str) -> ShopPolicy:
    return ShopPolicy.from_rows([["Key", "Value"], *([k, v] for k, v in settings.items())])


# --------------------------------------------------------------------------------------------
# quotes


@pytest.mark.parametrize("days,daily,weekly,four,expected_rental,expected_lines", [
    (1, 100, 400, None, "100.00", ["1 day at $100.00"]),
    (3, 100, 400, None, "300.00", ["3 days at $100.00"]),
    (4, 100, 400, None, "400.00", ["4 days at $100.00"]),  # the same as the week: the days asked for
    (5, 100, 400, None, "400.00", ["1 week at $400.00"]),  # the week is cheaper than five days
    (7, 100, 400, None, "400.00", ["1 week at $400.00"]),
    (8, 100, 400, None, "500.00", ["1 week at $400.00", "1 day at $100.00"]),
    (13, 100, 400, None, "800.00", ["2 weeks at $400.00"]),
    (10, 100, None, None, "1000.00", ["10 days at $100.00"]),  # no week rate: days only
    (28, 100, 400, 1200, "1200.00", ["1 four-week period at $1,200.00"]),
    (30, 100, 400, 1200, "1400.00", ["1 four-week period at $1,200.00", "2 days at $100.00"]),
    (26, 100, 400, 1200, "1200.00", ["1 four-week period at $1,200.00"]),  # 3 weeks + 5 days = 1700
    (35, 95, 380, None, "1900.00", ["5 weeks at $380.00"]),
])
def test_the_cheapest_mix_of_rates(days: int, daily: float, weekly: float | None, four: float | None,
                                   expected_rental: str, expected_lines: list[str]) -> None:
    q = quote(unit(daily, weekly, four), START, START + timedelta(days=days - 1), ShopPolicy())
    assert q.days == days
    assert q.rental_total == D(expected_rental)
    assert [line.label for line in q.rental] == expected_lines
    assert q.total == q.rental_total and q.waiver == 0 and q.tax == 0


def test_four_days_is_priced_as_days_when_the_week_costs_the_same() -> None:
    assert cheapest_mix(4, [(1, "day", D(100)), (7, "week", D(400))]) == [(4, "day", D(100))]


@pytest.mark.parametrize("waiver,tax,rental,expected_waiver,expected_tax,expected_total", [
    ("0%", "0%", "300", "0.00", "0.00", "300.00"),
    ("10%", "0%", "300", "30.00", "0.00", "330.00"),
    ("0%", "8.25%", "300", "0.00", "24.75", "324.75"),
    ("12%", "8.25%", "300", "36.00", "27.72", "363.72"),  # tax on rental + waiver
    ("12.5", "7", "99.99", "12.50", "7.87", "120.36"),  # rounding half up, to the cent
])
def test_waiver_then_tax(waiver: str, tax: str, rental: str, expected_waiver: str, expected_tax: str,
                         expected_total: str) -> None:
    q = quote(unit(float(rental), None), START, START, policy(**{"Damage Waiver": waiver, "Tax Rate": tax}))
    assert (q.waiver, q.tax, q.total) == (D(expected_waiver), D(expected_tax), D(expected_total))
    extra = [label for label, amount in (("damage waiver", q.waiver), ("tax", q.tax)) if amount]
    assert [line.label for line in q.lines[len(q.rental):]] == extra


def test_the_deposit_is_apart_from_the_total_unit_first_then_the_shop_default() -> None:
    shop = policy(**{"Default Deposit": "$150"})
    assert quote(unit(deposit=500), START, START, shop).deposit == D("500.00")
    q = quote(unit(), START, START, shop)
    assert q.deposit == D("150.00") and q.total == D("100.00")


def test_no_day_rate_means_no_quote() -> None:
    with pytest.raises(NoPrice):
        quote(unit(daily=None), START, START, ShopPolicy())


def test_days_are_whole_and_both_ends_count() -> None:
    assert rental_days(START, START) == 1 and rental_days(START, START + timedelta(days=6)) == 7


# --------------------------------------------------------------------------------------------
# the shop's policies


def test_documented_defaults_when_the_settings_tab_is_absent() -> None:
    shop = ShopPolicy.from_rows([])
    assert shop.hours[0] == parse_hours(DEFAULTS["open monday"]) and shop.hours[6] is None
    assert shop.tax_rate == 0 and shop.damage_waiver == 0 and shop.default_deposit == 0
    assert shop.hours_text() == "Monday to Friday 8 AM to 5 PM; Saturday 8 AM to noon; closed Sunday"


def test_staff_settings_are_read_loosely_and_typos_fall_back_to_the_default(caplog: pytest.LogCaptureFixture) -> None:
    shop = policy(**{"open_saturday": "9am to 1pm", "OPEN SUNDAY": "10:00-14:00", "Tax rate": "eight",
                     "Closed Dates": "2030-12-25, 2031-01-01", "damage-waiver": "15 %"})
    assert shop.hours[5] == (time(9), time(13)) and shop.hours[6] == (time(10), time(14))
    assert shop.tax_rate == 0 and "'eight'" in caplog.text
    assert shop.damage_waiver == D(15) and date(2030, 12, 25) in shop.closed_dates


@pytest.mark.parametrize("when,open_", [
    (datetime(2030, 5, 6, 7, 59), False), (datetime(2030, 5, 6, 8, 0), True), (datetime(2030, 5, 6, 16, 59), True),
    (datetime(2030, 5, 6, 17, 0), False), (datetime(2030, 5, 11, 11, 0), True), (datetime(2030, 5, 12, 11, 0), False),
    (datetime(2030, 12, 25, 10, 0), False),  # a closed date
])
def test_open_or_closed(when: datetime, open_: bool) -> None:
    shop = policy(**{"Closed Dates": "2030-12-25"})
    assert shop.is_open(when.replace(tzinfo=ZoneInfo("America/Chicago"))) is open_


def test_next_opening_skips_sunday_and_closed_dates() -> None:
    tz = ZoneInfo("America/Chicago")
    shop = policy(**{"Closed Dates": "2030-05-13"})
    after = shop.next_opening(datetime(2030, 5, 11, 13, 0, tzinfo=tz))  # Saturday after closing
    assert after == datetime(2030, 5, 14, 8, 0, tzinfo=tz)  # Sunday closed, Monday a closed date


def test_the_policy_survives_the_shared_snapshot_round_trip() -> None:
    shop = policy(**{"Tax Rate": "8.25%", "Closed Dates": "2030-12-25", "Open Sunday": "10-14"})
    assert ShopPolicy.from_dict(shop.to_dict()) == shop


# --------------------------------------------------------------------------------------------
# who is free when


def res(ref: str, start: int, end: int, status: str = "CONFIRMED", unit_id: str = "EX-1") -> Reservation:
    return Reservation(ref, unit_id, START + timedelta(days=start), START + timedelta(days=end), status)


def test_overlap_is_inclusive_at_both_ends_and_cancelled_ones_do_not_block() -> None:
    cal = Calendar([res("A", 0, 2), res("B", 5, 6, "CANCELLED"), res("C", 10, 12, unit_id="EX-2")])
    day = lambda n: START + timedelta(days=n)  # noqa: E731
    assert [r.ref for r in cal.conflicts("ex-1", day(2), day(3))] == ["A"]  # ends on the start day
    assert cal.conflicts("EX-1", day(3), day(9)) == []  # B is cancelled; C is another unit
    assert [r.ref for r in cal.conflicts("EX-1", day(0), day(0), ignore_ref="")] == ["A"]
    assert cal.conflicts("EX-1", day(0), day(2), ignore_ref="A") == []  # changing A itself


def test_next_free_date_for_the_length_asked() -> None:
    cal = Calendar([res("A", 0, 2), res("B", 5, 6), res("C", 9, 20)])
    day = lambda n: START + timedelta(days=n)  # noqa: E731
    assert cal.next_free("EX-1", day(0), 2) == day(3)  # days 3-4 fit between A and B
    assert cal.next_free("EX-1", day(0), 3) == day(21)  # 7-8 is only two days
    assert cal.next_free("EX-1", day(30), 3) == day(30)


@pytest.mark.parametrize("text,expected", [
    ("2030-05-01", date(2030, 5, 1)), ("5/1/2030", date(2030, 5, 1)), ("05/01/30", date(2030, 5, 1)),
    ("2030/5/1", date(2030, 5, 1)), ("May 1, 2030", date(2030, 5, 1)), ("1 May 2030", date(2030, 5, 1)),
    ("2030-05-01T10:00:00", date(2030, 5, 1)),
])
def test_dates_as_staff_type_them(text: str, expected: date) -> None:
    assert sheet_date(text) == expected


def test_a_reservation_row_and_an_old_sheet_row() -> None:
    row = dict(zip(("ref", "equipmentid", "start", "end", "status"), ("R1", "EX-1", "5/6/2030", "5/8/2030", "")))
    r = from_row(row, "row 2")
    assert r is not None and (r.start, r.end, r.status) == (START, START + timedelta(days=2), "CONFIRMED")
    with pytest.raises(ValueError):
        from_row({"equipmentid": "EX-1", "start": "soon", "end": ""}, "row 3")
    old = legacy("EX-9", "rented", "2030-05-06", "2030-05-09", "Dana", "555", "")
    assert old is not None and old.legacy and old.ref == "LEGACY-EX-9" and old.end == date(2030, 5, 9)
    undated = legacy("EX-9", "RENTED", "", "", "", "", "R7")
    assert undated is not None and undated.start == date.min and undated.end == date.max
    assert legacy("EX-9", "AVAILABLE", "", "", "", "", "") is None


def test_the_compact_form_round_trips() -> None:
    r = Reservation("R1", "EX-1", START, START, "OUT", "Dana", "+15551234567", "100.00", "50", "t", "c", "n")
    assert Reservation.from_list(r.to_list()) == r


def test_a_stored_reservation_this_version_cannot_read_is_left_out_of_look_ups_not_fatal():
    import json

    from inventory.reservations import busy_of
    from inventory.snapshot import Snapshot
    good = Reservation("R1", "EX-1", START, START + timedelta(days=2), "CONFIRMED", "Dana Smith", "+15551234567")
    other = Reservation("R2", "EX-1", START + timedelta(days=5), START + timedelta(days=6), "CONFIRMED", "Al Ng", "")
    rows = [good.to_list(), ["R2", "EX-1", "2030-05-11", "2030-05-12", *other.to_list()[4:]]]
    snap = Snapshot((unit(),), 0.0, "sheet", busy=busy_of([good, other]), details=json.dumps(rows))
    assert snap.reservation("r1") == good and snap.reservation("R2") is None
    assert not snap.free(unit(), START + timedelta(days=5), START + timedelta(days=5))  # its dates still count
