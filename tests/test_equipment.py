"""The inventory (equipment.py and inventory/) against the local Sheets stand-in (real gspread +
google-auth through the GOOGLE_SHEETS_API_URL seam) and the embedded CSV, on both state engines:
every test that touches the shared state (snapshot, locks, outbox) runs on SQLite in STATE_DIR and
on a real PostgreSQL (DATABASE_URL); pure parsing and configuration tests run once. Time bounds
here are generous on purpose; tight numbers live in bench/inventory_numbers.py.

The model under test (the rental-desk issue): a unit's Status says whether it can be rented at all;
a booking is one row appended to Reservations (CONFIRMED; CANCELLED once cancelled), found again by
its Ref; nothing is ever written to the Equipment tab; every change the agent makes is one row of
the history (the Bookings tab, or STATE_DIR/bookings.csv for the CSV), with its Total. So what these
tests assert is the Reservations rows (one per booking, by Ref) and the history rows.

Only public names are used: the equipment front, settings, phone, and the public parts of the
inventory (inv.store, inv.state, inv.cache, inv.outbox, inv.booker, inv.background). What a crash
leaves behind (a booking written but its outbox entry not settled) is set up by changing the
state's tables directly (tests/conftest.py StateDb), never by replacing our code."""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import logging
import re
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import equipment
import phone
import prompts
import settings
from equipment import BookingRefused, BookingRequest, ChangeRequest, InventoryConfigError, RefusalCode, Reservation
from inventory.model import REF_ALPHABET, fold
from inventory.outbox import KEEP_SETTLED_DAYS, MAX_ATTEMPTS, BookEntry, RowEntry, Settle
from inventory.reservations import RESERVATION_HEADER
from inventory.table import LOG_HEADER, LogRow
from tests import both_engines
from tests.conftest import (
    RESERVATIONS_CSV, SMALL_TIMEOUTS, Source, StateDb, child_result, csv_rows, equipment_rows, loaded, old_sheet_rows,
    pending_refs, release_together, wait_until,
)

# every state test on both engines (conftest's fixtures of the same names, overridden)
sheet_env, csv_env, source = both_engines.sheet_env, both_engines.csv_env, both_engines.source

TODAY = date(2030, 1, 10)
START, END = "2030-01-12", "2030-01-15"
PHONE = "+1 555 123 4567"
SHEET_ID = "abcdefghij0123456789"  # shaped like a real sheet ID (never contacted)
# data/settings.csv: damage waiver 12 %, tax 8.25 %. EX-101 (325/day, 1300/week) for START..END
# (4 days): 1300.00 + 156.00 waiver + 120.12 tax; its deposit 500 apart.
TOTAL_4_DAYS, DEPOSIT = "1576.12", "500.00"
# data/reservations.csv: long-term rentals until 2030-12-31 of EX-102, SS-102, LF-201 and CO-201
LONG_TERM = {"EX-102": "LTEX10", "SS-102": "LTSS10", "LF-201": "LTLF20", "CO-201": "LTCO20"}


def d(text: str) -> date:
    return date.fromisoformat(text)


# -- both engines for every state test; pure tests once ------------------------------------------


@pytest.fixture
def one_sheet_env(sheets, tmp_path: Path) -> dict[str, str]:
    """For tests of parsing, configuration and HTTP handling: one engine (the default) is enough."""
    return {"GOOGLE_SHEET_ID": sheets.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
            "GOOGLE_SHEETS_API_URL": sheets.url, "STATE_DIR": str(tmp_path / "state"), **SMALL_TIMEOUTS}


def request(equipment_id: str, name: str = "Ann", number: str = PHONE, start: str = START, end: str = END,
            call_id: str = "") -> BookingRequest:
    """A booking request as the agent's tool builds it from its arguments."""
    return equipment.parse_booking(equipment_id, name, number, start, end, call_id, today=TODAY)


req = request  # for tests whose `request` is pytest's fixture


def unwritten(equipment_id: str, name: str = "Ann", call_id: str = "c1") -> BookingRequest:
    """A request for a booking the source never took (set up with inv.booker.keep)."""
    return BookingRequest(equipment_id, name, PHONE, date(2030, 1, 12), date(2030, 1, 15), call_id)


def free(snap: equipment.Snapshot, equipment_id: str, start: str = START, end: str = END) -> bool:
    unit = snap.find(equipment_id)
    assert unit is not None, equipment_id
    return snap.free(unit, d(start), d(end))


def held(snap: equipment.Snapshot, ref: str) -> bool:
    """The snapshot holds the dates of a booking still pending in the outbox."""
    return any(r.ref == ref and r.status == "PENDING" for r in snap.reservations)


def equipment_tab(source: Source) -> Any:
    """The Equipment tab (or file) exactly as stored: nothing the agent does may change it."""
    if source.sheet is not None:
        return source.sheet.rows("Equipment")
    return Path(source.env["EQUIPMENT_CSV"]).read_text(encoding="utf-8")


