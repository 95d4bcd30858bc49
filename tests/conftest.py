"""Shared fixtures (offline: nothing here reaches the network).

Inventory fixtures (equipment.py):
- ``sheets``: a started local Google Sheets stand-in (tests/fakes/sheets_server.py,
  ``SheetsStandIn``) with worksheet "Equipment" preloaded from data/equipment.csv (20 units, several
  categories, AVAILABLE/RENTED/MAINTENANCE) and no "Bookings" worksheet (the first booking creates
  it). Use ``sheets.counts["read"|"write"|"append"|"token"|"metadata"|"structure"]``,
  ``sheets.record("Equipment", "EX-101")``, ``sheets.rows("Bookings")``, and faults:
  ``sheets.fail("read", 503)``, ``sheets.delay("read", 5)``, ``sheets.hang("read")`` (released at
  teardown), ``sheets.reset("write", times=1)``, ``sheets.forbid()``. Kind "*" means every path.
  ``sheets.after("structure", fn)`` runs ``fn()`` right after such a request is applied (another
  writer landing between two of ours).
- ``sheet_env``: env dict for ``equipment.inventory_from_env(sheet_env)``: GOOGLE_SHEET_ID,
  GOOGLE_SERVICE_ACCOUNT_JSON (token_uri -> the stand-in), GOOGLE_SHEETS_API_URL (the stand-in),
  STATE_DIR (a temp dir), small timeouts (EQUIPMENT_LOAD_TIMEOUT=2, SHEETS_HTTP_TIMEOUT=1,2,
  BOOKING_RETRY_BUDGET=2). Copy and edit it freely (it is a fresh dict per test).
- ``csv_env``: env dict for the embedded CSV default: EQUIPMENT_CSV = a temp copy of
  data/equipment.csv, STATE_DIR = a temp dir, same small timeouts. ``csv_env["EQUIPMENT_CSV"]`` is
  the file to inspect.
- ``no_network``: makes any non-loopback connect or DNS lookup raise for the test (the three
  fixtures above already use it).
- ``run_child``: ``run_child(env, "snapshot")`` or ``run_child(env, "book", id, name, phone,
  start, end)`` starts a separate Python process (``python -m tests.fakes.sheets_server child``)
  and returns a Popen; ``child_result(proc)`` waits and returns its JSON line as a dict.

Sample data helpers: ``equipment_rows()`` (header + rows of data/equipment.csv).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.fakes.sheets_server import SheetsStandIn, install_network_guard, remove_network_guard

ROOT = Path(__file__).resolve().parent.parent
DATA_CSV = ROOT / "data" / "equipment.csv"

SMALL_TIMEOUTS = {
    "EQUIPMENT_CACHE_TTL": "30",
    "EQUIPMENT_LOAD_TIMEOUT": "2",
    "SHEETS_HTTP_TIMEOUT": "1,2",
    "BOOKING_RETRY_BUDGET": "2",
}


def equipment_rows() -> list[list[str]]:
    with open(DATA_CSV, newline="", encoding="utf-8") as f:
        return [list(r) for r in csv.reader(f)]


@pytest.fixture
def no_network() -> Iterator[None]:
    install_network_guard()
    try:
        yield
    finally:
        remove_network_guard()


@pytest.fixture
def sheets(no_network: None) -> Iterator[SheetsStandIn]:
    standin = SheetsStandIn().start()
    standin.set_rows("Equipment", equipment_rows())
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
    return {"EQUIPMENT_CSV": str(data), "STATE_DIR": str(tmp_path / "state-csv"), **SMALL_TIMEOUTS}


_INHERITED_DROP = ("GOOGLE_", "EQUIPMENT_", "SHEETS_", "BOOKING_", "STATE_DIR", "START_AT")


def child_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_DROP)}
    base.update(env)
    base.update(extra)
    base["PYTHONPATH"] = str(ROOT)
    return base


@pytest.fixture
def run_child() -> Iterator[Callable[..., subprocess.Popen]]:
    procs: list[subprocess.Popen] = []

    def start(env: dict[str, str], *args: str, **extra: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "tests.fakes.sheets_server", "child", *args],
                             cwd=str(ROOT), env=child_env(env, **extra),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def child_result(proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"child failed (rc={proc.returncode}): {err[-3000:]}"
    return json.loads(lines[-1])
