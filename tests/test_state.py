"""The shared state (inventory/state.py and its engines) on both engines: SQLite in STATE_DIR and a
real PostgreSQL (DATABASE_URL), plus the PostgreSQL-down path (SharedState: this machine's SQLite
until PostgreSQL answers again) against a PostgreSQL server of its own that the tests stop and start.

What a crash, a full disk, another version or a clock step leaves behind is made for real: a
SIGKILLed process, a process whose file writes fail (RLIMIT_FSIZE), old STATE_DIR files in the old
format, rows changed directly in the database (tests/conftest.py StateDb). Nothing of ours is
replaced by a stand-in; Google Sheets is the local stand-in (tests/fakes/sheets_server.py).

A booking is a row appended to the Reservations tab (one per Ref) plus a history row (Bookings):
that is what these tests look for, never a unit's Status cell (nothing writes the Equipment tab)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import pytest

import equipment
import prompts
import settings
from inventory import legacy
from inventory.booking import UNCERTAIN_WAIT
from inventory.engines import open_state
from inventory.files import Locks
from inventory.outbox import MAX_ATTEMPTS
from inventory.sqlite_state import SqliteState
from inventory.state import LockTimeout
from inventory.table import LOG_HEADER
from inventory.reservations import RESERVATION_HEADER
from tests import both_engines
from tests.conftest import (
    ROOT, SMALL_TIMEOUTS, Source, StateDb, booked, child_env, child_result, equipment_rows, loaded, old_sheet_rows,
    pending_refs, refs_of, wait_until,
)
from tests.pg_server import PgServer

# every state test on both engines (conftest's fixtures of the same names, overridden)
sheet_env, csv_env, source = both_engines.sheet_env, both_engines.csv_env, both_engines.source

TODAY = date(2030, 1, 10)
START, END = "2030-01-12", "2030-01-15"
PHONE = "+1 555 123 4567"


@pytest.fixture
def state_env(engine_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {"STATE_DIR": str(tmp_path / "state"), **engine_env}


def open_env(env: dict[str, str]) -> Any:
    """The State a process configured by `env` uses (what inventory_from_env opens)."""
    cfg = settings.inventory_settings(env)
    return open_state(cfg, Locks(cfg.state_dir))


def request(equipment_id: str, name: str = "Ann") -> equipment.BookingRequest:
    return equipment.parse_booking(equipment_id, name, PHONE, START, END, "c1", today=TODAY)


def log_refs(sheets: Any) -> list[str]:
    return [r["Booking Ref"] for r in sheets.records("Bookings")]


def free(snap: Any, equipment_id: str, start: str = START, end: str = END) -> bool:
    return snap.free(snap.find(equipment_id), date.fromisoformat(start), date.fromisoformat(end))


def held(snap: Any, ref: str) -> bool:
    """The snapshot holds the dates of a booking still pending in the outbox."""
    return any(r.ref == ref and r.status == "PENDING" for r in snap.reservations)


# -- the old STATE_DIR files, exactly as the previous version wrote them (5858035:equipment.py) ----

UNIT_NAMES = {r[0]: r[1] for r in equipment_rows()[1:]}


def old_book(ref: str, eid: str, name: str = "Ann", at: float | None = None) -> dict[str, Any]:
    """_book_entry: the write-ahead entry of a booking."""
    return {"op": "book", "ref": ref, "equipment_id": eid, "equipment_name": UNIT_NAMES[eid], "name": name,
            "phone": PHONE, "start": "2031-02-02", "end": "2031-02-05", "call_id": f"call-{ref}",
            "at": at or time.time() - 600, "booked_at": "2031-01-30T09:00:00+00:00"}


def old_row(op: str, ref: str, kind: str, name: str, eid: str = "", note: str = "") -> dict[str, Any]:
    """A "callback" entry, or the "log" entry of a booking written but not logged (_log_row order)."""
    row = [ref, "2031-01-30T09:00:00+00:00", eid, UNIT_NAMES.get(eid, ""), name, PHONE,
           "2031-02-02" if eid else "", "2031-02-05" if eid else "", f"call-{ref}", kind, note]
    return {"op": op, "ref": ref, "row": row, "at": time.time() - 500}


def old_settled(ref: str, result: str = "written") -> dict[str, Any]:
    return {"op": "settled", "ref": ref, "result": result, "at": time.time() - 400}


def old_attempt(ref: str, count: int) -> dict[str, Any]:
    return {"op": "attempt", "ref": ref, "count": count, "reason": "Google Sheets refused the request (HTTP 403)",
            "at": time.time() - 300}


def old_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"  # _outbox_append


def old_snapshot(origin: str, read_at: float, statuses: dict[str, str]) -> dict[str, Any]:
    """_write_snapshot: units with overrides and outbox holds baked in."""
    header, *rows = equipment_rows()
    col = {h: i for i, h in enumerate(header)}
    units = [{"id": r[0], "name": r[1], "status": statuses.get(r[0], r[col["Status"]].upper()),
              "category": r[col["Category"]], "daily_rate": float(r[col["Daily Rate"]]),
              "weekly_rate": float(r[col["Weekly Rate"]]), "description": r[col["Description"]]} for r in rows]
    return {"version": 1, "origin": origin, "source": "sheet", "read_at": read_at,
            "overrides": {"ex-103": {"status": "RENTED", "at": read_at}}, "units": units}


# =============================================================================================
# the State itself, on both engines


def test_outbox_rows_are_unique_by_ref_counted_and_settled_once(state_env):
    st = open_env(state_env)
    st.add("REF001", "book", "ex-101", {"equipment_id": "EX-101", "name": "Ann"})
    st.add("REF001", "book", "ex-103", {"equipment_id": "EX-103", "name": "Bo"})  # the same ref again
    st.add("CB0001", "callback", "", {"row": ["CB0001"]})
    assert [(r.ref, r.kind, r.payload.get("name")) for r in st.pending()] == [
        ("REF001", "book", "Ann"), ("CB0001", "callback", None)]
    assert st.held_units() == {"ex-101"}
    assert (st.attempt("REF001", "x"), st.attempt("REF001", "y"), st.attempt("NOPE00", "z")) == (1, 2, 0)
    st.mark_uncertain("CB0001", 1234.5)
    assert {r.ref: (r.attempts, r.uncertain_at) for r in st.pending()} == {"REF001": (2, None), "CB0001": (0, 1234.5)}
    st.settle("REF001", "written")
    st.settle("REF001", "failed")  # a second settle (a racing replay) does not rewrite history
    assert st.is_settled("REF001") and not st.is_settled("CB0001")
    assert [r.ref for r in st.pending()] == ["CB0001"] and st.held_units() == set()
    assert StateDb(state_env).outcomes() == {"REF001": "written", "CB0001": None}
    st.close()


HOLDER = """
import os, sys, time
import settings
from inventory.engines import open_state
from inventory.files import Locks

