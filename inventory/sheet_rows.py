"""Rows of the shop's sheet changed by identity, never by position.

Staff insert, delete and sort rows at any moment, so a row number read a second ago can name
another reservation now. The Sheets API's developer metadata is attached to a row and moves with
it ("if developer metadata is associated with row 5 and another row is then inserted above it,
the metadata stays with what is now row 6"; deleted with the row). So each reservation row the
agent changes carries a tag `rental.ref = <ref>`, and every read and write of that row goes through
the tag (values:batchGetByDataFilter / values:batchUpdateByDataFilter), wherever the row is.

Tagging itself names a row by index (the only positional step): it is verified right after by
reading the row through its new tag, and a tag that landed on another row is removed and placed
again. A wrong tag is harmless until used, and it is never used unverified.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import gspread

logger = logging.getLogger("equipment")

TAG_KEY = "rental.ref"
BASE = "https://sheets.googleapis.com/v4/spreadsheets"
TAG_ATTEMPTS = 4


class RowMissing(Exception):
    """No row carries this reservation's Ref (deleted by staff, or never written)."""


def tag_id(ref: str) -> int:
    """Our metadata id for a ref: positive, stable, so a retry can find and remove its own tag."""
    return int.from_bytes(hashlib.sha256(f"{TAG_KEY}:{ref}".encode()).digest()[:4], "big") % 2_000_000_000 + 1


def _lookup(ref: str) -> dict[str, Any]:
    return {"developerMetadataLookup": {"metadataKey": TAG_KEY, "metadataValue": ref}}


class TaggedRows:
    def __init__(self, http: gspread.HTTPClient, spreadsheet_id: str, worksheet: str):
        self.http = http
        self.id = spreadsheet_id
        self.worksheet = worksheet

    def _a1(self, cells: str) -> str:
        return "'" + self.worksheet.replace("'", "''") + "'!" + cells

    def read(self, ref: str) -> tuple[list[str], list[str]] | None:
        """(header, the tagged row's cells), in one request; None when no row carries the tag."""
        body = {"dataFilters": [{"a1Range": self._a1("1:1")}, _lookup(ref)],
                "majorDimension": "ROWS", "valueRenderOption": "FORMATTED_VALUE"}
        data = self.http.request("post", f"{BASE}/{self.id}/values:batchGetByDataFilter", json=body).json()
        ranges = data.get("valueRanges") or []
        header: list[str] = []
        row: list[str] | None = None
        for item in ranges:
            values = (item.get("valueRange") or {}).get("values") or []
            filters = item.get("dataFilters") or []
            if any("a1Range" in f for f in filters):
                header = [str(c) for c in (values[0] if values else [])]
            elif any("developerMetadataLookup" in f for f in filters):
                row = [str(c) for c in (values[0] if values else [])]
        return (header, row) if row is not None else None

    def _grid_id(self) -> int:
        meta = self.http.request("get", f"{BASE}/{self.id}", params={"fields": "sheets.properties(sheetId,title)"})
        for sheet in meta.json().get("sheets") or []:
            props = sheet.get("properties") or {}
            if props.get("title") == self.worksheet:
                return int(props["sheetId"])
        raise RowMissing(f"no worksheet {self.worksheet!r}")

    def _untag(self, ref: str) -> None:
        try:
            self.http.batch_update(self.id, {"requests": [{"deleteDeveloperMetadata": {"dataFilter": _lookup(ref)}}]})
        except gspread.exceptions.APIError as e:
            if e.response.status_code not in (400, 404):  # nothing to delete
                raise

    def ensure_tag(self, ref: str, find_row: Any, matches: Any) -> tuple[list[str], list[str]]:
        """The row carrying `ref`, tagged and verified: (header, cells). `find_row()` returns the
        0-based grid row index where the Ref is now (a fresh read), or None; `matches(header,
        cells)` tells whether a row read through the tag is really this reservation."""
        found = self.read(ref)
        if found is not None and matches(*found):
            return found
        grid = self._grid_id()
        for _ in range(TAG_ATTEMPTS):
            if found is not None:  # a tag on the wrong row (rows moved as it was placed): move it
                self._untag(ref)
            index = find_row()
            if index is None:
                raise RowMissing(ref)
            self.http.batch_update(self.id, {"requests": [{"createDeveloperMetadata": {"developerMetadata": {
                "metadataId": tag_id(ref), "metadataKey": TAG_KEY, "metadataValue": ref, "visibility": "DOCUMENT",
                "location": {"dimensionRange": {"sheetId": grid, "dimension": "ROWS", "startIndex": index,
                                                "endIndex": index + 1}}}}}]})
            found = self.read(ref)
            if found is not None and matches(*found):
                return found
            logger.info("Reservation %s: rows moved while it was tagged - tagging it again", ref)
        if found is not None:  # the last tag landed on another row: not left there
            self._untag(ref)
        raise RowMissing(f"{ref}: the row kept moving while it was tagged")

    def release(self, ref: str) -> None:
        """Removes the reservation's tag (a sheet holds at most 30,000 characters of metadata)."""
        self._untag(ref)

    def write(self, ref: str, cells: list[str | None]) -> None:
        """The tagged row's cells from column A, RAW, wherever the row is now; a None cell is left
        as it is (the API skips null values), so what staff typed in other cells meanwhile stays."""
        body = {"valueInputOption": "RAW",
                "data": [{"dataFilter": _lookup(ref), "majorDimension": "ROWS", "values": [cells]}]}
        result = self.http.request("post", f"{BASE}/{self.id}/values:batchUpdateByDataFilter", json=body).json()
        if not result.get("totalUpdatedRows"):
            raise RowMissing(f"{ref}: no row carries its tag any more")
