"""A local Google Sheets API v4 stand-in, driven through real gspread and google-auth.

    from tests.fakes.sheets_server import SheetsStandIn
    sheets = SheetsStandIn().start()
    sheets.set_rows("Equipment", [["ID", "Name", "Status"], ["EX-1", "Mini excavator", "AVAILABLE"]])
    env = {"GOOGLE_SHEET_ID": sheets.spreadsheet_id,
           "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
           "GOOGLE_SHEETS_API_URL": sheets.url}
    ...
    sheets.stop()

It answers, on 127.0.0.1 (``sheets.counts[kind]`` counts every request received, faulted ones too):
- ``POST /token``                                            kind "token"
- ``GET  /v4/spreadsheets/{id}``                             kind "metadata": the spreadsheet resource,
  cut to the ``fields`` mask when one is given (``sheets.properties.title``,
  ``sheets.properties(sheetId,title)``, ``sheets(properties(title))``, ``*``: the partial-response syntax)
- ``GET  .../values/{range}``, ``GET .../values:batchGet``   kind "read"; batchGet answers
  ``valueRanges`` in the order of its ``ranges``; every ``range`` is given back as Sheets does, bounded
  by the grid (``'Equipment'`` -> ``Equipment!A1:Z1000``); trailing empty cells and rows are dropped,
  empty rows inside the range come back as ``[]``; one bad range fails the whole request (400
  "Unable to parse range")
- ``POST .../values:batchUpdate``, ``PUT .../values/{range}`` kind "write"
- ``POST .../values/{range}:append``                         kind "append": after the last non-empty
  row; INSERT_ROWS inserts new rows there (rows below, and their metadata, move down). Answers
  ``tableRange`` and ``updates.updatedRange`` (the rows written, e.g. ``Reservations!A5:L5``)
- ``POST .../values:batchGetByDataFilter``                   kind "filter_read": ``dataFilters`` of
  ``a1Range``, ``gridRange`` or ``developerMetadataLookup``; answers ``valueRanges`` of
  ``{"valueRange": {"range", "majorDimension", "values"}, "dataFilters": [the filters that matched]}``,
  one per location matched (a filter matching nothing adds nothing); a row's range is the whole
  grid row (``Reservations!A7:L7``)
- ``POST .../values:batchUpdateByDataFilter``                kind "filter_write": ``data`` of
  ``{"dataFilter", "majorDimension", "values"}``, written into every range the filter matches
  (values larger than the range: 400, nothing written); answers ``totalUpdatedRows`` /
  ``Columns`` / ``Cells`` / ``Sheets`` and ``responses[{updatedRange, updatedRows, updatedColumns,
  updatedCells, dataFilter}]``, zero counts omitted (proto3 JSON): a filter that matches nothing
  writes nothing and the answer has no ``totalUpdatedRows``
- ``POST /v4/spreadsheets/{id}:batchUpdate``                 kind "structure", all or nothing:
  addSheet (optional sheetId; gridProperties), updateCells / appendCells of string values,
  createDeveloperMetadata / updateDeveloperMetadata / deleteDeveloperMetadata, insertDimension /
  deleteDimension (ROWS),
  sortRange. ``sheets.ops[request type]`` counts them. Anything else: 400 (not silently ignored)
- ``POST .../developerMetadata:search`` kind "dm_search", ``GET .../developerMetadata/{id}`` kind "dm_get"

Values: JSON ``null`` in values written leaves that cell as it is (documented: "Null values will be
skipped"); ``""`` clears it. Writes (not appends) beyond the grid fail with 400 "exceeds grid limits".
RAW values are stored verbatim. A USER_ENTERED string starting with "=" is treated as a formula, as
Sheets would: the cell then reads back as "#FORMULA" and the write is recorded in
``sheets.formula_writes`` (so a test can prove caller text was sent RAW). ``sheets.write_log`` holds
one entry per row any request wrote: ``{"kind", "title", "row" (0-based, at that moment),
"before", "after"}`` (staff edits and shuffles are not in it).

Developer metadata (ROWS only, as the product uses it) is attached to the row itself, as the
Sheets API documents ("if developer metadata is associated with row 5 and another row is then
inserted above row 5, that original metadata will still be associated with the row it was first
associated with (what is now row 6). If the associated object is deleted its metadata is deleted
too"): it moves when rows are inserted or deleted above it and is deleted with its row. Sorting
moves it with its row too (``sheets.metadata_follows_sort = False`` keeps it at its index instead:
the API reference does not say which a sort does). createDeveloperMetadata checks what the API
does: a key and a visibility, a location of exactly one row inside the grid (the reference: "must
represent a single row or column; it cannot be unbounded or span multiple rows"), a positive
metadataId not already in use in the spreadsheet ("If you specify an ID that's already in use, the
request will be unsuccessful": 400), and 30,000 characters of keys and values per sheet.
``sheets.metadata()`` lists what is there (with each row's index and cells), ``sheets.meta_log``
every create/delete with the cells of the row it was on.

Staff at the sheet (no request counted): ``set_rows``, ``set_cell``, ``insert_row(title, index,
cells)``, ``append_row``, ``delete_row``, ``sort_rows(title, column, descending)``,
``tag_row(title, index, key, value)``. ``shuffle(seed, ...)``: before every Sheets request, staff
insert a scratch row at a random place, delete a scratch row (``delete_any=`` a predicate: any data
row it accepts may go instead) and sort the data rows (header stays) of Equipment and Reservations
by a random column, reproducibly for a seed; ``sheets.shuffle_stats`` counts what was done,
``sheets.is_scratch(title, cells)`` tells the scratch rows apart (Ref ``FILL…`` / ID ``ZZ-FILL…``,
or blank). ``stop_shuffle()``.

Faults, per kind (or "*"): ``fail(kind, status, times=None, message=None)``, ``delay(kind, seconds,
times=None)`` (the request is applied after the delay, even if the client gave up meanwhile: a late
write), ``reset(kind, times=None)`` (connection reset, no response), ``hang(kind, times=None)`` (no
response until ``release()`` or ``stop()``; not applied), ``hang_after(kind, times=None)`` (applied
at once, then no response until ``release()``: a write that landed but whose answer was lost),
``hold(kind, times=None)`` (no answer, and applied only when ``let_through()`` is called: a write
that lands late, at a moment the test chooses), ``forbid()`` (403 on every /v4 path, as for a sheet
not shared with the account). Every fault takes ``when="text"``: it then applies only to requests
whose path (query included, unescaped) or body contains that text (a booking ref, a range).
``times=None`` means always; ``clear_faults()`` removes them (and the hooks). ``after(kind, fn,
times=1, when=None)`` runs ``fn()`` right after a request of that kind was applied (before its
answer is sent): another writer landing in between two requests of the code under test.
``before(kind, fn, times=1, when=None)`` runs it just before the request is applied.

``service_account_info()`` gives a service-account dict whose token_uri points here and whose
private_key is a fresh RSA key. ``install_network_guard()`` makes any non-loopback connect raise.

The child process of the cross-process tests is ``tests/fakes/child.py``.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_SPREADSHEET_ID = "test-spreadsheet-1"
METADATA_CHARS_PER_SHEET = 30_000  # "Each sheet within a spreadsheet: 30,000 characters" (keys + values)
DEFAULT_ROWS, DEFAULT_COLUMNS = 1000, 26

SAMPLE_HEADER = ["ID", "Name", "Category", "Status", "Daily Rate", "Weekly Rate", "Description",
                 "Renter Name", "Renter Phone", "Rental Start", "Rental End", "Booking Ref", "Booked At"]
SAMPLE_ROWS = [
    ["EX-001", "Kubota KX040 Mini Excavator", "Excavators", "AVAILABLE", "325", "1300", "4-ton mini excavator"],
    ["EX-002", "Kubota KX040 Mini Excavator", "Excavators", "RENTED", "325", "1300", "4-ton mini excavator",
     "Dana Cole", "+1 555 010 2233", "2025-01-01", "2025-01-05", "ABC234", "2025-01-01T08:00:00"],
    ["EX-003", "CAT 308 Excavator", "Excavators", "AVAILABLE", "450", "1800", "8-ton excavator"],
    ["SS-001", "Bobcat S650 Skid Steer", "Skid Steers", "AVAILABLE", "275", "1100", "Skid steer loader"],
    ["SS-002", "Bobcat S650 Skid Steer", "Skid Steers", "MAINTENANCE", "275", "1100", "Skid steer loader"],
    ["LF-001", "Genie GS-1930 Scissor Lift", "Lifts", "AVAILABLE", "140", "520", "19 ft electric scissor lift"],
    ["GN-001", "Honda EU7000 Generator", "Generators", "available", "95", "380", "7 kW inverter generator"],
]


def sample_rows() -> list[list[str]]:
    return [list(SAMPLE_HEADER)] + [list(r) for r in SAMPLE_ROWS]


# ---------------------------------------------------------------------------------------------
# A1 notation


def col_to_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - 64)
    return n - 1


def index_to_col(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


_CELL = re.compile(r"^([A-Za-z]*)(\d*)$")


def parse_range(a1: str) -> tuple[str, int, int, int | None, int | None]:
    """'Sheet'!A1:Z -> (title, row0, col0, row1|None, col1|None), 0-based inclusive bounds."""
    if "!" in a1:
        title, cells = a1.rsplit("!", 1)
    else:
        title, cells = a1, ""
    if title.startswith("'") and title.endswith("'"):
        title = title[1:-1].replace("''", "'")
    if not cells:
        return title, 0, 0, None, None
    parts = cells.split(":")
    m0 = _CELL.match(parts[0])
    if not m0 or len(parts) > 2:
        raise ValueError(a1)
    c0 = col_to_index(m0.group(1)) if m0.group(1) else 0
    r0 = int(m0.group(2)) - 1 if m0.group(2) else 0
    if len(parts) == 1:
        return title, r0, c0, r0, c0
    m1 = _CELL.match(parts[1])
    if not m1:
        raise ValueError(a1)
    c1 = col_to_index(m1.group(1)) if m1.group(1) else None
    r1 = int(m1.group(2)) - 1 if m1.group(2) else None
    return title, r0, c0, r1, c1


def a1_title(title: str) -> str:
    """A sheet title as Sheets writes it in a range: bare when it is a plain word, else quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", title) and not re.fullmatch(r"[A-Za-z]{1,3}\d+", title):
        return title
    return "'" + title.replace("'", "''") + "'"