cfg = settings.inventory_settings(os.environ)
st = open_state(cfg, Locks(cfg.state_dir))
with st.unit_lock("ex-101", 5), st.refresh_turn("origin") as refresh, st.replay_turn() as replay:
    print("held", refresh, replay, flush=True)
    time.sleep(120)
"""


def test_locks_exclude_other_processes_and_die_with_their_holder(state_env):
    """Per-unit booking locks, the single-flight refresh and the replay turn, across processes
    (file locks; PostgreSQL advisory locks): no TTL, the OS or the server frees them on SIGKILL."""
    st = open_env(state_env)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=str(ROOT), env=child_env(state_env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().split() == ["held", "True", "True"], \
            holder.stderr.read() if holder.poll() is not None else "holder not ready"
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            with st.unit_lock("ex-101", 0.3):
                pass
        assert time.monotonic() - t0 < 2
        with st.unit_lock_if_free("ex-101") as mine:
            assert not mine
        with st.refresh_turn("origin") as mine:
            assert not mine
        with st.replay_turn() as mine:
            assert not mine
        t0 = time.monotonic()
        with st.unit_lock("ex-103", 1), st.unit_lock_if_free("ex-201") as mine:
            assert mine and time.monotonic() - t0 < 1  # other units are not held
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    with st.unit_lock("ex-101", 5):
        assert time.monotonic() - t0 < 2  # freed with its dead holder, not after a TTL
        with st.unit_lock_if_free("ex-101") as again:
            assert not again  # and held again by us
    with st.refresh_turn("origin") as refresh, st.replay_turn() as replay:
        assert refresh and replay
    st.close()


# =============================================================================================
# torn tail, disk full


async def test_torn_old_outbox_is_imported_keeping_every_complete_entry_and_later_bookings(sheets, sheet_env):
    """The old outbox.jsonl ends in a half-written line (the disk filled up), and the old version
    appended its next entry onto a torn line: every complete entry is imported, the torn ones
    (never completely written) are not, and bookings kept after the upgrade go to the database,
    never onto that file."""
    state_dir = Path(sheet_env["STATE_DIR"])
    state_dir.mkdir(parents=True)
    torn = old_line(old_book("TORN22", "SS-101"))[:57]
    glued = old_book("GLUED2", "EX-201", "Cy")  # the entry the old version appended onto the torn line
    half = old_line(old_book("HALF22", "LF-101"))[:40]  # the last line, cut by the full disk
    (state_dir / legacy.OLD_OUTBOX).write_text(
        old_line(old_book("KEPT22", "EX-101")) + old_line(old_row("callback", "CB2222", "CALLBACK", "Bo"))
        + "[1, 2]\n" + old_line({"op": "book", "no": "ref"}) + torn + old_line(glued) + half, encoding="utf-8")
    inv = equipment.inventory_from_env(sheet_env)
    assert pending_refs(sheet_env) == ["KEPT22", "CB2222", "GLUED2"]
    assert not (state_dir / legacy.OLD_OUTBOX).exists()
    assert len(list(state_dir.glob(f"{legacy.OLD_OUTBOX}.imported-*"))) == 1
    # a booking kept after the upgrade (Sheets refuses writes): in the database with the others
    sheets.fail("append", 503)
    await loaded(inv)
    later = await inv.book(request("EX-103", "Dee"))
    assert not later.confirmed
    assert pending_refs(sheet_env) == ["KEPT22", "CB2222", "GLUED2", later.ref]
    assert not (state_dir / legacy.OLD_OUTBOX).exists()  # nothing appended to an old file
    again = equipment.inventory_from_env(sheet_env)  # a later start imports nothing twice
    assert pending_refs(sheet_env) == ["KEPT22", "CB2222", "GLUED2", later.ref]
    sheets.clear_faults()
    assert await again.replay_outbox() == 4
    for eid, ref in (("EX-101", "KEPT22"), ("EX-201", "GLUED2"), ("EX-103", later.ref)):
        assert refs_of(sheets, eid) == [ref] and booked(sheets, ref)["Status"] == "CONFIRMED"
    assert booked(sheets, "GLUED2")["Renter Name"] == "Cy"
    assert sorted(log_refs(sheets)) == sorted(["KEPT22", "CB2222", "GLUED2", later.ref])
    assert refs_of(sheets, "SS-101") == [] and refs_of(sheets, "LF-101") == []  # the torn ones: never half-written
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 0
    assert len(log_refs(sheets)) == 4


@pytest.mark.parametrize("store", ["sheet", "csv"])
async def test_full_disk_never_reports_a_booking_recorded_that_is_not(request, engine_env, run_child, store):
    """Bookings in processes whose file writes all fail (RLIMIT_FSIZE=0 once the state exists).
    While the sheet takes the write, the booking is written there and confirmed (recorded in
    the sheet itself). When the store fails too: on SQLite it can be kept nowhere, and the caller
    is told so (BookingNotRecorded), never "recorded"; on PostgreSQL the outbox is not on this
    disk, so it is kept there. Entries recorded before stay intact and are replayed."""
    if store == "sheet":
        sheets = request.getfixturevalue("sheets")
        src = Source(request.getfixturevalue("sheet_env"), sheets)
    else:  # the CSV is on the full disk too
        sheets = None
        src = Source(request.getfixturevalue("csv_env"), None)
    env = dict(src.env, BOOKING_RETRY_BUDGET="1")
    inv = equipment.inventory_from_env(env)
    snap = await loaded(inv)
    before = inv.booker.keep(request_for("EX-101"), snap.find("EX-101"), RuntimeError("earlier outage"), ref="EARLY1")
    db = StateDb(env)
    engine = db.engine

    def book_on_full_disk(eid: str) -> dict[str, Any]:
        return child_result(run_child(env, "book", eid, "Dee", PHONE, "2031-01-02", "2031-01-03",
                                      CHILD_FSIZE_LIMIT="0", CHILD_CLOSE_TIMEOUT="0"))

    # other processes of this worker have the database open (as on a live machine): its WAL and
    # shared-memory files exist, so a process on the full disk can still read it
    conn = sqlite3.connect(StateDb(env, local=True).path)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    try:
        written = book_on_full_disk("EX-201") if sheets is not None else None
        if sheets is not None:
            sheets.forbid()  # and now the sheet refuses the write (un-shared)
        out = book_on_full_disk("EX-103")
    finally:
        conn.close()
    if written is not None:
        assert written["ok"] is True and written["confirmed"] is True, written
        assert src.booking(written["ref"])["Equipment ID"] == "EX-201"
        assert src.log_refs() == [written["ref"]]
    if engine == "sqlite":
        assert out["ok"] is False and "not_recorded" in out, out
        assert "outbox" in out["not_recorded"]
        if sheets is not None:
            assert "not shared with" in out["not_recorded"]
        assert pending_refs(env) == [before.ref]
        assert db.query("PRAGMA integrity_check") == [("ok",)]
    else:
        assert out["ok"] is True and out["confirmed"] is False, out
        assert pending_refs(env) == [before.ref, out["ref"]]
    assert src.refs_of("EX-103") == []
    assert src.log_refs() == ([written["ref"]] if written else [])
    # the earlier entry is intact, and written once the store is back
    entry = next(e for e in db.outbox() if e["ref"] == before.ref)
    assert (entry["payload"]["equipment_id"], entry["payload"]["name"], entry["payload"]["phone"]) == (
        "EX-101", "Ann", PHONE)
    if sheets is not None:
        sheets.clear_faults()
    waiting = len(pending_refs(env))
    assert await equipment.inventory_from_env(env).replay_outbox() == waiting
    assert src.refs_of("EX-101") == [before.ref]
    assert src.refs_of("EX-103") == ([out["ref"]] if engine == "postgres" else [])
    assert pending_refs(env) == []
    assert sorted(src.log_refs()) == sorted([before.ref] + [b["ref"] for b in (written, out) if b and b["ok"]])


def request_for(equipment_id: str) -> equipment.BookingRequest:
    return equipment.BookingRequest(equipment_id, "Ann", PHONE, date(2031, 1, 2), date(2031, 1, 5), "c0")


# =============================================================================================
# a Bookings append that lands after the client gave up


@pytest.mark.parametrize("what, late", [("booking", "lands"), ("callback", "lands"), ("booking", "lost")])
async def test_late_bookings_append_leaves_exactly_one_row(sheets, sheet_env, what, late):
    """An append whose answer never came may still land: it is not sent again until
    UNCERTAIN_WAIT has passed and the refs were read again. Whether it landed late or was lost,
    the Bookings tab ends with exactly one row for the ref."""
    sheets.set_rows("Bookings", [list(LOG_HEADER)])
    env = dict(sheet_env, SHEETS_HTTP_TIMEOUT="1,1", BOOKING_RETRY_BUDGET="3")
    inv = equipment.inventory_from_env(env)
    await loaded(inv)
    if late == "lands":  # (the history append: a booking's reservation row goes first, and answers)
        sheets.delay("append", 3.0, times=1, when="Bookings")  # applied 3 s after it arrived; the client waits 1 s
    else:
        sheets.reset("append", times=1, when="Bookings")  # the connection drops: no answer, never applied
    if what == "booking":
        b = await inv.book(request("EX-103"))
        ref = b.ref
        assert b.confirmed and refs_of(sheets, "EX-103") == [ref]
    else:
        ref = await inv.record_callback(equipment.parse_callback("Ann", PHONE, "call me back", "c1"))
    assert log_refs(sheets) == []  # the late one has not landed yet
    db = StateDb(env)
    assert [(e["ref"], e["outcome"]) for e in db.outbox()] == [(ref, None)]
    assert db.outbox()[0]["uncertain_at"] is not None
    appends = sheets.counts["append"]
    # replays while it may still land: nothing sent
    assert await inv.replay_outbox() == 0
    assert await equipment.inventory_from_env(env).replay_outbox() == 0
    if late == "lands":
        assert await wait_until(lambda: log_refs(sheets) == [ref], timeout=10)
    assert await equipment.inventory_from_env(env).replay_outbox() == 0  # still within UNCERTAIN_WAIT
    assert sheets.counts["append"] == appends and pending_refs(env) == [ref]
    # UNCERTAIN_WAIT has passed (moved back in the database, not slept through)
    db.query("UPDATE {outbox} SET uncertain_at = uncertain_at - ? WHERE ref = ?", (UNCERTAIN_WAIT + 1, ref))
    assert await equipment.inventory_from_env(env).replay_outbox() == 1
    assert log_refs(sheets) == [ref]  # exactly one, whichever way the first one went
    assert sheets.counts["append"] == appends + (1 if late == "lost" else 0)
    assert await equipment.inventory_from_env(env).replay_outbox() == 0 and log_refs(sheets) == [ref]
    if what == "booking":  # and its reservation row was never sent again
        assert refs_of(sheets, "EX-103") == [ref]
    expected = {"booking": "already", "callback": "written"}[what]
    assert db.outcomes() == {ref: expected}


# =============================================================================================
# what is read back is validated: bad state costs one refresh


def _bad_snapshot(db: StateDb, inv: equipment.CachedInventory, bad: str) -> None:
    now = time.time()
    stored = inv.state.snapshot(inv.store.origin)
    data = stored.data
    units = data["units"]

    def put(value: Any) -> None:
        db.query("UPDATE {snapshot} SET data = ?", (value if isinstance(value, str) else json.dumps(value),))

    if bad == "read_at_in_the_future":  # written before the clock stepped back a day
        inv.state.save_snapshot(inv.store.origin, data, now + 86400, now + 86400)
    elif bad == "read_at_not_a_number":  # (PostgreSQL's column only takes numbers: NaN)
        db.query("UPDATE {snapshot} SET read_at = ?", ("soon",) if db.engine == "sqlite" else (float("nan"),))
    elif bad == "units_not_a_list":
        put({**data, "units": {u["id"]: u["status"] for u in units}})
    elif bad == "data_not_json":
        put("{'v': 2, 'units': [{'id': 'EX-101'")
    elif bad == "data_not_an_object":  # the previous version kept the list of units alone
        put(units)
    elif bad == "unit_name_not_text":
        put({**data, "units": [{**u, "name": 7} for u in units]})
    elif bad == "rates_as_text":  # another version writing "325" for 325.0
        put({**data, "units": [{**u, "daily_rate": str(u["daily_rate"])} for u in units]})
    elif bad == "reservation_dates_as_text":  # another version writing ISO dates for day numbers
        rows = data["reservations"]  # (a list, or the same list as JSON text)
        listed = json.loads(rows) if isinstance(rows, str) else rows
        as_text = [[r[0], r[1], "2026-01-05", "2030-12-31", *r[4:]] for r in listed]
        put({**data, "reservations": json.dumps(as_text) if isinstance(rows, str) else as_text})
    elif bad == "busy_dates_as_text":  # the same, in the by-unit index of what is taken when (if kept)
        if "busy" in data:
            put({**data, "busy": {k: [["2026-01-05", "2030-12-31", *e[2:]] for e in v]
                                  for k, v in data["busy"].items()}})
        else:
            put({**data, "reservations": [[r[0], r[1], str(r[2]), str(r[3]), *r[4:]] for r in data["reservations"]]})
    elif bad == "another_format":
        put({**data, "v": 99})
    elif bad == "policy_missing":
        put({k: v for k, v in data.items() if k != "policy"})
    else:
        raise AssertionError(bad)


@pytest.mark.parametrize("bad", [
    "read_at_in_the_future", "read_at_not_a_number", "units_not_a_list", "data_not_json", "data_not_an_object",
    "unit_name_not_text", "rates_as_text", "busy_dates_as_text", "another_format", "policy_missing",
    "reservation_dates_as_text",
])
async def test_bad_stored_snapshot_costs_one_refresh_never_a_stuck_unknown(sheets, sheet_env, bad):
    inv = equipment.inventory_from_env(sheet_env)
    await loaded(inv)
    sheets.set_cell("Equipment", "EX-103", "Status", "MAINTENANCE")  # the sheet changed since
    sheets.append_row("Reservations", {"Ref": "NEW001", "Equipment ID": "EX-101", "Start": START, "End": END,
                                       "Status": "CONFIRMED"})
    _bad_snapshot(StateDb(sheet_env), inv, bad)
    reads = sheets.counts["read"]
    call = equipment.inventory_from_env(sheet_env)  # the next call
    first = await loaded(call)
    assert first.known  # the stale copy (future read_at) or the refresh it waited for: never unknown
    assert sheets.counts["read"] == reads + 1  # one refresh, started by that call
    stored = call.state.snapshot(call.store.origin)
    assert stored is not None and time.time() - 10 < stored.read_at <= time.time()
    for _ in range(3):  # and then served from the state again, within the TTL: no more reads
        snap = await loaded(equipment.inventory_from_env(sheet_env))
        assert snap.known and snap.find("EX-103").status == "MAINTENANCE" and 0 <= snap.age < 10
        assert not free(snap, "EX-101") and not free(snap, "EX-102") and snap.reservation("NEW001") is not None
        assert all(prompts.money(u.daily_rate) and prompts.money(u.weekly_rate) for u in snap.units)
        assert snap.policy.tax_rate == 8.25
    assert sheets.counts["read"] == reads + 1


# =============================================================================================
# the pickup read: a call's process parses the snapshot in prewarm, then reads what changed


async def test_a_prepared_process_reads_only_what_changed_since_it_parsed_the_snapshot(sheets, sheet_env):
    """warm() (agent.prewarm) parses the stored snapshot; at pickup the State sends its data again
    only when a refresh replaced it, and what other processes booked meanwhile is seen at once."""
    await loaded(equipment.inventory_from_env(sheet_env))  # the shared snapshot is stored
    call = equipment.inventory_from_env(sheet_env)
    call.warm()
    read_at = call.state.snapshot(call.store.origin).read_at
    unchanged = call.state.snapshot(call.store.origin, read_at)
    assert unchanged is not None and unchanged.data is None and unchanged.read_at == read_at
    assert call.state.snapshot(call.store.origin, read_at - 1).data is not None

    reads = sheets.counts["read"]
    at_pickup = await call.snapshot()
    assert at_pickup.known and free(at_pickup, "EX-103") and sheets.counts["read"] == reads
    booked = await equipment.inventory_from_env(sheet_env).book(request("EX-103"))  # another call
    assert booked.confirmed
    again = await call.snapshot()
    assert again.units is at_pickup.units, "the parsed units are reused, not parsed again"
    assert not free(again, "EX-103") and again.reservation(booked.ref) is not None

    sheets.set_cell("Equipment", "EX-102", "Status", "MAINTENANCE")
    await asyncio.to_thread(call.cache.refresh, force=True, budget=5.0)  # another call's refresh
    refreshed = await call.snapshot()  # replaced by a refresh: parsed again
    assert refreshed.units is not at_pickup.units and refreshed.find("EX-102").status == "MAINTENANCE"
    assert not free(refreshed, "EX-103")


# =============================================================================================
# the old STATE_DIR files, imported once


@pytest.mark.old_sheet
async def test_old_state_dir_files_are_imported_once_and_their_pending_entries_replayed(sheets, sheet_env):
    """An upgrade from the version that wrote units' rows: its sheet (no Reservations tab, rentals
    on the units' rows) and its STATE_DIR files. Nothing pending is lost: replayed once, as a row of
    a Reservations tab the replay creates; the units' rows are never written again."""
    state_dir = Path(sheet_env["STATE_DIR"])
    state_dir.mkdir(parents=True)
    origin = f"sheet:{sheets.spreadsheet_id}:Equipment"
    # the old worker had written EX-103 (DONE22, settled) and kept AAAAA2 for EX-101 (held: PENDING)
    old = old_sheet_rows()
    col = {h: i for i, h in enumerate(old[0])}
    ex103 = next(r for r in old if r[0] == "EX-103")
    ex103 += [""] * (len(old[0]) - len(ex103))
    for name, val in (("Status", "RENTED"), ("Booking Ref", "DONE22"), ("Renter Name", "Old"),
                      ("Rental Start", "2031-02-02"), ("Rental End", "2031-02-05")):
        ex103[col[name]] = val
    sheets.set_rows("Equipment", old)
    (state_dir / legacy.OLD_SNAPSHOT).write_text(json.dumps(old_snapshot(
        origin, time.time() - 5, {"EX-101": "PENDING", "EX-103": "RENTED"})), encoding="utf-8")
    lines = [old_book("AAAAA2", "EX-101"), old_attempt("AAAAA2", 1), old_book("DONE22", "EX-103", "Old"),
             old_row("callback", "CB2345", "CALLBACK", "Bo", note="wants a quote"), old_attempt("DONE22", 1),
             old_settled("DONE22"), old_attempt("AAAAA2", 2),
             old_row("log", "LOG234", "BOOKING", "Cy", eid="EX-102")]
    (state_dir / legacy.OLD_OUTBOX).write_text("".join(old_line(e) for e in lines), encoding="utf-8")
    # four starts of the new version at once (threads here; the claim is a rename, which only one
    # process or thread can win): one of them imports
    invs = await asyncio.gather(*(asyncio.to_thread(equipment.inventory_from_env, sheet_env) for _ in range(4)))
    names = sorted(p.name for p in state_dir.iterdir() if p.is_file())
    assert [n.rsplit("-", 1)[0] for n in names if "imported" in n] == [
        "equipment-snapshot.json.imported", "outbox.jsonl.imported"], names
    assert legacy.OLD_OUTBOX not in names and legacy.OLD_SNAPSHOT not in names
    assert not [n for n in names if "importing" in n]
    db = StateDb(sheet_env)
    assert [(e["ref"], e["kind"], e["attempts"], e["outcome"]) for e in db.outbox()] == [
        ("AAAAA2", "book", 2, None), ("CB2345", "callback", 0, None), ("LOG234", "log", 0, None)]
    # the old snapshot serves at once, without a read; the hold now comes from the outbox, and a
    # unit the old snapshot had RENTED (its dates were not in that file) is taken until a refresh
    snap = await invs[0].snapshot()
    assert snap.known and sheets.counts["read"] == 0 and snap.age < 30
    assert held(snap, "AAAAA2") and not free(snap, "EX-101", "2031-02-03", "2031-02-04")
    assert free(snap, "EX-101") and not free(snap, "EX-103") and not free(snap, "EX-103", "2040-01-01", "2040-01-02")
    # nothing pending lost: replayed once
    assert await invs[1].replay_outbox() == 3
    assert sheets.rows("Reservations")[0] == RESERVATION_HEADER  # the tab the old sheet lacked, created
    row = booked(sheets, "AAAAA2")
    assert (row["Equipment ID"], row["Start"], row["End"], row["Renter Name"], row["Status"]) == (
        "EX-101", "2031-02-02", "2031-02-05", "Ann", "CONFIRMED")
    assert [r["Ref"] for r in sheets.records("Reservations")] == ["AAAAA2"]  # DONE22, settled before: untouched
    assert sheets.rows("Equipment") == old  # the units' rows: read, never written
    assert [(r["Booking Ref"], r["Kind"]) for r in sheets.records("Bookings")] == [
        ("AAAAA2", "BOOKING"), ("CB2345", "CALLBACK"), ("LOG234", "BOOKING")]
    assert db.outcomes() == {"AAAAA2": "written", "CB2345": "written", "LOG234": "written"}
    later = equipment.inventory_from_env(sheet_env)  # a later start: nothing imported again
    assert await later.replay_outbox() == 0 and len(sheets.records("Bookings")) == 3
    assert len(db.outbox()) == 3
    # and the sheet as read now: the old rows are the reservations (DONE22 on EX-103's row)
    age = time.time() - 3600
    later.state.save_snapshot(later.store.origin, later.state.snapshot(later.store.origin).data, age, age)
    await loaded(later)  # stale: refreshed from the sheet
    snap = await equipment.inventory_from_env(sheet_env).snapshot()
    assert snap.age < 10 and snap.reservation("DONE22").legacy and snap.reservation("AAAAA2").status == "CONFIRMED"
    assert free(snap, "EX-103") and not free(snap, "EX-103", "2031-02-03", "2031-02-03")
    assert not free(snap, "EX-102") and free(snap, "EX-102", "2031-01-01", "2031-01-02")


