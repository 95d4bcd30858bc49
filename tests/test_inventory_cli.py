"""`python agent.py inventory list|quote|book|cancel|replay [--json]` (inventory_cli.py), on both state
engines, against the Sheets stand-in (and the embedded CSV where a command changes the store): one
JSON object per command, exit 0 done, 3 refused, 4 kept pending, 2 bad usage or configuration, 1
unexpected; a short table for a person without --json. A booking is a row of the Reservations tab
(one per Ref) and a history row; nothing is written to the Equipment tab.

Called as ``inventory_cli.main(argv, env=..., out=...)`` (the same code `agent.py inventory` runs),
and once as a real subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

import inventory_cli
from tests import both_engines
from tests.conftest import ROOT, SMALL_TIMEOUTS, StateDb, booked, child_env, refs_of

# every state test on both engines (conftest's fixtures of the same names, overridden)
sheet_env, csv_env, source = both_engines.sheet_env, both_engines.csv_env, both_engines.source

FROM = (date.today() + timedelta(days=30)).isoformat()
TO = (date.today() + timedelta(days=33)).isoformat()  # four days, both ends inclusive
AFTER = (date.today() + timedelta(days=34)).isoformat()  # the day after TO
PHONE = "+1 555 123 4567"
UNIT_KEYS = {"id", "name", "category", "daily_rate", "weekly_rate", "four_week_rate", "available", "status",
             "next_free"}
LONG_TERM_END = "2030-12-31"  # data/reservations.csv: EX-102, SS-102, LF-201, CO-201 are out until then


def cli(env: dict[str, str], *argv: str) -> tuple[int, Any]:
    """Exit status and output: the parsed JSON object with --json, else the text."""
    out = io.StringIO()
    code = inventory_cli.main(list(argv), env=env, out=out)
    text = out.getvalue()
    if "--json" in argv:
        assert text.count("\n") == 1, text  # exactly one JSON object, on one line
        return code, json.loads(text)
    return code, text


def book_args(eid: str = "EX-103", name: str = "Dana Smith", number: str = PHONE, *extra: str) -> list[str]:
    return ["book", eid, "--from", FROM, "--to", TO, "--name", name, "--phone", number, *extra]


# =============================================================================================
# list


def test_list_json_every_unit_with_its_fields_for_the_dates_and_a_category_filter(sheets, sheet_env):
    code, out = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")
    assert code == 0 and out["known"] is True and len(out["units"]) == 20
    assert all(set(u) == UNIT_KEYS for u in out["units"])
    by_id = {u["id"]: u for u in out["units"]}
    assert by_id["EX-101"] == {"id": "EX-101", "name": "Kubota KX040 Mini Excavator", "category": "Excavators",
                               "daily_rate": 325.0, "weekly_rate": 1300.0, "four_week_rate": 3900.0,
                               "status": "AVAILABLE", "available": True, "next_free": FROM}
    # out on a long-term rental: not available those dates, and not free again within a year
    assert (by_id["EX-102"]["available"], by_id["EX-102"]["next_free"]) == (False, None)
    assert by_id["EX-102"]["status"] == "AVAILABLE"  # its Status allows renting: the calendar says when
    assert by_id["EX-301"] == {**by_id["EX-301"], "status": "MAINTENANCE", "available": False, "next_free": None}
    code, lifts = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--category", "Lifts", "--json")
    assert code == 0 and lifts["units"] and {u["category"] for u in lifts["units"]} == {"Lifts"}
    assert sheets.counts["read"] == 1  # the second command was served from the shared state


def test_list_answers_for_the_range_asked(sheets, sheet_env):
    """A booked unit is not available for overlapping dates (free again the day after), and is
    available for dates that do not overlap."""
    code, out = cli(sheet_env, *book_args("EX-103"), "--json")
    assert code == 0 and out["confirmed"] is True
    code, listed = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")
    ex103 = next(u for u in listed["units"] if u["id"] == "EX-103")
    assert (ex103["available"], ex103["next_free"]) == (False, AFTER)
    code, listed = cli(sheet_env, "list", "--from", TO, "--to", TO, "--json")  # its last day only
    assert next(u for u in listed["units"] if u["id"] == "EX-103")["available"] is False
    code, later = cli(sheet_env, "list", "--from", AFTER, "--to", AFTER, "--json")
    ex103 = next(u for u in later["units"] if u["id"] == "EX-103")
    assert (ex103["available"], ex103["next_free"]) == (True, AFTER)
    code, near_end = cli(sheet_env, "list", "--from", "2030-06-01", "--to", "2030-06-03", "--json")
    ex102 = next(u for u in near_end["units"] if u["id"] == "EX-102")  # the long-term rental ends that year
    assert (ex102["available"], ex102["next_free"]) == (False, "2031-01-01")
    code, after_lt = cli(sheet_env, "list", "--from", "2031-01-01", "--to", "2031-01-03", "--json")
    assert next(u for u in after_lt["units"] if u["id"] == "EX-102")["available"] is True


def test_list_unknown_when_the_sheet_is_down_and_nothing_is_stored(sheets, sheet_env):
    sheets.fail("*", 503)
    code, out = cli(dict(sheet_env, BOOKING_RETRY_BUDGET="0.5"), "list", "--from", FROM, "--to", TO, "--json")
    assert code == 0 and out == {"known": False, "units": []}  # unknown, never "no equipment"


# =============================================================================================
# quote


def test_quote_json_is_worked_out_in_code(sheets, sheet_env):
    """data/settings.csv: damage waiver 12 %, tax 8.25 %; the unit's deposit apart, refundable."""
    code, out = cli(sheet_env, "quote", "EX-101", "--from", FROM, "--to", TO, "--json")
    assert code == 0 and out == {"id": "EX-101", "days": 4, "total": "1576.12", "deposit": "500.00", "lines": [
        {"label": "4 days at $325.00", "amount": "1300.00"}, {"label": "damage waiver", "amount": "156.00"},
        {"label": "tax", "amount": "120.12"}]}
    ten = (date.fromisoformat(FROM) + timedelta(days=9)).isoformat()  # a week and three days beat two weeks
    code, out = cli(sheet_env, "quote", "ex-101", "--from", FROM, "--to", ten, "--json")
    assert code == 0 and (out["id"], out["days"], out["total"]) == ("EX-101", 10, "2758.21")
    assert [line["label"] for line in out["lines"]] == ["1 week at $1,300.00", "3 days at $325.00", "damage waiver",
                                                        "tax"]
    code, text = cli(sheet_env, "quote", "EX-101", "--from", FROM, "--to", TO)
    assert code == 0 and "total: $1576.12" in text and "refundable deposit (not in the total): $500.00" in text
    # a quote is for the dates, booked or not (a booked unit's price is still its price)
    code, out = cli(sheet_env, "quote", "EX-102", "--from", FROM, "--to", TO, "--json")
    assert code == 0 and out["total"] == "1576.12"
    assert sheets.counts["append"] == 0 and sheets.counts["read"] == 1


