"""`python agent.py inventory list|book|replay [--json]` (inventory_cli.py), on both state engines,
against the Sheets stand-in: one JSON object per command, exit 0 done, 3 refused, 4 kept pending,
2 bad usage or configuration, 1 unexpected; a short table for a person without --json.

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
from tests.conftest import ROOT, SMALL_TIMEOUTS, StateDb, child_env

FROM = (date.today() + timedelta(days=30)).isoformat()
TO = (date.today() + timedelta(days=33)).isoformat()
PHONE = "+1 555 123 4567"
UNIT_KEYS = {"id", "name", "category", "daily_rate", "weekly_rate", "available", "status"}


@pytest.fixture
def sheet_env(sheet_env: dict[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    """The sheet on SQLite (STATE_DIR) and on PostgreSQL (DATABASE_URL): the test runs on both."""
    return {**sheet_env, **engine_env}


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


def test_list_json_every_unit_with_its_fields_and_a_category_filter(sheets, sheet_env):
    code, out = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")
    assert code == 0 and out["known"] is True and len(out["units"]) == 20
    assert all(set(u) == UNIT_KEYS for u in out["units"])
    by_id = {u["id"]: u for u in out["units"]}
    assert by_id["EX-101"] == {"id": "EX-101", "name": "Kubota KX040 Mini Excavator", "category": "Excavators",
                               "daily_rate": 325.0, "weekly_rate": 1300.0, "status": "AVAILABLE", "available": True}
    assert by_id["EX-102"]["available"] is False and by_id["EX-301"]["status"] == "MAINTENANCE"
    code, lifts = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--category", "Lifts", "--json")
    assert code == 0 and lifts["units"] and {u["category"] for u in lifts["units"]} == {"Lifts"}
    assert sheets.counts["read"] == 1  # the second command was served from the shared state


def test_list_unknown_when_the_sheet_is_down_and_nothing_is_stored(sheets, sheet_env):
    sheets.fail("*", 503)
    code, out = cli(dict(sheet_env, BOOKING_RETRY_BUDGET="0.5"), "list", "--from", FROM, "--to", TO, "--json")
    assert code == 0 and out == {"known": False, "units": []}  # unknown, never "no equipment"


# =============================================================================================
# book and replay


def test_book_json_confirmed_then_refused_for_the_same_unit(sheets, sheet_env):
    code, out = cli(sheet_env, *book_args("EX-103"), "--json")
    assert code == 0 and set(out) == {"ref", "confirmed", "id"} and out["confirmed"] is True and out["id"] == "EX-103"
    row = sheets.record("Equipment", "EX-103")
    assert (row["Status"], row["Booking Ref"], row["Renter Name"]) == ("RENTED", out["ref"], "Dana Smith")
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [out["ref"]]
    assert StateDb(sheet_env).outcomes() == {out["ref"]: "written"}
    code, again = cli(sheet_env, *book_args("EX-103", "Bo Lee"), "--json")
    assert code == 3 and again["refused"] == "not_available" and "EX-103" in again["message"]


@pytest.mark.parametrize("args, refusal", [
    (book_args("EX-102"), "not_available"),  # RENTED
    (book_args("NOPE-1"), "unknown_id"),
    (book_args(number="call me maybe"), "bad_phone"),
    (book_args(name="   "), "bad_name"),
    (["book", "EX-101", "--from", (date.today() - timedelta(days=2)).isoformat(), "--to", TO,
      "--name", "Ann", "--phone", PHONE], "past_date"),
])
def test_book_refused_exits_3(sheets, sheet_env, args, refusal):
    code, out = cli(sheet_env, *args, "--json")
    assert code == 3 and out["refused"] == refusal and out["message"], out
    assert sheets.rows("Bookings") == [] and sheets.counts["write"] == 0


def test_book_kept_pending_exits_4_and_replay_writes_it_once(sheets, sheet_env):
    cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")  # the inventory was read once
    sheets.fail("write", 403, message="The caller does not have permission")  # Sheets refuses writes
    code, out = cli(sheet_env, *book_args("EX-201"), "--json")
    assert code == 4 and out["confirmed"] is False and out["id"] == "EX-201", out
    assert sheets.record("Equipment", "EX-201")["Status"] == "AVAILABLE"
    assert StateDb(sheet_env).outcomes() == {out["ref"]: None}  # recorded: not lost
    code, listed = cli(sheet_env, "list", "--from", FROM, "--to", TO, "--json")
    assert next(u for u in listed["units"] if u["id"] == "EX-201")["status"] == "PENDING"
    code, replayed = cli(sheet_env, "replay", "--json")
    assert code == 0 and replayed == {"settled": 0}  # still refused: kept
    sheets.clear_faults()
    code, replayed = cli(sheet_env, "replay", "--json")
    assert code == 0 and replayed == {"settled": 1}
    row = sheets.record("Equipment", "EX-201")
    assert (row["Status"], row["Booking Ref"]) == ("RENTED", out["ref"])
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [out["ref"]]
    assert cli(sheet_env, "replay", "--json") == (0, {"settled": 0})
    assert [r["Booking Ref"] for r in sheets.records("Bookings")] == [out["ref"]]


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
    assert next(x for x in lines if x.startswith("EX-102")).endswith("rented")
    code, text = cli(sheet_env, *book_args("EX-101"))
    assert code == 0 and text.startswith("Booked EX-101: reference ") and text.rstrip().endswith(", confirmed.")
    code, text = cli(sheet_env, *book_args("EX-101", "Bo"))
    assert code == 3 and text.startswith("Refused (not_available): ")
    sheets.fail("write", 403)
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
    sheets.fail("write", 403)
    p = subprocess.run([sys.executable, "agent.py", "inventory", *book_args("EX-103"), "--json"], cwd=str(ROOT),
                       env=child_env(env), capture_output=True, text=True, timeout=180)
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, (p.returncode, p.stdout, p.stderr[-3000:])
    out = json.loads(lines[0])
    assert p.returncode == 4 and out["confirmed"] is False and out["id"] == "EX-103", (out, p.stderr[-3000:])
    assert StateDb(env).outcomes() == {out["ref"]: None}
    assert sheets.record("Equipment", "EX-103")["Status"] == "AVAILABLE"
