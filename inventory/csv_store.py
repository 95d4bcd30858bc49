"""The embedded default: a CSV file with the sheet's columns, so a fresh clone behaves like the
sheet. Bookings rewrite it atomically under a file lock; the audit trail is STATE_DIR/bookings.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from inventory.files import Locks, append_durable, atomic_write, csv_text, neutralise
from inventory.model import InventoryConfigError
from inventory.table import LOG_HEADER, Table
from settings import InventorySettings


class CsvStore:
    source = "csv"

    def __init__(self, cfg: InventorySettings, locks: Locks):
        self.path = Path(cfg.csv_path).resolve()
        self.origin = f"csv:{self.path}"
        self.log_path = Path(cfg.state_dir) / "bookings.csv"
        self._locks = locks

    def prepare_text(self, s: str) -> str:
        return neutralise(s)

    def read_table(self) -> Table:
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                rows = [list(r) for r in csv.reader(f)]
        except OSError as e:
            raise InventoryConfigError(f"EQUIPMENT_CSV: cannot read {str(self.path)!r} ({e.strerror or e})") from e
        return Table(rows[0] if rows else [], rows[1:], f"inventory file {self.path.name!r}")

    def write_unit(self, row_index: int, equipment_id: str, fields: dict[str, str], table: Table) -> None:
        with self._locks.named("csv", timeout=10):
            fresh = self.read_table()
            found = fresh.find(equipment_id)  # by ID: the file may have changed since it was read
            if found is None:
                raise InventoryConfigError(f"unit {equipment_id!r} disappeared from {self.path.name}")
            _, row = found
            for k, v in fields.items():
                if k in fresh.cols:
                    row[fresh.cols[k]] = v
            atomic_write(self.path, csv_text([fresh.header] + fresh.rows))

    def log_refs(self) -> set[str]:
        try:
            with open(self.log_path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except FileNotFoundError:
            return set()
        return {r[0].strip() for r in rows[1:] if r and r[0].strip()}

    def append_log(self, row: list[str]) -> None:
        with self._locks.named("csv", timeout=10):
            new = not self.log_path.exists() or self.log_path.stat().st_size == 0
            append_durable(self.log_path, csv_text(([LOG_HEADER] if new else []) + [row]))