@pytest.mark.parametrize("args, refusal", [
    (["quote", "NOPE-1", "--from", FROM, "--to", TO], "unknown_id"),
    (["quote", "EX-101", "--from", TO, "--to", FROM], "end_before_start"),
])
def test_quote_refused_exits_3(sheets, sheet_env, args, refusal):
    code, out = cli(sheet_env, *args, "--json")
    assert code == 3 and out["refused"] == refusal and out["message"], out


# =============================================================================================
# book and replay


def test_book_json_confirmed_then_refused_for_the_same_unit(sheets, sheet_env):
    equipment_before = sheets.rows("Equipment")
    code, out = cli(sheet_env, *book_args("EX-103"), "--json")
    assert code == 0 and set(out) == {"ref", "confirmed", "id", "total"}, out
    assert out["confirmed"] is True and out["id"] == "EX-103" and out["total"] == "1576.12"
    row = booked(sheets, out["ref"])
    assert (row["Equipment ID"], row["Start"], row["End"], row["Renter Name"], row["Status"], row["Total"]) == (
        "EX-103", FROM, TO, "Dana Smith", "CONFIRMED", "1576.12")
    assert sheets.rows("Equipment") == equipment_before
    assert [(r["Booking Ref"], r["Total"]) for r in sheets.records("Bookings")] == [(out["ref"], "1576.12")]
    assert StateDb(sheet_env).outcomes() == {out["ref"]: "written"}
    code, again = cli(sheet_env, *book_args("EX-103", "Bo Lee"), "--json")
    assert code == 3 and again["refused"] == "not_available" and "EX-103" in again["message"]
    assert refs_of(sheets, "EX-103") == [out["ref"]]


