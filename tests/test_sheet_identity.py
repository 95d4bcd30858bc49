"""Writes by identity, never by position, against the Google Sheets stand-in (tests/fakes/sheets_server.py,
driven by real gspread + google-auth) through the real inventory (equipment.inventory_from_env), on
both state engines (SQLite in STATE_DIR and PostgreSQL):

- with staff inserting, deleting and sorting rows before every single request, bookings,
  extensions, moves and cancellations land on their own reservation row and nowhere else (every
  other row is compared by Ref before and after, and every row any request wrote is checked);
- a walk-in staff type while a booking is being made wins: the agent's row ends CANCELLED and the
  caller is refused with the next free date and alternatives;
- a sheet from before the Reservations tab keeps working: its RENTED rows block their dates, the
  first booking creates the Reservations tab, and the Equipment tab is never written;
- a row tag that landed on the wrong row (rows moved between finding the row and tagging it, or a
  tag left behind by a crash) is found out and moved, and never used for a write.

What staff did at the sheet is the stand-in's (`sheets.shuffle`, `sheets.before`/`after`, its staff
helpers); what the agent wrote is `sheets.write_log` (every row a request wrote, with its cells
before and after) and `sheets.meta_log` (every tag created or deleted, with the row it was on).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

import equipment
from equipment import BookingRefused, ChangeRequest, RefusalCode, ShopPolicy
from inventory.reservations import RESERVATION_HEADER
from inventory.sheet_rows import TAG_KEY, tag_id
from tests.conftest import StateDb, loaded
from tests.fakes.sheets_server import SAMPLE_HEADER, SheetsStandIn

RES = "Reservations"
TODAY = date.today()
BASE = TODAY + timedelta(days=30)
PHONE = "+1 555 123 4567"


def day(n: int) -> date:
    return BASE + timedelta(days=n)


@pytest.fixture
def sheet_env(sheet_env: dict[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    """Both engines; a long cache TTL so no background refresh (or replay) runs mid-test."""
    return {**sheet_env, **engine_env, "EQUIPMENT_CACHE_TTL": "3600"}


def booking(equipment_id: str, start: date, end: date, name: str = "Ann Lee") -> equipment.BookingRequest:
    return equipment.parse_booking(equipment_id, name, PHONE, start.isoformat(), end.isoformat(), "call-1",
                                   today=TODAY)


# -- the sheet as staff see it --------------------------------------------------------------------


def by_key(sheets: SheetsStandIn, title: str, column: str) -> dict[str, list[str]]:
    """The tab's rows by their Ref (or ID), staff scratch rows left out; two rows with one Ref fail."""
    rows = sheets.rows(title)
    header = rows[0]
    k = header.index(column)
    out: dict[str, list[str]] = {}
    for r in rows[1:]:
        if sheets.is_scratch(title, r):
            continue
        cells = r + [""] * (len(header) - len(r))
        assert cells[k] not in out, f"two rows of {title!r} carry {column} {cells[k]!r}"
        out[cells[k]] = cells
    return out


def col(sheets: SheetsStandIn, title: str, name: str) -> int:
    return sheets.rows(title)[0].index(name)


def cell(sheets: SheetsStandIn, row: list[str], name: str, title: str = RES) -> str:
    i = col(sheets, title, name)
    return row[i] if i < len(row) else ""


def writes_since(sheets: SheetsStandIn, mark: int) -> list[dict[str, Any]]:
    return sheets.write_log[mark:]


def assert_wrote_only(sheets: SheetsStandIn, mark: int, ref: str | None, appended: tuple[str, ...] = ()) -> None:
    """Every row a request wrote since `mark`: in Reservations, the row that carried `ref` before
    and after the write, or a new row for one of `appended`; never the Equipment tab."""
    for w in writes_since(sheets, mark):
        assert w["title"] != "Equipment", f"the Equipment tab was written: {w}"
        if w["title"] != RES:
            continue
        if w["kind"] == "append":
            assert w["before"] == [] and cell(sheets, w["after"], "Ref") in appended, w
        else:
            assert ref is not None, f"an update nobody asked for: {w}"
            assert cell(sheets, w["before"], "Ref") == ref == cell(sheets, w["after"], "Ref"), \
                f"a write for {ref} landed on another row: {w}"