def a1(title: str, r0: int, c0: int, r1: int, c1: int) -> str:
    first, last = f"{index_to_col(c0)}{r0 + 1}", f"{index_to_col(c1)}{r1 + 1}"
    return f"{a1_title(title)}!{first}" + ("" if first == last else f":{last}")


def _hkey(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(header)).casefold()


# ---------------------------------------------------------------------------------------------
# partial responses: the `fields` mask


def parse_fields(text: str) -> dict[str, Any]:
    """'sheets.properties(sheetId,title),spreadsheetId' -> {'sheets': {'properties': {...}}, ...};
    a leaf is None (the whole value)."""
    pos = 0

    def parse_list() -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while True:
            m = re.compile(r"\s*([A-Za-z0-9_*]+(?:\.[A-Za-z0-9_*]+)*)\s*").match(text, pos)
            if not m:
                raise ValueError(f"bad fields mask {text!r} at {pos}")
            pos = m.end()
            sub: dict[str, Any] | None = None
            if pos < len(text) and text[pos] == "(":
                pos += 1
                sub = parse_list()
                if pos >= len(text) or text[pos] != ")":
                    raise ValueError(f"bad fields mask {text!r}")
                pos += 1
            node = out
            names = m.group(1).split(".")
            for name in names[:-1]:
                nxt = node.get(name, {})
                if nxt is None:
                    break
                node[name] = nxt
                node = nxt
            else:
                last = names[-1]
                if sub is None or node.get(last, {}) is None:
                    node[last] = None
                else:
                    node[last] = {**(node.get(last) or {}), **sub}
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            return out

    tree = parse_list()
    if pos != len(text):
        raise ValueError(f"bad fields mask {text!r}")
    return tree


