"""Two replicas: separate checkouts and STATE_DIRs, one DATABASE_URL, one Sheets stand-in.

Each replica is a copy of the product files (``git ls-files`` of the tracked and untracked files:
the top-level ``*.py``, ``inventory/``, ``telephony/``, ``data/``) in a temp dir of its own, with
its own ``STATE_DIR`` inside it, as two Railway replicas (or an old and a new deployment) each have
their own disk. What they share is what production shares: one PostgreSQL (``DATABASE_URL``, a
real server, tests/pg_server.py) and one Google Sheet (the stand-in, tests/fakes/sheets_server.py).
Every process runs the code of its own checkout (no PYTHONPATH; asserted in the barrier
processes), as a real process:

- ``python agent.py inventory replay --json`` from the checkout, the command staff and scripts use;
- for the races, the same command's code (``inventory_cli.main``, which ``agent.py inventory``
  calls) behind a barrier: each process imports it, prints ``ready`` and waits for ``go`` on
  stdin, so a slow start on a busy machine cannot spread a burst out (conftest.release_together).
  It skips the ~5 s of livekit imports that ``agent.py`` costs each process.

What they prove:
1. racing processes on both replicas, released together, booking the same unit for the same
   dates make exactly one booking (one unit-row write, one Bookings row, one outbox entry); every
   other process is told just_taken / not_available (exit 3). The sheet holds every re-read of
   the unit until each racer is either re-reading or waiting for a lock in PostgreSQL (seen in
   ``pg_stat_activity``), so every racer is in the race however slowly it started: without a lock
   shared across machines they would all see the unit free and all book it. And it holds it
   until each waiter has waited longer than DATABASE_TIMEOUT (a slow Sheets read, as happens):
   waiting for the unit's turn is not "the database is down", so they are told just_taken, not
   "recorded, the shop will confirm" (which would end as a CONFLICT row and a call-back);
2. a booking kept on replica A while Sheets refuses writes (exit 4) survives A's disk being
   deleted (checkout and STATE_DIR, rm -rf), is held for replica B, and is written by B's
   ``inventory replay --json`` exactly once;
3. one Sheets read per TTL for all replicas together: three processes, one per checkout, reading a
   snapshot whose TTL has expired make one read between them (single flight through PostgreSQL's
   advisory lock), checked while that one read is held open, so it does not depend on timing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ROOT, StateDb, child_env, release_together
from tests.fakes.sheets_server import SheetsStandIn

FROM = (date.today() + timedelta(days=40)).isoformat()
TO = (date.today() + timedelta(days=42)).isoformat()
PHONE = "+1 555 123 4567"
PRODUCT = re.compile(r"^(?:[^/]+\.py|inventory/.+|telephony/.+|data/.+)$")
AGENT_TIMEOUT = 120.0  # one `python agent.py inventory ...` (livekit imports) on a loaded 2-core box
RACER_TIMEOUT = 90.0

# A booking waits for the unit's lock up to BOOKING_RETRY_BUDGET + the Sheets read timeout + 2 s
# (here 10 + 10 + 2 = 22 s), and its re-read of the sheet may be held that long by the test. Each
# database statement is bounded by DATABASE_TIMEOUT: the racers wait their turn longer than that.
DATABASE_TIMEOUT = 2.0
RACE_ENV = {"BOOKING_RETRY_BUDGET": "10", "SHEETS_HTTP_TIMEOUT": "1,10", "DATABASE_TIMEOUT": str(DATABASE_TIMEOUT),
            "EQUIPMENT_CACHE_TTL": "600"}  # the snapshot read before the race stays fresh through it

# In a checkout: the inventory command's own code, from this directory, behind a barrier.
BARRIER = r"""
import os, sys
import equipment, inventory_cli, inventory.postgres_state as pg
here = os.path.realpath(os.getcwd())
for m in (equipment, inventory_cli, pg):
    assert os.path.realpath(m.__file__).startswith(here + os.sep), (m.__name__, m.__file__, here)