# the state's own tables as the previous version (schema 1) created them: the snapshot was the units
# alone, with per-unit status overrides; the outbox is the same
SCHEMA_1 = {
    "sqlite": """
CREATE TABLE snapshot (origin TEXT PRIMARY KEY, units TEXT NOT NULL, read_at REAL NOT NULL, read_started REAL NOT NULL);
CREATE TABLE status_override (origin TEXT NOT NULL, unit TEXT NOT NULL, status TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (origin, unit));
CREATE TABLE outbox (ref TEXT PRIMARY KEY, kind TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL,
    created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, uncertain_at REAL, settled_at REAL,
    outcome TEXT);
CREATE INDEX outbox_pending ON outbox (settled_at, created_at);
PRAGMA user_version=1;
""",
    "postgres": """
CREATE TABLE rental_schema (version INTEGER NOT NULL);
CREATE TABLE rental_snapshot (origin TEXT PRIMARY KEY, units TEXT NOT NULL, read_at DOUBLE PRECISION NOT NULL,
    read_started DOUBLE PRECISION NOT NULL);
CREATE TABLE rental_status_override (origin TEXT NOT NULL, unit TEXT NOT NULL, status TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL, PRIMARY KEY (origin, unit));
CREATE TABLE rental_outbox (ref TEXT PRIMARY KEY, kind TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    uncertain_at DOUBLE PRECISION, settled_at DOUBLE PRECISION, outcome TEXT);
CREATE INDEX rental_outbox_pending ON rental_outbox (created_at) WHERE settled_at IS NULL;
INSERT INTO rental_schema (version) VALUES (1);
""",
}