def tags_on_wrong_rows(sheets: SheetsStandIn) -> list[dict[str, Any]]:
    ref_col = col(sheets, RES, "Ref")
    return [m for m in sheets.metadata(RES) if m["key"] == TAG_KEY
            and (len(m["cells"]) <= ref_col or m["cells"][ref_col] != m["value"])]


def staff_rows(n: int) -> list[dict[str, str]]:
    """Walk-ins and phone bookings staff typed: several units, dates apart from the tests' own."""
    units = ["EX-101", "EX-103", "SS-101", "LF-101", "GN-101", "TR-101", "CP-101", "EX-201"]
    out = []
    for i in range(n):
        s = day(700 + 9 * i)
        out.append({"Ref": f"ST{i:03d}", "Equipment ID": units[i % len(units)], "Start": s.isoformat(),
                    "End": (s + timedelta(days=i % 3)).isoformat(), "Renter Name": f"Staff Walk-in {i}",
                    "Renter Phone": f"555-01{i:02d}", "Status": ["CONFIRMED", "OUT", "RETURNED", "CANCELLED"][i % 4],
                    "Total": str(100 + i), "Notes": f"typed by staff {i}"})
    return out


# -- (a) staff shuffle rows before every request --------------------------------------------------


CHAIN_UNITS = ["EX-101", "EX-103", "SS-101", "LF-101", "GN-101", "TR-101"]


async def check_step(sheets: SheetsStandIn, inv: Any, what: str, ref: str | None, action: Any,
                     expect: dict[str, str]) -> Any:
    """Runs one booking or change; checks that only its own row changed, as expected (or, when it
    was kept for staff to confirm, not at all)."""
    before, equipment_before = by_key(sheets, RES, "Ref"), by_key(sheets, "Equipment", "ID")
    mark = len(sheets.write_log)
    result = await action()
    after, equipment_after = by_key(sheets, RES, "Ref"), by_key(sheets, "Equipment", "ID")
    assert equipment_after == equipment_before, f"{what}: the Equipment tab changed"
    target = ref or result.ref
    assert_wrote_only(sheets, mark, ref, appended=(result.ref,) if ref is None else ())
    if ref is None:
        assert set(after) == set(before) | {target} and target not in before, what
    else:
        assert set(after) == set(before), f"{what}: rows appeared or vanished"
    for other in before:
        if other != target:
            assert after[other] == before[other], f"{what} of {target} changed the row of {other}"
    row = after[target]
    if result.confirmed:
        for name, value in expect.items():
            assert cell(sheets, row, name) == value, (what, name, row)
        unchanged = [h for h in RESERVATION_HEADER if h not in expect and h != "Total"]
        if ref is not None:
            for name in unchanged:
                assert cell(sheets, row, name) == cell(sheets, before[target], name), (what, name)
    else:
        assert ref is not None and row == before[target], f"{what} kept for staff, yet its row changed"
    return result


SHUFFLES = {
    # a sort by any column, either way, before every request: the harshest; safety above all
    "any_column": dict(seed=1),
    # staff keep the sheet sorted by one column (and insert and delete rows): most changes land
    "one_column": dict(seed=2, sort_columns={"Reservations": ["Start"], "Equipment": ["ID"]}),
}