print("ready", flush=True)
sys.stdin.readline()
sys.exit(inventory_cli.main(sys.argv[1:]))
"""


def product_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    files = sorted(f for f in out.split("\0") if f and PRODUCT.match(f) and (ROOT / f).is_file())
    assert {"agent.py", "inventory_cli.py", "inventory/postgres_state.py", "data/equipment.csv"} <= set(files)
    return files


@dataclass
class Replica:
    """One checkout (a machine's copy of the product) with its own STATE_DIR inside it."""

    name: str
    dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["STATE_DIR"])

    def _popen(self, argv: list[str], stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, *argv], cwd=str(self.dir), env=self.env, stdin=stdin,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def agent(self, *argv: str, timeout: float = AGENT_TIMEOUT) -> tuple[int, dict[str, Any]]:
        """`python agent.py inventory <argv>` in this checkout: exit status and its JSON object."""
        return finish(self._popen(["agent.py", "inventory", *argv]), timeout)

    def cli(self, *argv: str, timeout: float = RACER_TIMEOUT) -> tuple[int, dict[str, Any]]:
        """The same command's code without agent.py's livekit imports (no barrier)."""
        p = self.racer(*argv)
        release_together([p])
        return finish(p, timeout)

    def racer(self, *argv: str) -> subprocess.Popen:
        """The inventory command's code in this checkout, waiting at the barrier."""
        return self._popen(["-c", BARRIER, *argv], stdin=subprocess.PIPE)


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def finish(p: subprocess.Popen, timeout: float = RACER_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """Exit status and the one JSON object the command printed."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"still running after {timeout}s: {err[-3000:]}") from None
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"rc={p.returncode}, stdout={out[-2000:]!r}, stderr={err[-3000:]}"
    return p.returncode, json.loads(lines[0])


@pytest.fixture
def replicas(sheet_env: dict[str, str], database_url: str, tmp_path: Path) -> Iterator[Callable[..., list[Replica]]]:
    """replicas(n, **env): n checkouts of the product, each with its own STATE_DIR, on one
    DATABASE_URL and the one Sheets stand-in."""
    files = product_files()
    made: list[Replica] = []

    def make(n: int, **extra: str) -> list[Replica]:
        out = []
        for _ in range(n):
            name = "ABCDEFGH"[len(made)]
            root = tmp_path / f"replica-{name}"
            for f in files:
                (root / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, root / f)
            env = child_env({**sheet_env, "STATE_DIR": str(root / ".state"), "DATABASE_URL": database_url, **extra})
            env.pop("PYTHONPATH", None)  # nothing from the repo: the checkout's own code only
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            r = Replica(name, root, env)
            made.append(r)
            out.append(r)
        return out

    yield make
    for r in made:
        for p in r.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def db(url: str) -> StateDb:
    return StateDb({"DATABASE_URL": url, "STATE_DIR": "/nonexistent"})


def book_args(eid: str, name: str) -> list[str]:
    return ["book", eid, "--from", FROM, "--to", TO, "--name", name, "--phone", PHONE, "--json"]


def list_args() -> list[str]:
    return ["list", "--from", FROM, "--to", TO, "--json"]


# What a booking leaves in the sheet (a unit row and a Bookings row, or a reservation row and a
# history row, as the sheet's layout evolves) is found by its ref: a booking is recorded at most
# once in each tab, and never anywhere without its ref.


def sheet(sheets: SheetsStandIn) -> dict[str, list[tuple[str, ...]]]:
    """Every tab of the sheet, as rows of cells."""
    return {title: [tuple(r) for r in sheets.rows(title)] for title in sorted(sheets.sheets)}


def rows_with(sheets: SheetsStandIn, ref: str) -> dict[str, list[tuple[str, ...]]]:
    """tab -> the rows that carry `ref` in a cell (tabs without one left out)."""
    found = {title: [r for r in rows if ref in r] for title, rows in sheet(sheets).items()}
    return {title: rows for title, rows in found.items() if rows}


def recorded_once(sheets: SheetsStandIn, ref: str) -> dict[str, list[tuple[str, ...]]]:
    """The booking `ref` is in the sheet, in one row at most per tab."""
    found = rows_with(sheets, ref)
    assert found and all(len(rows) == 1 for rows in found.values()), f"{ref} in the sheet: {found}"
    return found


def new_rows(before: dict[str, list[tuple[str, ...]]], after: dict[str, list[tuple[str, ...]]]
             ) -> list[tuple[str, tuple[str, ...]]]:
    """(tab, row) for every row in `after` that `before` did not hold as it is (added or changed);
    the header row of a tab created meanwhile is not one."""
    out = []
    for title, rows in after.items():
        old = list(before.get(title, []))
        for r in rows if title in before else rows[1:]:
            if r in old:
                old.remove(r)
            else:
                out.append((title, r))
    return out


# =============================================================================================
# 1. racing processes on both replicas: exactly one booking


PER_REPLICA = 3


def lock_waiters(url: str) -> tuple[int, float]:
    """Sessions on this database waiting for a lock (advisory or row) right now, and the
    shortest time any of them has waited (inf: none waits)."""
    ((n, shortest),) = db(url).query(
        "SELECT count(*), min(extract(epoch FROM clock_timestamp() - query_start)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'")
    return int(n), float("inf") if shortest is None else float(shortest)


def test_racing_processes_on_two_replicas_make_exactly_one_booking(sheets, replicas, database_url):
    a, b = replicas(2, **RACE_ENV)
    code, listed = a.cli(*list_args())  # the shared snapshot: every racer sees EX-201 free, and books
    assert code == 0 and listed["known"], (code, listed)
    assert {u["id"]: u["available"] for u in listed["units"]}["EX-201"]
    reads, before = sheets.counts["read"], sheet(sheets)

    sheets.hold("read")  # a booking re-reads the unit from the sheet: held until all are in the race
    racers = [(r.name, r.racer(*book_args("EX-201", f"Racer {r.name} {i}"))) for i in range(PER_REPLICA)
              for r in (a, b)]
    procs = [p for _, p in racers]
    release_together(procs, timeout=RACER_TIMEOUT)
    in_race = []  # (re-reading the sheet, waiting for a lock, finished)

    def everyone_in() -> bool:
        waiting, shortest = lock_waiters(database_url)
        in_race.append((sheets.counts["read"] - reads, waiting, sum(p.poll() is not None for p in procs)))
        return sum(in_race[-1]) >= len(procs) and shortest > DATABASE_TIMEOUT + 0.5

    all_in = wait_until(everyone_in, RACER_TIMEOUT)
    sheets.let_through()
    results = [(name, *finish(p)) for name, p in racers]
    assert all_in, f"not every racer reached the unit: {in_race[-1]} of {len(procs)}: {results}"

    booked = [(name, out) for name, code, out in results if code == 0]
    assert len(booked) == 1, f"exactly one booking across both replicas: {results}"
    winner = booked[0][1]
    assert winner["confirmed"] is True and winner["id"] == "EX-201", results
    others = [(name, code, out) for name, code, out in results if code != 0]
    assert len(others) == 2 * PER_REPLICA - 1
    for name, code, out in others:  # told it is taken, not "recorded, the shop will confirm"
        assert code == 3 and out.get("refused") in ("just_taken", "not_available"), (name, code, out, results)

    # one booking in the sheet, the winner's: every row the race added or changed carries its ref,
    # once per tab at most; and one outbox entry, written
    found = recorded_once(sheets, winner["ref"])
    assert any(cell.startswith("Racer ") for rows in found.values() for r in rows for cell in r), found
    changed = new_rows(before, sheet(sheets))
    assert changed and all(winner["ref"] in r for _, r in changed), f"rows the race wrote: {changed}"
    entries = [(e["ref"], e["outcome"]) for e in db(database_url).outbox() if e["kind"] == "book"]
    assert entries == [(winner["ref"], "written")], entries


# =============================================================================================
# 2. a booking kept on replica A survives A's disk and is written once by replica B


@pytest.mark.parametrize("refusal", ["writes-503", "forbidden"])
def test_booking_kept_on_one_replica_survives_its_disk_and_is_written_once_by_the_other(
        sheets, replicas, database_url, refusal):
    """writes-503: reads work and every write is refused (503), so the booking is refused after
    its write-ahead entry, and B replays it with `python agent.py inventory replay --json`.
    forbidden: every request is refused (403, the sheet no longer shared), so it is kept after the
    failure, and B replays it with the same command's code (no livekit imports: quicker)."""
    a, b = replicas(2, EQUIPMENT_CACHE_TTL="600")
    run_b = b.agent if refusal == "writes-503" else b.cli
    code, listed = b.cli(*list_args())
    assert code == 0 and listed["known"], (code, listed)
    before = sheet(sheets)
    if refusal == "writes-503":
        for kind in ("write", "append", "structure"):  # whatever a booking writes with
            sheets.fail(kind, 503)
    else:
        sheets.forbid()
    code, kept = a.cli(*book_args("EX-103", "Dana Smith"))
    assert code == 4 and kept["confirmed"] is False and kept["id"] == "EX-103", (code, kept)
    ref = kept["ref"]
    assert sheet(sheets) == before, "nothing written to the sheet"
    assert db(database_url).outcomes() == {ref: None}, "kept pending in the shared outbox"

    # held for the other replica too: nobody sells EX-103 for those dates while it waits
    code, listed = b.cli(*list_args())
    unit = {u["id"]: u for u in listed["units"]}["EX-103"]
    assert code == 0 and unit["available"] is False, unit
    code, refused = b.cli(*book_args("EX-103", "Lee Park"))
    assert code == 3 and refused["refused"] in ("just_taken", "not_available"), refused

    # replica A's machine is gone: its checkout and its STATE_DIR
    assert a.state_dir.is_dir() and a.state_dir.is_relative_to(a.dir)
    shutil.rmtree(a.dir)
    assert not a.state_dir.exists()

    sheets.clear_faults()
    code, replayed = run_b("replay", "--json")
    assert (code, replayed) == (0, {"settled": 1}), replayed
    found = recorded_once(sheets, ref)
    assert any("Dana Smith" in r for rows in found.values() for r in rows), found
    assert all(ref in r for _, r in new_rows(before, sheet(sheets))), "only this booking was written"
    assert db(database_url).outcomes() == {ref: "written"}

    # exactly once: another replay from B writes nothing more
    after = sheet(sheets)
    writes, appends = sheets.counts["write"], sheets.counts["append"]
    code, again = b.cli("replay", "--json")
    assert (code, again) == (0, {"settled": 0})
    assert (sheets.counts["write"], sheets.counts["append"]) == (writes, appends)
    assert sheet(sheets) == after


# =============================================================================================
# 3. one Sheets read per TTL for every replica together


def test_one_sheets_read_per_ttl_for_all_replicas_together(sheets, replicas, database_url):
    # the one read is held open until the test lets it through: nothing may time it out meanwhile
    reps = replicas(3, EQUIPMENT_CACHE_TTL="30", SHEETS_HTTP_TIMEOUT="1,30", BOOKING_RETRY_BUDGET="30")
    code, listed = reps[0].cli(*list_args())
    one_read = sheets.counts["read"]  # what one refresh reads (the snapshot may span several ranges)
    assert code == 0 and listed["known"] and one_read >= 1, (code, listed)
    state = db(database_url)
    # the TTL has expired (the stored read is an hour old); every process now wants a refresh
    state.query("UPDATE {snapshot} SET read_at = read_at - 3600, read_started = read_started - 3600")
    before = sheets.counts["read"]

    sheets.hold("read")
    procs = [r.racer(*list_args()) for r in reps]
    release_together(procs, timeout=RACER_TIMEOUT)
    # whoever got the refresh turn is reading (held); the others must have found it taken and
    # finished on the stale snapshot. Without single flight a second read arrives instead.
    wait_until(lambda: sum(p.poll() is not None for p in procs) >= len(procs) - 1
               or sheets.counts["read"] - before >= 2, RACER_TIMEOUT)
    during = sheets.counts["read"] - before
    sheets.let_through()
    results = [finish(p) for p in procs]
    assert during == 1, (f"{during} Sheets reads by {len(procs)} replicas in one TTL "
                         f"(exit statuses {[code for code, _ in results]})")
    assert sheets.counts["read"] - before == one_read, "one refresh between them"
    for code, out in results:  # each answered at once, from the stale snapshot
        assert code == 0 and out["known"] and len(out["units"]) == 20, out
    ((read_at,),) = state.query("SELECT read_at FROM {snapshot}")
    assert time.time() - read_at < 120, "the one read refreshed the shared snapshot"
