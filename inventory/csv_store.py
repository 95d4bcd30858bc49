"""The embedded default, so a fresh clone behaves like the sheet: three CSV files with the sheet's
tabs and columns, side by side (EQUIPMENT_CSV, and reservations.csv and settings.csv in the same
folder). Reservations are appended, and changed by Ref, under a file lock with an atomic rewrite;
the history is STATE_DIR/bookings.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from inventory.files import Locks, append_durable, atomic_write, csv_text, neutralise
from inventory.model import InventoryConfigError
from inventory.reservations import RESERVATION_HEADER
from inventory.table import LOG_HEADER, SourceData, Table, header_key
from settings import InventorySettings


def _cell(value: str) -> str:
    """A cell as written, without the apostrophe neutralise() put before = + - @."""
    return value[1:] if value[:1] == "'" and value[1:2] in ("=", "+", "-", "@", "\t", "\r") else value


def _rows(path: Path, as_written: bool = False) -> list[list[str]] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [r if as_written else [_cell(c) for c in r] for r in csv.reader(f)]
    except FileNotFoundError:
        return None


class CsvStore:
    source = "csv"

    def __init__(self, cfg: InventorySettings, locks: Locks):
        self.path = Path(cfg.csv_path).resolve()
        self.reservations_path = self.path.with_name("reservations.csv")
        self.settings_path = self.path.with_name("settings.csv")
        self.origin = f"csv:{self.path}"
        self.log_path = Path(cfg.state_dir) / "bookings.csv"
        self._locks = locks

    def prepare_text(self, s: str) -> str:
        return neutralise(s)

    def read_all(self) -> SourceData:
        try:
            rows = _rows(self.path)
        except OSError as e:
            raise InventoryConfigError(f"EQUIPMENT_CSV: cannot read {str(self.path)!r} ({e.strerror or e})") from e
        if rows is None:
            raise InventoryConfigError(f"EQUIPMENT_CSV: no inventory file at {str(self.path)!r}")
        return SourceData(Table(rows[0] if rows else [], rows[1:], f"inventory file {self.path.name!r}"),
                          self.read_reservations(), _rows(self.settings_path))

    def read_reservations(self) -> Table | None:
        rows = _rows(self.reservations_path)
        if rows is None:
            return None
        return Table(rows[0] if rows else [], rows[1:], f"reservations file {self.reservations_path.name!r}")

    def append_reservation(self, values: dict[str, str]) -> None:
        with self._locks.named("csv", timeout=10):
            table = self.read_reservations()
            if table is None:
                atomic_write(self.reservations_path, csv_text([RESERVATION_HEADER]))
                table = Table(list(RESERVATION_HEADER), [], "reservations")
            append_durable(self.reservations_path, csv_text([table.row_for(values)]))

    def update_reservation(self, ref: str, values: dict[str, str], equipment_id: str) -> None:
        """By Ref, under the file lock: the row is found in the file as it is now."""
        with self._locks.named("csv", timeout=10):
            table = self.read_reservations()
            index = table.find_ref(ref) if table is not None else None
            if table is None or index is None or table.get(table.rows[index], "equipmentid") != equipment_id:
                raise InventoryConfigError(f"reservation {ref} is not in {self.reservations_path.name} any more")
            # the file as staff left it, but for the changed cells (neutralised: caller text stays data)
            rows = _rows(self.reservations_path, as_written=True) or []
            row = rows[index + 1]
            for k, v in values.items():
                if k in table.cols:
                    row.extend([""] * (table.cols[k] + 1 - len(row)))
                    row[table.cols[k]] = neutralise(v)
            atomic_write(self.reservations_path, csv_text(rows))

    def log_keys(self) -> set[str]:
        rows = _rows(self.log_path)
        if not rows:
            return set()
        return Table(rows[0], rows[1:], "history").history_keys()

    def append_log(self, row: list[str]) -> None:
        with self._locks.named("csv", timeout=10):
            rows = _rows(self.log_path)
            if not rows:
                append_durable(self.log_path, csv_text([LOG_HEADER, row]))
                return
            table = Table(rows[0], [], "history")
            append_durable(self.log_path, csv_text([table.row_for(
                {header_key(h): v for h, v in zip(LOG_HEADER, row)})]))