@pytest.mark.parametrize("shuffle", list(SHUFFLES))
async def test_changes_land_on_their_own_row_while_staff_insert_delete_and_sort_before_every_request(
        sheet_env, sheets, shuffle):
    for r in staff_rows(16):
        sheets.append_row(RES, r)
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.shuffle(**SHUFFLES[shuffle])  # from now on: a row inserted, one deleted, and a sort before every request
    landed = {"booked": 0, "extended": 0, "moved": 0, "cancelled": 0, "kept": 0}
    for i in range(8):
        unit, s = CHAIN_UNITS[i % len(CHAIN_UNITS)], day(20 * i)
        b = await check_step(sheets, inv, "book", None, lambda: inv.book(booking(unit, s, s + timedelta(days=1))),
                             {"Equipment ID": unit, "Start": s.isoformat(), "End": (s + timedelta(days=1)).isoformat(),
                              "Status": "CONFIRMED", "Renter Name": "Ann Lee"})
        assert b.confirmed, "an append does not depend on where rows are"
        landed["booked"] += 1
        steps = [("extended", ChangeRequest(b.ref, s, s + timedelta(days=3)), {"Start": s.isoformat(),
                  "End": (s + timedelta(days=3)).isoformat(), "Status": "CONFIRMED"}),
                 ("moved", ChangeRequest(b.ref, day(300 + 20 * i), day(301 + 20 * i)),
                  {"Start": day(300 + 20 * i).isoformat(), "End": day(301 + 20 * i).isoformat(),
                   "Status": "CONFIRMED"}),
                 ("cancelled", ChangeRequest(b.ref, s, s, cancel=True), {"Status": "CANCELLED"})]
        for what, change, expect in steps:
            result = await check_step(sheets, inv, what, b.ref, lambda c=change: inv.change(c, TODAY), expect)
            if not result.confirmed:  # the row kept moving while it was tagged: kept for staff, untouched
                landed["kept"] += 1
                break
            landed[what] += 1
            if what != "cancelled":
                assert result.total and cell(sheets, by_key(sheets, RES, "Ref")[b.ref], "Total") == result.total
    assert sheets.shuffle_stats["sorted"] > 200 and sheets.shuffle_stats["deleted"] > 200, sheets.shuffle_stats
    # Liveness: a row is tagged by position once (the only positional step) and the tag then moves
    # with it; when rows move between finding it and tagging it, 4 times in a row, the change is
    # kept for staff (never written elsewhere). A sort by a new column before every request defeats
    # that step for about half the bookings (refs are random, so the number varies from run to
    # run); staff keeping the sheet sorted by one column, for fewer than 1 in 10.
    assert landed["booked"] == 8, landed
    if shuffle == "one_column":
        assert landed["cancelled"] >= 4, landed
    assert not tags_on_wrong_rows(sheets), sheets.metadata(RES)
    history = [(r["Booking Ref"], r["Kind"]) for r in sheets.records("Bookings")]
    assert len(history) == len(set(history)), history  # each change written to the history once
    assert sum(k == "BOOKING" for _, k in history) == 8
    assert sum(k in ("EXTENDED", "MOVED", "CANCELLED") for _, k in history) == \
        landed["extended"] + landed["moved"] + landed["cancelled"]
    # what was kept is replayed the same way: only its own row, if any
    before, mark = by_key(sheets, RES, "Ref"), len(sheets.write_log)
    await inv.replay_outbox()
    pending = {e["payload"]["booking_ref"] for e in StateDb(sheet_env).outbox()
               if e["outcome"] is None and isinstance(e["payload"], dict) and "booking_ref" in e["payload"]}
    after = by_key(sheets, RES, "Ref")
    written = {cell(sheets, w["before"], "Ref") for w in writes_since(sheets, mark) if w["title"] == RES}
    for w in writes_since(sheets, mark):
        assert w["title"] != "Equipment"
        if w["title"] == RES:
            assert cell(sheets, w["before"], "Ref") == cell(sheets, w["after"], "Ref"), w
    assert {r for r in before if after[r] != before[r]} <= written
    assert not (written & pending)
    await inv.close(2)


# -- (b) a walk-in typed by staff while the agent books the same unit -------------------------------


def walk_in(sheets: SheetsStandIn, s: date, e: date, where: str) -> Any:
    row = {"Ref": "WALK01", "Equipment ID": "EX-101", "Start": s.isoformat(), "End": e.isoformat(),
           "Renter Name": "Walk-in Wendy", "Renter Phone": "555-0199", "Status": "CONFIRMED", "Notes": "at the counter"}
    if where == "top":
        return lambda: sheets.insert_row(RES, 1, row)
    return lambda: sheets.append_row(RES, row)