def test_book_checks_overlaps_not_just_the_unit(sheets, sheet_env):
    code, first = cli(sheet_env, *book_args("EX-201"), "--json")
    assert code == 0 and first["confirmed"] is True
    overlapping = ["book", "EX-201", "--from", TO, "--to", AFTER, "--name", "Bo Lee", "--phone", PHONE, "--json"]
    code, out = cli(sheet_env, *overlapping)
    assert code == 3 and out["refused"] == "not_available", out
    assert f"free again for as many days from {date.fromisoformat(AFTER):%A %B}" in out["message"], out
    assert f"({AFTER})" in out["message"], out  # the next free date, for a person and a script
    code, later = cli(sheet_env, "book", "EX-201", "--from", AFTER, "--to", AFTER, "--name", "Bo Lee",
                      "--phone", PHONE, "--json")
    assert code == 0 and later["confirmed"] is True  # back to back: both booked
    assert refs_of(sheets, "EX-201") == [first["ref"], later["ref"]]


@pytest.mark.parametrize("args, refusal", [
    (book_args("EX-102"), "not_available"),  # out on a long-term rental those dates
    (book_args("EX-301"), "not_available"),  # MAINTENANCE
    (book_args("NOPE-1"), "unknown_id"),
    (book_args(number="call me maybe"), "bad_phone"),
    (book_args(name="   "), "bad_name"),
    (["book", "EX-101", "--from", (date.today() - timedelta(days=2)).isoformat(), "--to", TO,
      "--name", "Ann", "--phone", PHONE], "past_date"),
])
def test_book_refused_exits_3(sheets, sheet_env, args, refusal):
    reservations = sheets.rows("Reservations")
    code, out = cli(sheet_env, *args, "--json")
    assert code == 3 and out["refused"] == refusal and out["message"], out
    assert sheets.rows("Bookings") == [] and sheets.rows("Reservations") == reservations
    assert sheets.counts["append"] == 0 and sheets.counts["write"] == 0 and sheets.counts["filter_write"] == 0


def test_book_kept_pending_exits_4_and_replay_writes_it_once(sheets, sheet_env):
    cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")  # the inventory was read once
    sheets.fail("append", 403, message="The caller does not have permission")  # Sheets refuses writes
    code, out = cli(sheet_env, *book_args("EX-201"), "--json")
    assert code == 4 and out["confirmed"] is False and out["id"] == "EX-201", out
    assert refs_of(sheets, "EX-201") == []
    assert StateDb(sheet_env).outcomes() == {out["ref"]: None}  # recorded: not lost
    code, listed = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")
    ex201 = next(u for u in listed["units"] if u["id"] == "EX-201")
    assert (ex201["available"], ex201["next_free"]) == (False, AFTER)  # its dates are held meanwhile
    code, replayed = cli(sheet_env, "replay", "--json")
    assert code == 0 and replayed == {"settled": 0}  # still refused: kept
    sheets.clear_faults()
    code, replayed = cli(sheet_env, "replay", "--json")
    assert code == 0 and replayed == {"settled": 1}
    row = booked(sheets, out["ref"])
    assert (row["Equipment ID"], row["Start"], row["End"], row["Status"]) == ("EX-201", FROM, TO, "CONFIRMED")
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [out["ref"]]
    assert cli(sheet_env, "replay", "--json") == (0, {"settled": 0})
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [out["ref"]]
    assert refs_of(sheets, "EX-201") == [out["ref"]]


# =============================================================================================
# cancel