def apply_fields(value: Any, tree: dict[str, Any] | None) -> Any:
    if tree is None or "*" in tree:
        return value
    if isinstance(value, list):
        return [apply_fields(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: apply_fields(value[k], sub) for k, sub in tree.items() if k in value}
    return value


# ---------------------------------------------------------------------------------------------
# the server


class _Reset(Exception):
    pass


class _BadRange(Exception):
    pass


class _Refused(Exception):
    """A request the API would answer 400 (the whole batch is rolled back)."""


Row = list  # a row object: its identity is the row (metadata is attached to it)


class SheetsStandIn:
    def __init__(self, spreadsheet_id: str = DEFAULT_SPREADSHEET_ID, title: str = "Rental Inventory"):
        self.spreadsheet_id = spreadsheet_id
        self.title = title
        self.sheets: dict[str, list[list[str]]] = {}
        self._sheet_ids: dict[str, int] = {}
        self._grid: dict[str, list[int]] = {}  # title -> [rowCount, columnCount] as set (grown lazily)
        self._meta: dict[int, dict[str, Any]] = {}  # metadataId -> {key, value, visibility, title, row}
        self.metadata_follows_sort = True
        self.counts: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()  # :batchUpdate request types
        self.requests: list[tuple[str, str, str]] = []  # (kind, method, path)
        self.formula_writes: list[tuple[str, str]] = []  # (range, value) sent USER_ENTERED with '='
        self.value_input_options: list[str] = []
        self.write_log: list[dict[str, Any]] = []
        self.meta_log: list[dict[str, Any]] = []
        self.shuffle_stats: Counter[str] = Counter()
        self._shuffle: dict[str, Any] | None = None
        self._scratch_n = 0
        self._faults: dict[str, list[dict[str, Any]]] = {}
        self._after: list[dict[str, Any]] = []
        self._before: list[dict[str, Any]] = []
        self._forbidden = False
        self._lock = threading.RLock()
        self._release = threading.Event()
        self._let_through = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tokens = 0
        self._ids = random.Random(20240611)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, quiet: bool = False) -> "SheetsStandIn":
        """Serve on a free port. quiet: no traceback on stderr for a connection the client dropped
        (a released hung request ends in a reset)."""
        handler = functools.partial(_Handler, self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if quiet:
            self._server.handle_error = lambda *a, **k: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sheets-stand-in",
                                        daemon=True, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let hung handlers go
        self._let_through.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "SheetsStandIn":
        return self.start() if self._server is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    # -- data (staff at the sheet: no request counted) ------------------------------------------
    def set_rows(self, title: str, rows: list[list[Any]]) -> None:
        """The tab's whole content, typed anew (its rows' metadata goes with the old rows)."""
        with self._lock:
            self.sheets[title] = [["" if v is None else str(v) for v in r] for r in rows]
            self._sheet_ids.setdefault(title, len(self._sheet_ids) + 1)
            width = max((len(r) for r in rows), default=0)
            self._grid[title] = [max(DEFAULT_ROWS, len(rows)), max(DEFAULT_COLUMNS, width)]
            self._prune_meta()

    def rows(self, title: str) -> list[list[str]]:
        with self._lock:
            return [list(r) for r in self.sheets.get(title, [])]

    def delete_sheet(self, title: str) -> None:
        with self._lock:
            self.sheets.pop(title, None)
            self._sheet_ids.pop(title, None)
            self._grid.pop(title, None)
            self._prune_meta()

    def records(self, title: str) -> list[dict[str, str]]:
        rows = self.rows(title)
        if not rows:
            return []
        header = rows[0]
        return [{h: (r[i] if i < len(r) else "") for i, h in enumerate(header)} for r in rows[1:]]

    def record(self, title: str, id_value: str, id_column: str = "ID") -> dict[str, str] | None:
        for rec in self.records(title):
            if rec.get(id_column) == id_value:
                return rec
        return None

    def set_cell(self, title: str, id_value: str, column: str, value: str) -> None:
        """Staff editing a cell by hand (no request counted)."""
        with self._lock:
            rows = self.sheets[title]
            c = rows[0].index(column)
            for r in rows[1:]:
                if r and r[0] == id_value:
                    while len(r) <= c:
                        r.append("")
                    r[c] = value
                    return
            raise KeyError(id_value)

    def insert_row(self, title: str, index: int, cells: list[Any] | dict[str, Any] = ()) -> list[str]:
        """Staff inserting a row at grid index `index` (0 = above the header) and typing `cells`
        (a list, or {header: value}). Rows below move down, with their metadata."""
        with self._lock:
            rows = self.sheets[title]
            row = self._cells(title, cells)
            while len(rows) < index:
                rows.append([])
            rows.insert(index, row)
            self._grid_of(title)[0] += 1
            return row

    def append_row(self, title: str, cells: list[Any] | dict[str, Any]) -> list[str]:
        """Staff typing a new row under the last non-empty row."""
        with self._lock:
            return self.insert_row(title, self._last_row(title), cells)

    def delete_row(self, title: str, index: int) -> list[str]:
        """Staff deleting the row at grid index `index`: rows below move up; its metadata is deleted."""
        with self._lock:
            row = self.sheets[title].pop(index)
            self._grid_of(title)[0] = max(1, self._grid_of(title)[0] - 1)
            self._prune_meta()
            return list(row)

    def sort_rows(self, title: str, column: str | int, descending: bool = False, header_rows: int = 1) -> None:
        """Staff sorting the data rows (Data > Sort range, header kept) by one column."""
        with self._lock:
            rows = self.sheets[title]
            c = column if isinstance(column, int) else [_hkey(h) for h in rows[0]].index(_hkey(column))
            self._sort(title, header_rows, len(rows), [(c, descending)])

    def tag_row(self, title: str, index: int, key: str, value: str = "", metadata_id: int | None = None,
                visibility: str = "DOCUMENT") -> int:
        """Developer metadata on the row at grid index `index`, as another program would leave it."""
        with self._lock:
            return self._create_meta({"metadataKey": key, "metadataValue": value, "metadataId": metadata_id,
                                      "visibility": visibility,
                                      "location": {"dimensionRange": {"sheetId": self._sheet_ids[title],
                                                                      "dimension": "ROWS", "startIndex": index,
                                                                      "endIndex": index + 1}}})["metadataId"]

    def metadata(self, title: str | None = None) -> list[dict[str, Any]]:
        """Row metadata now: [{"id", "key", "value", "title", "row" (grid index), "cells"}]."""
        with self._lock:
            self._prune_meta()
            out = []
            for mid, m in sorted(self._meta.items()):
                if title is not None and m["title"] != title:
                    continue
                i = self._index_of(m["title"], m["row"])
                out.append({"id": mid, "key": m["key"], "value": m["value"], "title": m["title"], "row": i,
                            "cells": list(m["row"])})
            return out

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.ops.clear()
            self.requests.clear()

    # -- staff shuffling rows between requests ---------------------------------------------------
    def shuffle(self, seed: int = 0, tabs: tuple[str, ...] = ("Equipment", "Reservations"), *, insert: bool = True,
                delete: bool = True, sort: bool = True, sort_columns: dict[str, list[str]] | None = None,
                delete_any: Callable[[str, list[str]], bool] | None = None, blank_every: int = 4) -> None:
        """Before every Sheets request from now on: in each tab, a scratch row inserted at a random
        place (one in `blank_every` left blank), one row deleted (a scratch row; with `delete_any`,
        any data row it accepts), and the data rows sorted by a random column (of
        `sort_columns[tab]` if given), ascending or descending. Reproducible for a seed."""
        with self._lock:
            self._shuffle = {"rng": random.Random(seed), "tabs": tabs, "insert": insert, "delete": delete,
                             "sort": sort, "sort_columns": sort_columns or {}, "delete_any": delete_any,
                             "blank_every": blank_every}

    def stop_shuffle(self) -> None:
        with self._lock:
            self._shuffle = None

    def is_scratch(self, title: str, cells: list[str] | dict[str, str]) -> bool:
        """A row the shuffle typed (or a blank one)."""
        values = list(cells.values()) if isinstance(cells, dict) else list(cells)
        if not any(str(v).strip() for v in values):
            return True
        return any(str(v).startswith(("FILL", "ZZ-FILL")) for v in values[:2])

    def _shuffle_now(self) -> None:
        s = self._shuffle
        if s is None:
            return
        rng: random.Random = s["rng"]
        for title in s["tabs"]:
            rows = self.sheets.get(title)
            if not rows:
                continue
            if s["insert"]:
                self._scratch_n += 1
                n = self._scratch_n
                blank = s["blank_every"] and rng.randrange(s["blank_every"]) == 0
                start = f"20{rng.randrange(27, 36)}-0{rng.randrange(1, 10)}-1{rng.randrange(0, 10)}"
                cells: dict[str, str] = {} if blank else {  # a unit never rentable, a booking never blocking
                    "ref": f"FILL{n}", "equipmentid": "ZZ-FILL", "id": f"ZZ-FILL-{n}",
                    "name": rng.choice(["scratch", "Staff note", "ask Bob", "zz temp"]) + f" {n}",
                    "category": "Scratch", "status": "CANCELLED" if title == "Reservations" else "RETIRED",
                    "start": start, "end": start, "rentername": rng.choice(["Al", "Zed", "Mo", "Bea"]),
                    "notes": "staff scratch row"}
                row = self._cells(title, {h: cells.get(_hkey(h), "") for h in rows[0]} if cells else [])
                rows.insert(rng.randrange(1, len(rows) + 1), row)
                self._grid_of(title)[0] += 1
                self.shuffle_stats["inserted"] += 1
            if s["delete"]:
                pred = s["delete_any"]
                candidates = [i for i, r in enumerate(rows) if i > 0 and (
                    pred(title, list(r)) if pred is not None else self.is_scratch(title, r))]
                if candidates:
                    rows.pop(rng.choice(candidates))
                    self.shuffle_stats["deleted"] += 1
                    self._prune_meta()
            if s["sort"] and len(rows) > 2:
                header = rows[0]
                choices = [i for i, h in enumerate(header) if str(h).strip()]
                wanted = s["sort_columns"].get(title)
                if wanted:
                    keys = [_hkey(h) for h in header]
                    choices = [keys.index(_hkey(w)) for w in wanted if _hkey(w) in keys] or choices
                self._sort(title, 1, len(rows), [(rng.choice(choices), rng.random() < 0.5)])
                self.shuffle_stats["sorted"] += 1

    # -- faults ---------------------------------------------------------------------------------
    def _add_fault(self, kind: str, fault: dict[str, Any], times: int | None, when: str | None = None) -> None:
        fault["remaining"] = times
        fault["when"] = when
        with self._lock:
            self._faults.setdefault(kind, []).append(fault)

    def fail(self, kind: str, status: int = 500, times: int | None = None, when: str | None = None,
             message: str | None = None) -> None:
        self._add_fault(kind, {"action": "status", "status": status, "message": message}, times, when)

    def delay(self, kind: str, seconds: float, times: int | None = None, when: str | None = None) -> None:
        self._add_fault(kind, {"action": "delay", "seconds": seconds}, times, when)

    def reset(self, kind: str, times: int | None = None, when: str | None = None) -> None:
        self._add_fault(kind, {"action": "reset"}, times, when)

    def hang(self, kind: str, times: int | None = None, when: str | None = None) -> None:
        self._release.clear()
        self._add_fault(kind, {"action": "hang"}, times, when)

    def hang_after(self, kind: str, times: int | None = None, when: str | None = None) -> None:
        self._release.clear()
        self._add_fault(kind, {"action": "hang_after"}, times, when)

    def hold(self, kind: str, times: int | None = None, when: str | None = None) -> None:
        self._let_through.clear()
        self._add_fault(kind, {"action": "hold"}, times, when)

    def let_through(self) -> None:
        """Applies every held request now (their clients have long given up)."""
        self._let_through.set()

    def release(self) -> None:
        """Lets every hung request go (it then gets a connection reset) and removes hang faults;
        held requests are applied."""
        with self._lock:
            for faults in self._faults.values():
                faults[:] = [f for f in faults if f["action"] not in ("hang", "hang_after", "hold")]
        self._release.set()
        self._let_through.set()

    def after(self, kind: str, fn: Any, times: int | None = 1, when: str | None = None) -> None:
        with self._lock:
            self._after.append({"kind": kind, "fn": fn, "remaining": times, "when": when})

    def before(self, kind: str, fn: Any, times: int | None = 1, when: str | None = None) -> None:
        with self._lock:
            self._before.append({"kind": kind, "fn": fn, "remaining": times, "when": when})

    @staticmethod
    def _take_hooks(hooks: list[dict[str, Any]], kind: str, text: str) -> list[dict[str, Any]]:
        found = [h for h in hooks if h["kind"] in (kind, "*") and (h["remaining"] is None or h["remaining"] > 0)
                 and (h.get("when") is None or h["when"] in text)]
        for h in found:
            if h["remaining"] is not None:
                h["remaining"] -= 1
        return found

    def _run_after(self, kind: str, text: str = "") -> None:
        with self._lock:
            for h in self._take_hooks(self._after, kind, text):
                h["fn"]()

    def _run_before(self, kind: str, text: str = "") -> None:
        with self._lock:
            for h in self._take_hooks(self._before, kind, text):
                h["fn"]()

    def forbid(self, on: bool = True) -> None:
        self._forbidden = on

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._after.clear()
            self._before.clear()
            self._forbidden = False
        self._release.set()

    def _take_fault(self, kind: str, text: str = "") -> dict[str, Any] | None:
        with self._lock:
            for key in (kind, "*"):
                faults = self._faults.get(key) or []
                for f in faults:
                    if f.get("when") is not None and f["when"] not in text:
                        continue
                    if f["remaining"] is None or f["remaining"] > 0:
                        if f["remaining"] is not None:
                            f["remaining"] -= 1
                        return dict(f)
        return None

    # -- credentials ----------------------------------------------------------------------------
    def service_account_info(self) -> dict[str, str]:
        return {
            "type": "service_account",
            "project_id": "stand-in",
            "private_key_id": "0" * 40,
            "private_key": _rsa_pem(),
            "client_email": "agent@stand-in.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": self.token_uri,
        }

    def service_account_json(self, base64_encoded: bool = False) -> str:
        raw = json.dumps(self.service_account_info())
        return base64.b64encode(raw.encode()).decode() if base64_encoded else raw

    # -- request handling (called from handler threads) ----------------------------------------
    def _handle(self, h: "_Handler", method: str) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        kind = self._kind(method, path)
        with self._lock:
            self.counts[kind] += 1
            self.requests.append((kind, method, path))
        text = unquote(h.path) + "\n" + body.decode("utf-8", "replace")
        fault = self._take_fault(kind, text)
        hang_after = False
        if fault:
            action = fault["action"]
            hang_after = action == "hang_after"
            if action == "delay":
                time.sleep(fault["seconds"])
            elif action == "status":
                status = fault["status"]
                return h.reply(status, _error(status, fault.get("message") or f"injected {status}"))
            elif action == "reset":
                raise _Reset()
            elif action == "hang":
                self._release.wait(120)
                raise _Reset()
            elif action == "hold":
                self._let_through.wait(120)
        if kind == "token":
            self._tokens += 1
            return h.reply(200, {"access_token": f"stand-in-token-{self._tokens}",
                                 "expires_in": 3600, "token_type": "Bearer"})
        if kind == "unknown":
            return h.reply(404, _error(404, f"stand-in has no route for {method} {path}"))
        if not (h.headers.get("Authorization") or "").startswith("Bearer "):
            return h.reply(401, _error(401, "missing bearer token"))
        if self._forbidden:
            return h.reply(403, _error(403, "The caller does not have permission", "PERMISSION_DENIED"))
        m = re.match(r"^/v4/spreadsheets/([^/:]+)(.*)$", path)
        assert m
        sid, rest = m.group(1), m.group(2)
        if sid != self.spreadsheet_id:
            return h.reply(404, _error(404, "Requested entity was not found.", "NOT_FOUND"))
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return h.reply(400, _error(400, "Invalid JSON payload received."))
        with self._lock:  # staff at the sheet between two requests, then this one, atomically
            self._shuffle_now()
            self._run_before(kind, text)
            try:
                status, payload = self._route(kind, method, rest, query, data)
            except _BadRange as e:
                status, payload = 400, _error(400, f"Unable to parse range: {e}", "INVALID_ARGUMENT")
            except _Refused as e:
                status, payload = 400, _error(400, str(e), "INVALID_ARGUMENT")
            except (KeyError, ValueError, TypeError, AttributeError) as e:  # a malformed request body
                status, payload = 400, _error(400, f"Invalid JSON payload: {type(e).__name__}: {e}")
        if status < 300:
            self._run_after(kind, text)
        if hang_after:  # applied, but the answer never comes
            self._release.wait(120)
            raise _Reset()
        h.reply(status, payload)

    @staticmethod
    def _kind(method: str, path: str) -> str:
        if method == "POST" and path == "/token":
            return "token"
        if not path.startswith("/v4/spreadsheets/"):
            return "unknown"
        rest = path[len("/v4/spreadsheets/"):]
        if method == "GET" and "/" not in rest and ":" not in rest:
            return "metadata"
        if method == "GET" and re.search(r"/developerMetadata/\d+$", rest):
            return "dm_get"
        if method == "POST" and rest.endswith("/developerMetadata:search"):
            return "dm_search"
        if method == "POST" and rest.endswith("/values:batchGetByDataFilter"):
            return "filter_read"
        if method == "POST" and rest.endswith("/values:batchUpdateByDataFilter"):
            return "filter_write"
        if method == "GET" and ("/values/" in rest or rest.endswith("/values:batchGet")):
            return "read"
        if method == "POST" and rest.endswith(":append"):
            return "append"
        if (method == "POST" and rest.endswith("/values:batchUpdate")) or (method == "PUT" and "/values/" in rest):
            return "write"
        if method == "POST" and rest.endswith(":batchUpdate"):
            return "structure"
        return "unknown"

    # -- the grid ---------------------------------------------------------------------------------
    def _grid_of(self, title: str) -> list[int]:
        g = self._grid.setdefault(title, [DEFAULT_ROWS, DEFAULT_COLUMNS])
        rows = self.sheets.get(title, [])
        g[0] = max(g[0], len(rows))
        g[1] = max(g[1], max((len(r) for r in rows), default=0))
        return g

    def _title_of(self, sheet_id: Any) -> str:
        title = next((t for t, i in self._sheet_ids.items() if i == sheet_id), None)
        if title is None or title not in self.sheets:
            raise _Refused(f"No grid with id: {sheet_id}")
        return title

    def _cells(self, title: str, cells: Any) -> list[str]:
        if isinstance(cells, dict):
            header = [_hkey(h) for h in (self.sheets[title][0] if self.sheets.get(title) else [])]
            row = [""] * len(header)
            for k, v in cells.items():
                if _hkey(k) in header and v is not None:
                    row[header.index(_hkey(k))] = str(v)
            while row and row[-1] == "":
                row.pop()
            return row
        return ["" if v is None else str(v) for v in cells]

    def _last_row(self, title: str) -> int:
        """One past the last row holding anything (0 for an empty tab)."""
        rows = self.sheets[title]
        for i in range(len(rows) - 1, -1, -1):
            if any(c != "" for c in rows[i]):
                return i + 1
        return 0

    def _index_of(self, title: str, row: list[str]) -> int | None:
        for i, r in enumerate(self.sheets.get(title, ())):
            if r is row:
                return i
        return None

    def _ensure_row(self, title: str, index: int) -> list[str]:
        rows = self.sheets[title]
        while len(rows) <= index:
            rows.append([])
        return rows[index]

    def _sort(self, title: str, start: int, end: int, specs: list[tuple[int, bool]]) -> None:
        """Rows [start, end) sorted by (column, descending) specs, stable, blank cells last."""
        rows = self.sheets[title]
        end = min(end, len(rows))
        if end - start < 2:
            return
        pinned = {}
        if not self.metadata_follows_sort:  # metadata stays at its index: note where it was
            pinned = {mid: self._index_of(title, m["row"]) for mid, m in self._meta.items() if m["title"] == title}
        block = rows[start:end]
        for c, descending in reversed(specs):
            def cell(r: list[str]) -> str:
                return r[c].casefold() if c < len(r) else ""
            filled = [r for r in block if cell(r) != ""]
            blank = [r for r in block if cell(r) == ""]
            filled.sort(key=cell, reverse=descending)
            block = filled + blank
        rows[start:end] = block
        for mid, i in pinned.items():
            if i is not None:
                self._meta[mid]["row"] = self._ensure_row(title, i)

    # -- values -----------------------------------------------------------------------------------
    def _sheet(self, a1_text: str) -> tuple[list[list[str]], tuple]:
        try:
            parsed = parse_range(a1_text)
        except ValueError:
            raise _BadRange(a1_text)
        if parsed[0] not in self.sheets:
            raise _BadRange(a1_text)
        return self.sheets[parsed[0]], parsed

    def _bounds(self, a1_text: str) -> tuple[str, int, int, int, int]:
        """A range bounded by the grid, as Sheets answers it."""
        _, (title, r0, c0, r1, c1) = self._sheet(a1_text)
        rows, cols = self._grid_of(title)
        return title, r0, c0, rows - 1 if r1 is None else r1, cols - 1 if c1 is None else c1

    def _values(self, title: str, r0: int, c0: int, r1: int, c1: int, major: str = "ROWS") -> dict[str, Any]:
        out = []
        for r in self.sheets[title][r0:r1 + 1]:
            cells = r[c0:c1 + 1]
            while cells and cells[-1] == "":
                cells = cells[:-1]
            out.append(list(cells))
        while out and not out[-1]:
            out.pop()
        if major == "COLUMNS" and out:
            width = max(len(r) for r in out)
            out = [[r[j] if j < len(r) else "" for r in out] for j in range(width)]
            for col in out:
                while col and col[-1] == "":
                    col.pop()
        resp: dict[str, Any] = {"range": a1(title, r0, c0, r1, c1), "majorDimension": major}
        if out:
            resp["values"] = out
        return resp

    def _read(self, a1_text: str) -> dict[str, Any]:
        return self._values(*self._bounds(a1_text))

    def _check_grid(self, title: str, r0: int, c0: int, values: list[list[Any]]) -> None:
        rows, cols = self._grid_of(title)
        height = len(values)
        width = max((len(v) for v in values), default=0)
        if height and (r0 + height > rows or c0 + width > cols):
            raise _Refused(f"Range ({a1_title(title)}!{index_to_col(c0 + width - 1)}{r0 + height}) exceeds grid "
                           f"limits. Max rows: {rows}, max columns: {cols}")

    def _put(self, kind: str, title: str, r0: int, c0: int, values: list[list[Any]], option: str | None,
             a1_text: str) -> tuple[int, set[int], set[int]]:
        """Writes values at (r0, c0); null cells are skipped. (cells, rows, columns) updated.
        option None: cells of a :batchUpdate (typed values, no valueInputOption)."""
        if option is not None:
            self.value_input_options.append(option)
        n, rows_hit, cols_hit = 0, set(), set()
        for i, vrow in enumerate(values):
            if vrow is None:
                continue
            row = self._ensure_row(title, r0 + i)
            before = list(row)
            for j, v in enumerate(vrow):
                if v is None:
                    continue  # "Null values will be skipped"
                v = v if isinstance(v, str) else ("TRUE" if v else "FALSE") if isinstance(v, bool) else str(v)
                if option == "USER_ENTERED" and v.startswith("="):
                    self.formula_writes.append((a1_text, v))
                    v = "#FORMULA"
                while len(row) <= c0 + j:
                    row.append("")
                row[c0 + j] = v
                n += 1
                rows_hit.add(r0 + i)
                cols_hit.add(c0 + j)
            while row and row[-1] == "":
                row.pop()
            if r0 + i in rows_hit:
                self.write_log.append({"kind": kind, "title": title, "row": r0 + i, "before": before,
                                       "after": list(row)})
        return n, rows_hit, cols_hit

    def _write(self, a1_text: str, values: list[list[Any]], option: str, kind: str = "write") -> int:
        _, (title, r0, c0, _, _) = self._sheet(a1_text)
        self._check_grid(title, r0, c0, values)
        return self._put(kind, title, r0, c0, values, option, a1_text)[0]

    # -- data filters ------------------------------------------------------------------------------
    def _meta_matches(self, m: dict[str, Any], mid: int, lookup: dict[str, Any]) -> bool:
        if "metadataId" in lookup and int(lookup["metadataId"]) != mid:
            return False
        if "metadataKey" in lookup and lookup["metadataKey"] != m["key"]:
            return False
        if "metadataValue" in lookup and lookup["metadataValue"] != m["value"]:
            return False
        if "visibility" in lookup and lookup["visibility"] not in ("DEVELOPER_METADATA_VISIBILITY_UNSPECIFIED",
                                                                   m["visibility"]):
            return False
        if "locationType" in lookup and lookup["locationType"] not in ("DEVELOPER_METADATA_LOCATION_TYPE_UNSPECIFIED",
                                                                       "ROW"):
            return False
        loc = lookup.get("metadataLocation") or {}
        if "sheetId" in loc and loc["sheetId"] != self._sheet_ids.get(m["title"]):
            return False
        dr = loc.get("dimensionRange")
        if dr is not None:
            i = self._index_of(m["title"], m["row"])
            if dr.get("sheetId") != self._sheet_ids.get(m["title"]) or dr.get("dimension", "ROWS") != "ROWS" or \
                    not (int(dr.get("startIndex", 0)) <= (i or 0) < int(dr.get("endIndex", 1 << 30))):
                return False
        return True

    def _lookup(self, lookup: dict[str, Any]) -> list[int]:
        self._prune_meta()
        return [mid for mid, m in sorted(self._meta.items()) if self._meta_matches(m, mid, lookup)]

    def _locations(self, f: dict[str, Any]) -> list[tuple[str, int, int, int, int]]:
        """The grid ranges a DataFilter selects, in order."""
        kinds = [k for k in ("developerMetadataLookup", "a1Range", "gridRange") if k in f]
        if len(kinds) != 1:
            raise _Refused("Invalid dataFilter: exactly one of developerMetadataLookup, a1Range, gridRange")
        if "a1Range" in f:
            return [self._bounds(f["a1Range"])]
        if "gridRange" in f:
            g = f["gridRange"]
            title = self._title_of(g.get("sheetId", 0))
            rows, cols = self._grid_of(title)
            return [(title, int(g.get("startRowIndex", 0)), int(g.get("startColumnIndex", 0)),
                     int(g.get("endRowIndex", rows)) - 1, int(g.get("endColumnIndex", cols)) - 1)]
        out = []
        for mid in self._lookup(f["developerMetadataLookup"]):
            m = self._meta[mid]
            i = self._index_of(m["title"], m["row"])
            if i is not None:
                out.append((m["title"], i, 0, i, self._grid_of(m["title"])[1] - 1))
        return out

    def _filter_read(self, data: dict[str, Any]) -> dict[str, Any]:
        major = data.get("majorDimension", "ROWS")
        found: dict[tuple, list[dict[str, Any]]] = {}
        for f in data.get("dataFilters") or []:
            for loc in self._locations(f):
                found.setdefault(loc, []).append(f)
        return {"spreadsheetId": self.spreadsheet_id,
                "valueRanges": [{"valueRange": self._values(*loc, major=major), "dataFilters": fs}
                                for loc, fs in found.items()]}

    def _filter_write(self, data: dict[str, Any]) -> dict[str, Any]:
        option = data.get("valueInputOption")
        if option not in ("RAW", "USER_ENTERED"):
            raise _Refused("Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED")
        plan = []
        for k, item in enumerate(data.get("data") or []):
            values = item.get("values") or []
            if item.get("majorDimension") == "COLUMNS":
                width = max((len(c) for c in values), default=0)
                values = [[c[i] if i < len(c) else None for c in values] for i in range(width)]
            for (title, r0, c0, r1, c1) in self._locations(item.get("dataFilter") or {}):
                if len(values) > r1 - r0 + 1 or max((len(v) for v in values), default=0) > c1 - c0 + 1:
                    raise _Refused(f"Invalid data[{k}]: Requested writing within range "
                                   f"[{a1(title, r0, c0, r1, c1)}], but tried writing beyond it")
                plan.append((item, title, r0, c0, values))
        responses, rows_all, cols_all, sheets_all, cells_all = [], set(), set(), set(), 0
        for item, title, r0, c0, values in plan:
            n, rows_hit, cols_hit = self._put("filter_write", title, r0, c0, values, option, title)
            cells_all += n
            rows_all |= {(title, r) for r in rows_hit}
            cols_all |= {(title, c) for c in cols_hit}
            if n:
                sheets_all.add(title)
            resp: dict[str, Any] = {"dataFilter": item.get("dataFilter")}
            if n:
                resp.update(updatedRange=a1(title, min(rows_hit), min(cols_hit), max(rows_hit), max(cols_hit)),
                            updatedRows=len(rows_hit), updatedColumns=len(cols_hit), updatedCells=n)
            responses.append(resp)
        out: dict[str, Any] = {"spreadsheetId": self.spreadsheet_id}
        for k, v in (("totalUpdatedRows", len(rows_all)), ("totalUpdatedColumns", len(cols_all)),
                     ("totalUpdatedCells", cells_all), ("totalUpdatedSheets", len(sheets_all))):
            if v:
                out[k] = v
        if responses:
            out["responses"] = responses
        return out

    # -- developer metadata ------------------------------------------------------------------------
    def _prune_meta(self) -> None:
        """Metadata whose row (or sheet) was deleted is deleted with it."""
        live: dict[str, set[int]] = {t: {id(r) for r in rows} for t, rows in self.sheets.items()}
        for mid in [mid for mid, m in self._meta.items() if id(m["row"]) not in live.get(m["title"], ())]:
            del self._meta[mid]

    def _meta_json(self, mid: int) -> dict[str, Any]:
        m = self._meta[mid]
        i = self._index_of(m["title"], m["row"])
        out = {"metadataId": mid, "metadataKey": m["key"],
               "location": {"locationType": "ROW", "dimensionRange": {
                   "sheetId": self._sheet_ids[m["title"]], "dimension": "ROWS", "startIndex": i, "endIndex": i + 1}},
               "visibility": m["visibility"]}
        if m["value"]:
            out["metadataValue"] = m["value"]
        return out

    def _create_meta(self, dm: dict[str, Any]) -> dict[str, Any]:
        key = dm.get("metadataKey")
        if not key:
            raise _Refused("Developer metadata must have a key")
        visibility = dm.get("visibility")
        if visibility not in ("DOCUMENT", "PROJECT"):
            raise _Refused("Developer metadata must have a visibility specified")
        dr = (dm.get("location") or {}).get("dimensionRange")
        if dr is None:
            raise _Refused("stand-in: only row metadata (location.dimensionRange, ROWS) is supported")
        if dr.get("dimension") != "ROWS":
            raise _Refused("stand-in: only ROWS dimension ranges are supported")
        title = self._title_of(dr.get("sheetId"))
        if "startIndex" not in dr or "endIndex" not in dr or int(dr["endIndex"]) - int(dr["startIndex"]) != 1:
            raise _Refused("The dimension range of developer metadata must represent a single row or column; it "
                           "cannot be unbounded or span multiple rows or columns")
        start = int(dr["startIndex"])
        if not 0 <= start < self._grid_of(title)[0]:
            raise _Refused(f"Invalid dimension range: row {start} is outside the grid of {title!r}")
        mid = dm.get("metadataId")
        self._prune_meta()
        if mid is None:
            mid = self._ids.randrange(1, 2_000_000_000)
            while mid in self._meta:
                mid = self._ids.randrange(1, 2_000_000_000)
        mid = int(mid)
        if mid <= 0:
            raise _Refused(f"Invalid metadataId {mid}: must be positive")
        if mid in self._meta:
            raise _Refused(f"Invalid createDeveloperMetadata request: developer metadata with ID {mid} already exists")
        value = str(dm.get("metadataValue") or "")
        used = sum(len(m["key"]) + len(m["value"]) for m in self._meta.values() if m["title"] == title)
        if used + len(key) + len(value) > METADATA_CHARS_PER_SHEET:
            raise _Refused(f"Developer metadata storage limit exceeded for sheet {title!r} "
                           f"({METADATA_CHARS_PER_SHEET} characters)")
        row = self._ensure_row(title, start)
        self._meta[mid] = {"key": key, "value": value, "visibility": visibility, "title": title, "row": row}
        self.meta_log.append({"op": "create", "id": mid, "key": key, "value": value, "title": title, "row": start,
                              "cells": list(row)})
        return self._meta_json(mid)

    def _delete_meta(self, f: dict[str, Any]) -> list[dict[str, Any]]:
        if "developerMetadataLookup" in f:
            mids = self._lookup(f["developerMetadataLookup"])
        else:  # a location: metadata on rows that intersect it
            hits = self._locations(f)
            mids = [mid for mid, m in self._meta.items() if any(
                t == m["title"] and r0 <= (self._index_of(t, m["row"]) or -1) <= r1 for t, r0, _, r1, _ in hits)]
        out = []
        for mid in mids:
            out.append(self._meta_json(mid))
            m = self._meta.pop(mid)
            self.meta_log.append({"op": "delete", "id": mid, "key": m["key"], "value": m["value"],
                                  "title": m["title"], "row": out[-1]["location"]["dimensionRange"]["startIndex"],
                                  "cells": list(m["row"])})
        return out

    # -- :batchUpdate ------------------------------------------------------------------------------
    def _checkpoint(self) -> Any:
        return ({t: (list(rows), [list(r) for r in rows]) for t, rows in self.sheets.items()},
                dict(self._sheet_ids), {t: list(g) for t, g in self._grid.items()},
                {mid: dict(m) for mid, m in self._meta.items()}, len(self.meta_log), len(self.write_log))

    def _restore(self, cp: Any) -> None:
        sheets, ids, grid, meta, n_meta_log, n_write_log = cp
        self.sheets = {}
        for t, (objs, contents) in sheets.items():
            for obj, content in zip(objs, contents):
                obj[:] = content
            self.sheets[t] = objs
        self._sheet_ids, self._grid, self._meta = ids, grid, meta
        del self.meta_log[n_meta_log:]
        del self.write_log[n_write_log:]

    def _structure(self, req: dict[str, Any], i: int) -> dict[str, Any]:
        if len(req) != 1:
            raise _Refused(f"Invalid requests[{i}]: exactly one kind of request")
        op = next(iter(req))
        self.ops[op] += 1
        body = req[op] or {}
        if op == "addSheet":
            props = dict(body.get("properties", {}))
            t = props.get("title") or f"Sheet{len(self.sheets) + 1}"
            if t in self.sheets:
                raise _Refused(f'Invalid requests[{i}].addSheet: A sheet with the name "{t}" already exists. '
                               f'Please enter another name.')
            sid = props.get("sheetId")
            if sid is not None and sid in self._sheet_ids.values():
                raise _Refused(f"Invalid requests[{i}].addSheet: A sheet with the id {sid} already exists.")
            self.sheets[t] = []
            self._sheet_ids[t] = sid if sid is not None else max(self._sheet_ids.values(), default=0) + 1
            gp = {"rowCount": DEFAULT_ROWS, "columnCount": DEFAULT_COLUMNS, **(props.get("gridProperties") or {})}
            self._grid[t] = [int(gp["rowCount"]), int(gp["columnCount"])]
            props.update({"sheetId": self._sheet_ids[t], "title": t, "index": len(self.sheets) - 1,
                          "sheetType": "GRID", "gridProperties": gp})
            return {"addSheet": {"properties": props}}
        if op in ("appendCells", "updateCells"):
            sid = body.get("sheetId", (body.get("start") or {}).get("sheetId"))
            title = self._title_of(sid)
            values = [[_cell_text(c) for c in (r.get("values") or [])] for r in body.get("rows", [])]
            if op == "appendCells":
                r0, c0 = self._last_row(title), 0
            else:
                start = body.get("start") or {}
                r0, c0 = int(start.get("rowIndex", 0)), int(start.get("columnIndex", 0))
            self._put("structure", title, r0, c0, values, None, title)
            return {}
        if op == "createDeveloperMetadata":
            return {"createDeveloperMetadata": {"developerMetadata": self._create_meta(body.get("developerMetadata")
                                                                                       or {})}}
        if op == "updateDeveloperMetadata":
            fields = [f.strip() for f in str(body.get("fields") or "").split(",") if f.strip()]
            if not fields:
                raise _Refused(f"Invalid requests[{i}].updateDeveloperMetadata: at least one field must be specified")
            new = body.get("developerMetadata") or {}
            mids: list[int] = []
            for f in body.get("dataFilters") or []:
                mids += [m for m in (self._lookup(f["developerMetadataLookup"]) if "developerMetadataLookup" in f
                                     else []) if m not in mids]
            for mid in mids:
                m = self._meta[mid]
                for fld in fields if fields != ["*"] else ["metadataKey", "metadataValue", "visibility", "location"]:
                    if fld == "metadataKey":
                        m["key"] = new.get("metadataKey") or m["key"]
                    elif fld == "metadataValue":
                        m["value"] = str(new.get("metadataValue") or "")
                    elif fld == "visibility":
                        m["visibility"] = new.get("visibility") or m["visibility"]
                    elif fld == "location":
                        dr = (new.get("location") or {}).get("dimensionRange") or {}
                        title = self._title_of(dr.get("sheetId"))
                        if dr.get("dimension") != "ROWS" or int(dr["endIndex"]) - int(dr["startIndex"]) != 1:
                            raise _Refused("stand-in: metadata moves to exactly one row")
                        m["title"], m["row"] = title, self._ensure_row(title, int(dr["startIndex"]))
                    else:
                        raise _Refused(f"Invalid requests[{i}].updateDeveloperMetadata: cannot update {fld}")
            return {"updateDeveloperMetadata": {"developerMetadata": [self._meta_json(mid) for mid in mids]}
                    if mids else {}}
        if op == "deleteDeveloperMetadata":
            deleted = self._delete_meta(body.get("dataFilter") or {})
            return {"deleteDeveloperMetadata": {"deletedDeveloperMetadata": deleted} if deleted else {}}
        if op in ("insertDimension", "deleteDimension"):
            rng = body.get("range") or {}
            if rng.get("dimension") != "ROWS":
                raise _Refused(f"stand-in: only ROWS {op} is supported")
            title = self._title_of(rng.get("sheetId"))
            a, b = int(rng["startIndex"]), int(rng["endIndex"])
            rows = self.sheets[title]
            if op == "insertDimension":
                while len(rows) < a:
                    rows.append([])
                rows[a:a] = [[] for _ in range(b - a)]
                self._grid_of(title)[0] += b - a
            else:
                del rows[a:b]
                self._grid_of(title)[0] -= min(b - a, self._grid_of(title)[0] - 1)
                self._prune_meta()
            return {}
        if op == "sortRange":
            g = body.get("range") or {}
            title = self._title_of(g.get("sheetId", 0))
            specs = [(int(s.get("dimensionIndex", 0)), s.get("sortOrder") == "DESCENDING")
                     for s in body.get("sortSpecs") or []]
            self._sort(title, int(g.get("startRowIndex", 0)), int(g.get("endRowIndex", 1 << 30)), specs)
            return {}
        raise _Refused(f"stand-in: {op} is not supported (requests[{i}])")

    def _route(self, kind: str, method: str, rest: str, query: dict, data: dict) -> tuple[int, Any]:
        if kind == "metadata":
            resource = {
                "spreadsheetId": self.spreadsheet_id,
                "properties": {"title": self.title, "locale": "en_US", "timeZone": "Etc/UTC"},
                "sheets": [{"properties": {"sheetId": self._sheet_ids[t], "title": t, "index": i,
                                           "sheetType": "GRID",
                                           "gridProperties": {"rowCount": self._grid_of(t)[0],
                                                              "columnCount": self._grid_of(t)[1]}}}
                           for i, t in enumerate(self.sheets)],
                "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{self.spreadsheet_id}/edit",
            }
            if query.get("fields"):
                try:
                    tree = parse_fields(query["fields"][0])
                except ValueError as e:
                    return 400, _error(400, f"Invalid field selection: {e}")
                resource = apply_fields(resource, tree)
            return 200, resource
        if kind == "read":
            if rest.endswith("/values:batchGet"):
                major = (query.get("majorDimension") or ["ROWS"])[0]
                return 200, {"spreadsheetId": self.spreadsheet_id,
                             "valueRanges": [self._values(*self._bounds(r), major=major)
                                             for r in query.get("ranges", [])]}
            return 200, self._read(rest[len("/values/"):])
        if kind == "filter_read":
            return 200, self._filter_read(data)
        if kind == "filter_write":
            return 200, self._filter_write(data)
        if kind == "dm_get":
            mid = int(rest.rsplit("/", 1)[1])
            self._prune_meta()
            if mid not in self._meta:
                return 404, _error(404, f"No developer metadata with ID {mid}", "NOT_FOUND")
            return 200, self._meta_json(mid)
        if kind == "dm_search":
            found: dict[int, list[dict[str, Any]]] = {}
            for f in data.get("dataFilters") or []:
                mids = (self._lookup(f["developerMetadataLookup"]) if "developerMetadataLookup" in f else
                        [mid for mid, m in self._meta.items()
                         if any(t == m["title"] and r0 <= (self._index_of(t, m["row"]) or -1) <= r1
                                for t, r0, _, r1, _ in self._locations(f))])
                for mid in mids:
                    found.setdefault(mid, []).append(f)
            matched = [{"developerMetadata": self._meta_json(mid), "dataFilters": fs} for mid, fs in found.items()]
            return 200, ({"matchedDeveloperMetadata": matched} if matched else {})
        if kind == "write":
            if method == "PUT":
                a1_text = rest[len("/values/"):]
                option = (query.get("valueInputOption") or ["RAW"])[0]
                n = self._write(a1_text, data.get("values", []), option)
                return 200, {"spreadsheetId": self.spreadsheet_id, "updatedRange": a1_text, "updatedCells": n}
            option = data.get("valueInputOption", "RAW")
            for d in data.get("data", []):  # atomic: validate every range first
                _, (title, r0, c0, _, _) = self._sheet(d["range"])
                self._check_grid(title, r0, c0, d.get("values", []))
            total = sum(self._write(d["range"], d.get("values", []), option) for d in data.get("data", []))
            return 200, {"spreadsheetId": self.spreadsheet_id, "totalUpdatedCells": total}
        if kind == "append":
            return self._append(rest[len("/values/"):-len(":append")], query, data)
        if kind == "structure":
            saved = self._checkpoint()
            try:
                return 200, {"spreadsheetId": self.spreadsheet_id,
                             "replies": [self._structure(req, i) for i, req in enumerate(data.get("requests", []))]}
            except (_Refused, _BadRange, KeyError, ValueError, TypeError) as e:  # all or nothing
                self._restore(saved)
                msg = str(e) if isinstance(e, _Refused) else f"Invalid request: {type(e).__name__}: {e}"
                return 400, _error(400, msg, "INVALID_ARGUMENT")
        return 404, _error(404, "not found")

    def _append(self, a1_text: str, query: dict, data: dict) -> tuple[int, Any]:
        rows, (title, *_r) = self._sheet(a1_text)
        option = (query.get("valueInputOption") or [""])[0]
        if option not in ("RAW", "USER_ENTERED"):
            raise _Refused("'valueInputOption' is required but not specified")
        insert = (query.get("insertDataOption") or ["OVERWRITE"])[0] == "INSERT_ROWS"
        values = data.get("values", [])
        last = self._last_row(title)
        table_width = max((len(rows[i]) for i in range(last)), default=0)
        if insert:  # new rows right after the table; what was below (and its metadata) moves down
            rows[last:last] = [[] for _ in values]
            self._grid_of(title)[0] += len(values)
        width = max((len(v) for v in values), default=1)
        g = self._grid_of(title)
        g[1] = max(g[1], width)
        if not insert:
            g[0] = max(g[0], last + len(values))
        self._put("append", title, last, 0, values, option, a1_text)
        updates = {"spreadsheetId": self.spreadsheet_id,
                   "updatedRange": a1(title, last, 0, last + len(values) - 1, width - 1),
                   "updatedRows": len(values), "updatedColumns": width,
                   "updatedCells": sum(1 for v in values for c in v if c is not None)}
        out: dict[str, Any] = {"spreadsheetId": self.spreadsheet_id, "updates": updates}
        if last:
            out["tableRange"] = a1(title, 0, 0, last - 1, max(table_width, 1) - 1)
        return 200, out


def _cell_text(cell: dict[str, Any]) -> str:
    v = cell.get("userEnteredValue") or {}
    if "formulaValue" in v:
        return "#FORMULA"
    for k in ("stringValue", "numberValue", "boolValue"):
        if k in v:
            return str(v[k])
    return ""


def _error(code: int, message: str, status: str = "") -> dict[str, Any]:
    statuses = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
    return {"error": {"code": code, "message": message, "status": status or statuses.get(code, "UNKNOWN")}}


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def __init__(self, standin: SheetsStandIn, *args: Any, **kwargs: Any):
        self.standin = standin
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        try:
            self.standin._handle(self, method)
        except _Reset:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.close_connection = True
            self.wfile = _NullWriter()  # type: ignore[assignment]
            try:
                self.connection.close()
            except OSError:
                pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")


class _NullWriter:
    closed = True

    def write(self, b: bytes) -> int:
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@functools.lru_cache(maxsize=1)
def _rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# ---------------------------------------------------------------------------------------------
# keep everything on this machine

_real_connect = socket.socket.connect
_guard_installed = False


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0] if isinstance(address, tuple) and address else ""
    return host in ("127.0.0.1", "::1", "localhost") or str(host).startswith("127.")


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise ConnectionRefusedError(f"network guard: a test tried to reach {address!r} (only loopback allowed)")
    return _real_connect(self, address)


_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    h = host.decode() if isinstance(host, bytes) else host
    if h not in (None, "localhost", "::1") and not str(h).startswith("127."):
        raise socket.gaierror(socket.EAI_NONAME, f"network guard: a test tried to resolve {h!r} (only loopback allowed)")
    return _real_getaddrinfo(host, *args, **kwargs)


def install_network_guard() -> None:
    """Every non-loopback connect or name lookup in this process raises (fails loudly, nothing leaves)."""
    global _guard_installed
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]
    _guard_installed = True


def remove_network_guard() -> None:
    global _guard_installed
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.getaddrinfo = _real_getaddrinfo  # type: ignore[assignment]
    _guard_installed = False


if __name__ == "__main__":
    # The child CLI moved to tests/fakes/child.py; this forward keeps `python -m
    # tests.fakes.sheets_server child ...` (bench/inventory_numbers.py) working until it is updated.
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "child":
        from tests.fakes.child import main

        main(sys.argv[2:])
    raise SystemExit("usage: python -m tests.fakes.child snapshot|book ...")