@pytest.mark.parametrize("moment,where", [("after_our_append", "bottom"), ("after_our_append", "top"),
                                          ("between_our_read_and_append", "bottom")])
async def test_a_walk_in_typed_during_a_booking_wins(sheet_env, sheets, moment, where):
    s, e = day(40), day(42)
    for r in staff_rows(8):
        sheets.append_row(RES, r)
    inv = equipment.inventory_from_env(sheet_env)
    snap = await loaded(inv)
    assert snap.free(snap.find("EX-101"), s, e)
    hook = sheets.after if moment == "after_our_append" else sheets.before
    hook("append", walk_in(sheets, s, e, where), when="'Reservations'")
    before = by_key(sheets, RES, "Ref")
    mark = len(sheets.write_log)

    with pytest.raises(BookingRefused) as refused:
        await inv.book(booking("EX-101", s, e))
    r = refused.value
    assert r.code is RefusalCode.JUST_TAKEN
    assert r.next_free == e + timedelta(days=1)
    assert r.alternatives and all(u.id != "EX-101" for u in r.alternatives)

    rows = by_key(sheets, RES, "Ref")
    new = set(rows) - set(before)
    ours = [ref for ref in new if ref != "WALK01"]
    assert len(ours) == 1 and "WALK01" in new, new
    mine = rows[ours[0]]
    assert cell(sheets, mine, "Status") == "CANCELLED" and cell(sheets, mine, "Renter Name") == "Ann Lee"
    assert "WALK01" in cell(sheets, mine, "Notes")
    assert cell(sheets, rows["WALK01"], "Status") == "CONFIRMED"  # staff's row untouched
    assert all(rows[ref] == before[ref] for ref in before)
    assert_wrote_only(sheets, mark, ours[0], appended=(ours[0],))
    blocking = [ref for ref, row in rows.items() if cell(sheets, row, "Equipment ID") == "EX-101"
                and cell(sheets, row, "Status") != "CANCELLED"
                and date.fromisoformat(cell(sheets, row, "Start")) <= e
                and s <= date.fromisoformat(cell(sheets, row, "End"))]
    assert blocking == ["WALK01"]
    assert StateDb(sheet_env).outcomes().get(ours[0]) == "conflict"
    assert not any(h["Booking Ref"] == ours[0] and h["Kind"] == "BOOKING" for h in sheets.records("Bookings"))

    # every process now sees the walk-in, and ours as cancelled
    inv.cache.refresh(force=True, budget=2)
    snap = await inv.snapshot()
    assert [x.ref for x in snap.calendar.conflicts("EX-101", s, e)] == ["WALK01"]
    assert all(snap.free(u, s, e) for u in r.alternatives)
    await inv.close(2)


# -- (c) a sheet from before the Reservations tab ---------------------------------------------------


def old_equipment() -> list[list[str]]:
    """The old layout: RENTED on the unit's row with its Rental Start/End, Renter and Booking Ref."""
    def unit(uid: str, name: str, cat: str, status: str, rate: str, *rental: str) -> list[str]:
        return [uid, name, cat, status, rate, str(int(rate) * 4), f"{name} for hire", *rental]
    return [list(SAMPLE_HEADER),
            unit("EX-001", "Kubota KX040 Mini Excavator", "Excavators", "AVAILABLE", "325"),
            unit("EX-002", "Kubota KX040 Mini Excavator", "Excavators", "RENTED", "325", "Dana Cole",
                 "+1 555 010 2233", day(10).isoformat(), day(15).isoformat(), "ABC234", "2026-01-01T08:00:00"),
            unit("SS-001", "Bobcat S650 Skid Steer", "Skid Steers", "RENTED", "275", "Marco Ruiz", "555-310-9921",
                 "", "", "OLD777", ""),  # RENTED without dates: taken until staff change it
            unit("SS-002", "Bobcat S650 Skid Steer", "Skid Steers", "MAINTENANCE", "275"),
            unit("LF-001", "Genie GS-1930 Scissor Lift", "Lifts", "AVAILABLE", "140")]