async def test_a_state_database_of_the_previous_version_is_upgraded_keeping_its_outbox(sheets, sheet_env):
    """Upgrading a machine (or a shared PostgreSQL) the previous version used: its tables have the
    old snapshot layout. The new version reads the sheet once and serves from then on (never a
    stuck "unknown"), and what the old outbox holds is written once; the old snapshot is not
    trusted for anything."""
    db = StateDb(sheet_env)
    origin = f"sheet:{sheets.spreadsheet_id}:Equipment"
    if db.engine == "sqlite":
        Path(sheet_env["STATE_DIR"]).mkdir(parents=True)
        with sqlite3.connect(db.path) as conn:
            conn.executescript(SCHEMA_1["sqlite"])
    else:
        for statement in SCHEMA_1["postgres"].split(";"):
            if statement.strip():
                db.query(statement)
    old_units = old_snapshot(origin, time.time(), {})["units"]
    db.query("INSERT INTO {snapshot} (origin, units, read_at, read_started) VALUES (?, ?, ?, ?)",
             (origin, json.dumps(old_units), time.time() - 5, time.time() - 5))
    db.query("INSERT INTO {status_override} (origin, unit, status, at) VALUES (?, ?, ?, ?)",
             (origin, "ex-103", "RENTED", time.time()))
    db.query("INSERT INTO {outbox} (ref, kind, unit, payload, created_at, attempts) VALUES (?, ?, ?, ?, ?, ?)",
             ("OLDBK2", "book", "ex-201", json.dumps(old_book("OLDBK2", "EX-201")), time.time() - 60, 1))
    db.query("INSERT INTO {outbox} (ref, kind, unit, payload, created_at, settled_at, outcome)"
             " VALUES (?, ?, ?, ?, ?, ?, ?)", ("DONE33", "book", "ex-101", json.dumps(old_book("DONE33", "EX-101")),
                                               time.time() - 90, time.time() - 80, "written"))
    invs = await asyncio.gather(*(asyncio.to_thread(equipment.inventory_from_env, sheet_env) for _ in range(3)))
    snaps = await asyncio.gather(*(loaded(inv) for inv in invs))  # three calls at once on the old tables
    assert all(s.known and len(s.units) == 20 for s in snaps)
    assert sheets.counts["read"] >= 1
    # the old outbox entry was replayed by the refresh that followed the read, once
    row = booked(sheets, "OLDBK2")
    assert (row["Equipment ID"], row["Start"], row["End"], row["Renter Name"]) == ("EX-201", "2031-02-02",
                                                                                   "2031-02-05", "Ann")
    assert log_refs(sheets) == ["OLDBK2"] and booked(sheets, "DONE33") is None
    assert db.outcomes() == {"OLDBK2": "written", "DONE33": "written"}
    reads = sheets.counts["read"]
    for _ in range(3):  # served from the state now, with the reservations and the policy
        snap = await loaded(equipment.inventory_from_env(sheet_env))
        assert snap.known and 0 <= snap.age < 10 and not free(snap, "EX-102") and free(snap, "EX-103")
        assert snap.reservation("OLDBK2") is not None and snap.policy.tax_rate == 8.25
    assert sheets.counts["read"] == reads
    b = await invs[0].book(request("EX-103"))
    assert b.confirmed and refs_of(sheets, "EX-103") == [b.ref]


