"""The inventory (equipment.py and inventory/) against the local Sheets stand-in (real gspread +
google-auth through the GOOGLE_SHEETS_API_URL seam) and the embedded CSV, on both state engines:
every test that touches the shared state (snapshot, locks, outbox) runs on SQLite in STATE_DIR and
on a real PostgreSQL (DATABASE_URL); pure parsing and configuration tests run once. Time bounds
here are generous on purpose; tight numbers live in bench/inventory_numbers.py.

Only public names are used: the equipment front, settings, phone, and the public parts of the
inventory (inv.store, inv.state, inv.cache, inv.outbox, inv.booker, inv.background). What a crash
leaves behind (a booking written but its outbox entry not settled) is set up by changing the
state's tables directly (tests/conftest.py StateDb), never by replacing our code."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

import equipment
import phone
import prompts
import settings
from equipment import BookingRefused, BookingRequest, InventoryConfigError, RefusalCode
from inventory.model import REF_ALPHABET, fold
from inventory.outbox import KEEP_SETTLED_DAYS, MAX_ATTEMPTS, BookEntry, RowEntry, Settle
from inventory.table import LOG_HEADER, LogRow
from tests.conftest import (
    SMALL_TIMEOUTS, Source, StateDb, child_result, equipment_rows, loaded, release_together, wait_until,
)

TODAY = date(2030, 1, 10)
START, END = "2030-01-12", "2030-01-15"
PHONE = "+1 555 123 4567"
SHEET_ID = "abcdefghij0123456789"  # shaped like a real sheet ID (never contacted)


# -- both engines for every state test; pure tests once ------------------------------------------


@pytest.fixture
def sheet_env(sheet_env: dict[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    """The sheet on SQLite (STATE_DIR) and on PostgreSQL (DATABASE_URL): the test runs on both."""
    return {**sheet_env, **engine_env}


@pytest.fixture
def csv_env(csv_env: dict[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    return {**csv_env, **engine_env}


@pytest.fixture
def source(source: Source, engine_env: dict[str, str]) -> Source:
    """The sheet and the CSV, each on both engines."""
    return source


@pytest.fixture
def one_sheet_env(sheets, tmp_path: Path) -> dict[str, str]:
    """For tests of parsing, configuration and HTTP handling: one engine (the default) is enough."""
    return {"GOOGLE_SHEET_ID": sheets.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
            "GOOGLE_SHEETS_API_URL": sheets.url, "STATE_DIR": str(tmp_path / "state"), **SMALL_TIMEOUTS}


def request(equipment_id: str, name: str = "Ann", number: str = PHONE, start: str = START, end: str = END,
            call_id: str = "") -> BookingRequest:
    """A booking request as the agent's tool builds it from its arguments."""
    return equipment.parse_booking(equipment_id, name, number, start, end, call_id, today=TODAY)


def unwritten(equipment_id: str, name: str = "Ann", call_id: str = "c1") -> BookingRequest:
    """A request for a booking the source never took (set up with inv.booker.keep)."""
    return BookingRequest(equipment_id, name, PHONE, date(2030, 1, 12), date(2030, 1, 15), call_id)


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
        inv.state.save_snapshot(inv.store.origin, stored.units, older, older)
    finally:
        inv.state.close()


def pending_refs(env: dict[str, str]) -> list[str]:
    """Refs of the outbox entries not settled yet, oldest first (as a new process sees them)."""
    inv = equipment.inventory_from_env(env)
    try:
        return [p.entry.ref for p in inv.outbox.pending()]
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
    assert [u.id for u in a.search("excavator")] == ["EX-101", "EX-103", "EX-201"]
    assert a.find("ex-102").status == "RENTED" and not a.find("EX-301").available
    assert a.find("EX-101").daily_rate == 325.0 and a.find("EX-101").weekly_rate == 1300.0
    assert sheets.counts["read"] == 1 and sheets.counts["metadata"] == 0