@pytest.mark.old_sheet
async def test_an_old_sheet_keeps_working_and_its_equipment_tab_is_never_written(sheet_env, sheets):
    sheets.set_rows("Equipment", old_equipment())
    assert set(sheets.sheets) == {"Equipment"}
    equipment_before = sheets.rows("Equipment")
    inv = equipment.inventory_from_env(sheet_env)
    snap = await loaded(inv)
    assert snap.known and len(snap.units) == 5
    ex2, ss1, ex1 = snap.find("EX-002"), snap.find("SS-001"), snap.find("EX-001")
    assert not snap.free(ex2, day(12), day(13)) and not snap.free(ex2, day(8), day(10))
    assert snap.free(ex2, day(16), day(18)) and snap.free(ex2, day(1), day(9))
    assert snap.next_free(ex2, day(12), day(13)) == day(16)
    assert not snap.free(ss1, day(1), day(1)) and not snap.free(ss1, day(300), day(300))
    assert snap.free(ex1, day(12), day(13))
    assert snap.policy == ShopPolicy()  # no Settings tab: the documented defaults
    assert [r.ref for r in snap.reservations_of("+1 555 010 2233", TODAY)] == []  # kept on the unit's row

    with pytest.raises(BookingRefused) as refused:
        await inv.book(booking("EX-002", day(14), day(16)))
    assert refused.value.code is RefusalCode.NOT_AVAILABLE and refused.value.next_free == day(16)
    assert [u.id for u in refused.value.alternatives] == ["EX-001"]

    first = await inv.book(booking("EX-001", day(12), day(13)))  # creates the Reservations tab
    assert first.confirmed
    rows = sheets.rows(RES)
    assert rows[0] == RESERVATION_HEADER and len(rows) == 2
    assert cell(sheets, rows[1], "Ref") == first.ref and cell(sheets, rows[1], "Equipment ID") == "EX-001"
    second = await inv.book(booking("EX-002", day(16), day(18)))  # RENTED is rentable outside its dates
    assert second.confirmed and len(sheets.rows(RES)) == 3

    assert sheets.rows("Equipment") == equipment_before
    assert not [w for w in sheets.write_log if w["title"] == "Equipment"]
    inv.cache.refresh(force=True, budget=2)
    snap = await inv.snapshot()
    assert not snap.free(snap.find("EX-001"), day(12), day(12))
    assert not snap.free(snap.find("EX-002"), day(12), day(12)) and not snap.free(snap.find("EX-002"), day(17), day(17))
    assert snap.free(snap.find("EX-002"), day(19), day(30))
    assert "Settings" not in sheets.sheets and snap.policy == ShopPolicy()
    await inv.close(2)


# -- (d) a tag on the wrong row ----------------------------------------------------------------------


async def booked(sheets: SheetsStandIn, inv: Any, unit: str = "EX-101") -> equipment.Booking:
    for r in staff_rows(8):
        sheets.append_row(RES, r)
    await loaded(inv)
    b = await inv.book(booking(unit, day(50), day(51)))
    assert b.confirmed
    return b


