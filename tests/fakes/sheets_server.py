"""A local Google Sheets API v4 stand-in, driven through real gspread and google-auth.

    from tests.fakes.sheets_server import SheetsStandIn
    sheets = SheetsStandIn().start()
    sheets.set_rows("Equipment", [["ID", "Name", "Status"], ["EX-1", "Mini excavator", "AVAILABLE"]])
    env = {"GOOGLE_SHEET_ID": sheets.spreadsheet_id,
           "GOOGLE_SERVICE_ACCOUNT_JSON": sheets.service_account_json(),
           "GOOGLE_SHEETS_API_URL": sheets.url}
    ...
    sheets.stop()

It answers, on 127.0.0.1:
- ``POST /token``                                   kind "token"
- ``GET  /v4/spreadsheets/{id}``                    kind "metadata"
- ``GET  /v4/spreadsheets/{id}/values/{range}``     kind "read"   (also ``values:batchGet``)
- ``POST /v4/spreadsheets/{id}/values:batchUpdate`` kind "write"  (also ``PUT .../values/{range}``)
- ``POST /v4/spreadsheets/{id}/values/{range}:append`` kind "append"
- ``POST /v4/spreadsheets/{id}:batchUpdate``        kind "structure" (addSheet, with an optional
  sheetId; appendCells/updateCells of string values on a sheetId; all-or-nothing)

``sheets.counts[kind]`` counts every request received (faulted ones too). Faults, per kind (or "*"):
``fail(kind, status, times=None, message=None)``, ``delay(kind, seconds, times=None)`` (the request is applied
after the delay, even if the client gave up meanwhile: a late write), ``reset(kind, times=None)``
(connection reset, no response), ``hang(kind, times=None)`` (no response until ``release()`` or
``stop()``; not applied), ``hang_after(kind, times=None)`` (applied at once, then no response until
``release()``: a write that landed but whose answer was lost), ``hold(kind, times=None)`` (no
answer, and applied only when ``let_through()`` is called: a write that lands late, at a moment the
test chooses), ``forbid()`` (403 on every /v4
path, as for a sheet not shared with the account). Every fault takes ``when="text"``: it then
applies only to requests whose path or body contains that text (a booking ref, a range).
``times=None`` means always; ``clear_faults()`` removes them. ``after(kind, fn, times=1,
when=None)`` runs ``fn()`` right after a request of that kind was applied (before its answer is
sent): another writer landing in between two requests of the code under test.

Values are stored as written: RAW values verbatim. A USER_ENTERED string starting with "=" is
treated as a formula, as Sheets would: the cell then reads back as "#FORMULA" and the write is
recorded in ``sheets.formula_writes`` (so a test can prove caller text was sent RAW).

``service_account_info()`` gives a service-account dict whose token_uri points here and whose
private_key is a fresh RSA key. ``install_network_guard()`` makes any non-loopback connect raise.

The child process of the cross-process tests is ``tests/fakes/child.py``.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_SPREADSHEET_ID = "test-spreadsheet-1"

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
    if not m0:
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


# ---------------------------------------------------------------------------------------------
# the server


class _Reset(Exception):
    pass


class SheetsStandIn:
    def __init__(self, spreadsheet_id: str = DEFAULT_SPREADSHEET_ID, title: str = "Rental Inventory"):
        self.spreadsheet_id = spreadsheet_id
        self.title = title
        self.sheets: dict[str, list[list[str]]] = {}
        self._sheet_ids: dict[str, int] = {}
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str]] = []  # (kind, method, path)
        self.formula_writes: list[tuple[str, str]] = []  # (range, value) sent USER_ENTERED with '='
        self.value_input_options: list[str] = []
        self._faults: dict[str, list[dict[str, Any]]] = {}
        self._after: list[dict[str, Any]] = []
        self._forbidden = False
        self._lock = threading.RLock()
        self._release = threading.Event()
        self._let_through = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tokens = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "SheetsStandIn":
        handler = functools.partial(_Handler, self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
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

    # -- data -----------------------------------------------------------------------------------
    def set_rows(self, title: str, rows: list[list[Any]]) -> None:
        with self._lock:
            self.sheets[title] = [["" if v is None else str(v) for v in r] for r in rows]
            self._sheet_ids.setdefault(title, len(self._sheet_ids) + 1)

    def rows(self, title: str) -> list[list[str]]:
        with self._lock:
            return [list(r) for r in self.sheets.get(title, [])]

    def delete_sheet(self, title: str) -> None:
        with self._lock:
            self.sheets.pop(title, None)
            self._sheet_ids.pop(title, None)

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

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.requests.clear()

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

    def _run_after(self, kind: str, text: str = "") -> None:
        with self._lock:
            hooks = [h for h in self._after if h["kind"] in (kind, "*")
                     and (h["remaining"] is None or h["remaining"] > 0)
                     and (h.get("when") is None or h["when"] in text)]
            for h in hooks:
                if h["remaining"] is not None:
                    h["remaining"] -= 1
            for h in hooks:
                h["fn"]()

    def forbid(self, on: bool = True) -> None:
        self._forbidden = on

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._after.clear()
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
        text = path + "\n" + body.decode("utf-8", "replace")
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
        data = json.loads(body) if body else {}
        try:
            with self._lock:
                status, payload = self._route(kind, method, rest, query, data)
        except _BadRange as e:
            status, payload = 400, _error(400, f"Unable to parse range: {e}", "INVALID_ARGUMENT")
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
        if method == "GET" and ("/values/" in rest or rest.endswith("/values:batchGet")):
            return "read"
        if method == "POST" and rest.endswith(":append"):
            return "append"
        if (method == "POST" and rest.endswith("/values:batchUpdate")) or (method == "PUT" and "/values/" in rest):
            return "write"
        if method == "POST" and rest.endswith(":batchUpdate"):
            return "structure"
        return "unknown"

    def _sheet(self, a1: str) -> tuple[list[list[str]], tuple]:
        try:
            parsed = parse_range(a1)
        except ValueError:
            raise _BadRange(a1)
        if parsed[0] not in self.sheets:
            raise _BadRange(a1)
        return self.sheets[parsed[0]], parsed

    def _read(self, a1: str) -> dict[str, Any]:
        rows, (title, r0, c0, r1, c1) = self._sheet(a1)
        out = []
        for r in rows[r0:(None if r1 is None else r1 + 1)]:
            cells = r[c0:(None if c1 is None else c1 + 1)]
            while cells and cells[-1] == "":
                cells = cells[:-1]
            out.append(cells)
        while out and not out[-1]:
            out.pop()
        resp: dict[str, Any] = {"range": a1, "majorDimension": "ROWS"}
        if out:
            resp["values"] = out
        return resp

    def _write(self, a1: str, values: list[list[Any]], option: str) -> int:
        rows, (title, r0, c0, _, _) = self._sheet(a1)
        self.value_input_options.append(option)
        n = 0
        for i, vrow in enumerate(values):
            while len(rows) <= r0 + i:
                rows.append([])
            row = rows[r0 + i]
            for j, v in enumerate(vrow):
                v = "" if v is None else str(v)
                if option == "USER_ENTERED" and v.startswith("="):
                    self.formula_writes.append((a1, v))
                    v = "#FORMULA"
                while len(row) <= c0 + j:
                    row.append("")
                row[c0 + j] = v
                n += 1
        return n

    def _structure(self, req: dict[str, Any]) -> dict[str, Any]:
        if "addSheet" in req:
            props = dict(req["addSheet"].get("properties", {}))
            t = props.get("title") or f"Sheet{len(self.sheets) + 1}"
            if t in self.sheets:
                raise _Refused(f'A sheet with the name "{t}" already exists. Please enter another name.')
            sid = props.get("sheetId")
            if sid is not None and sid in self._sheet_ids.values():
                raise _Refused(f"A sheet with the id {sid} already exists.")
            self.sheets[t] = []
            self._sheet_ids[t] = sid if sid is not None else max(self._sheet_ids.values(), default=0) + 1
            props.update({"sheetId": self._sheet_ids[t], "title": t, "index": len(self.sheets) - 1})
            props.setdefault("gridProperties", {"rowCount": 1000, "columnCount": 26})
            return {"addSheet": {"properties": props}}
        for op in ("appendCells", "updateCells"):
            if op not in req:
                continue
            body = req[op]
            sid = body.get("sheetId", (body.get("start") or {}).get("sheetId"))
            title = next((t for t, i in self._sheet_ids.items() if i == sid), None)
            if title is None:
                raise _Refused(f"No grid with id: {sid}")
            values = [[_cell_text(c) for c in (r.get("values") or [])] for r in body.get("rows", [])]
            rows = self.sheets[title]
            if op == "appendCells":
                last = max((i + 1 for i, r in enumerate(rows) if any(c != "" for c in r)), default=0)
                r0, c0 = last, 0
            else:
                start = body.get("start") or {}
                r0, c0 = int(start.get("rowIndex", 0)), int(start.get("columnIndex", 0))
            for i, vrow in enumerate(values):
                while len(rows) <= r0 + i:
                    rows.append([])
                row = rows[r0 + i]
                for j, v in enumerate(vrow):
                    while len(row) <= c0 + j:
                        row.append("")
                    row[c0 + j] = v
            return {}
        return {}

    def _route(self, kind: str, method: str, rest: str, query: dict, data: dict) -> tuple[int, Any]:
        if kind == "metadata":
            return 200, {
                "spreadsheetId": self.spreadsheet_id,
                "properties": {"title": self.title, "locale": "en_US", "timeZone": "Etc/UTC"},
                "sheets": [{"properties": {"sheetId": self._sheet_ids[t], "title": t, "index": i,
                                           "sheetType": "GRID",
                                           "gridProperties": {"rowCount": 1000, "columnCount": 26}}}
                           for i, t in enumerate(self.sheets)],
            }
        if kind == "read":
            if rest.endswith("/values:batchGet"):
                return 200, {"spreadsheetId": self.spreadsheet_id,
                             "valueRanges": [self._read(r) for r in query.get("ranges", [])]}
            a1 = rest[len("/values/"):]
            return 200, self._read(a1)
        if kind == "write":
            if method == "PUT":
                a1 = rest[len("/values/"):]
                option = (query.get("valueInputOption") or ["RAW"])[0]
                n = self._write(a1, data.get("values", []), option)
                return 200, {"spreadsheetId": self.spreadsheet_id, "updatedRange": a1, "updatedCells": n}
            option = data.get("valueInputOption", "RAW")
            # atomic: validate every range first
            for d in data.get("data", []):
                self._sheet(d["range"])
            total = sum(self._write(d["range"], d.get("values", []), option) for d in data.get("data", []))
            return 200, {"spreadsheetId": self.spreadsheet_id, "totalUpdatedCells": total}
        if kind == "append":
            a1 = rest[len("/values/"):-len(":append")]
            rows, (title, *_r) = self._sheet(a1)
            option = (query.get("valueInputOption") or ["RAW"])[0]
            last = 0
            for i, r in enumerate(rows):
                if any(c != "" for c in r):
                    last = i + 1
            values = data.get("values", [])
            del rows[last:]  # INSERT_ROWS: new rows right after the table
            start = last
            for _ in values:
                rows.append([])
            self._write(f"'{title}'!A{start + 1}", values, option)
            width = max((len(v) for v in values), default=1)
            rng = f"'{title}'!A{start + 1}:{index_to_col(width - 1)}{start + len(values)}"
            return 200, {"spreadsheetId": self.spreadsheet_id, "tableRange": f"'{title}'!A1",
                         "updates": {"updatedRange": rng, "updatedRows": len(values)}}
        if kind == "structure":
            saved = ({t: [list(r) for r in rows] for t, rows in self.sheets.items()}, dict(self._sheet_ids))
            try:
                return 200, {"spreadsheetId": self.spreadsheet_id,
                             "replies": [self._structure(req) for req in data.get("requests", [])]}
            except _Refused as e:  # all or nothing, as the real batchUpdate
                self.sheets, self._sheet_ids = saved
                return 400, _error(400, str(e), "INVALID_ARGUMENT")
        return 404, _error(404, "not found")


class _BadRange(Exception):
    pass


class _Refused(Exception):
    pass


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