def plain(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows as read back: without the apostrophe a CSV store puts before = + - @ (neutralised, so a
    spreadsheet program never runs them)."""
    return [{k: v[1:] if v[:1] == "'" and v[1:2] in "=+-@" else v for k, v in r.items()} for r in rows]


def history(source: Source) -> list[tuple[str, str]]:
    return [(r["Booking Ref"], r["Kind"]) for r in source.log()]


def read_at_of(inv: equipment.CachedInventory) -> float | None:
    """read_at of the shared snapshot as stored (None: there is none)."""
    stored = inv.state.snapshot(inv.store.origin)
    return None if stored is None else stored.read_at


def age_snapshot(env: dict[str, str], seconds: float) -> None:
    """Makes the shared snapshot look `seconds` older (instead of sleeping through a TTL)."""
    inv = equipment.inventory_from_env(env)
    try:
        stored = inv.state.snapshot(inv.store.origin)
        assert stored is not None, "no snapshot to age"
        older = stored.read_at - seconds
        inv.state.save_snapshot(inv.store.origin, stored.data, older, older)
    finally:
        inv.state.close()


async def waiting_for_unit_lock(env: dict[str, str], n: int) -> None:
    """Until `n` processes queue for a unit lock held elsewhere. PostgreSQL shows its lock queue;
    a file lock's waiters are invisible, so on SQLite this allows them a generous moment."""
    if "DATABASE_URL" not in env:
        await asyncio.sleep(1.5)
        return
    db = StateDb(env)
    assert await wait_until(lambda: db.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")[0][0] >= n,
        timeout=30), "the children never queued for the unit lock"


# =============================================================================================
# reads and the cache


async def test_reads_csv_and_sheet_alike(sheet_env, csv_env, sheets):
    a = await equipment.inventory_from_env(sheet_env).snapshot()
    b = await equipment.inventory_from_env(csv_env).snapshot()
    assert a.known and b.known and (a.source, b.source) == ("sheet", "csv")
    assert a.units == b.units and len(a.units) == len(equipment_rows()) - 1 >= 15
    assert a.categories() == b.categories() and len(a.categories()) >= 5
    # the same reservations and the same shop policies from the Reservations and Settings tabs
    assert a.reservations == b.reservations
    assert sorted(r.ref for r in a.reservations) == sorted(LONG_TERM.values())
    assert a.policy == b.policy and (a.policy.tax_rate, a.policy.damage_waiver) == (Decimal("8.25"), Decimal("12"))
    # search is whatever the state; free is for dates: Status allows renting, nothing overlaps
    assert [u.id for u in a.search("excavator")] == ["EX-101", "EX-102", "EX-103", "EX-201", "EX-301"]
    assert [u.id for u in a.free_units(d(START), d(END), "excavator")] == ["EX-101", "EX-103", "EX-201"]
    assert a.find("ex-102").rentable and not free(a, "EX-102")  # out on a long-term rental
    assert a.next_free(a.find("EX-102"), d(START), d(END)) == date(2031, 1, 1)
    assert free(a, "EX-102", "2031-01-01", "2031-01-05")
    assert not a.find("EX-301").rentable and not free(a, "EX-301") and a.next_free(a.find("EX-301"), d(START),
                                                                                  d(END)) is None
    assert a.find("EX-101").daily_rate == 325.0 and a.find("EX-101").weekly_rate == 1300.0
    assert a.find("EX-101").four_week_rate == 3900.0 and a.find("EX-101").deposit == 500.0
    assert str(a.quote(a.find("EX-101"), d(START), d(END)).total) == TOTAL_4_DAYS
    assert sheets.counts["read"] == 1 and sheets.counts["metadata"] == 0  # three tabs, one request


async def test_headers_matched_loosely_rows_padded_blank_rows_skipped_unknown_status_logged(
        sheets, one_sheet_env, caplog):
    sheets.set_rows("Equipment", [
        [" id ", "NAME", "Notes", "status ", "daily_rate"],
        ["A-1", "Thing one", "staff note", "Available", "10"],
        [],
        ["", "", "", ""],
        ["A-2", "Thing two", "", "broken", ""],
        ["A-3", "Thing three", "", "RENTED"],  # an old sheet's rental without dates: taken until staff say
        ["A-4", "Thing four"],  # trailing cells dropped by the API: no status -> not rentable
    ])
    caplog.set_level(logging.INFO, logger="equipment")
    snap = await equipment.inventory_from_env(one_sheet_env).snapshot()
    assert [(u.id, u.status) for u in snap.units] == [("A-1", "AVAILABLE"), ("A-2", "BROKEN"),
                                                      ("A-3", "RENTED"), ("A-4", "")]
    assert snap.find("A-1").daily_rate == 10.0 and free(snap, "A-1")
    assert [u.id for u in snap.free_units(d(START), d(END))] == ["A-1"]
    assert not free(snap, "A-3", "2040-01-01", "2040-01-02")  # never shown free on a guess
    unknown = [r.getMessage() for r in caplog.records if "unknown status" in r.getMessage()]
    assert len(unknown) == 2 and "row 5" in unknown[0] and "A-2" in unknown[0]


async def test_ttl_expiry_one_read_serves_until_ttl_then_refreshes(sheets, sheet_env, caplog):
    caplog.set_level(logging.DEBUG, logger="equipment")
    inv = equipment.inventory_from_env(sheet_env)
    first = await loaded(inv)  # (a load still in flight would be joined, not started again)
    assert first.known and sheets.counts["read"] == 1
    for _ in range(5):  # within the TTL: served from the shared snapshot, no read
        snap = await equipment.inventory_from_env(sheet_env).snapshot()
        assert snap.known and snap.age < 30
    assert sheets.counts["read"] == 1
    assert re.search(r"Using cached equipment data \(age: \d+\.\ds\)", caplog.text)
    sheets.set_cell("Equipment", "EX-103", "Status", "MAINTENANCE")
    age_snapshot(sheet_env, 31)
    stale = await inv.snapshot()  # past the TTL: stale returned, refresh started
    assert stale.age >= 31 and stale.find("EX-103").rentable
    assert await wait_until(lambda: sheets.counts["read"] == 2)
    assert await wait_until(lambda: read_at_of(inv) > time.time() - 5)
    fresh = await equipment.inventory_from_env(sheet_env).snapshot()
    assert fresh.age < 5 and fresh.find("EX-103").status == "MAINTENANCE" and not free(fresh, "EX-103")
    assert "Cache expired or empty - reloading equipment" in caplog.text
    assert "Equipment loaded successfully: 20 items, 4 reservations" in caplog.text


async def test_single_flight_burst_of_20_processes_costs_one_read(sheets, sheet_env, run_child):
    sheets.delay("read", 0.5)  # the load is still in flight while the others arrive
    env = dict(sheet_env, EQUIPMENT_LOAD_TIMEOUT="20")
    procs = [run_child(env, "snapshot", wait_for_go=True) for _ in range(20)]
    release_together(procs)  # all 20 ask at once, none has a snapshot yet
    results = [child_result(p) for p in procs]
    assert all(r["known"] and r["n"] == 20 and len(r["reservations"]) == 4 for r in results), results
    assert sheets.counts["read"] == 1, sheets.counts
    assert sheets.counts["token"] == 1


async def test_burst_on_stale_snapshot_refreshes_once(sheets, sheet_env, run_child):
    await equipment.inventory_from_env(sheet_env).snapshot()
    age_snapshot(sheet_env, 60)
    sheets.delay("read", 2.0)  # the refresh is still in flight while the others arrive
    procs = [run_child(sheet_env, "snapshot", wait_for_go=True) for _ in range(8)]
    release_together(procs)
    results = [child_result(p) for p in procs]
    # none waited for the refresh: each got the stale snapshot at once
    assert all(r["known"] and r["age"] >= 60 and r["elapsed"] < 1.0 for r in results), results
    assert sheets.counts["read"] == 2, sheets.counts  # the first load + one refresh


async def test_stale_while_revalidate_returns_at_once_while_sheet_hangs(sheets, sheet_env, caplog):
    caplog.set_level(logging.DEBUG, logger="equipment")
    await equipment.inventory_from_env(sheet_env).snapshot()
    age_snapshot(sheet_env, 45)
    sheets.hang("read")
    inv = equipment.inventory_from_env(sheet_env)
    t0 = time.monotonic()
    snap = await inv.snapshot()
    elapsed = time.monotonic() - t0
    assert snap.known and snap.age >= 45 and elapsed < 0.5
    assert await wait_until(lambda: sheets.counts["read"] == 2)  # the refresh is in flight
    t0 = time.monotonic()
    again = await inv.snapshot()
    assert again.known and time.monotonic() - t0 < 0.5
    assert "Using cached equipment data (age: 45." in caplog.text


async def test_cold_start_with_hung_sheet_is_bounded_and_unknown(sheets, sheet_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    sheets.hang("read")
    env = dict(sheet_env, EQUIPMENT_LOAD_TIMEOUT="1")
    t0 = time.monotonic()
    snap = await equipment.inventory_from_env(env).snapshot()
    elapsed = time.monotonic() - t0
    assert snap.units is None and not snap.known and snap.age is None
    assert snap.search() == [] and snap.find("EX-101") is None
    assert 0.9 <= elapsed < 3.0
    assert "Equipment loading timed out - " in caplog.text and "inventory unknown" in caplog.text
    with pytest.raises(BookingRefused) as e:  # can't verify the unit: refuse, don't guess
        await equipment.inventory_from_env(env).book(request("EX-101"))
    assert e.value.code is RefusalCode.INVENTORY_UNKNOWN


async def test_outage_served_from_last_good_snapshot_after_restart(sheets, sheet_env, run_child, caplog):
    sheet_env["BOOKING_RETRY_BUDGET"] = "1"
    caplog.set_level(logging.INFO, logger="equipment")
    await equipment.inventory_from_env(sheet_env).snapshot()  # the worker once read the sheet
    age_snapshot(sheet_env, 3600)
    sheets.fail("*", 503)  # Sheets is down from now on
    restarted = equipment.inventory_from_env(sheet_env)  # a new worker, same STATE_DIR
    t0 = time.monotonic()
    snap = await restarted.snapshot()
    assert snap.known and snap.age >= 3600 and len(snap.units) == 20 and time.monotonic() - t0 < 0.5
    assert not free(snap, "EX-102")  # its reservations too: the last good snapshot, not a guess
    await restarted.close(timeout=10)  # the background refresh gave up within its budget
    assert "Equipment loading timed out - still serving the last good snapshot (age: 36" in caplog.text
    child = child_result(run_child(sheet_env, "snapshot"))  # and a separate process
    assert child["known"] and child["n"] == 20 and child["age"] >= 3600 and child["elapsed"] < 1.0
    assert len(child["reservations"]) == 4


async def test_retries_429_and_500_within_budget(sheets, one_sheet_env):
    sheets.fail("read", 429, times=1)
    sheets.fail("read", 500, times=1)
    snap = await equipment.inventory_from_env(dict(one_sheet_env, BOOKING_RETRY_BUDGET="5")).snapshot()
    assert snap.known and sheets.counts["read"] == 3


# =============================================================================================
# configuration and source errors


def test_good_inventory_config_has_no_errors(tmp_path):
    assert settings.inventory_errors({"STATE_DIR": str(tmp_path)}) == []


# each case: extra env (SA_JSON / TMP placeholders filled in), and per expected error the words it names
CONFIG_CASES = {
    "bad_numbers_and_url": (
        {"EQUIPMENT_CACHE_TTL": "thirty", "EQUIPMENT_LOAD_TIMEOUT": "-1", "BOOKING_RETRY_BUDGET": "nan",
         "SHEETS_HTTP_TIMEOUT": "1,2,3", "GOOGLE_SHEETS_API_URL": "localhost:99"},
        [("EQUIPMENT_CACHE_TTL",), ("EQUIPMENT_LOAD_TIMEOUT",), ("BOOKING_RETRY_BUDGET",),
         ("SHEETS_HTTP_TIMEOUT",), ("GOOGLE_SHEETS_API_URL",)]),
    "sheet_without_credentials": (
        {"GOOGLE_SHEET_ID": SHEET_ID}, [("GOOGLE_SHEET_ID", "GOOGLE_SERVICE_ACCOUNT_JSON")]),
    "credentials_not_json": (
        {"GOOGLE_SHEET_ID": SHEET_ID, "GOOGLE_SERVICE_ACCOUNT_JSON": "{not json"},
        [("GOOGLE_SERVICE_ACCOUNT_JSON",)]),
    "credentials_without_key": (
        {"GOOGLE_SHEET_ID": SHEET_ID, "GOOGLE_SERVICE_ACCOUNT_JSON": json.dumps({"client_email": "a@b"})},
        [("GOOGLE_SERVICE_ACCOUNT_JSON", "private_key")]),
    "credentials_without_sheet": (
        {"GOOGLE_SERVICE_ACCOUNT_JSON": "SA_JSON"}, [("GOOGLE_SHEET_ID",)]),
    "credentials_file_missing": (
        {"GOOGLE_SHEET_ID": SHEET_ID, "GOOGLE_APPLICATION_CREDENTIALS": "TMP/nope.json"},
        [("GOOGLE_APPLICATION_CREDENTIALS",)]),
    "csv_missing": ({"EQUIPMENT_CSV": "TMP/none.csv"}, [("EQUIPMENT_CSV",)]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_errors_name_each_variable(tmp_path, sheets, case):
    extra, expected = CONFIG_CASES[case]
    env = {"STATE_DIR": str(tmp_path / "state")}
    for k, v in extra.items():
        env[k] = sheets.service_account_json() if v == "SA_JSON" else v.replace("TMP", str(tmp_path))
    errors = settings.inventory_errors(env)
    assert len(errors) == len(expected), errors
    for words in expected:  # each problem named once, in its own message
        assert sum(all(w in e for w in words) for e in errors) == 1, (words, errors)
    with pytest.raises(settings.ConfigError) as raised:  # and the inventory is not built
        equipment.inventory_from_env(env)
    assert raised.value.errors == errors


@pytest.mark.parametrize("given_as", ["base64_with_literal_newlines", "key_file"])
async def test_credentials_base64_with_literal_newlines_and_file(sheets, one_sheet_env, tmp_path, given_as):
    sheet_env = one_sheet_env
    if given_as == "base64_with_literal_newlines":
        info = sheets.service_account_info()
        info["private_key"] = info["private_key"].replace("\n", "\\n")  # as pasted into a dashboard
        env = dict(sheet_env, GOOGLE_SERVICE_ACCOUNT_JSON=base64.b64encode(json.dumps(info).encode()).decode())
    else:
        path = tmp_path / "sa.json"
        path.write_text(sheets.service_account_json())
        env = {k: v for k, v in sheet_env.items() if k != "GOOGLE_SERVICE_ACCOUNT_JSON"}
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(path)
    assert settings.inventory_errors(env) == []
    report = await equipment.inventory_from_env(env).check()
    assert len(report.units) == 20 and report.reservations == 4 and report.has_reservations and report.has_settings
    assert sheets.counts["token"] == 1  # the key was used to sign a token request


@pytest.mark.parametrize("problem, expected", [
    ("missing_column", "no 'Status' column"),
    ("missing_worksheet", "no worksheet named 'Equipment'"),
    ("not_shared", "is not shared with agent@stand-in.iam.gserviceaccount.com"),
])
async def test_source_errors_are_clear(sheets, one_sheet_env, problem, expected, caplog):
    sheet_env = one_sheet_env
    if problem == "missing_column":
        rows = [[c for c in r[:3]] + r[4:] for r in equipment_rows()]  # drop Status
        sheets.set_rows("Equipment", rows)
    elif problem == "missing_worksheet":
        sheets.delete_sheet("Equipment")
        sheets.set_rows("Sheet1", equipment_rows())
    else:
        sheets.forbid()
    with pytest.raises(InventoryConfigError, match=expected):
        await equipment.inventory_from_env(sheet_env).check()
    caplog.set_level(logging.INFO, logger="equipment")
    t0 = time.monotonic()
    snap = await equipment.inventory_from_env(dict(sheet_env, EQUIPMENT_LOAD_TIMEOUT="5")).snapshot()
    assert not snap.known and time.monotonic() - t0 < 2.5  # no retries on a config error
    assert expected in caplog.text


# =============================================================================================
# booking


async def test_booking_happy_path(source, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = source.inventory()
    units_before, others_before = equipment_tab(source), source.reservations()
    b = await inv.book(request("EX-101", "  Ann   Lee ", call_id="call-42"))
    assert b.confirmed and b.equipment_id == "EX-101" and b.renter_name == "Ann Lee"
    assert len(b.ref) == 6 and set(b.ref) <= set(REF_ALPHABET)
    assert (b.start, b.end) == (date(2030, 1, 12), date(2030, 1, 15))
    assert (b.total, b.deposit) == (TOTAL_4_DAYS, DEPOSIT)  # worked out in code, Settings applied
    # one row appended to Reservations, carrying the same total; the unit's row untouched
    stored_phone = source.stored(PHONE)  # CSV: neutralised
    row = source.booking(b.ref)
    assert row is not None and row["Created At"].startswith("20")
    assert {k: row[k] for k in ("Ref", "Equipment ID", "Start", "End", "Renter Name", "Renter Phone", "Status",
                                "Total", "Deposit", "Call ID")} == {
        "Ref": b.ref, "Equipment ID": "EX-101", "Start": START, "End": END, "Renter Name": "Ann Lee",
        "Renter Phone": stored_phone, "Status": "CONFIRMED", "Total": TOTAL_4_DAYS, "Deposit": DEPOSIT,
        "Call ID": "call-42"}
    assert source.reservations() == others_before + [row]
    assert equipment_tab(source) == units_before
    log = source.log()
    assert len(log) == 1
    assert {k: log[0][k] for k in ("Booking Ref", "Equipment ID", "Equipment Name", "Renter Name", "Renter Phone",
                                   "Rental Start", "Rental End", "Call ID", "Kind", "Total")} == {
        "Booking Ref": b.ref, "Equipment ID": "EX-101", "Equipment Name": "Kubota KX040 Mini Excavator",
        "Renter Name": "Ann Lee", "Renter Phone": stored_phone, "Rental Start": START, "Rental End": END,
        "Call ID": "call-42", "Kind": "BOOKING", "Total": TOTAL_4_DAYS}
    # every process sees it on its next read, without waiting for the TTL; other dates stay free
    seen = await source.inventory().snapshot()
    assert not free(seen, "EX-101") and free(seen, "EX-101", "2030-01-16", "2030-01-20")
    assert seen.reservation(b.ref).status == "CONFIRMED"
    assert "4567" in caplog.text and "555 123 4567" not in caplog.text and "5551234567" not in caplog.text
    # write-ahead: in the outbox before the write (the crash tests prove it), settled once written and
    # logged, and kept as history
    assert StateDb(source.env).outcomes() == {b.ref: "written"} and pending_refs(source.env) == []
    if source.sheet is not None:
        s = source.sheet
        assert s.counts["append"] == 2 and s.counts["structure"] == 1  # the Bookings tab created once
        assert s.counts["write"] == 0 and s.counts["filter_write"] == 0  # nothing changed in place
        assert set(s.value_input_options) == {"RAW"}


async def test_booking_seen_by_another_process_without_a_read(sheets, sheet_env, run_child):
    await equipment.inventory_from_env(sheet_env).snapshot()
    child = child_result(run_child(sheet_env, "snapshot"))
    assert not [r for r in child["reservations"] if r[1] == "EX-103"]
    b = await equipment.inventory_from_env(sheet_env).book(request("EX-103"))
    reads = sheets.counts["read"]
    child = child_result(run_child(sheet_env, "snapshot"))
    assert [r for r in child["reservations"] if r[1] == "EX-103"] == [[b.ref, "EX-103", START, END, "CONFIRMED"]]
    assert sheets.counts["read"] == reads  # the other process read the shared state, not the sheet


async def test_booking_survives_a_refresh_that_was_in_flight(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    age_snapshot(sheet_env, 60)
    stale_read_at = read_at_of(inv)
    sheets.delay("read", 1.0, times=1)  # the background refresh reads the old sheet slowly
    await inv.snapshot()
    assert await wait_until(lambda: sheets.counts["read"] == 2)  # its read is in flight
    before = sheets.rows("Reservations")
    mine = Reservation("PATCH2", "EX-103", d(START), d(END), renter_name="Ann", renter_phone=PHONE)
    sheets.append_row("Reservations", dict(zip(RESERVATION_HEADER, mine.to_row())))  # someone books meanwhile ...
    inv.cache.patch([mine])  # ... and patches the shared snapshot
    sheets.set_rows("Reservations", before)  # (what the slow read returns)
    # the patch landed before the refresh wrote its (older) read
    assert read_at_of(inv) == stale_read_at
    await inv.close(timeout=10)
    assert sheets.counts["read"] == 2
    snap = await equipment.inventory_from_env(sheet_env).snapshot()
    assert snap.age < 5 and snap.reservation("PATCH2") == mine and not free(snap, "EX-103")


async def test_two_processes_racing_for_one_unit(source, run_child):
    holder = source.inventory()
    await loaded(holder)  # both see it free
    # Another booking of the unit is in flight (its lock is held: a file lock, or PostgreSQL's
    # advisory lock) while both children check their snapshot and queue for the unit: then whoever
    # comes second must learn it from the source.
    with holder.state.unit_lock(fold("EX-101"), timeout=5):
        procs = [run_child(source.env, "book", "EX-101", f"Racer {i}", PHONE, "2030-05-01", "2030-05-02",
                           wait_for_go=True) for i in range(2)]
        release_together(procs)
        await waiting_for_unit_lock(source.env, 2)  # both past their snapshot check, queued
    results = [child_result(p) for p in procs]
    winners = [r for r in results if r["ok"]]
    losers = [r for r in results if not r["ok"]]
    assert len(winners) == 1 and winners[0]["confirmed"], results
    assert len(losers) == 1 and losers[0]["code"] == "just_taken", results
    assert losers[0]["alternatives"][:2] == ["EX-103", "EX-201"]  # same model first, same category
    assert losers[0]["next_free"] == "2030-05-03"
    assert source.refs_of("EX-101") == [winners[0]["ref"]]
    assert [r["Booking Ref"] for r in source.log()] == [winners[0]["ref"]]


@pytest.mark.parametrize("ranges, overlapping", [
    ((("2030-05-01", "2030-05-03"), ("2030-05-03", "2030-05-06")), True),  # one day in common
    ((("2030-05-02", "2030-05-04"), ("2030-05-01", "2030-05-08")), True),  # one inside the other
    ((("2030-05-01", "2030-05-02"), ("2030-05-03", "2030-05-04")), False),  # back to back
], ids=["share_a_day", "inside", "back_to_back"])
async def test_racers_for_overlapping_ranges_get_one_winner_and_back_to_back_ranges_both_win(
        source, run_child, ranges, overlapping):
    """Two processes book one unit for different date ranges at the same moment, queued behind a
    booking in flight. Overlapping: exactly one wins, the other is told just_taken with the next
    date the unit is free for as many days and free units of the same kind. Not overlapping: both
    are booked, two rows."""
    holder = source.inventory()
    await loaded(holder)
    with holder.state.unit_lock(fold("EX-101"), timeout=5):
        procs = [run_child(source.env, "book", "EX-101", f"Racer {i}", PHONE, start, end, wait_for_go=True)
                 for i, (start, end) in enumerate(ranges)]
        release_together(procs)
        await waiting_for_unit_lock(source.env, 2)
    results = [child_result(p) for p in procs]
    rows = [source.booking(r["ref"]) for r in results if r["ok"]]
    if not overlapping:
        assert all(r["ok"] and r["confirmed"] for r in results), results
        assert sorted((row["Start"], row["End"]) for row in rows) == sorted(ranges)
        assert sorted(source.refs_of("EX-101")) == sorted(r["ref"] for r in results)
        assert sorted(source.log_refs()) == sorted(r["ref"] for r in results)
        return
    won = [i for i, r in enumerate(results) if r["ok"]]
    assert len(won) == 1 and results[won[0]]["confirmed"], results
    winner, loser = results[won[0]], results[1 - won[0]]
    assert loser["code"] == "just_taken", results
    w_start, w_end = ranges[won[0]]
    assert (rows[0]["Start"], rows[0]["End"], rows[0]["Status"]) == (w_start, w_end, "CONFIRMED")
    # free again the day after the winner's rental (both losers' lengths fit from there)
    assert loser["next_free"] == (d(w_end) + timedelta(days=1)).isoformat()
    assert loser["alternatives"][:2] == ["EX-103", "EX-201"]  # EX-102 is out, EX-301 in maintenance
    assert source.refs_of("EX-101") == [winner["ref"]]
    assert source.log_refs() == [winner["ref"]]
    snap = await source.inventory().snapshot()
    assert not free(snap, "EX-101", *ranges[1 - won[0]])


async def test_formula_text_is_stored_as_text(source):
    evil = '=HYPERLINK("http://x","y")'
    inv = source.inventory()
    b = await inv.book(request("EX-103", evil, call_id="@SUM(1)"))
    row, log = source.booking(b.ref), source.log()
    if source.sheet is not None:  # written RAW: the very text, never a formula
        assert row["Renter Name"] == evil and log[0]["Renter Name"] == evil and row["Call ID"] == "@SUM(1)"
        assert source.sheet.formula_writes == [] and set(source.sheet.value_input_options) == {"RAW"}
    else:  # a CSV opened in a spreadsheet program would run it: neutralised
        assert row["Renter Name"] == "'" + evil and log[0]["Renter Name"] == "'" + evil
        assert row["Call ID"] == "'@SUM(1)" and log[0]["Call ID"] == "'@SUM(1)"
    assert b.renter_name == evil
    # and read back as the very text: the booking is found by its caller's name, not a formula
    assert (await source.inventory().snapshot()).reservation(b.ref).renter_name == evil


HUGE_PHONE = "1" + "-" * 60000 + "5551234567"


@pytest.mark.parametrize("code, args", [
    ("bad_name", ("EX-101", "   ", PHONE, START, END)),
    ("bad_name", ("EX-101", "A" * 101, PHONE, START, END)),
    ("bad_phone", ("EX-101", "Ann", "call me maybe", START, END)),
    ("bad_phone", ("EX-101", "Ann", "12345", START, END)),
    ("bad_phone", ("EX-101", "Ann", "+1 555 123 4567 8901 23", START, END)),
    ("bad_phone", ("EX-101", "Ann", HUGE_PHONE, START, END)),
    ("bad_phone", ("EX-101", "Ann", "+1 (555) 123-4567 " + " " * 10 + "-" * 20, START, END)),
    ("bad_date", ("EX-101", "Ann", PHONE, "next tuesday", END)),
    ("bad_date", ("EX-101", "Ann", PHONE, START, "2030-02-30")),
    ("past_date", ("EX-101", "Ann", PHONE, "2030-01-09", END)),
    ("end_before_start", ("EX-101", "Ann", PHONE, "2030-01-15", "2030-01-12")),
])
def test_request_refusals(code, args):
    """What the caller said is checked before the inventory is asked (parse_booking)."""
    with pytest.raises(BookingRefused) as e:
        equipment.parse_booking(*args, today=TODAY)
    assert e.value.code == code
    assert prompts.refusal(e.value).startswith(f"Booking refused ({code}): ")  # something to tell the caller


@pytest.mark.parametrize("number", ["nope", HUGE_PHONE, ""], ids=["words", "huge", "empty"])
def test_callback_refused_without_a_phone_number(number):
    with pytest.raises(BookingRefused) as e:
        equipment.parse_callback("Ann", number, "note")
    assert e.value.code is RefusalCode.BAD_PHONE


@pytest.mark.parametrize("code, equipment_id, next_free", [
    ("unknown_id", "NOPE-1", None),
    ("not_available", "EX-102", date(2031, 1, 1)),  # out on a long-term rental until 2030-12-31
    ("not_available", "EX-301", None),  # MAINTENANCE: not rentable at all, no date to offer
])
async def test_inventory_refusals(source, code, equipment_id, next_free):
    inv = source.inventory()
    before = source.reservations()
    with pytest.raises(BookingRefused) as e:
        await inv.book(request(equipment_id))
    assert e.value.code == code and prompts.refusal(e.value).startswith(f"Booking refused ({code}): ")
    if code == "unknown_id":
        assert e.value.requested_id == equipment_id and e.value.alternatives == ()
    else:
        assert e.value.unit.id == equipment_id and e.value.next_free == next_free
        alts = [u.id for u in e.value.alternatives]
        assert alts[:3] == ["EX-101", "EX-103", "EX-201"]  # free those dates, same category, cheapest first
        assert equipment_id not in alts and "EX-102" not in alts and "EX-301" not in alts
    assert source.reservations() == before
    assert source.log() == [] and StateDb(source.env).outbox() == []


@pytest.mark.parametrize("change", ["walk_in", "maintenance"])
async def test_refusal_just_taken_when_source_changed_after_the_snapshot(source, change):
    inv = source.inventory()
    assert free(await loaded(inv), "SS-101")
    if change == "walk_in":  # staff rented it by hand meanwhile (no Ref typed: the row still counts)
        source.add_reservation("", "SS-101", "2030-01-13", "2030-01-14")
    else:
        source.set_status("SS-101", "MAINTENANCE")
    before = source.reservations()
    with pytest.raises(BookingRefused) as e:
        await inv.book(request("SS-101"))
    assert e.value.code == "just_taken" and [u.id for u in e.value.alternatives] == ["SS-201"]  # SS-102 is out
    assert e.value.next_free == (date(2030, 1, 15) if change == "walk_in" else None)
    assert source.log() == [] and source.reservations() == before
    if change == "walk_in":  # the snapshot learned it: the next caller is not offered the unit
        assert not free(await inv.snapshot(), "SS-101")


async def test_booking_after_staff_insert_and_sort_rows_appends_its_row_and_writes_no_other(sheets, sheet_env):
    """Writes go by identity, never by position: staff inserted rows and sorted both tabs between
    the snapshot and the booking. The booking is a new row at the end of Reservations; no request
    writes any row of Equipment or any existing reservation."""
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    rows = sheets.rows("Equipment")
    sheets.set_rows("Equipment", [rows[0], ["ZZ-1", "New thing", "Misc", "AVAILABLE"]] + list(reversed(rows[1:])))
    sheets.insert_row("Reservations", 1, {"Ref": "STAFF1", "Equipment ID": "EX-201", "Start": "2030-01-01",
                                          "End": "2030-01-02", "Status": "RETURNED"})
    sheets.sort_rows("Reservations", "Equipment ID", descending=True)
    units, others = sheets.rows("Equipment"), sheets.records("Reservations")
    b = await inv.book(request("EX-103"))
    assert b.confirmed and sheets.rows("Equipment") == units
    assert sheets.records("Reservations")[:-1] == others and sheets.records("Reservations")[-1]["Ref"] == b.ref
    # every row any request wrote: our reservation, the new Bookings tab's header and our history row,
    # each a row that was empty before
    assert sorted((w["title"], w["after"][0]) for w in sheets.write_log) == sorted([
        ("Reservations", b.ref), ("Bookings", "Booking Ref"), ("Bookings", b.ref)])
    assert not [w for w in sheets.write_log if any(str(c).strip() for c in (w["before"] or []))]


async def test_phone_is_neutralised_in_a_csv_and_raw_in_the_sheet(source):
    inv = source.inventory()
    b = await inv.book(request("EX-101", number="-555-123-4567"))
    ref = await inv.record_callback(equipment.parse_callback("=cmd()", "+1 555 123 4567", "-2+3", "c1"))
    row, log = source.booking(b.ref), source.log()
    cb = next(r for r in log if r["Booking Ref"] == ref)
    if source.sheet is not None:  # RAW: stored as given
        assert row["Renter Phone"] == "-555-123-4567" and log[0]["Renter Phone"] == "-555-123-4567"
        assert (cb["Renter Name"], cb["Renter Phone"], cb["Note"]) == ("=cmd()", "+1 555 123 4567", "-2+3")
    else:  # readable, but never run by a spreadsheet program
        assert row["Renter Phone"] == "'-555-123-4567" and log[0]["Renter Phone"] == "'-555-123-4567"
        assert (cb["Renter Name"], cb["Renter Phone"], cb["Note"]) == ("'=cmd()", "'+1 555 123 4567", "'-2+3")
    assert b.renter_phone == "-555-123-4567"
    # the caller is found by the number they booked with, whichever way it was stored
    snap = await source.inventory().snapshot()
    assert [r.ref for r in snap.reservations_of("555 123 4567", TODAY)] == [b.ref]


# =============================================================================================
# staff at the sheet: walk-ins, cancellations, an old sheet


async def test_staff_walk_in_and_cancellation_are_respected_at_the_next_read(source):
    """Staff type a walk-in by hand (a row in Reservations; in the CSV, a line in reservations.csv)
    and cancel a long-term rental (Status CANCELLED): the next read of the source shows both, and
    bookings follow it."""
    inv = source.inventory()
    snap = await loaded(inv)
    assert free(snap, "EX-101") and not free(snap, "EX-102")
    source.add_reservation("WALK01", "EX-101", "2030-01-13", "2030-01-14", "Walk In")
    source.set_reservation(LONG_TERM["EX-102"], "Status", "CANCELLED")
    assert free(await inv.snapshot(), "EX-101")  # not read yet: the TTL has not passed
    age_snapshot(source.env, 60)
    await loaded(inv)  # the refresh reads the source again
    snap = await source.inventory().snapshot()
    assert snap.age < 10 and snap.reservation("WALK01").renter_name == "Walk In"
    assert not free(snap, "EX-101") and snap.next_free(snap.find("EX-101"), d(START), d(END)) == date(2030, 1, 15)
    assert free(snap, "EX-101", "2030-01-15", "2030-01-18")
    assert free(snap, "EX-102") and snap.reservation(LONG_TERM["EX-102"]).status == "CANCELLED"
    assert [u.id for u in snap.free_units(d(START), d(END), "excavator")] == ["EX-102", "EX-103", "EX-201"]
    with pytest.raises(BookingRefused) as e:
        await inv.book(request("EX-101"))
    assert e.value.code == "not_available" and e.value.next_free == date(2030, 1, 15)
    b = await inv.book(request("EX-102"))  # the cancelled rental no longer holds it
    assert b.confirmed and source.booking(b.ref)["Equipment ID"] == "EX-102"
    assert source.refs_of("EX-101") == ["WALK01"]  # the walk-in's row as staff typed it
    assert source.booking(LONG_TERM["EX-102"])["Status"] == "CANCELLED"


async def test_walk_in_typed_while_our_row_is_written_wins(sheets, sheet_env, caplog):
    """Staff type a walk-in for overlapping dates in the very moment our booking's row lands: the
    agent looks again once its row is in, cancels its own row and tells the caller the unit was
    just taken (with the next free date), never confirming a double booking."""
    caplog.set_level(logging.INFO, logger="equipment")
    src = Source(sheet_env, sheets)
    inv = src.inventory()
    await loaded(inv)
    sheets.after("append", lambda: src.add_reservation("WALK02", "EX-101", "2030-01-14", "2030-01-16"),
                 when="Reservations")
    with pytest.raises(BookingRefused) as e:
        await inv.book(request("EX-101"))
    assert e.value.code == "just_taken" and e.value.next_free == date(2030, 1, 17)
    assert [u.id for u in e.value.alternatives][:1] == ["EX-103"]
    ours = [r for r in src.reservations() if r["Equipment ID"] == "EX-101" and r["Ref"] != "WALK02"]
    assert len(ours) == 1 and ours[0]["Status"] == "CANCELLED" and "WALK02" in ours[0]["Notes"]
    assert src.booking("WALK02")["Status"] == "CONFIRMED"  # staff's row untouched
    assert src.log() == []  # nothing booked to tell staff about
    assert StateDb(sheet_env).outcomes() == {ours[0]["Ref"]: "conflict"}
    snap = await src.inventory().snapshot()
    assert snap.reservation(ours[0]["Ref"]).status == "CANCELLED" and not free(snap, "EX-101")


@pytest.mark.old_sheet
@pytest.mark.parametrize("store", ["sheet", "csv"])
async def test_an_old_sheet_keeps_working_rented_rows_are_reservations_never_written(request, engine_env, store):
    """A sheet (or CSV) from before the Reservations and Settings tabs: units RENTED with Rental
    Start/End on their own rows. Those are read as reservations (free again after their end); the
    first booking creates the Reservations tab with its header; nothing is written to the units'
    rows; without a Settings tab the documented defaults apply (no tax, no waiver)."""
    old = old_sheet_rows()
    if store == "sheet":
        sheets = request.getfixturevalue("sheets")
        sheets.set_rows("Equipment", old)
        src = Source({**request.getfixturevalue("sheet_env"), **engine_env}, sheets)
        assert "Reservations" not in sheets.sheets and "Settings" not in sheets.sheets
    else:
        env = {**request.getfixturevalue("csv_env"), **engine_env}
        path = Path(env["EQUIPMENT_CSV"])
        path.with_name("reservations.csv").unlink()
        path.with_name("settings.csv").unlink()
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(old)
        src = Source(env, None)
    units = equipment_tab(src)
    inv = src.inventory()
    snap = await loaded(inv)
    assert snap.find("EX-102").status == "RENTED" and snap.find("EX-102").rentable
    assert not free(snap, "EX-102") and snap.next_free(snap.find("EX-102"), d(START), d(END)) == date(2031, 1, 1)
    legacy = snap.reservation("LTEX10")
    assert legacy.legacy and (legacy.start, legacy.end, legacy.renter_name) == (date(2026, 1, 5),
                                                                               date(2030, 12, 31), "Dana Whitfield")
    assert snap.reservations_of("(555) 201-4478", TODAY) == []  # changed through staff, not by phone
    with pytest.raises(BookingRefused) as e:
        await inv.book(req("EX-102"))
    assert e.value.code == "not_available" and e.value.next_free == date(2031, 1, 1)
    b = await inv.book(req("EX-101"))
    later = await inv.book(req("EX-102", "Bo", start="2031-01-02", end="2031-01-03"))
    assert b.confirmed and later.confirmed
    assert (b.total, b.deposit) == ("1300.00", "0.00")  # 4 days at 325, defaults: no tax, no waiver, no deposit
    assert [r["Ref"] for r in src.reservations()] == [b.ref, later.ref]
    assert src.booking(later.ref)["Start"] == "2031-01-02"
    if store == "sheet":
        assert sheets.rows("Reservations")[0] == RESERVATION_HEADER  # created with its header
    assert equipment_tab(src) == units  # the old rows are read, never written
    assert [r["Booking Ref"] for r in src.log()] == [b.ref, later.ref]


# =============================================================================================
# outbox


async def test_outbox_during_outage_then_replayed_exactly_once(sheets, sheet_env, run_child):
    sheet_env["BOOKING_RETRY_BUDGET"] = "1"
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.fail("*", 503)
    t0 = time.monotonic()
    b = await inv.book(request("EX-103", call_id="c1"))
    assert not b.confirmed and time.monotonic() - t0 < 8  # BOOKING_RETRY_BUDGET=1, generous bound
    assert b.total == TOTAL_4_DAYS  # quoted from the snapshot the caller heard
    entries = StateDb(sheet_env).outbox()
    assert [(e["kind"], e["ref"], e["payload"]["equipment_id"], e["payload"]["total"], e["outcome"])
            for e in entries] == [("book", b.ref, "EX-103", TOTAL_4_DAYS, None)]
    # its dates held for everybody: another process sees them taken and cannot book them
    child = child_result(run_child(sheet_env, "snapshot"))
    assert [b.ref, "EX-103", START, END, "PENDING"] in child["reservations"]
    other = child_result(run_child(sheet_env, "book", "EX-103", "Bo", PHONE, "2030-01-14", "2030-01-16"))
    assert not other["ok"] and other["code"] == "not_available" and "EX-101" in other["alternatives"]
    assert other["next_free"] == "2030-01-16"
    # other dates of the unit stay free
    elsewhere = child_result(run_child(sheet_env, "snapshot"))
    assert not [r for r in elsewhere["reservations"] if r[1] == "EX-103" and r[3] >= "2030-01-16"]
    # still held after a reload of the snapshot while the outbox is unsettled
    sheets.clear_faults()
    sheets.fail("append", 503)
    sheets.fail("structure", 503)
    age_snapshot(sheet_env, 60)
    reads = sheets.counts["read"]
    await loaded(inv)
    await inv.close(timeout=10)
    assert sheets.counts["read"] > reads  # the snapshot was reloaded from the sheet
    assert sheets.record("Reservations", b.ref, "Ref") is None
    assert held(await equipment.inventory_from_env(sheet_env).snapshot(), b.ref)
    # Sheets is back: replay writes it once
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    row = sheets.record("Reservations", b.ref, "Ref")
    assert (row["Equipment ID"], row["Start"], row["End"], row["Renter Name"], row["Status"], row["Total"]) == (
        "EX-103", START, END, "Ann", "CONFIRMED", TOTAL_4_DAYS)
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert await inv.replay_outbox() == 0
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 0
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert [r["Ref"] for r in sheets.records("Reservations")].count(b.ref) == 1
    snap = await equipment.inventory_from_env(sheet_env).snapshot()
    assert snap.reservation(b.ref).status == "CONFIRMED" and not held(snap, b.ref)
    assert StateDb(sheet_env).outcomes() == {b.ref: "written"}


async def test_outbox_replayed_by_a_later_refresh_and_idempotent_by_ref(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.reset("append", times=1, when="Reservations")  # the append never answers (landed or not?)
    b = await inv.book(request("EX-101"))
    assert not b.confirmed and pending_refs(sheet_env) == [b.ref]
    db = StateDb(sheet_env)
    assert db.outbox()[0]["uncertain_at"] is not None  # no second append while it may still land
    # it did land although its answer was lost (staff's view: the row is there), and its wait is over
    sheets.append_row("Reservations", dict(zip(RESERVATION_HEADER, [
        b.ref, "EX-101", START, END, "Ann", PHONE, "CONFIRMED", TOTAL_4_DAYS, DEPOSIT, "", "", ""])))
    from inventory.booking import UNCERTAIN_WAIT
    db.query("UPDATE {outbox} SET uncertain_at = uncertain_at - ?", (UNCERTAIN_WAIT + 1,))
    appends = sheets.counts["append"]
    age_snapshot(sheet_env, 60)
    await inv.snapshot()  # stale: the background refresh (lock holder) replays the outbox
    assert await inv.background.wait(10) == 0  # the refresh, not close(), settles it
    assert pending_refs(sheet_env) == []
    assert sheets.counts["append"] == appends + 1  # its history row only: the reservation was there
    assert [r["Ref"] for r in sheets.records("Reservations")].count(b.ref) == 1
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert StateDb(sheet_env).outcomes() == {b.ref: "already"}
    assert await inv.replay_outbox() == 0
    await inv.close(timeout=10)


@pytest.mark.parametrize("meanwhile", ["walk_in", "maintenance"])
async def test_replay_conflict_is_logged_not_dropped(source, caplog, meanwhile):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = source.inventory()
    unit = (await loaded(inv)).find("EX-201")
    b = inv.booker.keep(unwritten("EX-201", call_id="c9"), unit, RuntimeError("simulated outage"), ref="QQ7QQ7")
    assert not b.confirmed and pending_refs(source.env) == ["QQ7QQ7"]
    if meanwhile == "walk_in":  # staff gave it to a walk-in for overlapping dates meanwhile
        source.add_reservation("WALK03", "EX-201", "2030-01-15", "2030-01-20")
    else:  # or sent it to the workshop
        source.set_status("EX-201", "MAINTENANCE")
    assert await inv.replay_outbox() == 1
    conflict = [r.getMessage() for r in caplog.records if "Outbox conflict" in r.getMessage()]
    assert len(conflict) == 1 and b.ref in conflict[0] and "EX-201" in conflict[0]
    assert PHONE not in caplog.text
    assert history(source) == [(b.ref, "CONFLICT")]
    assert source.booking(b.ref) is None
    assert source.refs_of("EX-201") == (["WALK03"] if meanwhile == "walk_in" else [])
    assert StateDb(source.env).outcomes() == {b.ref: "conflict"}
    assert await inv.replay_outbox() == 0 and len(source.log()) == 1


async def test_record_callback(source):
    inv = source.inventory()
    ref = await inv.record_callback(equipment.parse_callback("Ann", PHONE, "wants a quote for a 3-week boom lift",
                                                             "c7"))
    log = source.log()
    assert [(r["Booking Ref"], r["Kind"], r["Renter Phone"], r["Call ID"]) for r in log] == [
        (ref, "CALLBACK", source.stored(PHONE), "c7")]
    assert "boom lift" in log[0]["Note"]
    await loaded(inv)  # (the state exists from here on)
    assert ref not in StateDb(source.env).outcomes()  # written at once: nothing kept


async def test_record_callback_during_outage_goes_to_outbox(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    sheets.fail("*", 500)
    ref = await inv.record_callback(equipment.parse_callback("Ann", PHONE, "call back please"))
    assert sheets.rows("Bookings") == [] and pending_refs(sheet_env) == [ref]
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    assert [(r["Booking Ref"], r["Kind"]) for r in sheets.records("Bookings")] == [(ref, "CALLBACK")]


# =============================================================================================
# crashes at every step of a booking, failures kept, token retries, Bookings tab

# Where the booking process is killed: each step of a booking, in order. How the child is stopped
# there: a request that never answers (hang: not applied; hang_after: applied, answer lost), or the
# state's write lock held by the test from the moment the previous request was applied; `when`
# picks the request (the Reservations append or the Bookings one), `nth` how many requests of that
# kind the booking has sent once it is stopped. Then what the outbox holds for it (None: nothing; or
# the outcome, "" while pending) on SQLite and on PostgreSQL, whose server finishes a statement it
# was already waiting to run when its client died.
CRASH_STEPS = {
    "reread": ("read", None, 1, "hang", None, None),  # re-reading the sheet, before anything is recorded
    "write_ahead": ("read", None, 1, "lock", None, ""),  # recording the outbox entry
    "reservation_append": ("append", "Reservations", 1, "hang", "", ""),  # appending its row: not landed
    "reservation_append_landed": ("append", "Reservations", 1, "hang_after", "", ""),  # landed, answer lost
    "look_again": ("read", "Reservations", 3, "hang_after_append", "", ""),  # re-reading Reservations after it
    "log_append": ("append", "Bookings", 2, "hang", "", ""),  # appending the history row: not landed
    "log_append_landed": ("append", "Bookings", 2, "hang_after", "", ""),  # the history row landed, answer lost
    "settle": ("append", "Bookings", 2, "lock", "", "written"),  # settling the entry after everything landed
}
RESERVATION_LANDED = ("reservation_append_landed", "look_again", "log_append", "log_append_landed", "settle")
LOG_LANDED = ("log_append_landed", "settle")


@pytest.mark.parametrize("step", list(CRASH_STEPS))
async def test_process_killed_at_any_step_of_a_booking_loses_nothing_and_doubles_nothing(
        sheets, sheet_env, run_child, step):
    """Write-ahead: the booking is in the outbox before its row is appended, so a process that
    dies mid-booking (call ended, worker killed) leaves something replay can finish, once; and a
    process that dies before that leaves nothing at all (its caller was never told anything)."""
    await loaded(equipment.inventory_from_env(sheet_env))
    sheets.set_rows("Bookings", [list(LOG_HEADER)])  # the tab exists: each step is one request
    src = Source(sheet_env, sheets)
    kind, when, nth, how, *outbox_after = CRASH_STEPS[step]
    db = StateDb(sheet_env)
    expected = outbox_after[db.engine == "postgres"]
    locks: list[Any] = []
    if how == "lock":
        sheets.after(kind, lambda: locks.append(StateDb(sheet_env).write_lock()), when=when)
    elif how == "hang_after_append":  # our row is in and answered; the look that follows never answers
        sheets.after("append", lambda: sheets.hang("read"), when="Reservations")
    else:
        getattr(sheets, how)(kind, when=when)
    env = dict(sheet_env, BOOKING_RETRY_BUDGET="30", SHEETS_HTTP_TIMEOUT="30", DATABASE_TIMEOUT="30")
    before = sheets.counts[kind]
    child = run_child(env, "book", "EX-103", "Ann", PHONE, "2031-01-01", "2031-01-02")
    assert await wait_until(lambda: sheets.counts[kind] >= before + nth and (how != "lock" or bool(locks)),
                            timeout=30)
    if how in ("hang_after", "hang_after_append"):  # the request was applied before the child is killed
        what = "Bookings" if when == "Bookings" else "Reservations"
        assert await wait_until(lambda: any(r.get("Booking Ref", r.get("Ref")) not in ("", None, *LONG_TERM.values())
                                            for r in sheets.records(what)))
    if how == "lock" and db.engine == "postgres":  # the child's statement waits for the lock
        assert await wait_until(lambda: db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'")[0][0] == 1, timeout=20)
    child.kill()  # no close(), no finally: the process is gone
    child.wait()
    for lock in locks:
        lock.release()
    sheets.release()
    sheets.clear_faults()

    entries = db.outbox()
    assert [e["outcome"] or "" for e in entries] == ([] if expected is None else [expected]), entries
    refs = [e["ref"] for e in entries]
    assert pending_refs(sheet_env) == [e["ref"] for e in entries if e["outcome"] is None]
    recorded = bool(refs)
    reservation_landed, log_landed = step in RESERVATION_LANDED, step in LOG_LANDED
    assert src.refs_of("EX-103") == (refs if reservation_landed else [])
    assert src.log_refs() == (refs if log_landed else [])
    fresh = equipment.inventory_from_env(sheet_env)
    if recorded:  # held for everybody until it is settled
        assert not free(await fresh.snapshot(), "EX-103", "2031-01-01", "2031-01-02")
    waiting = len(pending_refs(sheet_env))
    assert await fresh.replay_outbox() == waiting
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 0 and pending_refs(sheet_env) == []
    if recorded:  # 0 lost, 0 doubled: exactly one reservation row and one history row for the ref
        row = src.booking(refs[0])
        assert (row["Equipment ID"], row["Start"], row["End"], row["Renter Name"], row["Status"]) == (
            "EX-103", "2031-01-01", "2031-01-02", "Ann", "CONFIRMED")
        assert src.refs_of("EX-103") == refs and src.log_refs() == refs
        assert db.outcomes() == {refs[0]: expected or ("already" if reservation_landed else "written")}
        snap = await equipment.inventory_from_env(sheet_env).snapshot()
        assert snap.reservation(refs[0]).status == "CONFIRMED"
        assert not free(snap, "EX-103", "2031-01-01", "2031-01-02")
    else:  # nothing half-done, and the dead process' unit lock went with it
        assert src.refs_of("EX-103") == [] and src.log_refs() == []
        assert db.outbox() == []
        t0 = time.monotonic()
        b = await equipment.inventory_from_env(sheet_env).book(request("EX-103"))
        assert b.confirmed and time.monotonic() - t0 < 5
        assert src.log_refs() == [b.ref] and src.refs_of("EX-103") == [b.ref]


async def test_replay_does_not_append_a_second_row(sheets, sheet_env):
    """Died after the history row was appended but before the outbox entry was settled."""
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    b = await inv.book(request("EX-103"))
    db = StateDb(sheet_env)
    assert db.outcomes() == {b.ref: "written"}
    # what that crash leaves in the database: the entry, not settled
    db.query("UPDATE {outbox} SET settled_at = NULL, outcome = NULL WHERE ref = ?", (b.ref,))
    assert pending_refs(sheet_env) == [b.ref]
    appends, writes = sheets.counts["append"], sheets.counts["write"] + sheets.counts["filter_write"]
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 1
    assert sheets.counts["append"] == appends and sheets.counts["write"] + sheets.counts["filter_write"] == writes
    assert [r["Ref"] for r in sheets.records("Reservations")].count(b.ref) == 1
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert pending_refs(sheet_env) == [] and db.outcomes() == {b.ref: "already"}


async def test_close_waits_for_a_booking_still_in_flight(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.delay("append", 1.0, when="Reservations")
    write = asyncio.ensure_future(inv.book(request("EX-103")))
    with pytest.raises(asyncio.TimeoutError):  # the agent stops waiting; the call ends
        await asyncio.wait_for(asyncio.shield(write), 0.2)
    await inv.close(timeout=20)
    assert write.done() and write.result().confirmed
    assert sheets.record("Reservations", write.result().ref, "Ref")["Equipment ID"] == "EX-103"
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [write.result().ref]
    assert pending_refs(sheet_env) == []


def test_late_result_of_a_thread_is_logged_not_dropped(one_sheet_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(one_sheet_env)
    done = threading.Event()
    finished: list[str] = []

    def slow(fail: bool) -> str:
        time.sleep(0.3)
        finished.append("bad" if fail else "ok")
        if len(finished) == 2:
            done.set()
        if fail:
            raise RuntimeError("late failure xyz")
        return "late result abc"

    async def leave_early() -> None:
        inv.background.run(slow, False, name="equipment-late-ok")
        inv.background.run(slow, True, name="equipment-late-bad")

    asyncio.run(leave_early())  # the loop closes before the threads finish
    assert done.wait(10)

    def logged() -> bool:
        text = caplog.text
        return "equipment-late-ok" in text and "equipment-late-bad" in text

    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if "equipment-late-" in r.getMessage()]
    assert len(lines) == 2, lines
    ok = next(x for x in lines if "equipment-late-ok" in x)
    bad = next(x for x in lines if "equipment-late-bad" in x)
    assert "late result abc" in ok and "late failure xyz" in bad
    assert all("event loop had closed" in x for x in lines)


@pytest.mark.parametrize("fault", ["forbidden", "bad_request", "column_deleted", "reservations_column_deleted"])
async def test_failures_during_booking_are_kept_in_the_outbox(sheets, sheet_env, fault, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    if fault == "forbidden":
        sheets.forbid()  # the sheet was un-shared mid-day
    elif fault == "bad_request":
        sheets.fail("append", 400, when="Reservations")
    elif fault == "column_deleted":
        sheets.set_rows("Equipment", [[c for c in r[:3]] + r[4:] for r in equipment_rows()])  # no Status
    else:
        sheets.set_rows("Reservations", [r[:1] + r[2:] for r in csv_rows(RESERVATIONS_CSV)])  # no Equipment ID
    t0 = time.monotonic()
    b = await inv.book(request("EX-103", call_id="c1"))
    assert not b.confirmed and time.monotonic() - t0 < 8
    assert pending_refs(sheet_env) == [b.ref]
    entry = next(e["payload"] for e in StateDb(sheet_env).outbox() if e["kind"] == "book")
    assert (entry["equipment_id"], entry["name"], entry["phone"], entry["call_id"]) == ("EX-103", "Ann", PHONE, "c1")
    why = {"forbidden": "not shared with", "bad_request": "HTTP 400", "column_deleted": "no 'Status' column",
           "reservations_column_deleted": "no 'equipmentid' column"}
    lines = [r.getMessage() for r in caplog.records if b.ref in r.getMessage() and "outbox" in r.getMessage()]
    assert len(lines) == 1 and why[fault] in lines[0], caplog.text
    assert PHONE not in caplog.text
    assert b.ref not in [r.get("Ref") for r in sheets.records("Reservations")]
    assert held(await equipment.inventory_from_env(sheet_env).snapshot(), b.ref)


async def test_failing_token_endpoint_stays_within_the_retry_budget(sheets, one_sheet_env):
    await equipment.inventory_from_env(one_sheet_env).snapshot()  # a snapshot exists
    sheets.fail("token", 503)
    tokens = sheets.counts["token"]
    # google-auth alone retries a token request 3 times with 1 s + 2 s sleeps: 3 s per attempt
    env = dict(one_sheet_env, BOOKING_RETRY_BUDGET="1", SHEETS_HTTP_TIMEOUT="1")
    inv = equipment.inventory_from_env(env)  # a new process: no token yet
    t0 = time.monotonic()
    b = await inv.book(request("EX-103"))
    elapsed = time.monotonic() - t0
    budget, read_timeout = 1.0, 1.0  # BOOKING_RETRY_BUDGET, SHEETS_HTTP_TIMEOUT
    assert not b.confirmed and elapsed < budget + read_timeout, elapsed
    assert 1 <= sheets.counts["token"] - tokens <= 6, sheets.counts


async def test_failing_token_endpoint_connection_reset_is_one_attempt(sheets, one_sheet_env):
    env = dict(one_sheet_env, BOOKING_RETRY_BUDGET="0.5")
    sheets.reset("token")
    inv = equipment.inventory_from_env(env)
    with pytest.raises(equipment.SourceUnavailable):
        await inv.check()
    assert 1 <= sheets.counts["token"] <= 3, sheets.counts


@pytest.mark.parametrize("tab", [pytest.param("Reservations", marks=pytest.mark.old_sheet), "Bookings"])
async def test_missing_tab_created_with_its_header_in_one_request(sheets, one_sheet_env, tab):
    """The Reservations tab (an old sheet has none) and the history tab are created by the first
    booking, header and all in one request, so another writer's row can never land above it."""
    header = RESERVATION_HEADER if tab == "Reservations" else LOG_HEADER
    other = (["OTHER1", "EX-201", "2030-03-01", "2030-03-02", "Bo", "+1 555 000 0000", "CONFIRMED"]
             if tab == "Reservations" else
             ["OTHER1", "2030-01-01T00:00:00", "EX-201", "x", "Bo", "+1 555 000 0000", "", "", "", "BOOKING", ""])
    # another process appends right after the tab appears, before anything else we send
    sheets.after("structure", lambda: sheets.sheets[tab].append(list(other)), when=tab)
    inv = equipment.inventory_from_env(one_sheet_env)
    b = await inv.book(request("EX-103"))
    assert b.confirmed
    rows = sheets.rows(tab)
    assert rows[0] == header
    assert [r[0] for r in rows[1:]] == ["OTHER1", b.ref]
    assert sheets.counts["structure"] == (2 if tab == "Reservations" else 1)  # (and the Bookings tab)


@pytest.mark.parametrize("tab", [pytest.param("Reservations", marks=pytest.mark.old_sheet), "Bookings"])
async def test_tab_already_created_by_another_process(sheets, one_sheet_env, tab):
    """Our look found no tab, but another process created it just before our request to: that
    request is refused (it exists) and our row goes under its header, once."""
    header = RESERVATION_HEADER if tab == "Reservations" else LOG_HEADER
    sheets.before("structure", lambda: sheets.set_rows(tab, [list(header)]), when=tab)
    inv = equipment.inventory_from_env(one_sheet_env)
    b = await inv.book(request("EX-103"))
    assert b.confirmed
    rows = sheets.rows(tab)
    assert rows[0] == header and [r[0] for r in rows[1:]] == [b.ref]
    assert sheets.counts["structure"] == (2 if tab == "Reservations" else 1)  # it tried, and found it there
    assert StateDb(one_sheet_env).outcomes() == {b.ref: "written"}


@pytest.mark.parametrize("raw, masked", [
    ("5551234567", "******4567"),
    ("555-123-4567", "******4567"),
    ("+15551234567", "+1******4567"),
    ("+1 (555) 123-4567", "+1******4567"),
    ("tel:+447700900123", "+4*******0123"),
    ("sip:+15551234567@pbx.example.com", "+1******4567"),
    ("sip:5551234567@10.0.0.1", "******4567"),
    ("1234", "****"),
    ("", "unknown"),
    (None, "unknown"),
])
def test_mask_phone(raw, masked):
    assert phone.mask(raw) == masked


async def test_outbox_hold_refuses_a_second_booking_before_replay(sheets, sheet_env, run_child):
    sheet_env["BOOKING_RETRY_BUDGET"] = "1"
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    other = equipment.inventory_from_env(sheet_env)
    before_the_hold = await loaded(other)  # a process whose snapshot was read before the booking
    sheets.fail("*", 503)
    b = await inv.book(request("EX-103"))
    assert not b.confirmed
    sheets.clear_faults()  # Sheets is healthy again, nothing replayed yet
    child = child_result(run_child(sheet_env, "snapshot", CHILD_CLOSE_TIMEOUT="0"))
    assert [b.ref, "EX-103", START, END, "PENDING"] in child["reservations"]
    # even that process, whose snapshot missed the hold, can't get past it: the outbox is checked
    # under the unit lock, for overlapping dates
    assert free(before_the_hold, "EX-103")
    with pytest.raises(BookingRefused) as e:
        await asyncio.to_thread(other.booker.book, request("EX-103", "Bo", start="2030-01-14", end="2030-01-17"),
                                before_the_hold.find("EX-103"), before_the_hold)
    assert e.value.code == "just_taken" and "EX-101" in [u.id for u in e.value.alternatives]
    assert e.value.next_free == date(2030, 1, 16)
    assert Source(sheet_env, sheets).refs_of("EX-103") == []  # nothing written by the loser
    assert sheets.rows("Bookings") == []
    child = child_result(run_child(sheet_env, "snapshot", CHILD_CLOSE_TIMEOUT="0"))
    assert [b.ref, "EX-103", START, END, "PENDING"] in child["reservations"]
    assert await inv.replay_outbox() == 1
    assert Source(sheet_env, sheets).refs_of("EX-103") == [b.ref]


# =============================================================================================
# replay isolates a bad entry, settled history, Bookings refs re-read


async def test_one_bad_outbox_entry_does_not_block_the_others(sheets, sheet_env, caplog):
    """A booking whose row is refused for good (403 on a protected range) does not block the
    entries after it; after MAX_ATTEMPTS it is settled as failed, with a CONFLICT row."""
    caplog.set_level(logging.INFO, logger="equipment")
    source = Source(sheet_env, sheets)
    inv = source.inventory()
    snap = await loaded(inv)
    outage = RuntimeError("simulated outage")
    bad = inv.booker.keep(unwritten("EX-101", "Ann", "c1"), snap.find("EX-101"), outage, ref="BAD111")
    good = inv.booker.keep(unwritten("EX-103", "Bo", "c2"), snap.find("EX-103"), outage, ref="GOOD22")
    # the sheet refuses every write of that booking: a protected range
    # (its reservation's append: the body starts with its Ref and unit; its history row would not)
    sheets.fail("append", 403, when=f'[["{bad.ref}", "EX-101"', message="You are trying to edit a protected cell "
                                                                       "or object.")
    assert await inv.replay_outbox() == 1
    assert source.booking(good.ref)["Equipment ID"] == "EX-103"
    assert pending_refs(sheet_env) == [bad.ref]
    fails = [r.getMessage() for r in caplog.records if bad.ref in r.getMessage() and "attempt 1/" in r.getMessage()]
    assert len(fails) == 1 and "EX-101" in fails[0] and "protected" in fails[0]
    assert held(await source.inventory().snapshot(), bad.ref)
    for n in range(2, MAX_ATTEMPTS):
        assert await inv.replay_outbox() == 0
        assert next(e["attempts"] for e in StateDb(sheet_env).outbox() if e["ref"] == bad.ref) == n
    assert pending_refs(sheet_env) == [bad.ref]
    assert await inv.replay_outbox() == 1  # the last attempt settles it as failed
    assert pending_refs(sheet_env) == []
    conflict = [r for r in caplog.records if "Outbox conflict" in r.getMessage()]
    assert len(conflict) == 1 and bad.ref in conflict[0].getMessage() and "EX-101" in conflict[0].getMessage()
    assert conflict[0].levelno == logging.ERROR
    assert PHONE not in caplog.text
    assert history(source) == [(good.ref, "BOOKING"), (bad.ref, "CONFLICT")]
    assert source.booking(bad.ref) is None and source.refs_of("EX-101") == []
    assert StateDb(sheet_env).outcomes() == {bad.ref: "failed", good.ref: "written"}
    snap = await source.inventory().snapshot()
    assert free(snap, "EX-101") and not held(snap, bad.ref)  # no longer held
    assert await inv.replay_outbox() == 0 and len(source.log()) == 2


async def test_replay_stops_when_sheets_is_down_without_counting_attempts(sheets, sheet_env):
    sheet_env["BOOKING_RETRY_BUDGET"] = "0.5"
    inv = equipment.inventory_from_env(sheet_env)
    snap = await loaded(inv)
    b = inv.booker.keep(unwritten("EX-101"), snap.find("EX-101"), RuntimeError("simulated outage"), ref="DOWN01")
    sheets.fail("*", 503)
    reads = sheets.counts["read"]
    for _ in range(MAX_ATTEMPTS + 1):
        assert await inv.replay_outbox() == 0
    assert sheets.counts["read"] > reads  # each replay did try the sheet
    assert pending_refs(sheet_env) == [b.ref]
    # no attempt recorded: an outage is not the entry's fault
    assert [(e["ref"], e["attempts"]) for e in StateDb(sheet_env).outbox()] == [(b.ref, 0)]
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    assert sheets.record("Reservations", b.ref, "Ref")["Equipment ID"] == "EX-101"


async def test_settled_entries_are_history_until_keep_settled_days_pending_ones_forever(sheets, sheet_env):
    """What replaced compaction: a settled entry stays (with its outcome) as history for ops and
    is forgotten after KEEP_SETTLED_DAYS; a pending entry is never forgotten, however old."""
    inv = equipment.inventory_from_env(sheet_env)
    snap = await loaded(inv)
    for i in range(30):
        ref = f"OLD{i:03d}"
        inv.outbox.append(BookEntry(ref, "EX-201", "x", "Ann", PHONE, START, END))
        inv.outbox.settle(ref, Settle.WRITTEN)
    keep = inv.booker.keep(unwritten("EX-101"), snap.find("EX-101"), RuntimeError("simulated outage"),
                           ref="KEEP01")
    db = StateDb(sheet_env)
    day = 86400.0
    db.query("UPDATE {outbox} SET created_at = created_at - ? WHERE ref = ?", (90 * day, keep.ref))
    sheets.fail("*", 503)  # replays run (and tidy up) but cannot write
    sheet_env_quick = dict(sheet_env, BOOKING_RETRY_BUDGET="0.5")
    assert await equipment.inventory_from_env(sheet_env_quick).replay_outbox() == 0
    history_ = db.outcomes()
    assert len(history_) == 31 and history_[keep.ref] is None
    assert all(history_[f"OLD{i:03d}"] == "written" for i in range(30))
    # ten of them were settled longer ago than KEEP_SETTLED_DAYS (moved back, not slept through)
    db.query("UPDATE {outbox} SET settled_at = settled_at - ? WHERE ref LIKE ?", ((KEEP_SETTLED_DAYS + 1) * day,
                                                                                 "OLD01_"))
    db.query("UPDATE {outbox} SET settled_at = settled_at - ? WHERE ref = 'OLD020'", ((KEEP_SETTLED_DAYS - 1) * day,))
    assert await equipment.inventory_from_env(sheet_env_quick).replay_outbox() == 0
    assert set(db.outcomes()) == {f"OLD{i:03d}" for i in range(30) if not 10 <= i <= 19} | {keep.ref}
    assert pending_refs(sheet_env) == [keep.ref]
    assert held(await equipment.inventory_from_env(sheet_env).snapshot(), keep.ref)
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    assert sheets.record("Reservations", keep.ref, "Ref")["Equipment ID"] == "EX-101"
    assert db.outcomes()[keep.ref] == "written"


def test_concurrent_writers_and_housekeeping_lose_no_pending_entry(csv_env):
    """Entries added and settled by four processes' worth of connections while housekeeping
    forgets settled ones: every pending entry stays, every settled one goes."""
    env = csv_env
    writers = [equipment.inventory_from_env(env) for _ in range(4)]
    housekeeper = equipment.inventory_from_env(env)
    done = threading.Event()
    sweeps = [0]
    errors: list[BaseException] = []

    def writer(n: int, inv: equipment.CachedInventory) -> None:
        try:
            for i in range(25):
                inv.outbox.append(RowEntry("callback", f"K{n}-{i}", ("K",)))
                inv.outbox.append(RowEntry("callback", f"S{n}-{i}", ("S",)))
                inv.outbox.settle(f"S{n}-{i}", Settle.WRITTEN)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            inv.state.close()

    def sweeper() -> None:
        while not done.is_set():
            housekeeper.state.forget_settled(time.time() + 60)  # everything settled so far
            sweeps[0] += 1
        housekeeper.state.close()

    h = threading.Thread(target=sweeper)
    h.start()
    ws = [threading.Thread(target=writer, args=(n, w)) for n, w in enumerate(writers)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    done.set()
    h.join()
    assert errors == [] and sweeps[0] > 1  # housekeeping ran while the writers wrote
    housekeeper.state.forget_settled(time.time() + 60)
    expected = sorted(f"K{n}-{i}" for n in range(4) for i in range(25))
    assert sorted(pending_refs(env)) == expected
    assert sorted(StateDb(env).outcomes()) == expected


async def test_replay_rereads_bookings_refs_before_appending_a_booking_already_written(sheets, sheet_env):
    """A live booking appended its Bookings row after replay had read the refs: no second row."""
    inv = equipment.inventory_from_env(sheet_env)
    snap = await loaded(inv)
    sheets.set_rows("Bookings", [list(LOG_HEADER)])
    cb_row = LogRow("CB0001", "2030-01-10T00:00:00Z", "CALLBACK", "Cy", PHONE, call_id="c0",
                    note="hi").cells(inv.store.prepare_text)
    inv.outbox.append(RowEntry("callback", "CB0001", tuple(cb_row), time.time()))
    b = inv.booker.keep(unwritten("EX-103"), snap.find("EX-103"), RuntimeError("answer lost"), ref="LIVE01")
    # its reservation row did land
    sheets.append_row("Reservations", dict(zip(RESERVATION_HEADER, [
        b.ref, "EX-103", START, END, "Ann", PHONE, "CONFIRMED", TOTAL_4_DAYS, DEPOSIT, "", "c1", ""])))
    live_row = LogRow(b.ref, "2030-01-10T00:00:00Z", "BOOKING", "Ann", PHONE, "EX-103", "x", START, END,
                      "c1").cells(inv.store.prepare_text)
    landed: list[int] = []

    def live_booking_appends() -> None:  # its row lands just after replay read the refs
        sheets.sheets["Bookings"].append(list(live_row))
        landed.append(1)

    sheets.after("read", live_booking_appends, times=1, when="Bookings")
    assert await inv.replay_outbox() == 2
    assert landed == [1]  # the race did happen
    assert sorted(r["Booking Ref"] for r in sheets.records("Bookings")) == sorted(["CB0001", b.ref])
    assert [r["Ref"] for r in sheets.records("Reservations")].count(b.ref) == 1
    assert StateDb(sheet_env).outcomes() == {"CB0001": "written", b.ref: "already"}


# =============================================================================================
# changing a booking: extend, move, cancel (inventory/changes.py)


def change(ref: str, start: str, end: str, cancel: bool = False) -> ChangeRequest:
    return ChangeRequest(ref, d(start), d(end), cancel, "c-change")


async def test_extend_move_and_cancel_a_booking(source):
    """Each change rewrites the booking's own row (found by its Ref, wherever it is now): new dates
    and the total worked out again; a cancellation sets Status CANCELLED and frees the dates. Each
    is one history row. One row per booking throughout."""
    inv = source.inventory()
    b = await inv.book(request("EX-101"))
    others = [r for r in source.reservations() if r["Ref"] != b.ref]
    # extended by five days: a week and two days (1300 + 650), 12 % waiver, 8.25 % tax
    ext = await inv.change(change(b.ref, START, "2030-01-20"), TODAY)
    assert ext.confirmed and (ext.ref, ext.start, ext.end, ext.total) == (b.ref, d(START), d("2030-01-20"), "2364.18")
    row = source.booking(b.ref)
    assert (row["Start"], row["End"], row["Total"], row["Status"], row["Renter Name"], row["Deposit"]) == (
        START, "2030-01-20", "2364.18", "CONFIRMED", "Ann", DEPOSIT)
    assert not free(await source.inventory().snapshot(), "EX-101", "2030-01-19", "2030-01-20")
    # moved to February: 4 days again
    moved = await inv.change(change(b.ref, "2030-02-01", "2030-02-04"), TODAY)
    assert moved.confirmed and (moved.start, moved.end, moved.total) == (d("2030-02-01"), d("2030-02-04"),
                                                                         TOTAL_4_DAYS)
    row = source.booking(b.ref)
    assert (row["Start"], row["End"], row["Total"], row["Status"]) == ("2030-02-01", "2030-02-04", TOTAL_4_DAYS,
                                                                       "CONFIRMED")
    snap = await source.inventory().snapshot()
    assert free(snap, "EX-101", START, "2030-01-20") and not free(snap, "EX-101", "2030-02-02", "2030-02-02")
    bo = await inv.book(request("EX-101", "Bo", start="2030-01-16", end="2030-01-18"))  # its old dates are free
    assert bo.confirmed
    # cancelled before it starts
    gone = await inv.change(change(b.ref, "2030-02-01", "2030-02-01", cancel=True), TODAY)
    assert gone.confirmed and gone.status == "CANCELLED" and (gone.start, gone.end) == (d("2030-02-01"),
                                                                                       d("2030-02-04"))
    row = source.booking(b.ref)
    assert (row["Start"], row["End"], row["Total"], row["Status"]) == ("2030-02-01", "2030-02-04", TOTAL_4_DAYS,
                                                                       "CANCELLED")
    snap = await source.inventory().snapshot()
    assert free(snap, "EX-101", "2030-02-01", "2030-02-04") and snap.reservation(b.ref).status == "CANCELLED"
    assert snap.reservations_of(PHONE, TODAY) == [snap.reservation(bo.ref)]  # no longer the caller's booking
    with pytest.raises(BookingRefused) as e:
        await inv.change(change(b.ref, "2030-02-01", "2030-02-01", cancel=True), TODAY)
    assert e.value.code == "already_cancelled"
    # one row per booking, the others untouched; a history row per change, with the total it made
    assert plain([r for r in source.reservations() if r["Ref"] not in (b.ref, bo.ref)]) == plain(others)
    assert source.refs_of("EX-101") == [b.ref, bo.ref]
    log = source.log()
    assert [(r["Booking Ref"], r["Kind"], r["Rental Start"], r["Rental End"], r["Total"]) for r in log] == [
        (b.ref, "BOOKING", START, END, TOTAL_4_DAYS), (b.ref, "EXTENDED", START, "2030-01-20", "2364.18"),
        (b.ref, "MOVED", "2030-02-01", "2030-02-04", TOTAL_4_DAYS), (bo.ref, "BOOKING", "2030-01-16", "2030-01-18",
                                                                    "1182.09"),
        (b.ref, "CANCELLED", "2030-02-01", "2030-02-04", TOTAL_4_DAYS)]
    assert "was 2030-01-12 to 2030-01-15" in log[1]["Note"] and "was 2030-01-12 to 2030-01-20" in log[2]["Note"]
    assert set(StateDb(source.env).outcomes().values()) == {"written"} and pending_refs(source.env) == []


async def test_changes_refused_when_started_or_onto_another_booking(source):
    """A move or a cancellation of a booking that has started is refused (staff handle it); an
    extension or a move onto another reservation is refused with the next date the unit is free
    for as many days. A refused change writes nothing."""
    inv = source.inventory()
    a = await inv.book(request("EX-101"))  # 12th to 15th
    c = await inv.book(request("EX-101", "Bo", start="2030-01-20", end="2030-01-22"))
    assert a.confirmed and c.confirmed
    rows, log = source.reservations(), source.log()
    for ask in (change(a.ref, START, "2030-01-21"),  # extended into c
                change(a.ref, "2030-01-21", "2030-01-24")):  # moved onto c
        with pytest.raises(BookingRefused) as e:
            await inv.change(ask, TODAY)
        assert e.value.code == "not_available" and e.value.unit.id == "EX-101", e.value
        assert e.value.next_free == date(2030, 1, 23)  # the day after c, for as many days
        assert "EX-103" in [u.id for u in e.value.alternatives]
    started = date(2030, 1, 13)  # a began yesterday
    for ask in (change(a.ref, "2030-01-16", "2030-01-18"), change(a.ref, START, START, cancel=True)):
        with pytest.raises(BookingRefused) as e:
            await inv.change(ask, started)
        assert e.value.code == "already_started"
    with pytest.raises(BookingRefused) as e:
        await inv.change(change("NOSUCH", START, END), TODAY)
    assert e.value.code == "no_such_booking"
    assert source.reservations() == rows and source.log() == log  # nothing written
    # extending a started booking is fine while nothing follows it
    longer = await inv.change(change(a.ref, START, "2030-01-17"), started)
    assert longer.confirmed and source.booking(a.ref)["End"] == "2030-01-17"
    assert source.log()[-1]["Kind"] == "EXTENDED"


@pytest.mark.parametrize("what", ["extend", "move", "cancel"])
async def test_a_change_kept_while_sheets_refuses_writes_is_written_once_by_a_replay(sheets, sheet_env, what):
    """Sheets refuses the change's write (a protected range): the change is kept in the outbox,
    unconfirmed, its new dates held; once Sheets takes writes again a replay writes it exactly
    once (one row changed, one history row), and later replays write nothing."""
    src = Source(sheet_env, sheets)
    inv = src.inventory()
    b = await inv.book(request("EX-101"))
    sheets.fail("filter_write", 403, message="You are trying to edit a protected cell or object.")
    ask = {"extend": change(b.ref, START, "2030-01-20"), "move": change(b.ref, "2030-02-01", "2030-02-04"),
           "cancel": change(b.ref, START, START, cancel=True)}[what]
    kept = await inv.change(ask, TODAY)
    assert not kept.confirmed
    row = src.booking(b.ref)
    assert (row["Start"], row["End"], row["Status"]) == (START, END, "CONFIRMED")  # not written
    assert src.log_refs() == [b.ref]
    pending = [e for e in StateDb(sheet_env).outbox() if e["outcome"] is None]
    assert [(e["kind"], e["payload"]["booking_ref"]) for e in pending] == [("change", b.ref)]
    snap = await src.inventory().snapshot()
    if what == "cancel":  # the booking holds its dates until the cancellation is written
        assert not free(snap, "EX-101")
    else:  # the new dates are held for it meanwhile
        new = (ask.start.isoformat(), ask.end.isoformat())
        assert not free(snap, "EX-101", *new)
        with pytest.raises(BookingRefused):
            await src.inventory().book(request("EX-101", "Bo", start=new[1], end=new[1]))
    assert await inv.replay_outbox() == 0  # still refused: kept
    sheets.clear_faults()
    writes = sheets.counts["filter_write"]
    assert await inv.replay_outbox() == 1
    assert sheets.counts["filter_write"] == writes + 1
    row = src.booking(b.ref)
    expect = {"extend": (START, "2030-01-20", "CONFIRMED", "2364.18"),
              "move": ("2030-02-01", "2030-02-04", "CONFIRMED", TOTAL_4_DAYS),
              "cancel": (START, END, "CANCELLED", TOTAL_4_DAYS)}[what]
    assert (row["Start"], row["End"], row["Status"], row["Total"]) == expect
    kind = {"extend": "EXTENDED", "move": "MOVED", "cancel": "CANCELLED"}[what]
    assert history(src) == [(b.ref, "BOOKING"), (b.ref, kind)]
    assert await inv.replay_outbox() == 0 and await equipment.inventory_from_env(sheet_env).replay_outbox() == 0
    assert sheets.counts["filter_write"] == writes + 1 and history(src) == [(b.ref, "BOOKING"), (b.ref, kind)]
    assert src.refs_of("EX-101") == [b.ref]
    assert set(StateDb(sheet_env).outcomes().values()) == {"written"}
    snap = await src.inventory().snapshot()
    assert snap.reservation(b.ref).status == expect[2] and not [r for r in snap.reservations if r.status == "PENDING"]


async def test_a_later_change_is_not_refused_by_the_kept_one_and_the_kept_one_never_writes_over_it(sheets, sheet_env):
    """A change kept in the outbox holds its new dates; the same booking's next change is not
    refused against that hold (it is the booking's own). Once the later change is written, the
    kept one no longer matches the row it was made from: its replay writes nothing over the later
    one and is settled a conflict, for staff to call."""
    src = Source(sheet_env, sheets)
    inv = src.inventory()
    b = await inv.book(request("EX-101"))  # 12th to 15th
    sheets.fail("filter_write", 403, message="You are trying to edit a protected cell or object.")
    assert not (await inv.change(change(b.ref, START, "2030-01-20"), TODAY)).confirmed  # held to the 20th
    sheets.clear_faults()
    later = await src.inventory().change(change(b.ref, START, "2030-01-18"), TODAY)
    assert later.confirmed and src.booking(b.ref)["End"] == "2030-01-18"
    assert await inv.replay_outbox() == 1
    row = src.booking(b.ref)
    assert (row["Start"], row["End"]) == (START, "2030-01-18")  # the later change stands
    assert history(src) == [(b.ref, "BOOKING"), (b.ref, "EXTENDED"), (b.ref, "CONFLICT")]
    assert "conflict" in set(StateDb(sheet_env).outcomes().values())


async def test_a_change_in_the_csv_rewrites_only_its_own_cells(csv_env):
    """Staff keep the CSV by hand: a change rewrites the file, but every other cell stays as they
    typed it ("+1 555..." gains no apostrophe), and the changed cells are still neutralised."""
    path = Path(csv_env["EQUIPMENT_CSV"]).with_name("reservations.csv")
    with open(path, "a", encoding="utf-8") as f:
        f.write("WK1,EX-101,2030-03-02,2030-03-04,Walk In,+1 555 000 1111,CONFIRMED,,,,,typed by staff\n")
    before = path.read_text(encoding="utf-8").splitlines()
    b = await equipment.inventory_from_env(csv_env).change(ChangeRequest("wk1", date(2030, 3, 2), date(2030, 3, 5)),
                                                           TODAY)
    assert b.confirmed
    after = path.read_text(encoding="utf-8").splitlines()
    assert after[:-1] == before[:-1]
    assert after[-1].startswith("WK1,EX-101,2030-03-02,2030-03-05,Walk In,+1 555 000 1111,CONFIRMED,")