async def test_a_tag_placed_on_the_wrong_row_is_moved_and_never_written_through(sheet_env, sheets):
    inv = equipment.inventory_from_env(sheet_env)
    b = await booked(sheets, inv)
    ref_col = col(sheets, RES, "Ref")
    # staff insert a row at the top between the agent's finding its row and tagging it
    sheets.before("structure", lambda: sheets.insert_row(RES, 1, {"Ref": "ST999", "Equipment ID": "GN-102",
                                                                  "Start": day(5).isoformat(),
                                                                  "End": day(6).isoformat(), "Status": "CONFIRMED"}),
                  when="createDeveloperMetadata")
    before = by_key(sheets, RES, "Ref")
    mark, log_mark = len(sheets.write_log), len(sheets.meta_log)

    result = await inv.change(ChangeRequest(b.ref, day(50), day(53)), TODAY)

    assert result.confirmed
    tags = [m for m in sheets.meta_log[log_mark:] if m["key"] == TAG_KEY]
    assert tags[0]["op"] == "create" and tags[0]["cells"][ref_col] != b.ref  # it landed on another row...
    assert tags[1]["op"] == "delete" and tags[1]["id"] == tags[0]["id"]  # ...was found out and removed...
    assert tags[2]["op"] == "create" and tags[2]["cells"][ref_col] == b.ref  # ...and placed on ours
    assert_wrote_only(sheets, mark, b.ref)  # the wrong row was never written
    after = by_key(sheets, RES, "Ref")
    assert cell(sheets, after[b.ref], "End") == day(53).isoformat()
    assert all(after[r] == before[r] for r in before if r != b.ref)
    assert cell(sheets, after["ST999"], "Equipment ID") == "GN-102"
    assert not tags_on_wrong_rows(sheets)
    await inv.close(2)


async def test_a_tag_left_on_another_row_by_a_crash_is_moved_before_any_write(sheet_env, sheets):
    inv = equipment.inventory_from_env(sheet_env)
    b = await booked(sheets, inv)
    rows = sheets.rows(RES)
    ref_col = col(sheets, RES, "Ref")
    other = next(i for i, r in enumerate(rows) if i > 0 and r[ref_col] == "ST000")  # also EX-101
    sheets.tag_row(RES, other, TAG_KEY, b.ref, metadata_id=tag_id(b.ref))  # what a crash mid-tagging leaves
    before = by_key(sheets, RES, "Ref")
    mark = len(sheets.write_log)

    result = await inv.change(ChangeRequest(b.ref, day(50), day(50), cancel=True), TODAY)

    assert result.confirmed and result.status == "CANCELLED"
    assert_wrote_only(sheets, mark, b.ref)
    after = by_key(sheets, RES, "Ref")
    assert cell(sheets, after[b.ref], "Status") == "CANCELLED"
    assert all(after[r] == before[r] for r in before if r != b.ref)
    assert not tags_on_wrong_rows(sheets)
    await inv.close(2)


async def test_a_row_that_keeps_moving_as_it_is_tagged_is_kept_for_staff_never_written(sheet_env, sheets):
    inv = equipment.inventory_from_env(sheet_env)
    b = await booked(sheets, inv)
    n = iter(range(100))
    sheets.before("structure", lambda: sheets.insert_row(RES, 1, {"Ref": f"STX{next(n)}", "Equipment ID": "GN-102",
                                                                  "Start": day(5).isoformat(),
                                                                  "End": day(5).isoformat(), "Status": "CANCELLED"}),
                  times=None, when="createDeveloperMetadata")
    before = by_key(sheets, RES, "Ref")
    mark = len(sheets.write_log)

    result = await inv.change(ChangeRequest(b.ref, day(50), day(55)), TODAY)

    assert not result.confirmed  # kept in the outbox for staff: the caller is not told it is done
    assert sheets.counts["filter_write"] == 0
    assert_wrote_only(sheets, mark, None)
    after = by_key(sheets, RES, "Ref")
    assert all(after[r] == before[r] for r in before)
    assert not tags_on_wrong_rows(sheets)  # the last wrong tag is not left behind either
    await inv.close(0)