async def test_headers_matched_loosely_rows_padded_blank_rows_skipped_unknown_status_logged(
        sheets, one_sheet_env, caplog):
    sheets.set_rows("Equipment", [
        [" id ", "NAME", "Notes", "status ", "daily_rate"],
        ["A-1", "Thing one", "staff note", "Available", "10"],
        [],
        ["", "", "", ""],
        ["A-2", "Thing two", "", "broken", ""],
        ["A-3", "Thing three", "", "RENTED"],
        ["A-4", "Thing four"],  # trailing cells dropped by the API: no status -> not available
    ])
    caplog.set_level(logging.INFO, logger="equipment")
    snap = await equipment.inventory_from_env(one_sheet_env).snapshot()
    assert [(u.id, u.status) for u in snap.units] == [("A-1", "AVAILABLE"), ("A-2", "BROKEN"),
                                                      ("A-3", "RENTED"), ("A-4", "")]
    assert snap.find("A-1").daily_rate == 10.0 and snap.find("A-1").available
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
    assert stale.age >= 31 and stale.find("EX-103").available
    assert await wait_until(lambda: sheets.counts["read"] == 2)
    assert await wait_until(lambda: read_at_of(inv) > time.time() - 5)
    fresh = await equipment.inventory_from_env(sheet_env).snapshot()
    assert fresh.age < 5 and fresh.find("EX-103").status == "MAINTENANCE"
    assert "Cache expired or empty - reloading equipment" in caplog.text
    assert "Equipment loaded successfully: 20 items" in caplog.text


async def test_single_flight_burst_of_20_processes_costs_one_read(sheets, sheet_env, run_child):
    sheets.delay("read", 0.5)  # the load is still in flight while the others arrive
    env = dict(sheet_env, EQUIPMENT_LOAD_TIMEOUT="20")
    procs = [run_child(env, "snapshot", wait_for_go=True) for _ in range(20)]
    release_together(procs)  # all 20 ask at once, none has a snapshot yet
    results = [child_result(p) for p in procs]
    assert all(r["known"] and r["n"] == 20 for r in results), results
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
    await restarted.close(timeout=10)  # the background refresh gave up within its budget
    assert "Equipment loading timed out - still serving the last good snapshot (age: 36" in caplog.text
    child = child_result(run_child(sheet_env, "snapshot"))  # and a separate process
    assert child["known"] and child["n"] == 20 and child["age"] >= 3600 and child["elapsed"] < 1.0


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
    assert await equipment.inventory_from_env(env).check() == 20
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
    b = await inv.book(request("EX-101", "  Ann   Lee ", call_id="call-42"))
    assert b.confirmed and b.equipment_id == "EX-101" and b.renter_name == "Ann Lee"
    assert len(b.ref) == 6 and set(b.ref) <= set(REF_ALPHABET)
    assert (b.start, b.end) == (date(2030, 1, 12), date(2030, 1, 15))
    row = source.record("EX-101")
    stored_phone = source.stored(PHONE)  # CSV: neutralised
    assert row["Status"] == "RENTED" and row["Renter Name"] == "Ann Lee" and row["Renter Phone"] == stored_phone
    assert (row["Rental Start"], row["Rental End"], row["Booking Ref"]) == (START, END, b.ref)
    assert row["Booked At"].startswith("20")
    log = source.log()
    assert len(log) == 1
    assert {k: log[0][k] for k in ("Booking Ref", "Equipment ID", "Equipment Name", "Renter Name", "Renter Phone",
                                   "Rental Start", "Rental End", "Call ID", "Kind")} == {
        "Booking Ref": b.ref, "Equipment ID": "EX-101", "Equipment Name": "Kubota KX040 Mini Excavator",
        "Renter Name": "Ann Lee", "Renter Phone": stored_phone, "Rental Start": START, "Rental End": END,
        "Call ID": "call-42", "Kind": "BOOKING"}
    # every process sees it on its next read, without waiting for the TTL
    assert (await source.inventory().snapshot()).find("EX-101").status == "RENTED"
    assert "4567" in caplog.text and "555 123 4567" not in caplog.text and "5551234567" not in caplog.text
    # write-ahead: in the outbox before the write (the crash tests prove it), settled once written and
    # logged, and kept as history
    assert StateDb(source.env).outcomes() == {b.ref: "written"} and pending_refs(source.env) == []
    if source.sheet is not None:
        s = source.sheet
        assert s.counts["write"] == 1 and s.counts["append"] == 2 and s.counts["structure"] == 1
        assert set(s.value_input_options) == {"RAW"}