async def test_an_import_cut_short_by_a_crash_is_finished_once_by_the_next_start(sheets, sheet_env):
    """A process died half-way through the import: its claimed file (outbox.jsonl.importing-PID)
    is taken over by the next start, which imports the rest without counting an entry's
    attempts twice (which would settle it failed before its time)."""
    state_dir = Path(sheet_env["STATE_DIR"])
    state_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claimed = state_dir / f"{legacy.OLD_OUTBOX}.importing-{int(dead.stdout)}"
    book = old_book("AAAAA2", "EX-101")
    claimed.write_text("".join(old_line(e) for e in [
        book, old_attempt("AAAAA2", 1), old_attempt("AAAAA2", 2), old_attempt("AAAAA2", 3),
        old_row("callback", "CB2345", "CALLBACK", "Bo")]), encoding="utf-8")
    st = open_env(sheet_env)  # what the dead process had done: the first entry and its attempts
    st.add("AAAAA2", "book", "ex-101", book)
    for _ in range(3):
        st.attempt("AAAAA2", "counted before the upgrade")
    st.close()
    equipment.inventory_from_env(sheet_env)
    assert [(e["ref"], e["attempts"]) for e in StateDb(sheet_env).outbox()] == [("AAAAA2", 3), ("CB2345", 0)]
    assert not claimed.exists() and len(list(state_dir.glob(f"{legacy.OLD_OUTBOX}.imported-*"))) == 1
    assert await equipment.inventory_from_env(sheet_env).replay_outbox() == 2
    assert refs_of(sheets, "EX-101") == ["AAAAA2"] and booked(sheets, "AAAAA2")["Start"] == "2031-02-02"
    assert sorted(log_refs(sheets)) == ["AAAAA2", "CB2345"]


