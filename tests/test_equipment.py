"""equipment.py against the local Sheets stand-in (real gspread + google-auth through the
GOOGLE_SHEETS_API_URL seam) and the embedded CSV. Time bounds here are generous on purpose;
tight numbers live in bench/inventory_numbers.py."""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import logging
import re
import time
from datetime import date
from pathlib import Path

import pytest

import equipment
from equipment import BookingRefused, InventoryConfigError
from tests.conftest import child_result, equipment_rows

TODAY = date(2030, 1, 10)
START, END = "2030-01-12", "2030-01-15"
PHONE = "+1 555 123 4567"


@pytest.fixture(params=["sheet", "csv"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The same test over the Google Sheet (stand-in) and the embedded CSV default."""
    if request.param == "sheet":
        _STANDIN[0] = request.getfixturevalue("sheets")
        return request.getfixturevalue("sheet_env")
    return request.getfixturevalue("csv_env")


def source_record(env: dict[str, str], equipment_id: str) -> dict[str, str]:
    """The unit's row as stored in its source (not the cache)."""
    if env.get("GOOGLE_SHEET_ID"):
        return _STANDIN[0].record("Equipment", equipment_id)
    with open(env["EQUIPMENT_CSV"], newline="", encoding="utf-8") as f:
        return next(r for r in csv.DictReader(f) if r["ID"] == equipment_id)


def source_log(env: dict[str, str]) -> list[dict[str, str]]:
    """The Bookings tab (sheet) or STATE_DIR/bookings.csv (csv) as records."""
    if env.get("GOOGLE_SHEET_ID"):
        return _STANDIN[0].records("Bookings")
    p = Path(env["STATE_DIR"]) / "bookings.csv"
    if not p.exists():
        return []
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def set_source_status(env: dict[str, str], equipment_id: str, status: str) -> None:
    """Staff editing the source by hand."""
    if env.get("GOOGLE_SHEET_ID"):
        _STANDIN[0].set_cell("Equipment", equipment_id, "Status", status)
        return
    path = env["EQUIPMENT_CSV"]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    col = rows[0].index("Status")
    for r in rows[1:]:
        if r[0] == equipment_id:
            r[col] = status
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


_STANDIN: list = [None]


@pytest.fixture(autouse=True)
def _remember_standin(request: pytest.FixtureRequest) -> None:
    _STANDIN[0] = request.getfixturevalue("sheets") if "sheets" in request.fixturenames else None


def age_snapshot(env: dict[str, str], seconds: float) -> None:
    """Makes the shared snapshot look `seconds` older (instead of sleeping through a TTL)."""
    p = Path(env["STATE_DIR"]) / equipment.SNAPSHOT_FILE
    data = json.loads(p.read_text())
    data["read_at"] -= seconds
    p.write_text(json.dumps(data))


async def wait_until(pred, timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


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
        sheets, sheet_env, caplog):
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
    snap = await equipment.inventory_from_env(sheet_env).snapshot()
    assert [(u.id, u.status) for u in snap.units] == [("A-1", "AVAILABLE"), ("A-2", "BROKEN"),
                                                      ("A-3", "RENTED"), ("A-4", "")]
    assert snap.find("A-1").daily_rate == 10.0 and snap.find("A-1").available
    unknown = [r.getMessage() for r in caplog.records if "unknown status" in r.getMessage()]
    assert len(unknown) == 2 and "row 5" in unknown[0] and "A-2" in unknown[0]


async def test_ttl_expiry_one_read_serves_until_ttl_then_refreshes(sheets, sheet_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(sheet_env)
    first = await inv.snapshot()
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
    assert await wait_until(lambda: (Path(sheet_env["STATE_DIR"]) / equipment.SNAPSHOT_FILE).exists()
                            and json.loads((Path(sheet_env["STATE_DIR"]) / equipment.SNAPSHOT_FILE)
                                           .read_text())["read_at"] > time.time() - 5)
    fresh = await equipment.inventory_from_env(sheet_env).snapshot()
    assert fresh.age < 5 and fresh.find("EX-103").status == "MAINTENANCE"
    assert "Cache expired or empty - reloading equipment" in caplog.text
    assert "Equipment loaded successfully: 20 items" in caplog.text


async def test_single_flight_burst_of_20_processes_costs_one_read(sheets, sheet_env, run_child):
    sheets.delay("read", 0.5)  # the load is still in flight while the others arrive
    env = dict(sheet_env, EQUIPMENT_LOAD_TIMEOUT="20")
    start_at = str(time.time() + 2.5)  # after every child has imported and is waiting
    procs = [run_child(env, "snapshot", START_AT=start_at) for _ in range(20)]
    results = [child_result(p) for p in procs]
    assert all(r["known"] and r["n"] == 20 for r in results), results
    assert sheets.counts["read"] == 1, sheets.counts
    assert sheets.counts["token"] == 1


async def test_burst_on_stale_snapshot_refreshes_once(sheets, sheet_env, run_child):
    await equipment.inventory_from_env(sheet_env).snapshot()
    age_snapshot(sheet_env, 60)
    sheets.delay("read", 0.3)
    start_at = str(time.time() + 2.0)
    procs = [run_child(sheet_env, "snapshot", START_AT=start_at) for _ in range(8)]
    results = [child_result(p) for p in procs]
    assert all(r["known"] and r["age"] >= 60 for r in results)  # none waited for the refresh
    assert sheets.counts["read"] == 2, sheets.counts  # the first load + one refresh


async def test_stale_while_revalidate_returns_at_once_while_sheet_hangs(sheets, sheet_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
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
        await equipment.inventory_from_env(env).book("EX-101", "Ann", PHONE, START, END, today=TODAY)
    assert e.value.code == "inventory_unknown"


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


async def test_retries_429_and_500_within_budget(sheets, sheet_env):
    sheets.fail("read", 429, times=1)
    sheets.fail("read", 500, times=1)
    snap = await equipment.inventory_from_env(dict(sheet_env, BOOKING_RETRY_BUDGET="5")).snapshot()
    assert snap.known and sheets.counts["read"] == 3


# =============================================================================================
# configuration and source errors


def _sa_json(sheets) -> str:
    return sheets.service_account_json()


def test_config_errors_name_each_variable(tmp_path, sheets):
    assert equipment.config_errors({"STATE_DIR": str(tmp_path)}) == []
    errs = equipment.config_errors({
        "EQUIPMENT_CACHE_TTL": "thirty", "EQUIPMENT_LOAD_TIMEOUT": "-1", "BOOKING_RETRY_BUDGET": "nan",
        "SHEETS_HTTP_TIMEOUT": "1,2,3", "GOOGLE_SHEETS_API_URL": "localhost:99", "STATE_DIR": str(tmp_path)})
    for var in ("EQUIPMENT_CACHE_TTL", "EQUIPMENT_LOAD_TIMEOUT", "BOOKING_RETRY_BUDGET", "SHEETS_HTTP_TIMEOUT",
                "GOOGLE_SHEETS_API_URL"):
        assert sum(var in e for e in errs) == 1, (var, errs)
    assert len(errs) == 5
    only_id = equipment.config_errors({"GOOGLE_SHEET_ID": "abc", "STATE_DIR": str(tmp_path)})
    assert len(only_id) == 1 and "GOOGLE_SHEET_ID" in only_id[0] and "GOOGLE_SERVICE_ACCOUNT_JSON" in only_id[0]
    bad_json = equipment.config_errors({"GOOGLE_SHEET_ID": "abc", "GOOGLE_SERVICE_ACCOUNT_JSON": "{not json"})
    assert len(bad_json) == 1 and "GOOGLE_SERVICE_ACCOUNT_JSON" in bad_json[0]
    no_key = equipment.config_errors({"GOOGLE_SHEET_ID": "abc",
                                      "GOOGLE_SERVICE_ACCOUNT_JSON": json.dumps({"client_email": "a@b"})})
    assert len(no_key) == 1 and "private_key" in no_key[0]
    no_id = equipment.config_errors({"GOOGLE_SERVICE_ACCOUNT_JSON": _sa_json(sheets)})
    assert len(no_id) == 1 and "GOOGLE_SHEET_ID" in no_id[0]
    missing_file = equipment.config_errors({"GOOGLE_SHEET_ID": "abc",
                                            "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "nope.json")})
    assert len(missing_file) == 1 and "GOOGLE_APPLICATION_CREDENTIALS" in missing_file[0]
    no_csv = equipment.config_errors({"EQUIPMENT_CSV": str(tmp_path / "none.csv")})
    assert len(no_csv) == 1 and "EQUIPMENT_CSV" in no_csv[0]
    with pytest.raises(InventoryConfigError, match="EQUIPMENT_CACHE_TTL"):
        equipment.inventory_from_env({"EQUIPMENT_CACHE_TTL": "x", "STATE_DIR": str(tmp_path)})


async def test_credentials_base64_with_literal_newlines_and_file(sheets, sheet_env, tmp_path):
    info = sheets.service_account_info()
    info["private_key"] = info["private_key"].replace("\n", "\\n")  # as pasted into a dashboard
    b64 = base64.b64encode(json.dumps(info).encode()).decode()
    env = dict(sheet_env, GOOGLE_SERVICE_ACCOUNT_JSON=b64)
    assert equipment.config_errors(env) == []
    assert await equipment.inventory_from_env(env).check() == 20
    path = tmp_path / "sa.json"
    path.write_text(sheets.service_account_json())
    env = {k: v for k, v in sheet_env.items() if k != "GOOGLE_SERVICE_ACCOUNT_JSON"}
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(path)
    assert equipment.config_errors(env) == []
    assert await equipment.inventory_from_env(env).check() == 20


@pytest.mark.parametrize("problem, expected", [
    ("missing_column", "no 'Status' column"),
    ("missing_worksheet", "no worksheet named 'Equipment'"),
    ("not_shared", "is not shared with agent@stand-in.iam.gserviceaccount.com"),
])
async def test_source_errors_are_clear(sheets, sheet_env, problem, expected, caplog):
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


async def test_booking_happy_path(store_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(store_env)
    b = await inv.book("EX-101", "  Ann   Lee ", PHONE, START, END, call_id="call-42", today=TODAY)
    assert b.confirmed and b.equipment_id == "EX-101" and b.renter_name == "Ann Lee"
    assert len(b.ref) == 6 and set(b.ref) <= set(equipment.REF_ALPHABET)
    assert (b.start, b.end) == (date(2030, 1, 12), date(2030, 1, 15))
    row = source_record(store_env, "EX-101")
    stored_phone = PHONE if store_env.get("GOOGLE_SHEET_ID") else "'" + PHONE  # CSV: neutralised
    assert row["Status"] == "RENTED" and row["Renter Name"] == "Ann Lee" and row["Renter Phone"] == stored_phone
    assert (row["Rental Start"], row["Rental End"], row["Booking Ref"]) == (START, END, b.ref)
    assert row["Booked At"].startswith("20")
    log = source_log(store_env)
    assert len(log) == 1
    assert {k: log[0][k] for k in ("Booking Ref", "Equipment ID", "Equipment Name", "Renter Name", "Renter Phone",
                                   "Rental Start", "Rental End", "Call ID", "Kind")} == {
        "Booking Ref": b.ref, "Equipment ID": "EX-101", "Equipment Name": "Kubota KX040 Mini Excavator",
        "Renter Name": "Ann Lee", "Renter Phone": stored_phone, "Rental Start": START, "Rental End": END,
        "Call ID": "call-42", "Kind": "BOOKING"}
    # every process sees it on its next read, without waiting for the TTL
    assert (await equipment.inventory_from_env(store_env).snapshot()).find("EX-101").status == "RENTED"
    assert "4567" in caplog.text and "555 123 4567" not in caplog.text and "5551234567" not in caplog.text
    if store_env.get("GOOGLE_SHEET_ID"):
        s = _STANDIN[0]
        assert s.counts["write"] == 1 and s.counts["append"] == 2 and s.counts["structure"] == 1
        assert set(s.value_input_options) == {"RAW"}


async def test_booking_seen_by_another_process_without_a_read(sheets, sheet_env, run_child):
    await equipment.inventory_from_env(sheet_env).snapshot()
    reads = sheets.counts["read"]
    child = child_result(run_child(sheet_env, "snapshot"))
    assert child["statuses"]["EX-103"] == "AVAILABLE"
    await equipment.inventory_from_env(sheet_env).book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    child = child_result(run_child(sheet_env, "snapshot"))
    assert child["statuses"]["EX-103"] == "RENTED"
    assert sheets.counts["read"] == reads + 1  # only the booking's own re-read


async def test_booking_survives_a_refresh_that_was_in_flight(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    age_snapshot(sheet_env, 60)
    sheets.delay("read", 1.0, times=1)  # the background refresh reads the old sheet slowly
    await inv.snapshot()
    await asyncio.sleep(0.2)
    sheets.set_cell("Equipment", "EX-103", "Status", "RENTED")  # someone books meanwhile ...
    inv._patch_snapshot({"EX-103": "RENTED"})  # ... and patches the shared snapshot
    sheets.set_cell("Equipment", "EX-103", "Status", "AVAILABLE")  # (what the slow read returns)
    await inv.close(timeout=10)
    assert sheets.counts["read"] == 2
    snap = await equipment.inventory_from_env(sheet_env).snapshot()
    assert snap.age < 5 and snap.find("EX-103").status == "RENTED"


async def test_two_processes_racing_for_one_unit(store_env, run_child):
    await equipment.inventory_from_env(store_env).snapshot()  # both see it AVAILABLE
    start_at = str(time.time() + 2.0)
    procs = [run_child(store_env, "book", "EX-101", f"Racer {i}", PHONE, "2031-05-01", "2031-05-02",
                       START_AT=start_at) for i in range(2)]
    results = [child_result(p) for p in procs]
    winners = [r for r in results if r["ok"]]
    losers = [r for r in results if not r["ok"]]
    assert len(winners) == 1 and winners[0]["confirmed"], results
    assert len(losers) == 1 and losers[0]["code"] == "just_taken"
    assert losers[0]["alternatives"][:2] == ["EX-103", "EX-201"]  # same model first, same category
    assert source_record(store_env, "EX-101")["Booking Ref"] == winners[0]["ref"]
    assert [r["Booking Ref"] for r in source_log(store_env)] == [winners[0]["ref"]]


async def test_formula_text_is_stored_as_text(store_env):
    evil = '=HYPERLINK("http://x","y")'
    inv = equipment.inventory_from_env(store_env)
    b = await inv.book("EX-103", evil, PHONE, START, END, call_id="@SUM(1)", today=TODAY)
    row, log = source_record(store_env, "EX-103"), source_log(store_env)
    if store_env.get("GOOGLE_SHEET_ID"):  # written RAW: the very text, never a formula
        assert row["Renter Name"] == evil and log[0]["Renter Name"] == evil
        assert _STANDIN[0].formula_writes == [] and set(_STANDIN[0].value_input_options) == {"RAW"}
    else:  # a CSV opened in a spreadsheet program would run it: neutralised
        assert row["Renter Name"] == "'" + evil and log[0]["Renter Name"] == "'" + evil
        assert log[0]["Call ID"] == "'@SUM(1)"
    assert b.renter_name == evil


def _long_name() -> str:
    return "A" * 101


@pytest.mark.parametrize("code, args", [
    ("unknown_id", ("NOPE-1", "Ann", PHONE, START, END)),
    ("not_available", ("EX-102", "Ann", PHONE, START, END)),  # RENTED
    ("not_available", ("EX-301", "Ann", PHONE, START, END)),  # MAINTENANCE
    ("bad_name", ("EX-101", "   ", PHONE, START, END)),
    ("bad_name", ("EX-101", _long_name(), PHONE, START, END)),
    ("bad_phone", ("EX-101", "Ann", "call me maybe", START, END)),
    ("bad_phone", ("EX-101", "Ann", "12345", START, END)),
    ("bad_phone", ("EX-101", "Ann", "+1 555 123 4567 8901 23", START, END)),
    ("bad_date", ("EX-101", "Ann", PHONE, "next tuesday", END)),
    ("bad_date", ("EX-101", "Ann", PHONE, START, "2030-02-30")),
    ("past_date", ("EX-101", "Ann", PHONE, "2030-01-09", END)),
    ("end_before_start", ("EX-101", "Ann", PHONE, "2030-01-15", "2030-01-12")),
])
async def test_refusals(store_env, code, args):
    inv = equipment.inventory_from_env(store_env)
    before = source_record(store_env, args[0]) if args[0] != "NOPE-1" else None
    with pytest.raises(BookingRefused) as e:
        await inv.book(*args, today=TODAY)
    assert e.value.code == code and e.value.message
    if code == "not_available":
        alts = e.value.alternatives
        assert alts and all(u.available and u.category == "Excavators" for u in alts)
        assert args[0] not in [u.id for u in alts]
    if before is not None:
        assert source_record(store_env, args[0]) == before
    assert source_log(store_env) == []


async def test_refusal_just_taken_when_source_changed_after_the_snapshot(store_env):
    inv = equipment.inventory_from_env(store_env)
    assert (await inv.snapshot()).find("SS-101").available
    set_source_status(store_env, "SS-101", "RENTED")  # staff rented it by hand meanwhile
    with pytest.raises(BookingRefused) as e:
        await inv.book("SS-101", "Ann", PHONE, START, END, today=TODAY)
    assert e.value.code == "just_taken" and [u.id for u in e.value.alternatives] == ["SS-201"]
    assert source_log(store_env) == []
    assert (await inv.snapshot()).find("SS-101").status == "RENTED"  # the snapshot learned it


async def test_booking_finds_row_by_id_after_staff_insert_rows(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    rows = sheets.rows("Equipment")
    sheets.set_rows("Equipment", [rows[0], ["ZZ-1", "New thing", "Misc", "AVAILABLE"]] + list(reversed(rows[1:])))
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    assert sheets.record("Equipment", "EX-103")["Booking Ref"] == b.ref
    assert sheets.record("Equipment", "ZZ-1")["Status"] == "AVAILABLE"
    assert [r["ID"] for r in sheets.records("Equipment") if r["Status"] == "RENTED"].count("EX-103") == 1


# =============================================================================================
# outbox


async def test_outbox_during_outage_then_replayed_exactly_once(sheets, sheet_env, run_child):
    sheet_env["BOOKING_RETRY_BUDGET"] = "1"
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    sheets.fail("*", 503)
    t0 = time.monotonic()
    b = await inv.book("EX-103", "Ann", PHONE, START, END, call_id="c1", today=TODAY)
    assert not b.confirmed and time.monotonic() - t0 < 8  # BOOKING_RETRY_BUDGET=2, generous bound
    outbox = Path(sheet_env["STATE_DIR"]) / "outbox.jsonl"
    entries = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [(e["op"], e["ref"], e["equipment_id"]) for e in entries] == [("book", b.ref, "EX-103")]
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
    await inv.snapshot()
    await inv.close(timeout=10)
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


async def test_outbox_replayed_by_a_later_refresh_and_idempotent_by_ref(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    sheets.reset("write", times=50)  # the write never answers (it may or may not have landed)
    b = await inv.book("EX-101", "Ann", PHONE, START, END, today=TODAY)
    assert not b.confirmed
    sheets.clear_faults()
    # simulate a write that did land although its answer was lost
    for col, val in (("Status", "RENTED"), ("Booking Ref", b.ref), ("Renter Name", "Ann")):
        sheets.set_cell("Equipment", "EX-101", col, val)
    writes = sheets.counts["write"]
    age_snapshot(sheet_env, 60)
    await inv.snapshot()  # the refresh (lock holder) replays the outbox
    await inv.close(timeout=10)
    assert sheets.counts["write"] == writes  # our ref was already there: not written again
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]
    assert await inv.replay_outbox() == 0


async def test_replay_conflict_is_logged_not_dropped(store_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(store_env)
    await inv.snapshot()
    b = inv._to_outbox("QQ7QQ7", (await inv.snapshot()).find("EX-201"), "Ann", PHONE, date(2030, 1, 12),
                       date(2030, 1, 15), "c9", RuntimeError("simulated outage"))
    set_source_status(store_env, "EX-201", "RENTED")  # staff gave it to a walk-in meanwhile
    assert await inv.replay_outbox() == 1
    conflict = [r.getMessage() for r in caplog.records if "Outbox conflict" in r.getMessage()]
    assert len(conflict) == 1 and b.ref in conflict[0] and "EX-201" in conflict[0]
    assert PHONE not in caplog.text
    log = source_log(store_env)
    assert [(r["Booking Ref"], r["Kind"]) for r in log] == [(b.ref, "CONFLICT")]
    assert source_record(store_env, "EX-201")["Booking Ref"] == ""
    assert await inv.replay_outbox() == 0 and len(source_log(store_env)) == 1


async def test_record_callback(store_env):
    inv = equipment.inventory_from_env(store_env)
    ref = await inv.record_callback("Ann", PHONE, "wants a quote for a 3-week boom lift", call_id="c7")
    log = source_log(store_env)
    stored_phone = PHONE if store_env.get("GOOGLE_SHEET_ID") else "'" + PHONE
    assert [(r["Booking Ref"], r["Kind"], r["Renter Phone"]) for r in log] == [(ref, "CALLBACK", stored_phone)]
    assert "boom lift" in log[0]["Note"]
    with pytest.raises(BookingRefused) as e:
        await inv.record_callback("Ann", "nope", "")
    assert e.value.code == "bad_phone"


async def test_record_callback_during_outage_goes_to_outbox(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    sheets.fail("*", 500)
    ref = await inv.record_callback("Ann", PHONE, "call back please")
    assert sheets.rows("Bookings") == []
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    assert [(r["Booking Ref"], r["Kind"]) for r in sheets.records("Bookings")] == [(ref, "CALLBACK")]


# =============================================================================================
# review fixes: write-ahead outbox, failures kept, phone limits, token retries, Bookings tab


def _outbox(env: dict[str, str]) -> list[dict]:
    p = Path(env["STATE_DIR"]) / equipment.OUTBOX_FILE
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _pending_refs(env: dict[str, str]) -> list[str]:
    entries = _outbox(env)
    settled = {e["ref"] for e in entries if e["op"] == "settled"}
    return [e["ref"] for e in entries if e["op"] != "settled" and e["ref"] not in settled]


@pytest.mark.parametrize("stage", ["before_write", "after_write"])
async def test_process_killed_mid_booking_loses_nothing(sheets, sheet_env, run_child, stage):
    """Write-ahead: the booking is in the outbox before the row is written, so a process that
    dies mid-booking (call ended, worker killed) leaves something replay can finish, once."""
    await equipment.inventory_from_env(sheet_env).snapshot()
    sheets.hang("write" if stage == "before_write" else "append")
    env = dict(sheet_env, BOOKING_RETRY_BUDGET="30", SHEETS_HTTP_TIMEOUT="30")
    child = run_child(env, "book", "EX-103", "Ann", PHONE, "2031-01-01", "2031-01-02")
    kind = "write" if stage == "before_write" else "append"
    assert await wait_until(lambda: sheets.counts[kind] >= 1, timeout=30)
    await asyncio.sleep(0.2)
    child.kill()  # no close(), no finally: the process is gone
    child.wait()
    sheets.release()
    sheets.clear_faults()
    refs = _pending_refs(sheet_env)
    assert len(refs) == 1, _outbox(sheet_env)
    row = sheets.record("Equipment", "EX-103")
    if stage == "after_write":
        assert row["Status"] == "RENTED" and row["Booking Ref"] == refs[0]
        assert sheets.rows("Bookings") in ([], [equipment.LOG_HEADER])
    # held for everybody until it is settled
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status != "AVAILABLE"
    inv = equipment.inventory_from_env(sheet_env)
    assert await inv.replay_outbox() == 1
    row = sheets.record("Equipment", "EX-103")
    assert row["Status"] == "RENTED" and row["Booking Ref"] == refs[0] and row["Renter Name"] == "Ann"
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == refs
    assert await inv.replay_outbox() == 0 and _pending_refs(sheet_env) == []
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == refs
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status == "RENTED"


async def test_replay_does_not_append_a_second_bookings_row(sheets, sheet_env):
    """Died after the Bookings row was appended but before the outbox entry was settled."""
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    outbox = Path(sheet_env["STATE_DIR"]) / equipment.OUTBOX_FILE
    lines = outbox.read_text().splitlines()
    assert [json.loads(x)["op"] for x in lines] == ["book", "settled"]
    outbox.write_text(lines[0] + "\n")  # as if the process died before writing "settled"
    writes, appends = sheets.counts["write"], sheets.counts["append"]
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 1
    assert sheets.counts["write"] == writes and sheets.counts["append"] == appends
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [b.ref]


async def test_close_waits_for_a_booking_still_in_flight(sheets, sheet_env):
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    sheets.delay("write", 1.0)
    write = asyncio.ensure_future(inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY))
    with pytest.raises(asyncio.TimeoutError):  # the agent stops waiting; the call ends
        await asyncio.wait_for(asyncio.shield(write), 0.2)
    await inv.close(timeout=20)
    assert write.done() and write.result().confirmed
    assert sheets.record("Equipment", "EX-103")["Booking Ref"] == write.result().ref
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [write.result().ref]
    assert _pending_refs(sheet_env) == []


def test_late_result_of_a_thread_is_logged_not_dropped(csv_env, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(csv_env)
    done = [0]

    def slow(fail: bool) -> str:
        time.sleep(0.3)
        done[0] += 1
        if fail:
            raise RuntimeError("late failure xyz")
        return "late result abc"

    async def leave_early() -> None:
        inv._off_loop(slow, False, name="equipment-late-ok")
        inv._off_loop(slow, True, name="equipment-late-bad")

    asyncio.run(leave_early())  # the loop closes before the threads finish
    deadline = time.monotonic() + 10
    while done[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert "equipment-late-ok" in caplog.text and "late result abc" in caplog.text
    assert "equipment-late-bad" in caplog.text and "late failure xyz" in caplog.text


@pytest.mark.parametrize("fault", ["forbidden", "bad_request", "column_deleted"])
async def test_failures_during_booking_are_kept_in_the_outbox(sheets, sheet_env, fault, caplog):
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    if fault == "forbidden":
        sheets.forbid()  # the sheet was un-shared mid-day
    elif fault == "bad_request":
        sheets.fail("write", 400)
    else:
        sheets.set_rows("Equipment", [[c for c in r[:3]] + r[4:] for r in equipment_rows()])  # no Status
    t0 = time.monotonic()
    b = await inv.book("EX-103", "Ann", PHONE, START, END, call_id="c1", today=TODAY)
    assert not b.confirmed and time.monotonic() - t0 < 8
    assert _pending_refs(sheet_env) == [b.ref]
    entry = next(e for e in _outbox(sheet_env) if e["op"] == "book")
    assert (entry["equipment_id"], entry["name"], entry["phone"]) == ("EX-103", "Ann", PHONE)
    why = {"forbidden": "not shared with", "bad_request": "HTTP 400", "column_deleted": "no 'Status' column"}
    lines = [r.getMessage() for r in caplog.records if b.ref in r.getMessage() and "outbox" in r.getMessage()]
    assert len(lines) == 1 and why[fault] in lines[0], caplog.text
    assert PHONE not in caplog.text
    assert (await equipment.inventory_from_env(sheet_env).snapshot()).find("EX-103").status == "PENDING"


async def test_local_file_failure_during_booking_is_kept_in_the_outbox(csv_env, monkeypatch):
    inv = equipment.inventory_from_env(csv_env)
    await inv.snapshot()

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inv.store, "write_unit", broken)
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    assert not b.confirmed and _pending_refs(csv_env) == [b.ref]
    # the snapshot patch itself failing after a good write does not unconfirm the booking
    monkeypatch.undo()
    monkeypatch.setattr(inv, "_patch_snapshot", broken)
    b2 = await inv.book("EX-101", "Bo", PHONE, START, END, today=TODAY)
    assert b2.confirmed and source_record(csv_env, "EX-101")["Booking Ref"] == b2.ref


async def test_booking_raises_clearly_when_even_the_outbox_fails(sheets, sheet_env, monkeypatch):
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    sheets.forbid()

    def broken(entry):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(inv, "_outbox_append", broken)
    with pytest.raises(equipment.BookingNotRecorded, match="not shared with.*Read-only file system"):
        await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)


async def test_phone_is_length_limited_and_neutralised(store_env):
    inv = equipment.inventory_from_env(store_env)
    huge = "1" + "-" * 60000 + "5551234567"
    with pytest.raises(BookingRefused) as e:
        await inv.book("EX-101", "Ann", huge, START, END, today=TODAY)
    assert e.value.code == "bad_phone"
    with pytest.raises(BookingRefused) as e:
        await inv.book("EX-101", "Ann", "+1 (555) 123-4567 " + " " * 10 + "-" * 20, START, END, today=TODAY)
    assert e.value.code == "bad_phone"
    with pytest.raises(BookingRefused) as e:
        await inv.record_callback("Ann", huge, "note")
    assert e.value.code == "bad_phone"
    b = await inv.book("EX-101", "Ann", "-555-123-4567", START, END, today=TODAY)
    ref = await inv.record_callback("=cmd()", "+1 555 123 4567", "-2+3", call_id="c1")
    row, log = source_record(store_env, "EX-101"), source_log(store_env)
    cb = next(r for r in log if r["Booking Ref"] == ref)
    if store_env.get("GOOGLE_SHEET_ID"):  # RAW: stored as given
        assert row["Renter Phone"] == "-555-123-4567" and log[0]["Renter Phone"] == "-555-123-4567"
        assert (cb["Renter Name"], cb["Renter Phone"], cb["Note"]) == ("=cmd()", "+1 555 123 4567", "-2+3")
    else:  # readable, but never run by a spreadsheet program
        assert row["Renter Phone"] == "'-555-123-4567" and log[0]["Renter Phone"] == "'-555-123-4567"
        assert (cb["Renter Name"], cb["Renter Phone"], cb["Note"]) == ("'=cmd()", "'+1 555 123 4567", "'-2+3")
    assert b.renter_phone == "-555-123-4567"


async def test_failing_token_endpoint_stays_within_the_retry_budget(sheets, sheet_env):
    await equipment.inventory_from_env(sheet_env).snapshot()  # a snapshot exists
    sheets.fail("token", 503)
    tokens = sheets.counts["token"]
    # google-auth alone retries a token request 3 times with 1 s + 2 s sleeps: 3 s per attempt
    env = dict(sheet_env, BOOKING_RETRY_BUDGET="1", SHEETS_HTTP_TIMEOUT="1")
    inv = equipment.inventory_from_env(env)  # a new process: no token yet
    t0 = time.monotonic()
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    elapsed = time.monotonic() - t0
    budget, read_timeout = 1.0, 1.0  # BOOKING_RETRY_BUDGET, SHEETS_HTTP_TIMEOUT
    assert not b.confirmed and elapsed < budget + read_timeout, elapsed
    assert 1 <= sheets.counts["token"] - tokens <= 6, sheets.counts


async def test_failing_token_endpoint_connection_reset_is_one_attempt(sheets, sheet_env):
    env = dict(sheet_env, BOOKING_RETRY_BUDGET="0.5")
    sheets.reset("token")
    inv = equipment.inventory_from_env(env)
    with pytest.raises(equipment.SourceUnavailable):
        await inv.check()
    assert 1 <= sheets.counts["token"] <= 3, sheets.counts


async def test_bookings_tab_created_with_its_header_in_one_request(sheets, sheet_env):
    other = ["OTHER1", "2030-01-01T00:00:00", "EX-201", "x", "Bo", "+1 555 000 0000", "", "", "", "BOOKING", ""]
    # another process appends right after the tab appears, before anything else we send
    sheets.after("structure", lambda: sheets.sheets["Bookings"].append(list(other)))
    inv = equipment.inventory_from_env(sheet_env)
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    rows = sheets.rows("Bookings")
    assert rows[0] == equipment.LOG_HEADER
    assert [r[0] for r in rows[1:]] == ["OTHER1", b.ref]
    assert sheets.counts["structure"] == 1


async def test_bookings_tab_already_created_by_another_process(sheets, sheet_env):
    sheets.set_rows("Bookings", [list(equipment.LOG_HEADER)])
    sheets.fail("append", 400, times=1)  # our append raced the other process' creation
    inv = equipment.inventory_from_env(sheet_env)
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    assert b.confirmed
    rows = sheets.rows("Bookings")
    assert rows[0] == equipment.LOG_HEADER and [r[0] for r in rows[1:]] == [b.ref]


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
    assert equipment.mask_phone(raw) == masked


async def test_outbox_hold_refuses_a_second_booking_before_replay(sheets, sheet_env, run_child):
    sheet_env["BOOKING_RETRY_BUDGET"] = "1"
    inv = equipment.inventory_from_env(sheet_env)
    await inv.snapshot()
    sheets.fail("*", 503)
    b = await inv.book("EX-103", "Ann", PHONE, START, END, today=TODAY)
    assert not b.confirmed
    sheets.clear_faults()  # Sheets is healthy again, nothing replayed yet
    child = child_result(run_child(sheet_env, "snapshot", CHILD_CLOSE_TIMEOUT="0"))
    assert child["statuses"]["EX-103"] == "PENDING"
    # even a process whose snapshot missed the hold (written before it) can't get past it
    snap_file = Path(sheet_env["STATE_DIR"]) / equipment.SNAPSHOT_FILE
    data = json.loads(snap_file.read_text())
    data["overrides"] = {}
    for u in data["units"]:
        if u["id"] == "EX-103":
            u["status"] = "AVAILABLE"
    snap_file.write_text(json.dumps(data))
    other = child_result(run_child(sheet_env, "book", "EX-103", "Bo", PHONE, "2031-01-01", "2031-01-02",
                                   CHILD_CLOSE_TIMEOUT="0"))
    assert not other["ok"] and other["code"] == "just_taken" and "EX-101" in other["alternatives"]
    assert sheets.record("Equipment", "EX-103")["Status"] == "AVAILABLE"  # nothing written by the loser
    assert sheets.rows("Bookings") == []
    child = child_result(run_child(sheet_env, "snapshot", CHILD_CLOSE_TIMEOUT="0"))
    assert child["statuses"]["EX-103"] == "PENDING"  # and the snapshot learned the hold again
    assert await inv.replay_outbox() == 1
    assert sheets.record("Equipment", "EX-103")["Booking Ref"] == b.ref


# =============================================================================================
# review fixes: replay isolates a bad entry, outbox compaction, Bookings refs re-read


async def test_one_bad_outbox_entry_does_not_block_the_others(store_env, monkeypatch, caplog):
    """A booking whose write is refused for good (403 on a protected range) no longer blocks the
    entries after it; after OUTBOX_MAX_ATTEMPTS it is settled as failed, with a CONFLICT row."""
    caplog.set_level(logging.INFO, logger="equipment")
    inv = equipment.inventory_from_env(store_env)
    snap = await inv.snapshot()
    bad = inv._to_outbox("BAD111", snap.find("EX-101"), "Ann", PHONE, date(2030, 1, 12), date(2030, 1, 15),
                         "c1", RuntimeError("simulated outage"))
    good = inv._to_outbox("GOOD22", snap.find("EX-103"), "Bo", PHONE, date(2030, 1, 12), date(2030, 1, 15),
                          "c2", RuntimeError("simulated outage"))
    real = inv.store.write_unit

    def write_unit(row_index, equipment_id, fields, table):
        if equipment_id == "EX-101":
            raise InventoryConfigError("HTTP 403: the range is protected")
        return real(row_index, equipment_id, fields, table)

    monkeypatch.setattr(inv.store, "write_unit", write_unit)
    assert await inv.replay_outbox() == 1
    assert source_record(store_env, "EX-103")["Booking Ref"] == good.ref
    assert set(_pending_refs(store_env)) == {bad.ref}
    fails = [r.getMessage() for r in caplog.records if bad.ref in r.getMessage() and "attempt 1/" in r.getMessage()]
    assert len(fails) == 1 and "EX-101" in fails[0] and "protected" in fails[0]
    assert (await equipment.inventory_from_env(store_env).snapshot()).find("EX-101").status == "PENDING"
    for _ in range(equipment.OUTBOX_MAX_ATTEMPTS - 2):
        assert await inv.replay_outbox() == 0
    assert set(_pending_refs(store_env)) == {bad.ref}
    assert await inv.replay_outbox() == 1  # the last attempt settles it as failed
    assert _pending_refs(store_env) == []
    conflict = [r.getMessage() for r in caplog.records if "Outbox conflict" in r.getMessage()]
    assert len(conflict) == 1 and bad.ref in conflict[0] and "EX-101" in conflict[0]
    assert PHONE not in caplog.text
    assert [(r["Booking Ref"], r["Kind"]) for r in source_log(store_env)] == [(good.ref, "BOOKING"),
                                                                              (bad.ref, "CONFLICT")]
    assert source_record(store_env, "EX-101")["Booking Ref"] == ""
    assert (await equipment.inventory_from_env(store_env).snapshot()).find("EX-101").status == "AVAILABLE"
    assert await inv.replay_outbox() == 0 and len(source_log(store_env)) == 2


async def test_replay_stops_when_sheets_is_down_without_counting_attempts(sheets, sheet_env):
    sheet_env["BOOKING_RETRY_BUDGET"] = "0.5"
    inv = equipment.inventory_from_env(sheet_env)
    snap = await inv.snapshot()
    b = inv._to_outbox("DOWN01", snap.find("EX-101"), "Ann", PHONE, date(2030, 1, 12), date(2030, 1, 15),
                       "c1", RuntimeError("simulated outage"))
    sheets.fail("*", 503)
    for _ in range(equipment.OUTBOX_MAX_ATTEMPTS + 1):
        assert await inv.replay_outbox() == 0
    assert _pending_refs(sheet_env) == [b.ref]  # no attempt recorded: an outage is not the entry's fault
    sheets.clear_faults()
    assert await inv.replay_outbox() == 1
    assert sheets.record("Equipment", "EX-101")["Booking Ref"] == b.ref


async def test_outbox_is_compacted_by_replay_keeping_unsettled_entries(csv_env, monkeypatch):
    inv = equipment.inventory_from_env(csv_env)
    snap = await inv.snapshot()
    for i in range(30):
        ref = f"OLD{i:03d}"
        inv._outbox_append({"op": "book", "ref": ref, "equipment_id": "EX-101", "at": 0})
        inv._outbox_append({"op": "settled", "ref": ref, "result": "written", "at": 0})
    keep = inv._to_outbox("KEEP01", snap.find("EX-101"), "Ann", PHONE, date(2030, 1, 12), date(2030, 1, 15),
                          "c1", RuntimeError("simulated outage"))
    inv._outbox_append({"op": "attempt", "ref": keep.ref, "count": 1, "reason": "x", "at": 0})
    inv._outbox_append({"op": "attempt", "ref": keep.ref, "count": 2, "reason": "x", "at": 0})

    def refuse(*a, **k):
        raise InventoryConfigError("refused")

    monkeypatch.setattr(inv.store, "write_unit", refuse)
    assert await inv.replay_outbox() == 0
    entries = _outbox(csv_env)
    assert [(e["op"], e["ref"]) for e in entries] == [("book", keep.ref), ("attempt", keep.ref)]
    assert entries[1]["count"] == 3
    assert (await equipment.inventory_from_env(csv_env).snapshot()).find("EX-101").status == "PENDING"
    assert not list((Path(csv_env["STATE_DIR"])).glob(".outbox.jsonl.*"))  # no temp file left


def test_outbox_compaction_loses_no_concurrent_append(csv_env):
    import threading

    inv = equipment.inventory_from_env(csv_env)
    others = [equipment.inventory_from_env(csv_env) for _ in range(4)]
    done = threading.Event()

    def writer(n: int, other) -> None:
        for i in range(40):
            other._outbox_append({"op": "callback", "ref": f"K{n}-{i}", "row": [], "at": 0})
            other._outbox_append({"op": "callback", "ref": f"S{n}-{i}", "row": [], "at": 0})
            other._outbox_append({"op": "settled", "ref": f"S{n}-{i}", "result": "written", "at": 0})

    def compactor() -> None:
        while not done.is_set():
            inv._compact_outbox(force=True)

    c = threading.Thread(target=compactor)
    c.start()
    ws = [threading.Thread(target=writer, args=(n, o)) for n, o in enumerate(others)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    done.set()
    c.join()
    inv._compact_outbox(force=True)
    expected = sorted(f"K{n}-{i}" for n in range(4) for i in range(40))
    assert sorted(e["ref"] for e in _outbox(csv_env)) == expected


async def test_replay_rereads_bookings_refs_before_appending_a_booking_already_written(
        sheets, sheet_env, monkeypatch):
    """A live booking appended its Bookings row after replay had read the refs: no second row."""
    inv = equipment.inventory_from_env(sheet_env)
    snap = await inv.snapshot()
    cb_row = inv._log_row("CB0001", "2030-01-10T00:00:00Z", "", "", "Cy", PHONE, "", "", "c0", "CALLBACK", "hi")
    inv._outbox_append({"op": "callback", "ref": "CB0001", "row": cb_row, "at": time.time()})
    b = inv._to_outbox("LIVE01", snap.find("EX-103"), "Ann", PHONE, date(2030, 1, 12), date(2030, 1, 15),
                       "c1", RuntimeError("answer lost"))
    for col, val in (("Status", "RENTED"), ("Booking Ref", b.ref), ("Renter Name", "Ann")):
        sheets.set_cell("Equipment", "EX-103", col, val)  # its write did land
    real = inv.store.log_refs
    landed: list[int] = []

    def log_refs():
        refs = real()
        if not landed:  # the live booking's row lands just after replay read the refs
            landed.append(1)
            inv.store.append_log(inv._log_row(b.ref, "2030-01-10T00:00:00Z", "EX-103", "x", "Ann", PHONE,
                                              START, END, "c1", "BOOKING"))
        return refs

    monkeypatch.setattr(inv.store, "log_refs", log_refs)
    assert await inv.replay_outbox() == 2
    assert sorted(r["Booking Ref"] for r in sheets.records("Bookings")) == sorted(["CB0001", b.ref])