async def test_booking_seen_by_another_process_without_a_read(sheets, sheet_env, run_child):
    await equipment.inventory_from_env(sheet_env).snapshot()
    reads = sheets.counts["read"]
    child = child_result(run_child(sheet_env, "snapshot"))
    assert child["statuses"]["EX-103"] == "AVAILABLE"
    await equipment.inventory_from_env(sheet_env).book(request("EX-103"))
    child = child_result(run_child(sheet_env, "snapshot"))
    assert child["statuses"]["EX-103"] == "RENTED"
    assert sheets.counts["read"] == reads + 1  # only the booking's own re-read


async def test_booking_survives_a_refresh_that_was_in_flight(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    age_snapshot(sheet_env, 60)
    stale_read_at = read_at_of(inv)
    sheets.delay("read", 1.0, times=1)  # the background refresh reads the old sheet slowly
    await inv.snapshot()
    assert await wait_until(lambda: sheets.counts["read"] == 2)  # its read is in flight
    sheets.set_cell("Equipment", "EX-103", "Status", "RENTED")  # someone books meanwhile ...
    inv.cache.patch({"EX-103": "RENTED"})  # ... and patches the shared snapshot
    sheets.set_cell("Equipment", "EX-103", "Status", "AVAILABLE")  # (what the slow read returns)
    # the patch landed before the refresh wrote its (older) read
    assert read_at_of(inv) == stale_read_at
    await inv.close(timeout=10)
    assert sheets.counts["read"] == 2
    snap = await equipment.inventory_from_env(sheet_env).snapshot()
    assert snap.age < 5 and snap.find("EX-103").status == "RENTED"


async def test_two_processes_racing_for_one_unit(source, run_child):
    holder = source.inventory()
    await loaded(holder)  # both see it AVAILABLE
    # Another booking of the unit is in flight (its lock is held: a file lock, or PostgreSQL's
    # advisory lock) while both children check their snapshot and queue for the unit: then whoever
    # comes second must learn it from the source.
    with holder.state.unit_lock(fold("EX-101"), timeout=5):
        procs = [run_child(source.env, "book", "EX-101", f"Racer {i}", PHONE, "2031-05-01", "2031-05-02",
                           wait_for_go=True) for i in range(2)]
        release_together(procs)
        await waiting_for_unit_lock(source.env, 2)  # both past their snapshot check, queued
    results = [child_result(p) for p in procs]
    winners = [r for r in results if r["ok"]]
    losers = [r for r in results if not r["ok"]]
    assert len(winners) == 1 and winners[0]["confirmed"], results
    assert len(losers) == 1 and losers[0]["code"] == "just_taken", results
    assert losers[0]["alternatives"][:2] == ["EX-103", "EX-201"]  # same model first, same category
    assert source.record("EX-101")["Booking Ref"] == winners[0]["ref"]
    assert [r["Booking Ref"] for r in source.log()] == [winners[0]["ref"]]


async def test_formula_text_is_stored_as_text(source):
    evil = '=HYPERLINK("http://x","y")'
    inv = source.inventory()
    b = await inv.book(request("EX-103", evil, call_id="@SUM(1)"))
    row, log = source.record("EX-103"), source.log()
    if source.sheet is not None:  # written RAW: the very text, never a formula
        assert row["Renter Name"] == evil and log[0]["Renter Name"] == evil
        assert source.sheet.formula_writes == [] and set(source.sheet.value_input_options) == {"RAW"}
    else:  # a CSV opened in a spreadsheet program would run it: neutralised
        assert row["Renter Name"] == "'" + evil and log[0]["Renter Name"] == "'" + evil
        assert log[0]["Call ID"] == "'@SUM(1)"
    assert b.renter_name == evil


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


@pytest.mark.parametrize("code, equipment_id", [
    ("unknown_id", "NOPE-1"),
    ("not_available", "EX-102"),  # RENTED
    ("not_available", "EX-301"),  # MAINTENANCE
])
async def test_inventory_refusals(source, code, equipment_id):
    inv = source.inventory()
    before = source.record(equipment_id) if equipment_id != "NOPE-1" else None
    with pytest.raises(BookingRefused) as e:
        await inv.book(request(equipment_id))
    assert e.value.code == code and prompts.refusal(e.value).startswith(f"Booking refused ({code}): ")
    if code == "unknown_id":
        assert e.value.requested_id == equipment_id and e.value.alternatives == ()
    else:
        assert e.value.unit.id == equipment_id
        alts = e.value.alternatives
        assert alts and all(u.available and u.category == "Excavators" for u in alts)
        assert equipment_id not in [u.id for u in alts]
        assert source.record(equipment_id) == before
    assert source.log() == [] and StateDb(source.env).outbox() == []


async def test_refusal_just_taken_when_source_changed_after_the_snapshot(source):
    inv = source.inventory()
    assert (await loaded(inv)).find("SS-101").available
    source.set_status("SS-101", "RENTED")  # staff rented it by hand meanwhile
    with pytest.raises(BookingRefused) as e:
        await inv.book(request("SS-101"))
    assert e.value.code == "just_taken" and [u.id for u in e.value.alternatives] == ["SS-201"]
    assert source.log() == []
    assert (await inv.snapshot()).find("SS-101").status == "RENTED"  # the snapshot learned it


async def test_booking_finds_row_by_id_after_staff_insert_rows(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    rows = sheets.rows("Equipment")
    sheets.set_rows("Equipment", [rows[0], ["ZZ-1", "New thing", "Misc", "AVAILABLE"]] + list(reversed(rows[1:])))
    b = await inv.book(request("EX-103"))
    assert sheets.record("Equipment", "EX-103")["Booking Ref"] == b.ref
    assert sheets.record("Equipment", "ZZ-1")["Status"] == "AVAILABLE"
    assert [r["ID"] for r in sheets.records("Equipment") if r["Status"] == "RENTED"].count("EX-103") == 1


async def test_phone_is_neutralised_in_a_csv_and_raw_in_the_sheet(source):
    inv = source.inventory()
    b = await inv.book(request("EX-101", number="-555-123-4567"))
    ref = await inv.record_callback(equipment.parse_callback("=cmd()", "+1 555 123 4567", "-2+3", "c1"))
    row, log = source.record("EX-101"), source.log()
    cb = next(r for r in log if r["Booking Ref"] == ref)
    if source.sheet is not None:  # RAW: stored as given
        assert row["Renter Phone"] == "-555-123-4567" and log[0]["Renter Phone"] == "-555-123-4567"
        assert (cb["Renter Name"], cb["Renter Phone"], cb["Note"]) == ("=cmd()", "+1 555 123 4567", "-2+3")
    else:  # readable, but never run by a spreadsheet program
        assert row["Renter Phone"] == "'-555-123-4567" and log[0]["Renter Phone"] == "'-555-123-4567"
        assert (cb["Renter Name"], cb["Renter Phone"], cb["Note"]) == ("'=cmd()", "'+1 555 123 4567", "'-2+3")
    assert b.renter_phone == "-555-123-4567"


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
    entries = StateDb(sheet_env).outbox()
    assert [(e["kind"], e["ref"], e["payload"]["equipment_id"], e["outcome"]) for e in entries] == [
        ("book", b.ref, "EX-103", None)]
    # held for everybody: another process sees PENDING and cannot book it
    child = child_result(run_child(sheet_env, "snapshot"))
    assert child["statuses"]["EX-103"] == "PENDING"
    other = child_result(run_child(sheet_env, "book", "EX-103", "Bo", PHONE, "2031-01-01", "2031-01-02"))
    assert not other["ok"] and other["code"] == "not_available" and "EX-101" in other["alternatives"]
    # still held after a reload of the snapshot while the outbox is unsettled
    sheets.clear_faults()
    sheets.fail("append", 503)
    sheets.fail("structure", 503)
    age_snapshot(sheet_env, 60)
    sheets.fail("write", 503)
    reads = sheets.counts["read"]
    await loaded(inv)
    await inv.close(timeout=10)
    assert sheets.counts["read"] > reads  # the snapshot was reloaded from the sheet
    assert sheets.record("Equipment", "EX-103")["Status"] == "AVAILABLE"
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status == "PENDING"
    # Sheets is back: replay writes it once
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    row = sheets.record("Equipment", "EX-103")
    assert row["Status"] == "RENTED" and row["Booking Ref"] == b.ref and row["Renter Name"] == "Ann"
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert await inv.replay_outbox() == 0
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 0
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status == "RENTED"
    assert StateDb(sheet_env).outcomes() == {b.ref: "written"}


async def test_outbox_replayed_by_a_later_refresh_and_idempotent_by_ref(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.reset("write", times=50)  # the write never answers (it may or may not have landed)
    b = await inv.book(request("EX-101"))
    assert not b.confirmed and pending_refs(sheet_env) == [b.ref]
    sheets.clear_faults()
    # simulate a write that did land although its answer was lost
    for col, val in (("Status", "RENTED"), ("Booking Ref", b.ref), ("Renter Name", "Ann")):
        sheets.set_cell("Equipment", "EX-101", col, val)
    writes = sheets.counts["write"]
    age_snapshot(sheet_env, 60)
    await inv.snapshot()  # stale: the background refresh (lock holder) replays the outbox
    assert await inv.background.wait(10) == 0  # the refresh, not close(), settles it
    assert pending_refs(sheet_env) == []
    assert sheets.counts["write"] == writes  # our ref was already there: not written again
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert StateDb(sheet_env).outcomes() == {b.ref: "already"}
    assert await inv.replay_outbox() == 0
    await inv.close(timeout=10)


async def test_replay_conflict_is_logged_not_dropped(source, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = source.inventory()
    unit = (await loaded(inv)).find("EX-201")
    b = inv.booker.keep(unwritten("EX-201", call_id="c9"), unit, RuntimeError("simulated outage"), ref="QQ7QQ7")
    assert not b.confirmed and pending_refs(source.env) == ["QQ7QQ7"]
    source.set_status("EX-201", "RENTED")  # staff gave it to a walk-in meanwhile
    assert await inv.replay_outbox() == 1
    conflict = [r.getMessage() for r in caplog.records if "Outbox conflict" in r.getMessage()]
    assert len(conflict) == 1 and b.ref in conflict[0] and "EX-201" in conflict[0]
    assert PHONE not in caplog.text
    assert [(r["Booking Ref"], r["Kind"]) for r in source.log()] == [(b.ref, "CONFLICT")]
    assert source.record("EX-201")["Booking Ref"] == ""
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
# state's write lock held by the test from the moment the previous request was applied. Then what
# the outbox holds for it (None: nothing; or the outcome, "" while pending) on SQLite and on
# PostgreSQL, whose server finishes a statement it was already waiting to run when its client died.
CRASH_STEPS = {
    "reread": ("read", "hang", None, None),  # re-reading the unit, before anything is recorded
    "write_ahead": ("read", "lock", None, ""),  # recording the outbox entry
    "unit_write": ("write", "hang", "", ""),  # writing the unit row: not landed
    "unit_write_landed": ("write", "hang_after", "", ""),  # the unit row landed, its answer lost
    "log_append": ("append", "hang", "", ""),  # appending the Bookings row: not landed
    "log_append_landed": ("append", "hang_after", "", ""),  # the Bookings row landed, its answer lost
    "settle": ("append", "lock", "", "written"),  # settling the entry after everything landed
}


@pytest.mark.parametrize("step", list(CRASH_STEPS))
async def test_process_killed_at_any_step_of_a_booking_loses_nothing_and_doubles_nothing(
        sheets, sheet_env, run_child, step):
    """Write-ahead: the booking is in the outbox before the row is written, so a process that
    dies mid-booking (call ended, worker killed) leaves something replay can finish, once; and a
    process that dies before that leaves nothing at all (its caller was never told anything)."""
    await loaded(equipment.inventory_from_env(sheet_env))
    sheets.set_rows("Bookings", [list(LOG_HEADER)])  # the tab exists: each step is one request
    kind, how, *outbox_after = CRASH_STEPS[step]
    db = StateDb(sheet_env)
    expected = outbox_after[db.engine == "postgres"]
    locks: list[Any] = []
    if how == "lock":
        sheets.after(kind, lambda: locks.append(StateDb(sheet_env).write_lock()))
    else:
        getattr(sheets, how)(kind)
    env = dict(sheet_env, BOOKING_RETRY_BUDGET="30", SHEETS_HTTP_TIMEOUT="30", DATABASE_TIMEOUT="30")
    before = sheets.counts[kind]
    child = run_child(env, "book", "EX-103", "Ann", PHONE, "2031-01-01", "2031-01-02")
    assert await wait_until(lambda: sheets.counts[kind] > before and (how != "lock" or bool(locks)), timeout=30)
    if how == "hang_after":  # the request was applied before the child is killed
        what = "Equipment" if kind == "write" else "Bookings"
        assert await wait_until(lambda: any(r.get("Booking Ref") for r in sheets.records(what)
                                            if r.get("ID", "EX-103") == "EX-103"))
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
    row = sheets.record("Equipment", "EX-103")
    unit_landed = step in ("unit_write_landed", "log_append", "log_append_landed", "settle")
    log_landed = step in ("log_append_landed", "settle")
    assert (row["Status"], row["Booking Ref"]) == (("RENTED", refs[0]) if unit_landed else ("AVAILABLE", ""))
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == (refs if log_landed else [])
    fresh = equipment.inventory_from_env(sheet_env)
    if recorded:  # held for everybody until it is settled
        assert (await fresh.snapshot()).find("EX-103").status != "AVAILABLE"
    waiting = len(pending_refs(sheet_env))
    assert await fresh.replay_outbox() == waiting
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 0 and pending_refs(sheet_env) == []
    row = sheets.record("Equipment", "EX-103")
    log = [r["Booking Ref"] for r in sheets.records("Bookings")]
    if recorded:  # 0 lost, 0 doubled: the unit row and exactly one Bookings row for the ref
        assert row["Status"] == "RENTED" and row["Booking Ref"] == refs[0] and row["Renter Name"] == "Ann"
        assert log == refs
        assert db.outcomes() == {refs[0]: expected or ("already" if unit_landed else "written")}
        assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status == "RENTED"
    else:  # nothing half-done, and the dead process' unit lock went with it
        assert row["Status"] == "AVAILABLE" and row["Booking Ref"] == "" and log == []
        assert db.outbox() == []
        t0 = time.monotonic()
        b = await equipment.inventory_from_env(sheet_env).book(request("EX-103"))
        assert b.confirmed and time.monotonic() - t0 < 5
        assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]


async def test_replay_does_not_append_a_second_bookings_row(sheets, sheet_env):
    """Died after the Bookings row was appended but before the outbox entry was settled."""
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    b = await inv.book(request("EX-103"))
    db = StateDb(sheet_env)
    assert db.outcomes() == {b.ref: "written"}
    # what that crash leaves in the database: the entry, not settled
    db.query("UPDATE {outbox} SET settled_at = NULL, outcome = NULL WHERE ref = ?", (b.ref,))
    assert pending_refs(sheet_env) == [b.ref]
    writes, appends = sheets.counts["write"], sheets.counts["append"]
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 1
    assert sheets.counts["write"] == writes and sheets.counts["append"] == appends
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert pending_refs(sheet_env) == [] and db.outcomes() == {b.ref: "already"}


async def test_close_waits_for_a_booking_still_in_flight(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.delay("write", 1.0)
    write = asyncio.ensure_future(inv.book(request("EX-103")))
    with pytest.raises(asyncio.TimeoutError):  # the agent stops waiting; the call ends
        await asyncio.wait_for(asyncio.shield(write), 0.2)
    await inv.close(timeout=20)
    assert write.done() and write.result().confirmed
    assert sheets.record("Equipment", "EX-103")["Booking Ref"] == write.result().ref
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


@pytest.mark.parametrize("fault", ["forbidden", "bad_request", "column_deleted"])
async def test_failures_during_booking_are_kept_in_the_outbox(sheets, sheet_env, fault, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    if fault == "forbidden":
        sheets.forbid()  # the sheet was un-shared mid-day
    elif fault == "bad_request":
        sheets.fail("write", 400)
    else:
        sheets.set_rows("Equipment", [[c for c in r[:3]] + r[4:] for r in equipment_rows()])  # no Status
    t0 = time.monotonic()
    b = await inv.book(request("EX-103", call_id="c1"))
    assert not b.confirmed and time.monotonic() - t0 < 8
    assert pending_refs(sheet_env) == [b.ref]
    entry = next(e["payload"] for e in StateDb(sheet_env).outbox() if e["kind"] == "book")
    assert (entry["equipment_id"], entry["name"], entry["phone"], entry["call_id"]) == ("EX-103", "Ann", PHONE, "c1")
    why = {"forbidden": "not shared with", "bad_request": "HTTP 400", "column_deleted": "no 'Status' column"}
    lines = [r.getMessage() for r in caplog.records if b.ref in r.getMessage() and "outbox" in r.getMessage()]
    assert len(lines) == 1 and why[fault] in lines[0], caplog.text
    assert PHONE not in caplog.text
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status == "PENDING"


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


async def test_bookings_tab_created_with_its_header_in_one_request(sheets, one_sheet_env):
    other = ["OTHER1", "2030-01-01T00:00:00", "EX-201", "x", "Bo", "+1 555 000 0000", "", "", "", "BOOKING", ""]
    # another process appends right after the tab appears, before anything else we send
    sheets.after("structure", lambda: sheets.sheets["Bookings"].append(list(other)))
    inv = equipment.inventory_from_env(one_sheet_env)
    b = await inv.book(request("EX-103"))
    rows = sheets.rows("Bookings")
    assert rows[0] == LOG_HEADER
    assert [r[0] for r in rows[1:]] == ["OTHER1", b.ref]
    assert sheets.counts["structure"] == 1


async def test_bookings_tab_already_created_by_another_process(sheets, one_sheet_env):
    sheets.set_rows("Bookings", [list(LOG_HEADER)])
    sheets.fail("append", 400, times=1)  # our append raced the other process' creation
    inv = equipment.inventory_from_env(one_sheet_env)
    b = await inv.book(request("EX-103"))
    assert b.confirmed
    rows = sheets.rows("Bookings")
    assert rows[0] == LOG_HEADER and [r[0] for r in rows[1:]] == [b.ref]
    assert sheets.counts["structure"] == 1  # it tried to create the tab, and found it there


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
    assert child["statuses"]["EX-103"] == "PENDING"
    # even that process, whose snapshot missed the hold, can't get past it: the outbox is checked
    # under the unit lock
    assert before_the_hold.find("EX-103").available
    with pytest.raises(BookingRefused) as e:
        await asyncio.to_thread(other.booker.book, request("EX-103", "Bo"), before_the_hold.find("EX-103"),
                                before_the_hold)
    assert e.value.code == "just_taken" and "EX-101" in [u.id for u in e.value.alternatives]
    assert sheets.record("Equipment", "EX-103")["Status"] == "AVAILABLE"  # nothing written by the loser
    assert sheets.rows("Bookings") == []
    child = child_result(run_child(sheet_env, "snapshot", CHILD_CLOSE_TIMEOUT="0"))
    assert child["statuses"]["EX-103"] == "PENDING"
    assert await inv.replay_outbox() == 1
    assert sheets.record("Equipment", "EX-103")["Booking Ref"] == b.ref


# =============================================================================================
# replay isolates a bad entry, settled history, Bookings refs re-read


async def test_one_bad_outbox_entry_does_not_block_the_others(sheets, sheet_env, caplog):
    """A booking whose write is refused for good (403 on a protected range) does not block the
    entries after it; after MAX_ATTEMPTS it is settled as failed, with a CONFLICT row."""
    caplog.set_level(logging.INFO, logger="equipment")
    source = Source(sheet_env, sheets)
    inv = source.inventory()
    snap = await loaded(inv)
    outage = RuntimeError("simulated outage")
    bad = inv.booker.keep(unwritten("EX-101", "Ann", "c1"), snap.find("EX-101"), outage, ref="BAD111")
    good = inv.booker.keep(unwritten("EX-103", "Bo", "c2"), snap.find("EX-103"), outage, ref="GOOD22")
    # the sheet refuses every write of that booking: a protected range
    sheets.fail("write", 403, when=bad.ref, message="You are trying to edit a protected cell or object.")
    assert await inv.replay_outbox() == 1
    assert source.record("EX-103")["Booking Ref"] == good.ref
    assert pending_refs(sheet_env) == [bad.ref]
    fails = [r.getMessage() for r in caplog.records if bad.ref in r.getMessage() and "attempt 1/" in r.getMessage()]
    assert len(fails) == 1 and "EX-101" in fails[0] and "protected" in fails[0]
    assert (await source.inventory().snapshot()).find("EX-101").status == "PENDING"
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
    assert [(r["Booking Ref"], r["Kind"]) for r in source.log()] == [(good.ref, "BOOKING"), (bad.ref, "CONFLICT")]
    assert source.record("EX-101")["Booking Ref"] == ""
    assert StateDb(sheet_env).outcomes() == {bad.ref: "failed", good.ref: "written"}
    assert (await source.inventory().snapshot()).find("EX-101").status == "AVAILABLE"
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
    assert sheets.record("Equipment", "EX-101")["Booking Ref"] == b.ref


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
    history = db.outcomes()
    assert len(history) == 31 and history[keep.ref] is None
    assert all(history[f"OLD{i:03d}"] == "written" for i in range(30))
    # ten of them were settled longer ago than KEEP_SETTLED_DAYS (moved back, not slept through)
    db.query("UPDATE {outbox} SET settled_at = settled_at - ? WHERE ref LIKE ?", ((KEEP_SETTLED_DAYS + 1) * day,
                                                                                 "OLD01_"))
    db.query("UPDATE {outbox} SET settled_at = settled_at - ? WHERE ref = 'OLD020'", ((KEEP_SETTLED_DAYS - 1) * day,))
    assert await equipment.inventory_from_env(sheet_env_quick).replay_outbox() == 0
    assert set(db.outcomes()) == {f"OLD{i:03d}" for i in range(30) if not 10 <= i <= 19} | {keep.ref}
    assert pending_refs(sheet_env) == [keep.ref]
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-101").status == "PENDING"
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    assert sheets.record("Equipment", "EX-101")["Booking Ref"] == keep.ref
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
    for col, val in (("Status", "RENTED"), ("Booking Ref", b.ref), ("Renter Name", "Ann")):
        sheets.set_cell("Equipment", "EX-103", col, val)  # its write did land
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