def test_cancel_json_with_the_booking_phone(source):
    env = source.env
    code, out = cli(env, *book_args("EX-103"), "--json")
    assert code == 0 and out["confirmed"] is True
    code, wrong = cli(env, "cancel", out["ref"], "--phone", "+1 555 999 0000", "--json")
    assert code == 3 and wrong["refused"] == "not_yours" and wrong["message"], wrong
    assert source.booking(out["ref"])["Status"] == "CONFIRMED"
    code, gone = cli(env, "cancel", out["ref"].lower(), "--phone", "(555) 123-4567", "--json")  # as typed by staff
    assert code == 0 and gone["cancelled"] is True and gone["ref"] == out["ref"], gone
    row = source.booking(out["ref"])
    assert (row["Status"], row["Start"], row["End"]) == ("CANCELLED", FROM, TO)
    assert [(r["Booking Ref"], r["Kind"]) for r in source.log()] == [(out["ref"], "BOOKING"),
                                                                       (out["ref"], "CANCELLED")]
    code, listed = cli(env, "list", "--from", FROM, "--to", TO, "--json")
    assert next(u for u in listed["units"] if u["id"] == "EX-103")["available"] is True  # free again
    code, again = cli(env, "cancel", out["ref"], "--phone", PHONE, "--json")
    assert code == 3 and again["refused"] == "already_cancelled"
    code, none = cli(env, "cancel", "ZZZZZZ", "--phone", PHONE, "--json")
    assert code == 3 and none["refused"] == "no_such_booking"
    assert len(source.log()) == 2 and source.refs_of("EX-103") == [out["ref"]]


def test_cancel_refused_once_the_booking_has_started(source):
    """Staff typed a rental that began yesterday: a caller (or a script) cannot cancel it any more."""
    yesterday, soon = date.today() - timedelta(days=1), date.today() + timedelta(days=3)
    source.add_reservation("STRT22", "EX-201", yesterday.isoformat(), soon.isoformat(), "Ann Lee", PHONE)
    code, out = cli(source.env, "cancel", "STRT22", "--phone", PHONE, "--json")
    assert code == 3 and out["refused"] == "already_started" and out["message"], out
    assert source.booking("STRT22")["Status"] == "CONFIRMED" and source.log() == []


# =============================================================================================
# bad usage, bad configuration, unexpected


@pytest.mark.parametrize("argv, words", [
    ([], "command"),
    (["frobnicate"], "frobnicate"),
    (["list"], "--from"),
    (["list", "--from", "2031-13-01", "--to", TO], "not a date"),
    (["list", "--from", TO, "--to", FROM], "--to is before --from"),
    (["book", "EX-101", "--from", FROM, "--to", TO], "--name"),
    (["replay", "--force"], "--force"),
])
def test_bad_usage_exits_2(sheets, sheet_env, argv, words):
    code, out = cli(sheet_env, *argv, "--json")
    assert code == 2 and out["error"].startswith("usage: ") and words in out["error"], out
    assert sheets.counts["read"] == 0  # nothing was asked of the sheet


@pytest.mark.parametrize("bad, variable", [
    ({"DATABASE_URL": "mysql://shop@db/rentals"}, "DATABASE_URL"),
    ({"DATABASE_TIMEOUT": "soon"}, "DATABASE_TIMEOUT"),
    ({"GOOGLE_SHEET_ID": "abcdefghij0123456789", "GOOGLE_SERVICE_ACCOUNT_JSON": ""}, "GOOGLE_SHEET_ID"),
    ({"EQUIPMENT_CSV": "/nonexistent/equipment.csv"}, "EQUIPMENT_CSV"),
])
def test_bad_configuration_exits_2_naming_the_variable(tmp_path, bad, variable):
    env = {"STATE_DIR": str(tmp_path / "state"), **bad}
    code, out = cli(env, "list", "--from", FROM, "--to", TO, "--json")
    assert code == 2 and out["error"] == "configuration problem", out
    assert any(variable in p for p in out["problems"]), out
    assert "mysql://shop@db" not in json.dumps(out)  # a URL may hold a password: never echoed