# =============================================================================================
# damaged outbox rows


async def test_damaged_outbox_rows_are_counted_then_failed_never_written_half_empty(source, caplog):
    """Rows another version (or a bug) might write: a booking without a name, one without usable
    dates, a call-back without its row, an unknown kind, a payload that is not JSON. None is ever
    written; each failed replay counts; after MAX_ATTEMPTS each is settled failed, loudly. A good
    entry among them is written at the first replay."""
    caplog.set_level(logging.INFO, logger="equipment")
    inv = source.inventory()
    snap = await loaded(inv)
    st = inv.state
    whole = {"equipment_id": "EX-101", "equipment_name": "Kubota KX040 Mini Excavator", "name": "Ann",
             "phone": PHONE, "start": START, "end": END, "call_id": "c1", "booked_at": "", "at": 0.0}
    st.add("NONAME", "book", "ex-101", {**whole, "name": " "})
    st.add("NOPHON", "book", "ex-101", {k: v for k, v in whole.items() if k != "phone"})
    st.add("NODATE", "book", "ex-103", {**whole, "equipment_id": "EX-103", "start": "next week"})
    st.add("NOROW1", "callback", "", {"ref": "NOROW1", "phone": PHONE})
    st.add("WHAT01", "rent", "", {"equipment_id": "EX-201"})
    db = StateDb(source.env)
    db.query("INSERT INTO {outbox} (ref, kind, unit, payload, created_at) VALUES (?, ?, ?, ?, ?)",
             ("NOJSON", "book", "ex-201", "{'equipment_id': 'EX-201'", time.time()))
    good = inv.booker.keep(request("SS-101", "Gus"), snap.find("SS-101"), RuntimeError("outage"), ref="GOOD22")
    damaged = ["NONAME", "NOPHON", "NODATE", "NOROW1", "WHAT01", "NOJSON"]
    assert await inv.replay_outbox() == 1  # the good one, not blocked by the others
    assert source.booking(good.ref)["Equipment ID"] == "SS-101"
    for n in range(1, MAX_ATTEMPTS):
        if n > 1:
            assert await inv.replay_outbox() == 0
        assert {e["ref"]: e["attempts"] for e in db.outbox() if e["ref"] in damaged} == {r: n for r in damaged}
        assert not free(await source.inventory().snapshot(), "EX-101")  # still held (NONAME has its dates)
    assert await inv.replay_outbox() == len(damaged)  # the last attempt settles them as failed
    assert db.outcomes() == {**{r: "failed" for r in damaged}, good.ref: "written"}
    for eid in ("EX-101", "EX-103", "EX-201"):  # nothing written, half-empty or otherwise
        assert source.refs_of(eid) == []
    assert [r["Ref"] for r in source.reservations()] == ["LTEX10", "LTSS10", "LTLF20", "LTCO20", good.ref]
    assert [r["Booking Ref"] for r in source.log()] == [good.ref]
    loud = [r for r in caplog.records if r.levelno == logging.ERROR and "could not be written after" in r.getMessage()]
    assert sorted(r for r in damaged if any(r in x.getMessage() for x in loud)) == sorted(damaged)
    assert all(f"after {MAX_ATTEMPTS} attempts" in x.getMessage() for x in loud)
    assert PHONE not in caplog.text
    snap = await source.inventory().snapshot()
    assert free(snap, "EX-101") and free(snap, "EX-103")  # no longer held
    assert not [r for r in snap.reservations if r.status == "PENDING"]
    assert await inv.replay_outbox() == 0


