"""The project's own stand-ins (tests/fakes/), wrapped for the benchmark: a Sheets stand-in with
named conditions (healthy, slow 5 s, 429, hung) and an inventory of N rows; env for both designs.

Faults apply to the Sheets API paths ("metadata" and "read" kinds); the token endpoint is Google's
OAuth server, not Sheets, and stays healthy.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from bench.common import ROOT  # (importing it also puts the project on sys.path)
from tests.fakes.sheets_server import SAMPLE_HEADER, SAMPLE_ROWS, SheetsStandIn

CONDITIONS = ("healthy", "slow", "429", "hung")
SHEETS_KINDS = ("metadata", "read", "write", "append", "structure")  # requests to the Sheets API
SLOW_SECONDS = 5.0


def _csv_rows(name: str) -> list[list[str]]:
    with open(Path(ROOT) / "data" / name, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f)]


def inventory_rows(n: int) -> list[list[str]]:
    """Header + n unit rows: the sample units first, then generated ones in the same categories."""
    rows = [list(SAMPLE_HEADER)]
    cats = [("EX", "Excavators", "Mini Excavator", 325, 1300), ("SS", "Skid Steers", "Skid Steer", 275, 1100),
            ("LF", "Lifts", "Scissor Lift", 140, 520), ("GN", "Generators", "Generator", 95, 380),
            ("CP", "Compaction", "Plate Compactor", 85, 340), ("TR", "Trailers", "Utility Trailer", 60, 240)]
    base = [list(r) for r in SAMPLE_ROWS][:n]
    rows.extend(base)
    i = 0
    while len(rows) - 1 < n:
        pre, cat, name, d, w = cats[i % len(cats)]
        status = "AVAILABLE" if i % 3 else "RENTED"
        rows.append([f"{pre}-{100 + i:04d}", f"{name} #{i}", cat, status, str(d), str(w),
                     f"{name} in good condition, unit {i}"])
        i += 1
    return rows


class Sheets:
    def __init__(self, rows: int = 20):
        self.s = SheetsStandIn().start(quiet=True)  # keep the bench's output readable
        self.set_inventory(rows)
        # the sheet as docs/google-sheet.md sets it up: without these tabs every refresh costs a
        # metadata request and a second batchGet (SheetStore.read_all), which is not what we measure
        self.s.set_rows("Reservations", [_csv_rows("reservations.csv")[0]])
        self.s.set_rows("Settings", _csv_rows("settings.csv"))
        self.condition = "healthy"
        self._sa_json = self.s.service_account_json()

    def set_inventory(self, n: int) -> None:
        self.s.set_rows("Equipment", inventory_rows(n))
        self.rows = n

    def set_condition(self, cond: str) -> None:
        self.s.clear_faults()
        if cond == "healthy":
            pass
        elif cond == "slow":
            for k in ("metadata", "read"):
                self.s.delay(k, SLOW_SECONDS)
        elif cond == "429":
            for k in ("metadata", "read"):
                self.s.fail(k, 429)
        elif cond == "hung":
            for k in ("metadata", "read"):
                self.s.hang(k)
        else:
            raise ValueError(cond)
        self.condition = cond

    def counts(self) -> dict[str, int]:
        c = dict(self.s.counts)
        c["sheets_api"] = sum(c.get(k, 0) for k in SHEETS_KINDS)
        return c

    def reset_counts(self) -> None:
        self.s.reset_counts()

    def env(self, state_dir: str | os.PathLike | None = None, **extra: str) -> dict[str, str]:
        env = {
            "GOOGLE_SHEET_ID": self.s.spreadsheet_id,
            "GOOGLE_SERVICE_ACCOUNT_JSON": self._sa_json,
            "GOOGLE_SHEETS_API_URL": self.s.url,
            "EQUIPMENT_WORKSHEET": "Equipment",
        }
        if state_dir is not None:
            env["STATE_DIR"] = str(state_dir)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def stop(self) -> None:
        self.s.stop()


def new_state_dir(tag: str) -> Path:
    base = Path(tempfile.gettempdir()) / "bench-state"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=tag + "-", dir=base))