def test_unexpected_failure_exits_1_with_one_json_object(csv_env):
    state = Path(csv_env["STATE_DIR"])
    state.mkdir(parents=True)
    (state / "locks").write_text("not a folder")  # a STATE_DIR broken by hand
    code, out = cli(csv_env, "list", "--from", FROM, "--to", TO, "--json")
    assert code == 1 and out["error"].startswith("unexpected: FileExistsError"), out


# =============================================================================================
# for a person: a short table


def test_without_json_a_short_table_for_a_person(sheets, sheet_env):
    _, listed = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--category", "Excavators", "--json")
    code, text = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--category", "Excavators")
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "Name", "Category", "Day", "Week"]
    assert [x.split()[0] for x in lines[1:]] == [u["id"] for u in listed["units"]] and len(lines) > 3
    ex101 = next(x for x in lines if x.startswith("EX-101"))
    assert "Kubota KX040 Mini Excavator" in ex101 and "$325" in ex101 and "$1,300" in ex101 and ex101.endswith("free")
    assert next(x for x in lines if x.startswith("EX-102")).endswith("booked")  # not free within a year
    code, text = cli(sheet_env, "list", "--from", "2030-06-01", "--to", "2030-06-03", "--category", "Excavators")
    assert next(x for x in text.splitlines() if x.startswith("EX-102")).endswith("free from 2031-01-01")
    assert next(x for x in lines if x.startswith("EX-301")).endswith("maintenance")
    code, text = cli(sheet_env, *book_args("EX-101"))
    assert code == 0 and text.startswith("Booked EX-101: reference ") and text.rstrip().endswith(", confirmed, total $1576.12.")
    code, text = cli(sheet_env, *book_args("EX-101", "Bo"))
    assert code == 3 and text.startswith("Refused (not_available): ")
    sheets.fail("append", 403)
    code, text = cli(sheet_env, *book_args("EX-103"))
    assert code == 4 and "RECORDED, not yet written to the sheet (pending)" in text
    code, text = cli(sheet_env, "replay")
    assert code == 0 and text.strip() == "Outbox: 0 entries settled."
    sheets.clear_faults()
    code, text = cli(sheet_env, "replay")
    assert code == 0 and text.strip() == "Outbox: 1 entry settled."
    code, text = cli(sheet_env, "list", "--from", TO, "--to", FROM)
    assert code == 2 and text.strip() == "usage: --to is before --from"
    code, text = cli({"STATE_DIR": sheet_env["STATE_DIR"], "DATABASE_URL": "nope"}, "replay")
    assert code == 2 and text.splitlines()[0] == "configuration problem"
    assert text.splitlines()[1].startswith("  - DATABASE_URL")


def test_sheet_unknown_table_says_so(sheets, sheet_env):
    sheets.fail("*", 503)
    code, text = cli(dict(sheet_env, BOOKING_RETRY_BUDGET="0.5"), "list", "--from", FROM, "--to", TO)
    assert code == 0 and text.startswith("The inventory is unknown right now")


# =============================================================================================
# a real process


def test_agent_py_inventory_as_a_real_process(sheets, tmp_path):
    """Once, as staff would run it (agent.py imports the whole worker: one run is enough): the
    JSON object on stdout and the exit status pass through, here 4 (kept pending)."""
    env = {"GOOGLE_SHEET_ID": sheets.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
           "GOOGLE_SHEETS_API_URL": sheets.url, "STATE_DIR": str(tmp_path / "state"), **SMALL_TIMEOUTS}
    sheets.fail("append", 403)
    p = subprocess.run([sys.executable, "agent.py", "inventory", *book_args("EX-103"), "--json"], cwd=str(ROOT),
                       env=child_env(env), capture_output=True, text=True, timeout=180)
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, (p.returncode, p.stdout, p.stderr[-3000:])
    out = json.loads(lines[0])
    assert p.returncode == 4 and out["confirmed"] is False and out["id"] == "EX-103", (out, p.stderr[-3000:])
    assert StateDb(env).outcomes() == {out["ref"]: None}
    assert refs_of(sheets, "EX-103") == []