# =============================================================================================
# PostgreSQL down: this machine's SQLite until it answers (a server of its own, stopped mid-test)


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@pytest.fixture
def down_env(own_pg: PgServer, sheets: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The sheet, this machine's STATE_DIR, and a database on the server these tests stop."""
    own_pg.start()
    url = own_pg.create_database()
    yield {"GOOGLE_SHEET_ID": sheets.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
           "GOOGLE_SHEETS_API_URL": sheets.url, "STATE_DIR": str(tmp_path / "state"), **SMALL_TIMEOUTS,
           "DATABASE_URL": url, "DATABASE_TIMEOUT": "1"}
    own_pg.start()
    own_pg.drop_database(url)


async def test_a_waiting_process_parses_a_refresh_before_its_call_not_at_pickup(sheets, sheet_env):
    """keep_warm (agent.prewarm): a refresh made while the process waits for its call is parsed
    then. Shown by what the pickup can do without reading the data: the stored data is broken in
    place and Sheets refuses reads, yet the pickup serves the refreshed snapshot it parsed."""
    await loaded(equipment.inventory_from_env(sheet_env))
    call = equipment.inventory_from_env(sheet_env)
    call.warm()
    keeping = call.keep_warm(every=0.05)
    sheets.set_cell("Equipment", "EX-102", "Status", "MAINTENANCE")
    await asyncio.to_thread(equipment.inventory_from_env(sheet_env).cache.refresh, force=True, budget=5.0)
    await asyncio.sleep(0.5)
    keeping.set()
    await asyncio.sleep(0.1)
    StateDb(sheet_env).query("UPDATE {snapshot} SET data = ?", ('{"v": "broken"}',))
    sheets.fail("read", 500)
    snap = await call.snapshot()
    assert snap.known and snap.find("EX-102").status == "MAINTENANCE"


def test_processes_opening_a_new_sqlite_state_at_once_all_get_it(tmp_path: Path) -> None:
    """The first calls on a new machine open a STATE_DIR nobody has made yet, together: SQLite
    answers all but one "database is locked" while the file is switched to WAL, without waiting."""
    import threading

    failures: list[Exception] = []

    def open_it(state_dir: Path) -> None:
        try:
            SqliteState(state_dir).holds()
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            failures.append(e)

    for trial in range(30):
        threads = [threading.Thread(target=open_it, args=(tmp_path / f"s{trial}",)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_a_sqlite_state_from_before_the_read_at_index_gets_it(tmp_path: Path) -> None:
    """The pickup asks SQLite for read_at alone through an index (the row holds megabytes): a
    STATE_DIR written before the index gets it when it is opened."""
    SqliteState(tmp_path).save_snapshot("sheet:x", {"v": 1}, 1.0, 2.0)
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as conn:
        conn.execute("DROP INDEX snapshot_read_at")
    state = SqliteState(tmp_path)
    assert state.snapshot("sheet:x", 2.0).data is None
    assert state.snapshot("sheet:x", 1.0).data == {"v": 1} and state.snapshot("sheet:x").read_at == 2.0


async def test_a_postgres_connection_closed_while_the_process_waited_is_opened_again_at_pickup(
        own_pg, sheets, down_env, caplog):
    """The connection prewarm opened sits idle until the call comes; the server (or a proxy) may
    close it meanwhile. The pickup read then goes on a new connection: PostgreSQL's snapshot with
    what other replicas wrote, not this machine's copy, and no outage in the log."""
    await loaded(equipment.inventory_from_env(down_env))
    call = equipment.inventory_from_env(down_env)
    call.warm()
    booked = await equipment.inventory_from_env(down_env).book(request("EX-103"))  # another replica's
    dropped = own_pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "application_name = 'equipment-rental' AND pid <> pg_backend_pid()")
    assert dropped
    caplog.set_level(logging.WARNING, logger="equipment")
    snap = await call.snapshot()
    assert snap.known and snap.reservation(booked.ref) is not None and not free(snap, "EX-103")
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()], caplog.text


async def test_postgres_down_booking_kept_on_this_machine_then_moved_and_written_once(own_pg, sheets, down_env):
    env = down_env
    inv = equipment.inventory_from_env(env)
    await loaded(inv)  # the snapshot is in PostgreSQL, and this machine keeps its copy
    own_pg.stop()
    t0 = time.monotonic()
    snap = await equipment.inventory_from_env(env).snapshot()
    assert snap.known and len(snap.units) == 20 and time.monotonic() - t0 < 3  # this machine's copy
    assert free(snap, "EX-103")
    writes, appends = sheets.counts["filter_write"], sheets.counts["append"]
    booking = equipment.inventory_from_env(env)
    b = await booking.book(request("EX-103"))
    assert not b.confirmed and b.equipment_id == "EX-103"  # "recorded, the shop will confirm"
    await booking.close(timeout=5)  # its replay waits for PostgreSQL (the unit locks live there)
    # not written to the sheet: without the shared unit lock two replicas could sell the unit
    assert (sheets.counts["filter_write"], sheets.counts["append"]) == (writes, appends)
    assert refs_of(sheets, "EX-103") == []
    local = StateDb(env, local=True)
    assert [(e["ref"], e["outcome"]) for e in local.outbox()] == [(b.ref, None)]
    assert held(await equipment.inventory_from_env(env).snapshot(), b.ref)  # this machine's outbox holds it
    assert await equipment.inventory_from_env(env).replay_outbox() == 0
    own_pg.start()  # PostgreSQL answers again: the entry moves there, and one replay writes it
    again = equipment.inventory_from_env(env)
    assert await again.replay_outbox() == 1
    row = booked(sheets, b.ref)
    assert (row["Equipment ID"], row["Status"], row["Renter Name"], row["Start"]) == ("EX-103", "CONFIRMED", "Ann", START)
    assert log_refs(sheets) == [b.ref]
    assert local.outcomes() == {b.ref: "moved"} and StateDb(env).outcomes() == {b.ref: "written"}
    assert await again.replay_outbox() == 0 and await equipment.inventory_from_env(env).replay_outbox() == 0
    assert log_refs(sheets) == [b.ref]
    snap = await equipment.inventory_from_env(env).snapshot()
    assert snap.reservation(b.ref).status == "CONFIRMED" and not held(snap, b.ref) and not free(snap, "EX-103")
    assert refs_of(sheets, "EX-103") == [b.ref]


async def test_postgres_down_snapshot_is_this_machines_copy_or_the_sheet_never_empty(own_pg, sheets, down_env,
                                                                                       tmp_path):
    env = down_env
    await loaded(equipment.inventory_from_env(env))
    own_pg.stop()
    reads = sheets.counts["read"]
    snap = await equipment.inventory_from_env(env).snapshot()  # this machine's copy
    assert snap.known and len(snap.units) == 20 and sheets.counts["read"] == reads
    # a machine with no copy of its own: read from the sheet, one process at a time on it
    fresh_machine = dict(env, STATE_DIR=str(tmp_path / "other-machine"))
    snap = await loaded(equipment.inventory_from_env(fresh_machine))
    assert snap.known and len(snap.units) == 20 and sheets.counts["read"] == reads + 1
    # and with the sheet down too: unknown (the agent says it can't check), never "no equipment"
    sheets.fail("*", 503)
    blank = dict(env, STATE_DIR=str(tmp_path / "third-machine"), BOOKING_RETRY_BUDGET="0.5")
    snap = await equipment.inventory_from_env(blank).snapshot()
    assert snap.units is None and not snap.known


async def test_postgres_down_late_callback_append_is_not_sent_again_after_the_move(own_pg, sheets, down_env):
    """A call-back whose Bookings append got no answer while PostgreSQL was down is kept here,
    marked uncertain; moved to PostgreSQL, it stays uncertain: the late append is the only row."""
    env = dict(down_env, SHEETS_HTTP_TIMEOUT="1,1")
    sheets.set_rows("Bookings", [list(LOG_HEADER)])
    inv = equipment.inventory_from_env(env)
    await loaded(inv)
    own_pg.stop()
    sheets.hold("append", times=1)  # no answer: the client gives up after 1 s; it lands when let through
    ref = await inv.record_callback(equipment.parse_callback("Ann", PHONE, "call me back", "c1"))
    assert log_refs(sheets) == [] and sheets.counts["append"] == 1
    local = StateDb(env, local=True)
    assert [(e["ref"], e["uncertain_at"] is not None) for e in local.outbox()] == [(ref, True)]
    own_pg.start()
    assert await equipment.inventory_from_env(env).replay_outbox() == 0  # moved, and left alone
    assert local.outcomes() == {ref: "moved"}
    assert [(e["ref"], e["uncertain_at"] is not None) for e in StateDb(env).outbox()] == [(ref, True)]
    assert sheets.counts["append"] == 1 and log_refs(sheets) == []
    sheets.let_through()
    assert await wait_until(lambda: log_refs(sheets) == [ref], timeout=10)  # the late one lands
    StateDb(env).query("UPDATE {outbox} SET uncertain_at = uncertain_at - ?", (UNCERTAIN_WAIT + 1,))
    assert await equipment.inventory_from_env(env).replay_outbox() == 1
    assert log_refs(sheets) == [ref]


async def test_postgres_refusing_new_connections_is_an_outage_not_a_bad_entry(own_pg, sheets, down_env, caplog):
    """PostgreSQL at its connection limit: the process' open session still works, but the unit
    lock (a connection of its own) is refused. A replay then stops for later: the entry is not
    counted as failed, so repeated replays never settle a good booking "failed" with a CONFLICT
    row telling staff to call the renter."""
    caplog.set_level(logging.INFO, logger="equipment")
    from psycopg import sql
    from urllib.parse import urlsplit

    dbname = urlsplit(down_env["DATABASE_URL"]).path.lstrip("/")
    own_pg.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(dbname)))  # not a superuser:
    own_pg.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(dbname)))
    with own_pg.admin_connect(dbname) as conn:  # the limit applies to it
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(dbname)))
    env = dict(down_env, DATABASE_URL=down_env["DATABASE_URL"].replace("postgres@", f"{dbname}@"))
    try:
        inv = equipment.inventory_from_env(env)
        snap = await loaded(inv)
        b = inv.booker.keep(request("EX-103"), snap.find("EX-103"), RuntimeError("outage"), ref="KEPT03")
        inv.state.close()
        replayer = equipment.inventory_from_env(env)
        assert replayer.outbox.pending()  # its session is open
        # this process' session and its replay turn fit under the limit; a unit lock does not
        own_pg.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 2").format(sql.Identifier(dbname)))
        for _ in range(MAX_ATTEMPTS + 1):
            assert await replayer.replay_outbox() == 0
        assert [(e["ref"], e["attempts"], e["outcome"]) for e in StateDb(down_env).outbox()] == [(b.ref, 0, None)]
        assert sheets.rows("Bookings") == [] and "Outbox conflict" not in caplog.text
        own_pg.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(sql.Identifier(dbname)))
        assert await replayer.replay_outbox() == 1
        assert refs_of(sheets, "EX-103") == [b.ref]
        assert [(r["Booking Ref"], r["Kind"]) for r in sheets.records("Bookings")] == [(b.ref, "BOOKING")]
    finally:
        own_pg.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(sql.Identifier(dbname)))
        own_pg.drop_database(dbname)
        own_pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(dbname)))