async def test_a_row_staff_delete_while_it_is_changed_is_not_replaced_by_a_write_elsewhere(sheet_env, sheets):
    inv = equipment.inventory_from_env(sheet_env)
    b = await booked(sheets, inv)

    def delete_it() -> None:
        sheets.delete_row(RES, [r[0] for r in sheets.rows(RES)].index(b.ref))

    sheets.before("filter_write", delete_it)  # tagged and read, then deleted just before the write
    before = by_key(sheets, RES, "Ref")
    mark = len(sheets.write_log)

    result = await inv.change(ChangeRequest(b.ref, day(50), day(56)), TODAY)

    assert not result.confirmed  # kept for staff, who deleted it
    assert not writes_since(sheets, mark)
    after = by_key(sheets, RES, "Ref")
    assert set(after) == set(before) - {b.ref} and all(after[r] == before[r] for r in after)
    assert sheets.metadata(RES) == []  # its tag went with it
    await inv.close(0)


async def test_a_change_kept_while_its_row_could_not_be_tagged_is_written_on_replay(sheet_env, sheets):
    """(Its own outbox hold, Ref + "~" on the new dates, must not count as a conflict.)"""
    inv = equipment.inventory_from_env(sheet_env)
    b = await booked(sheets, inv)
    n = iter(range(100))
    sheets.before("structure", lambda: sheets.insert_row(RES, 1, {"Ref": f"STX{next(n)}", "Equipment ID": "GN-102",
                                                                  "Start": day(5).isoformat(),
                                                                  "End": day(5).isoformat(), "Status": "CANCELLED"}),
                  times=None, when="createDeveloperMetadata")
    kept = await inv.change(ChangeRequest(b.ref, day(50), day(55)), TODAY)
    assert not kept.confirmed
    sheets.clear_faults()  # staff stop inserting rows
    before, mark = by_key(sheets, RES, "Ref"), len(sheets.write_log)

    await inv.replay_outbox()

    assert_wrote_only(sheets, mark, b.ref)
    after = by_key(sheets, RES, "Ref")
    assert all(after[r] == before[r] for r in before if r != b.ref)
    assert cell(sheets, after[b.ref], "End") == day(55).isoformat()
    outcomes = StateDb(sheet_env).outcomes()
    assert [v for k, v in outcomes.items() if k.startswith(b.ref + "|")] == ["written"]
    await inv.close(2)


async def test_what_staff_type_in_the_same_row_meanwhile_is_not_overwritten(sheet_env, sheets):
    inv = equipment.inventory_from_env(sheet_env)
    b = await booked(sheets, inv)
    # staff add a note to the booking's row just before the agent's write lands
    sheets.before("filter_write", lambda: sheets.set_cell(RES, b.ref, "Notes", "call before delivery"))

    result = await inv.change(ChangeRequest(b.ref, day(50), day(54)), TODAY)

    assert result.confirmed
    row = by_key(sheets, RES, "Ref")[b.ref]
    assert cell(sheets, row, "End") == day(54).isoformat() and cell(sheets, row, "Total") == result.total
    assert cell(sheets, row, "Notes") == "call before delivery"
    await inv.close(2)


# -- the stand-in answers as the documented API (what the tests above rely on) ---------------------


BASE_URL = "https://sheets.googleapis.com/v4/spreadsheets"


@pytest.fixture
def http(sheets, tmp_path):
    """gspread's HTTP client as the product builds it (real google-auth), pointed at the stand-in."""
    env = {"GOOGLE_SHEET_ID": sheets.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
           "GOOGLE_SHEETS_API_URL": sheets.url, "STATE_DIR": str(tmp_path / "state")}
    return equipment.inventory_from_env(env).store.http()


def test_stand_in_batch_get_metadata_fields_and_append(sheets, http):
    import gspread

    data = http.values_batch_get(sheets.spreadsheet_id, ["'Settings'", "'Equipment'!1:1", "'Reservations'!A2:B3"])
    assert [v["range"] for v in data["valueRanges"]] == ["Settings!A1:Z1000", "Equipment!A1:Z1", "Reservations!A2:B3"]
    assert data["valueRanges"][1]["values"] == [sheets.rows("Equipment")[0]]
    with pytest.raises(gspread.exceptions.APIError) as e:
        http.values_batch_get(sheets.spreadsheet_id, ["'Equipment'", "'Nope'"])
    assert e.value.response.status_code == 400 and "Unable to parse range" in str(e.value)
    meta = http.fetch_sheet_metadata(sheets.spreadsheet_id, params={"fields": "sheets.properties.title"})
    assert meta == {"sheets": [{"properties": {"title": t}} for t in ("Equipment", "Reservations", "Settings")]}
    meta = http.fetch_sheet_metadata(sheets.spreadsheet_id, params={"fields": "sheets.properties(sheetId,title)"})
    assert meta["sheets"][1] == {"properties": {"sheetId": 2, "title": "Reservations"}}
    out = http.values_append(sheets.spreadsheet_id, "'Reservations'!A1",
                             {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}, {"values": [["R1", "EX-1"]]})
    assert out["updates"]["updatedRange"] == "Reservations!A6:B6" and out["tableRange"] == "Reservations!A1:L5"


