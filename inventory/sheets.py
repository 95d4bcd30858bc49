"""The Google Sheet as a Store: the Equipment, Reservations and Settings tabs read in one request,
reservations appended RAW and changed by identity (inventory/sheet_rows.py), history rows appended
by header. Retries are ours, bounded (inventory/retry.py); the HTTP side is inventory/google_http.py.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Mapping

import gspread
from google.auth.exceptions import RefreshError

from inventory import google_http
from inventory.model import InventoryConfigError
from inventory.reservations import RESERVATION_HEADER
from inventory.sheet_rows import RowMissing, TaggedRows
from inventory.table import LOG_HEADER, SourceData, Table, header_key
from settings import InventorySettings

logger = logging.getLogger("equipment")

APPEND = {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}


class SheetStore:
    source = "sheet"

    def __init__(self, cfg: InventorySettings):
        self.cfg = cfg
        self.origin = f"sheet:{cfg.sheet_id}:{cfg.equipment_worksheet}"
        self._client: gspread.Client | None = None
        self._lock = threading.Lock()

    def prepare_text(self, s: str) -> str:
        return s  # written RAW: stored as text, never a formula

    def http(self) -> gspread.HTTPClient:
        with self._lock:
            if self._client is None:
                self._client = google_http.client(self.cfg)
            return self._client.http_client

    @staticmethod
    def _ws(title: str) -> str:
        return "'" + title.replace("'", "''") + "'"

    def _var(self, worksheet: str) -> str:
        return {self.cfg.equipment_worksheet: "EQUIPMENT_WORKSHEET",
                self.cfg.reservations_worksheet: "RESERVATIONS_WORKSHEET",
                self.cfg.settings_worksheet: "SETTINGS_WORKSHEET"}.get(worksheet, "BOOKINGS_WORKSHEET")

    def _translate(self, e: Exception, worksheet: str) -> Exception:
        if isinstance(e, gspread.exceptions.APIError):
            status = e.response.status_code
            msg = str(e.error.get("message", "")) if isinstance(e.error, Mapping) else ""
            email = (self.cfg.credentials_info or {}).get("client_email", "the service account")
            if status == 403:
                return InventoryConfigError(
                    f"Google Sheet {self.cfg.sheet_id!r} is not shared with {email} (HTTP 403: {msg}); "
                    f"share it with that address as Editor")
            if status == 404:
                return InventoryConfigError(f"Google Sheet {self.cfg.sheet_id!r} was not found (GOOGLE_SHEET_ID)")
            if status == 401:
                return InventoryConfigError(f"Google rejected the service-account credentials (HTTP 401: {msg})")
            if status == 400 and "parse range" in msg:
                return InventoryConfigError(f"Google Sheet {self.cfg.sheet_id!r} has no worksheet named "
                                            f"{worksheet!r} ({self._var(worksheet)})")
        if isinstance(e, RefreshError) and not getattr(e, "retryable", False):
            return InventoryConfigError(f"the service-account token request was refused: {e}")
        return e

    @staticmethod
    def _table(values: list[list[Any]], where: str) -> Table:
        header = [str(h) for h in values[0]] if values else []
        return Table(header, [[str(c) for c in r] for r in values[1:]], where)

    # -- reading ------------------------------------------------------------------------------
    def _titles(self) -> set[str]:
        meta = self.http().fetch_sheet_metadata(self.cfg.sheet_id, params={"fields": "sheets.properties.title"})
        return {str((s.get("properties") or {}).get("title", "")) for s in meta.get("sheets") or []}

    def read_all(self) -> SourceData:
        """One values:batchGet for the three tabs; a sheet without the Reservations or Settings tab
        costs a metadata request more (an old sheet, until the first booking creates the tab)."""
        tabs = [self.cfg.equipment_worksheet, self.cfg.reservations_worksheet, self.cfg.settings_worksheet]
        try:
            try:
                data = self.http().values_batch_get(self.cfg.sheet_id, [self._ws(t) for t in tabs])
            except gspread.exceptions.APIError as e:
                if e.response.status_code != 400:
                    raise
                present = self._titles()
                if self.cfg.equipment_worksheet not in present:
                    raise
                tabs = [t for t in tabs if t in present]
                data = self.http().values_batch_get(self.cfg.sheet_id, [self._ws(t) for t in tabs])
        except Exception as e:
            raise self._translate(e, self.cfg.equipment_worksheet) from e
        got = {t: (r.get("values") or []) for t, r in zip(tabs, data.get("valueRanges") or [])}
        reservations = got.get(self.cfg.reservations_worksheet)
        settings = got.get(self.cfg.settings_worksheet)
        return SourceData(
            equipment=self._table(got.get(self.cfg.equipment_worksheet, []), f"worksheet {self.cfg.equipment_worksheet!r}"),
            reservations=None if reservations is None else self._table(
                reservations, f"worksheet {self.cfg.reservations_worksheet!r}"),
            settings=None if settings is None else [[str(c) for c in r] for r in settings])

    def read_reservations(self) -> Table | None:
        ws = self.cfg.reservations_worksheet
        try:
            data = self.http().values_get(self.cfg.sheet_id, self._ws(ws))
        except gspread.exceptions.APIError as e:
            if e.response.status_code == 400:
                return None  # no Reservations tab yet
            raise self._translate(e, ws) from e
        return self._table(data.get("values") or [], f"worksheet {ws!r}")

    # -- writing ------------------------------------------------------------------------------
    def _create_tab(self, title: str, header: list[str]) -> None:
        """A missing tab, created with its header in one batchUpdate (all or nothing), so no other
        writer's row can land above the header. 400: another process created it meanwhile."""
        grid = random.randint(1_000_000, 2_000_000_000)
        try:
            self.http().batch_update(self.cfg.sheet_id, {"requests": [
                {"addSheet": {"properties": {"sheetId": grid, "title": title, "gridProperties": {
                    "rowCount": 1000, "columnCount": len(header)}}}},
                {"updateCells": {"start": {"sheetId": grid, "rowIndex": 0, "columnIndex": 0},
                                 "rows": [{"values": [{"userEnteredValue": {"stringValue": h}} for h in header]}],
                                 "fields": "userEnteredValue"}},
            ]})
        except gspread.exceptions.APIError as e:
            if e.response.status_code != 400:  # 400 = exists already
                raise self._translate(e, title) from e

    def _header(self, title: str, default: list[str]) -> list[str]:
        """The tab's header row (creating the tab with `default` if it is missing)."""
        try:
            values = self.http().values_get(self.cfg.sheet_id, f"{self._ws(title)}!1:1").get("values") or []
        except gspread.exceptions.APIError as e:
            if e.response.status_code != 400:
                raise self._translate(e, title) from e
            self._create_tab(title, default)
            return list(default)
        if not values or not any(str(h).strip() for h in values[0]):
            return list(default)  # an empty tab: rows go in our order
        return [str(h) for h in values[0]]

    def _append(self, title: str, row: list[str]) -> None:
        try:
            self.http().values_append(self.cfg.sheet_id, f"{self._ws(title)}!A1", APPEND, {"values": [row]})
        except Exception as e:
            raise self._translate(e, title) from e

    def append_reservation(self, values: dict[str, str]) -> None:
        """One RAW append of the reservation's row, its cells placed by the tab's header."""
        title = self.cfg.reservations_worksheet
        header = self._header(title, RESERVATION_HEADER)
        table = Table(header, [], f"worksheet {title!r}")
        missing = [k for k in ("ref", "equipmentid", "start", "end", "status") if k not in table.cols]
        if missing:
            raise InventoryConfigError(f"worksheet {title!r} has no {', '.join(missing)} column(s)")
        self._append(title, table.row_for(values))

    def update_reservation(self, ref: str, values: dict[str, str], equipment_id: str) -> None:
        """The row carrying `ref`, changed through its identity tag wherever staff moved it, then
        read back: a write is trusted only once the row shows it."""
        title = self.cfg.reservations_worksheet
        rows = TaggedRows(self.http(), self.cfg.sheet_id, title)

        def cols(header: list[str]) -> dict[str, int]:
            return {header_key(h): i for i, h in enumerate(header) if header_key(h)}

        def matches(header: list[str], cells: list[str]) -> bool:
            c = cols(header)
            return (c.get("ref") is not None and len(cells) > c["ref"] and cells[c["ref"]].strip() == ref
                    and (c.get("equipmentid") is None
                         or (len(cells) > c["equipmentid"] and cells[c["equipmentid"]].strip() == equipment_id)))

        def find_row() -> int | None:
            table = self.read_reservations()
            index = table.find_ref(ref) if table is not None else None
            return None if index is None else index + 1  # grid row: the header is row 0

        try:
            header, cells = rows.ensure_tag(ref, find_row, matches)
            c = cols(header)
            new: list[str | None] = [None] * len(header)  # only the changed cells: the rest stay as they are
            for k, v in values.items():
                if k in c:
                    new[c[k]] = v
            rows.write(ref, new)
            check = rows.read(ref)
        except RowMissing as e:
            raise InventoryConfigError(f"reservation {ref} is not in worksheet {title!r} any more ({e})") from e
        except gspread.exceptions.APIError as e:
            raise self._translate(e, title) from e
        if check is None or not matches(*check) or any(
                k in c and (check[1][c[k]] if len(check[1]) > c[k] else "").strip() != v.strip()
                for k, v in values.items()):
            raise InventoryConfigError(f"reservation {ref}: the change did not read back (staff edited the row?)")
        # a sheet holds at most 30,000 characters of tags (~1,900 rows), so none outlives its change;
        # the next change tags the row again
        try:
            rows.release(ref)
        except Exception as e:  # noqa: BLE001 - the change is made; a tag left behind is harmless
            logger.info("Reservation %s changed; its row tag stays (%s)", ref, e)

    def log_keys(self) -> set[str]:
        """What the history tab already holds: each BOOKING/CALLBACK ref, and ref|kind|at for changes."""
        ws = self.cfg.bookings_worksheet
        try:
            data = self.http().values_get(self.cfg.sheet_id, self._ws(ws))
        except gspread.exceptions.APIError as e:
            if e.response.status_code == 400:
                return set()  # no history tab yet
            raise self._translate(e, ws) from e
        return self._table(data.get("values") or [], f"worksheet {ws!r}").history_keys()

    def append_log(self, row: list[str]) -> None:
        """A history row (LOG_HEADER order), its cells placed by the tab's own header."""
        title = self.cfg.bookings_worksheet
        table = Table(self._header(title, LOG_HEADER), [], f"worksheet {title!r}")
        self._append(title, table.row_for({header_key(h): v for h, v in zip(LOG_HEADER, row)}))