async def test_a_broken_local_copy_never_fails_a_healthy_postgres(sheets, tmp_path, database_url, caplog):
    """With PostgreSQL answering, this machine's SQLite is only its backup: when it is damaged
    (here: state.db is not a database any more), the snapshot, a booking and a replay all go
    through PostgreSQL, and one line says the backup is out."""
    caplog.set_level(logging.INFO, logger="equipment")
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"\0garbage, not a database\n" * 200)
    env = {"GOOGLE_SHEET_ID": sheets.spreadsheet_id, "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
           "GOOGLE_SHEETS_API_URL": sheets.url, "STATE_DIR": str(state), **SMALL_TIMEOUTS,
           "DATABASE_URL": database_url}
    inv = equipment.inventory_from_env(env)
    snap = await loaded(inv)
    assert snap.known and len(snap.units) == 20
    assert "Equipment loaded successfully: 20 items" in caplog.text  # the refresh itself succeeded
    b = await equipment.inventory_from_env(env).book(request("EX-103"))
    assert b.confirmed and refs_of(sheets, "EX-103") == [b.ref]
    kept = inv.booker.keep(request("EX-201"), snap.find("EX-201"), RuntimeError("outage"), ref="KEPT04")
    assert held(await equipment.inventory_from_env(env).snapshot(), kept.ref)
    assert await equipment.inventory_from_env(env).replay_outbox() == 1
    assert refs_of(sheets, "EX-201") == [kept.ref]
    assert StateDb(env).outcomes() == {b.ref: "written", kept.ref: "written"}
    assert "fallback state is unavailable" in caplog.text