def test_stand_in_row_metadata_moves_with_its_row_and_filters_read_and_write_through_it(sheets, http):
    import gspread

    sid = sheets.spreadsheet_id

    def tag(index: int, value: str, mid: int) -> Any:
        return http.batch_update(sid, {"requests": [{"createDeveloperMetadata": {"developerMetadata": {
            "metadataId": mid, "metadataKey": "k", "metadataValue": value, "visibility": "DOCUMENT",
            "location": {"dimensionRange": {"sheetId": 2, "dimension": "ROWS", "startIndex": index,
                                            "endIndex": index + 1}}}}}]})

    reply = tag(2, "LTSS10", 7)["replies"][0]["createDeveloperMetadata"]["developerMetadata"]
    assert reply["metadataId"] == 7 and reply["location"]["locationType"] == "ROW"
    with pytest.raises(gspread.exceptions.APIError) as e:
        tag(3, "other", 7)  # "If you specify an ID that's already in use, the request will be unsuccessful"
    assert e.value.response.status_code == 400 and "already exists" in str(e.value)
    sheets.insert_row(RES, 1, ["NEW1"])
    sheets.sort_rows(RES, "Renter Name", descending=True)

    def read() -> Any:
        return http.request("post", f"{BASE_URL}/{sid}/values:batchGetByDataFilter", json={"dataFilters": [
            {"a1Range": "'Reservations'!1:1"}, {"developerMetadataLookup": {"metadataKey": "k",
                                                                           "metadataValue": "LTSS10"}}]}).json()

    got = read()["valueRanges"]
    assert got[0]["dataFilters"] == [{"a1Range": "'Reservations'!1:1"}]
    assert got[1]["valueRange"]["values"][0][0] == "LTSS10"  # the tag moved with its row
    index = [r[0] for r in sheets.rows(RES)].index("LTSS10")
    assert got[1]["valueRange"]["range"] == f"Reservations!A{index + 1}:Z{index + 1}"
    out = http.request("post", f"{BASE_URL}/{sid}/values:batchUpdateByDataFilter", json={
        "valueInputOption": "RAW", "data": [{"dataFilter": {"developerMetadataLookup": {"metadataValue": "LTSS10"}},
                                             "majorDimension": "ROWS", "values": [[None, None, "2031-01-01"]]}]}).json()
    assert out["totalUpdatedRows"] == 1 and out["totalUpdatedCells"] == 1
    assert out["responses"][0]["updatedRange"] == f"Reservations!C{index + 1}"
    row = sheets.rows(RES)[index]
    assert row[:3] == ["LTSS10", "SS-102", "2031-01-01"]  # null cells left as they were
    none = http.request("post", f"{BASE_URL}/{sid}/values:batchUpdateByDataFilter", json={
        "valueInputOption": "RAW", "data": [{"dataFilter": {"developerMetadataLookup": {"metadataValue": "gone"}},
                                             "values": [["x"]]}]}).json()
    assert "totalUpdatedRows" not in none  # matched nothing, wrote nothing
    sheets.delete_row(RES, index)  # deleted with its row
    got = read()["valueRanges"]
    assert len(got) == 1 and "a1Range" in got[0]["dataFilters"][0] and sheets.metadata(RES) == []
