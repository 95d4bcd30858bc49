"""The shop's inventory: Google Sheets or the embedded CSV behind one small interface,
the cache shared by every call on the machine, and booking.

CONTRACT (agreed between equipment.py and agent.py). agent.py and the tests rely only on the
names in the contract: Unit, Snapshot, BookingRefused, Booking, Inventory, config_errors,
inventory_from_env. Added: Config, InventoryConfigError, CachedInventory (what inventory_from_env
returns; it also has ``close(timeout)`` for worker/job shutdown and ``check()`` for preflight),
SheetStore, CsvStore, mask_phone, BookingNotRecorded.

How it works (every call is its own process, so nothing here relies on module-level state):
- Two stores with the same small sync interface: SheetStore (gspread, one values GET per read,
  RAW writes) and CsvStore (data/equipment.csv, atomic rewrite under a file lock). Everything
  else (cache, validation, per-unit serialisation, outbox) sits above them and is shared.
- The cache is a JSON snapshot in STATE_DIR, replaced atomically, shared by every process.
  A refresh runs under a non-blocking file lock (single flight per machine) and re-checks
  freshness after taking it. Callers never wait when a snapshot exists; a stale one triggers
  a background refresh on a daemon thread. Only a machine that never read the source waits,
  at most EQUIPMENT_LOAD_TIMEOUT, then gets Snapshot(units=None) = unknown.
- Bookings take a per-unit file lock, re-read the source, append the booking to an append-only,
  fsynced outbox (STATE_DIR/outbox.jsonl) BEFORE writing (write-ahead), write one RAW request,
  append one audit row, patch the shared snapshot and mark the outbox entry settled. Any failure
  after validation leaves the booking in the outbox (unconfirmed) and the unit held PENDING until
  replayed; a process that dies mid-booking leaves it there too. Replay is idempotent by ref.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
import logging
import math
import os
import random
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

import filelock

logger = logging.getLogger("equipment")

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CSV = PROJECT_DIR / "data" / "equipment.csv"
DEFAULT_STATE_DIR = PROJECT_DIR / ".state"
DEFAULT_API_URL = "https://sheets.googleapis.com"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]

AVAILABLE, RENTED, MAINTENANCE, PENDING = "AVAILABLE", "RENTED", "MAINTENANCE", "PENDING"
KNOWN_STATUSES = {AVAILABLE, RENTED, MAINTENANCE}

MAX_NAME = 100
MAX_NOTE = 500
MAX_CALL_ID = 100
MAX_PHONE = 32  # characters as given, separators included
REF_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L
REF_LENGTH = 6


# =============================================================================================
# Contract types


@dataclass(frozen=True)
class Unit:
    id: str
    name: str
    status: str  # upper-cased: AVAILABLE, RENTED, MAINTENANCE, PENDING (held by the outbox), or as written
    category: str = ""
    daily_rate: float | None = None
    weekly_rate: float | None = None
    description: str = ""

    @property
    def available(self) -> bool:
        return self.status == "AVAILABLE"


def _fold(s: str) -> str:
    return " ".join(s.split()).casefold()


def _singular(s: str) -> str:
    s = _fold(s)
    return s[:-1] if s.endswith("s") else s


@dataclass(frozen=True)
class Snapshot:
    """What a call sees. units is None when the inventory is unknown (never read, and the
    sheet did not answer within EQUIPMENT_LOAD_TIMEOUT): unknown is not empty."""

    units: tuple[Unit, ...] | None
    age: float | None  # seconds since the data was read from its source, when handed out
    source: str  # "sheet" or "csv"

    @property
    def known(self) -> bool:
        return self.units is not None

    def find(self, equipment_id: str) -> Unit | None:
        if not self.units or not equipment_id:
            return None
        want = _fold(equipment_id)
        for u in self.units:
            if _fold(u.id) == want:
                return u
        return None

    def search(self, category: str | None = None, keyword: str | None = None,
               available_only: bool = True) -> list[Unit]:
        """Units matching a category (case-insensitive, singular or plural, or a part of it) and
        every word of keyword (in ID, name, category or description). [] when unknown."""
        out = []
        for u in self.units or ():
            if available_only and not u.available:
                continue
            if category and category.strip():
                c, uc = _singular(category), _singular(u.category)
                if not uc or (c != uc and c not in uc):
                    continue
            if keyword and keyword.strip():
                hay = _fold(" ".join((u.id, u.name, u.category, u.description)))
                if not all(w in hay for w in _fold(keyword).split()):
                    continue
            out.append(u)
        return out

    def categories(self) -> list[str]:
        seen: dict[str, str] = {}
        for u in self.units or ():
            if u.category.strip():
                seen.setdefault(_fold(u.category), u.category.strip())
        return sorted(seen.values(), key=str.casefold)


class BookingRefused(Exception):
    """A booking that cannot be made; `message` is a sentence the agent can say to the caller.

    code is one of: unknown_id, not_available, just_taken, bad_name, bad_phone, bad_date,
    past_date, end_before_start, inventory_unknown."""

    def __init__(self, code: str, message: str, alternatives: tuple[Unit, ...] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.alternatives = alternatives


@dataclass(frozen=True)
class Booking:
    ref: str  # short, for a caller to write down, e.g. "R7K3QX"
    equipment_id: str
    equipment_name: str
    renter_name: str
    renter_phone: str
    start: date
    end: date
    confirmed: bool  # False: Sheets was down, kept in the outbox; staff will confirm


class Inventory(Protocol):
    async def snapshot(self) -> Snapshot: ...

    async def book(self, equipment_id: str, renter_name: str, renter_phone: str,
                   start: str, end: str, call_id: str = "", *, today: date | None = None) -> Booking:
        """start/end are ISO dates (YYYY-MM-DD). Raises BookingRefused."""

    async def record_callback(self, name: str, phone: str, note: str, call_id: str = "") -> str:
        """Keeps a caller's details for staff to call back (Bookings tab, or the outbox). Returns a ref."""

    async def replay_outbox(self) -> int:
        """Writes kept bookings to the source; returns how many were settled."""

    async def close(self, timeout: float = 5.0) -> None:
        """At call end and worker shutdown: settles what it can (bounded), never raises."""


class InventoryConfigError(Exception):
    """The inventory source is misconfigured (bad env, sheet not shared, missing worksheet or
    column). The message names what is wrong; retrying does not help."""


class SourceUnavailable(Exception):
    """The source did not answer within the retry budget (429/5xx/timeouts/connection errors)."""


class BookingNotRecorded(Exception):
    """A booking (or call-back request) could be neither written to the source nor kept in the
    local outbox (STATE_DIR not writable, disk full): it is stored nowhere. The message gives
    both reasons. Only raised when the outbox itself fails; every other failure is kept there."""


# =============================================================================================
# Configuration


@dataclass(frozen=True)
class Config:
    sheet_id: str | None = None
    credentials_info: dict[str, Any] | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    equipment_worksheet: str = "Equipment"
    bookings_worksheet: str = "Bookings"
    csv_path: Path = DEFAULT_CSV
    cache_ttl: float = 30.0
    load_timeout: float = 3.0
    http_timeout: tuple[float, float] = (5.0, 10.0)  # (connect, read), per request
    retry_budget: float = 8.0
    state_dir: Path = DEFAULT_STATE_DIR

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Config":
        cfg, errors = _parse_config(env)
        if errors:
            raise InventoryConfigError("; ".join(errors))
        return cfg


def _decode_service_account(text: str, var: str, errors: list[str]) -> dict[str, Any] | None:
    text = text.strip()
    info: Any = None
    try:
        info = json.loads(text)
    except ValueError:
        compact = "".join(text.split())
        for decoder in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                info = json.loads(decoder(compact + "=" * (-len(compact) % 4)).decode("utf-8"))
                break
            except (ValueError, binascii.Error, UnicodeDecodeError):
                continue
    if not isinstance(info, dict):
        errors.append(f"{var} is neither service-account JSON nor base64 of it")
        return None
    missing = [k for k in ("client_email", "private_key") if not str(info.get(k) or "").strip()]
    if missing:
        errors.append(f"{var} has no {' or '.join(missing)} (is it a service-account key file?)")
        return None
    info = dict(info)
    info["private_key"] = str(info["private_key"]).replace("\\n", "\n")
    info.setdefault("token_uri", DEFAULT_TOKEN_URI)
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        load_pem_private_key(info["private_key"].encode(), password=None, unsafe_skip_rsa_key_validation=True)
    except Exception:  # noqa: BLE001 - any failure means the key is unusable
        errors.append(f"{var}: private_key is not a readable PEM private key")
        return None
    return info


def _parse_config(env: Mapping[str, str]) -> tuple[Config, list[str]]:
    errors: list[str] = []

    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    def seconds(name: str, default: float, allow_zero: bool = False) -> float:
        raw = get(name)
        if not raw:
            return default
        try:
            v = float(raw)
        except ValueError:
            errors.append(f"{name} must be a number of seconds (got {raw!r})")
            return default
        if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not allow_zero):
            errors.append(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number "
                          f"of seconds (got {raw!r})")
            return default
        return v

    ttl = seconds("EQUIPMENT_CACHE_TTL", 30.0, allow_zero=True)
    load_timeout = seconds("EQUIPMENT_LOAD_TIMEOUT", 3.0)
    budget = seconds("BOOKING_RETRY_BUDGET", 8.0, allow_zero=True)
    http_timeout: tuple[float, float] = (5.0, 10.0)
    raw = get("SHEETS_HTTP_TIMEOUT")
    if raw:
        try:
            parts = [float(p) for p in raw.split(",")]
            if len(parts) == 1:
                parts = [min(parts[0], 5.0), parts[0]]
            if len(parts) != 2 or any(math.isnan(p) or math.isinf(p) or p <= 0 for p in parts):
                raise ValueError
            http_timeout = (parts[0], parts[1])
        except ValueError:
            errors.append(f"SHEETS_HTTP_TIMEOUT must be seconds, or 'connect,read' seconds (got {raw!r})")

    api_url = get("GOOGLE_SHEETS_API_URL") or DEFAULT_API_URL
    if not re.match(r"^https?://[^/\s]+", api_url):
        errors.append(f"GOOGLE_SHEETS_API_URL must be an http(s) URL (got {api_url!r})")
    api_url = api_url.rstrip("/")

    sheet_id = get("GOOGLE_SHEET_ID") or None
    raw_json = get("GOOGLE_SERVICE_ACCOUNT_JSON")
    cred_path = get("GOOGLE_APPLICATION_CREDENTIALS")
    info = None
    if raw_json:
        info = _decode_service_account(raw_json, "GOOGLE_SERVICE_ACCOUNT_JSON", errors)
    elif cred_path and sheet_id:
        try:
            text = Path(cred_path).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            errors.append(f"GOOGLE_APPLICATION_CREDENTIALS: cannot read {cred_path!r} ({e.strerror or e})")
        else:
            info = _decode_service_account(text, "GOOGLE_APPLICATION_CREDENTIALS", errors)
    if sheet_id:
        if sheet_id.startswith("http"):
            m = re.search(r"/d/([A-Za-z0-9_-]+)", sheet_id)
            if m:
                sheet_id = m.group(1)
            else:
                errors.append("GOOGLE_SHEET_ID must be the sheet's ID (the part after /d/ in its URL)")
        if not raw_json and not cred_path:
            errors.append("GOOGLE_SHEET_ID is set but there are no credentials: set GOOGLE_SERVICE_ACCOUNT_JSON "
                          "(the service-account JSON, raw or base64) or GOOGLE_APPLICATION_CREDENTIALS (a file path)")
    elif raw_json:
        errors.append("GOOGLE_SERVICE_ACCOUNT_JSON is set but GOOGLE_SHEET_ID is not "
                      "(without it the embedded CSV inventory is used)")

    equipment_ws = get("EQUIPMENT_WORKSHEET") or "Equipment"
    bookings_ws = get("BOOKINGS_WORKSHEET") or "Bookings"
    if equipment_ws == bookings_ws:
        errors.append("EQUIPMENT_WORKSHEET and BOOKINGS_WORKSHEET must name different worksheets")

    csv_path = Path(get("EQUIPMENT_CSV") or DEFAULT_CSV).expanduser()
    if not sheet_id and not csv_path.is_file():
        errors.append(f"EQUIPMENT_CSV: no inventory file at {str(csv_path)!r}")

    state_dir = Path(get("STATE_DIR") or DEFAULT_STATE_DIR).expanduser()
    if state_dir.exists() and not state_dir.is_dir():
        errors.append(f"STATE_DIR {str(state_dir)!r} exists and is not a directory")

    cfg = Config(sheet_id=sheet_id, credentials_info=info, api_url=api_url,
                 equipment_worksheet=equipment_ws, bookings_worksheet=bookings_ws, csv_path=csv_path,
                 cache_ttl=ttl, load_timeout=load_timeout, http_timeout=http_timeout,
                 retry_budget=budget, state_dir=state_dir)
    return cfg, errors


def config_errors(env: Mapping[str, str] = os.environ) -> list[str]:
    """Every missing or malformed inventory setting, one message each naming the variable."""
    return _parse_config(env)[1]


# =============================================================================================
# Small helpers


def mask_phone(phone: str | None) -> str:
    """A phone number for logs: +15551234567 -> +1******4567, 5551234567 -> ******4567.

    Only the last 4 digits stay, plus, for a number in international form (leading '+'), its
    first digit (a country-code hint). Separators are ignored; tel:/sip: prefixes and an @host
    part are stripped. No digits at all (empty, None, "anonymous") -> "unknown"."""
    n = str(phone or "").strip()
    m = re.match(r"(?i)^(?:tel|sips?):", n)
    if m:
        n = n[m.end():]
    n = re.split(r"[@;]", n, maxsplit=1)[0].strip()
    digits = re.sub(r"\D", "", n)
    if not digits:
        return "unknown"
    if n.startswith("+") and len(digits) >= 7:
        return "+" + digits[0] + "*" * (len(digits) - 5) + digits[-4:]
    prefix = "+" if n.startswith("+") else ""
    if len(digits) <= 4:
        return prefix + "*" * len(digits)
    return prefix + "*" * (len(digits) - 4) + digits[-4:]


def _clean_text(s: str, limit: int) -> str:
    s = re.sub(r"[\x00-\x1f\x7f]", " ", str(s or ""))
    return " ".join(s.split())[: limit + 1]


def neutralise(s: str) -> str:
    """For CSV outputs: a cell starting with = + - @ is prefixed with ' so a spreadsheet
    program opening the file shows it as text instead of running it (the apostrophe is what
    spreadsheets themselves use: "+1 555 123 4567" stays readable as "'+1 555 123 4567")."""
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _key(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(header)).casefold()


COLUMNS = {
    "id": "ID", "name": "Name", "category": "Category", "status": "Status",
    "dailyrate": "Daily Rate", "weeklyrate": "Weekly Rate", "description": "Description",
    "rentername": "Renter Name", "renterphone": "Renter Phone", "rentalstart": "Rental Start",
    "rentalend": "Rental End", "bookingref": "Booking Ref", "bookedat": "Booked At",
}
REQUIRED = ("id", "name", "status")
LOG_HEADER = ["Booking Ref", "Booked At", "Equipment ID", "Equipment Name", "Renter Name", "Renter Phone",
              "Rental Start", "Rental End", "Call ID", "Kind", "Note"]


def _money(s: str) -> float | None:
    s = re.sub(r"[^\d.\-]", "", s or "")
    try:
        return float(s) if s else None
    except ValueError:
        return None


def _now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().replace(microsecond=0).isoformat()


def _col_letter(i: int) -> str:
    s, i = "", i + 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def new_ref() -> str:
    return "".join(secrets.choice(REF_ALPHABET) for _ in range(REF_LENGTH))


@dataclass
class Table:
    """A worksheet as read: header and data rows padded to the header width. rows[i] is sheet row i+2."""

    header: list[str]
    rows: list[list[str]]
    where: str

    def __post_init__(self) -> None:
        self.cols: dict[str, int] = {}
        for i, h in enumerate(self.header):
            k = _key(h)
            if k and k not in self.cols:
                self.cols[k] = i
        width = len(self.header)
        self.rows = [(list(r) + [""] * (width - len(r)))[:max(width, len(r))] for r in self.rows]

    def check_required(self) -> None:
        missing = [COLUMNS[k] for k in REQUIRED if k not in self.cols]
        if missing:
            found = ", ".join(repr(h) for h in self.header if h.strip()) or "no header row"
            raise InventoryConfigError(
                f"{self.where} has no {', '.join(repr(m) for m in missing)} column"
                f"{'s' if len(missing) > 1 else ''} (found: {found})")

    def get(self, row: list[str], key: str) -> str:
        i = self.cols.get(key)
        return str(row[i]).strip() if i is not None and i < len(row) else ""

    def find(self, equipment_id: str) -> tuple[int, list[str]] | None:
        want = _fold(equipment_id)
        for i, r in enumerate(self.rows):
            if _fold(self.get(r, "id")) == want and want:
                return i, r
        return None

    def unit(self, row: list[str]) -> Unit:
        return Unit(id=self.get(row, "id"), name=self.get(row, "name"),
                    status=self.get(row, "status").upper(), category=self.get(row, "category"),
                    daily_rate=_money(self.get(row, "dailyrate")),
                    weekly_rate=_money(self.get(row, "weeklyrate")),
                    description=self.get(row, "description"))

    def units(self, log_unknown: bool = False) -> list[Unit]:
        self.check_required()
        out = []
        for i, r in enumerate(self.rows):
            if not any(str(c).strip() for c in r):
                continue  # blank row
            u = self.unit(r)
            if not u.id:
                if log_unknown:
                    logger.warning("Equipment row %d has no ID - skipped", i + 2)
                continue
            if log_unknown and u.status not in KNOWN_STATUSES:
                logger.warning("Equipment row %d (ID %s): unknown status %r - treated as not available",
                               i + 2, u.id, u.status)
            out.append(u)
        return out


# =============================================================================================
# Stores: the same small sync interface over the sheet and the CSV (always called off the loop)


class Store(Protocol):
    source: str  # "sheet" or "csv"
    origin: str  # identity of the data, so a snapshot of another source is never served

    def read_table(self) -> Table: ...
    def write_unit(self, row_index: int, equipment_id: str, fields: dict[str, str], table: Table) -> None: ...
    def log_refs(self) -> set[str]: ...
    def append_log(self, row: list[str]) -> None: ...
    def prepare_text(self, s: str) -> str: ...


class SheetStore:
    """Google Sheets through gspread's plain HTTPClient (no BackOffHTTPClient: retries are ours,
    bounded). One values GET per read; unit writes are one RAW values:batchUpdate; audit rows
    are one RAW values:append with INSERT_ROWS."""

    source = "sheet"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.origin = f"sheet:{cfg.sheet_id}:{cfg.equipment_worksheet}"
        self._client: Any = None
        self._lock = threading.Lock()

    def prepare_text(self, s: str) -> str:
        return s  # written RAW: stored as text, never a formula

    def http(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client.http_client

    def _build_client(self) -> Any:
        import gspread
        from google.auth.transport.requests import AuthorizedSession
        creds = _service_account_credentials(self.cfg.credentials_info or {})
        if self.cfg.api_url != DEFAULT_API_URL:
            # google-auth 2.62 looks up a "regional access boundary" at iamcredentials.googleapis.com
            # on a background thread after each token refresh; with a proxy or a stand-in, nothing
            # but the configured API URL and the JSON's token_uri should be contacted.
            try:
                creds._is_regional_access_boundary_lookup_required = lambda: False  # type: ignore[method-assign]
            except AttributeError:  # pragma: no cover - other google-auth versions
                pass
        # the token request goes through our own transport: no retry adapter, no google-auth
        # back-off (3 tries with 1 s + 2 s sleeps), the per-request timeout; a failure is one
        # attempt of our bounded retry (_with_retries)
        session = AuthorizedSession(creds, auth_request=_TokenRequest(self.cfg.http_timeout))
        if self.cfg.api_url != DEFAULT_API_URL:
            session.mount(DEFAULT_API_URL, _RewriteAdapter(DEFAULT_API_URL, self.cfg.api_url))
            # nothing else may leave through this session (it only ever talks to Sheets)
            session.mount("https://", _RefuseAdapter())
            session.mount("http://", _RefuseAdapter())
        client = gspread.Client(None, session=session, http_client=_BudgetedHTTPClient)
        client.set_timeout(self.cfg.http_timeout)
        return client

    def _ws(self, title: str) -> str:
        return "'" + title.replace("'", "''") + "'"

    def _translate(self, e: Exception, worksheet: str) -> Exception:
        import gspread

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
                var = "EQUIPMENT_WORKSHEET" if worksheet == self.cfg.equipment_worksheet else "BOOKINGS_WORKSHEET"
                return InventoryConfigError(
                    f"Google Sheet {self.cfg.sheet_id!r} has no worksheet named {worksheet!r} ({var})")
        try:
            from google.auth.exceptions import RefreshError

            if isinstance(e, RefreshError) and not getattr(e, "retryable", False):
                return InventoryConfigError(f"the service-account token request was refused: {e}")
        except ImportError:  # pragma: no cover
            pass
        return e

    def read_table(self) -> Table:
        ws = self.cfg.equipment_worksheet
        try:
            data = self.http().values_get(self.cfg.sheet_id, self._ws(ws))
        except Exception as e:
            raise self._translate(e, ws) from e
        values = data.get("values") or []
        header = [str(h) for h in values[0]] if values else []
        return Table(header, [[str(c) for c in r] for r in values[1:]], f"worksheet {ws!r}")

    def write_unit(self, row_index: int, equipment_id: str, fields: dict[str, str], table: Table) -> None:
        ws = self.cfg.equipment_worksheet
        rownum = row_index + 2
        data = [{"range": f"{self._ws(ws)}!{_col_letter(table.cols[k])}{rownum}", "values": [[v]]}
                for k, v in fields.items() if k in table.cols]
        try:
            self.http().values_batch_update(self.cfg.sheet_id, {"valueInputOption": "RAW", "data": data})
        except Exception as e:
            raise self._translate(e, ws) from e

    def log_refs(self) -> set[str]:
        import gspread

        ws = self.cfg.bookings_worksheet
        try:
            data = self.http().values_get(self.cfg.sheet_id, self._ws(ws))
        except gspread.exceptions.APIError as e:
            if e.response.status_code == 400:
                return set()  # no Bookings worksheet yet
            raise self._translate(e, ws) from e
        values = data.get("values") or []
        if not values:
            return set()
        col = next((i for i, h in enumerate(values[0]) if _key(h) == "bookingref"), 0)
        return {str(r[col]).strip() for r in values[1:] if len(r) > col and str(r[col]).strip()}

    def append_log(self, row: list[str]) -> None:
        import gspread

        ws = self.cfg.bookings_worksheet
        params = {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}
        http = self.http()
        try:
            http.values_append(self.cfg.sheet_id, f"{self._ws(ws)}!A1", params, {"values": [row]})
            return
        except gspread.exceptions.APIError as e:
            if e.response.status_code != 400:
                raise self._translate(e, ws) from e
        # The Bookings worksheet is missing: create it with its header in one batchUpdate (all or
        # nothing), so no other writer's row can land above the header. 400 = another process
        # created it meanwhile (with its header): just append.
        sheet_id = random.randint(1_000_000, 2_000_000_000)
        try:
            http.batch_update(self.cfg.sheet_id, {"requests": [
                {"addSheet": {"properties": {"sheetId": sheet_id, "title": ws, "gridProperties": {
                    "rowCount": 1000, "columnCount": len(LOG_HEADER)}}}},
                {"updateCells": {"start": {"sheetId": sheet_id, "rowIndex": 0, "columnIndex": 0},
                                 "rows": [{"values": [{"userEnteredValue": {"stringValue": h}}
                                                      for h in LOG_HEADER]}],
                                 "fields": "userEnteredValue"}},
            ]})
        except gspread.exceptions.APIError as e:
            if e.response.status_code != 400:  # 400 = exists already
                raise self._translate(e, ws) from e
        try:
            http.values_append(self.cfg.sheet_id, f"{self._ws(ws)}!A1", params, {"values": [row]})
        except Exception as e:
            raise self._translate(e, ws) from e


def _service_account_credentials(info: Mapping[str, Any]) -> Any:
    """Credentials.from_service_account_info(info, scopes=SCOPES), minus its RSA key validation:
    that check holds the GIL for ~40 ms, which would stall the call's event loop while a
    background refresh starts. The key is our own configuration, already parsed by config_errors."""
    from google.auth import crypt
    from google.oauth2.service_account import Credentials

    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(str(info["private_key"]).encode(), password=None,
                                   unsafe_skip_rsa_key_validation=True)
        signer = crypt.RSASigner(key, key_id=info.get("private_key_id"))
        return Credentials(signer, info["client_email"], info.get("token_uri") or DEFAULT_TOKEN_URI,
                           scopes=SCOPES, project_id=info.get("project_id"),
                           universe_domain=info.get("universe_domain") or "googleapis.com")
    except Exception:  # noqa: BLE001 - the documented constructor, slower but always right
        return Credentials.from_service_account_info(dict(info), scopes=SCOPES)


class CsvStore:
    """The embedded default: a CSV file with the sheet's columns. Bookings rewrite it atomically
    (temp file + os.replace) under a file lock; the audit trail is STATE_DIR/bookings.csv."""

    source = "csv"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.path = Path(cfg.csv_path).resolve()
        self.origin = f"csv:{self.path}"
        self.log_path = Path(cfg.state_dir) / "bookings.csv"
        self._lock_path = Path(cfg.state_dir) / "locks" / "csv.lock"

    def prepare_text(self, s: str) -> str:
        return neutralise(s)

    def _read_rows(self) -> list[list[str]]:
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            return [list(r) for r in csv.reader(f)]

    def read_table(self) -> Table:
        try:
            rows = self._read_rows()
        except OSError as e:
            raise InventoryConfigError(f"EQUIPMENT_CSV: cannot read {str(self.path)!r} ({e.strerror or e})") from e
        header = rows[0] if rows else []
        return Table(header, rows[1:], f"inventory file {self.path.name!r}")

    def write_unit(self, row_index: int, equipment_id: str, fields: dict[str, str], table: Table) -> None:
        with filelock.FileLock(str(self._lock_path), timeout=10):
            fresh = self.read_table()
            found = fresh.find(equipment_id)  # by ID: the file may have changed since it was read
            if found is None:
                raise InventoryConfigError(f"unit {equipment_id!r} disappeared from {self.path.name}")
            _, row = found
            for k, v in fields.items():
                if k in fresh.cols:
                    row[fresh.cols[k]] = v
            _atomic_write(self.path, _csv_text([fresh.header] + fresh.rows))

    def log_refs(self) -> set[str]:
        try:
            with open(self.log_path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except FileNotFoundError:
            return set()
        return {r[0].strip() for r in rows[1:] if r and r[0].strip()}

    def append_log(self, row: list[str]) -> None:
        with filelock.FileLock(str(self._lock_path), timeout=10):
            new = not self.log_path.exists() or self.log_path.stat().st_size == 0
            text = _csv_text(([LOG_HEADER] if new else []) + [row])
            _append_durable(self.log_path, text)


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _append_durable(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# HTTP plumbing for the sheet

_budget = threading.local()


def _bounded_timeout(base: Any) -> Any:
    """A per-request timeout that never outlasts the caller's retry budget (the deadline is
    thread-local, set by _with_retries)."""
    deadline = getattr(_budget, "deadline", None)
    if base is None or deadline is None:
        return base
    left = max(0.2, deadline - time.monotonic())
    c, r = base if isinstance(base, tuple) else (base, base)
    return (min(c, left), min(r, left))


try:
    import gspread as _gspread
    import requests as _requests

    class _BudgetedHTTPClient(_gspread.HTTPClient):  # type: ignore[misc]
        """gspread's plain HTTPClient whose per-request timeout never outlasts the caller's
        retry budget (the deadline is thread-local, set by _with_retries)."""

        @property  # type: ignore[override]
        def timeout(self) -> Any:
            return _bounded_timeout(getattr(self, "_base_timeout", None))

        @timeout.setter
        def timeout(self, value: Any) -> None:
            self._base_timeout = value

    class _RewriteAdapter(_requests.adapters.HTTPAdapter):
        """Sends https://sheets.googleapis.com/... to GOOGLE_SHEETS_API_URL (a proxy or a stand-in)."""

        def __init__(self, prefix: str, target: str):
            super().__init__()
            self.prefix, self.target = prefix, target.rstrip("/")

        def send(self, request: Any, **kwargs: Any) -> Any:
            if request.url.startswith(self.prefix):
                request.url = self.target + request.url[len(self.prefix):]
            return super().send(request, **kwargs)

    class _TokenRequest:
        """The transport google-auth uses for the service-account token request: a plain
        requests.Session (no retry adapter), every request bounded by the per-request timeout and
        what is left of the retry budget, and a retryable HTTP status raised at once as a
        TransportError, so google-auth's own back-off never runs and _with_retries counts the
        failure as one attempt."""

        def __init__(self, timeout: tuple[float, float]):
            from google.auth.transport.requests import Request

            self._timeout = timeout
            self._request = Request(_requests.Session())

        def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                     timeout: Any = None, **kwargs: Any) -> Any:
            from google.auth.exceptions import TransportError

            bound = _bounded_timeout(self._timeout)
            if isinstance(timeout, (int, float)):
                bound = (min(bound[0], timeout), min(bound[1], timeout))
            elif isinstance(timeout, tuple) and len(timeout) == 2 and None not in timeout:
                bound = (min(bound[0], timeout[0]), min(bound[1], timeout[1]))
            response = self._request(url, method=method, body=body, headers=headers, timeout=bound, **kwargs)
            if response.status in _RETRY_STATUSES:
                raise TransportError(f"token endpoint answered HTTP {response.status}")
            return response

    class _RefuseAdapter(_requests.adapters.BaseAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            raise _requests.exceptions.InvalidURL(
                f"equipment: refusing to send {request.method} {request.url} (only Sheets API calls go out)")

        def close(self) -> None:
            pass
except ImportError:  # pragma: no cover - gspread is pinned in requirements.txt
    pass


_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


def _retryable(e: BaseException) -> bool:
    try:
        import gspread
        import requests
        from google.auth.exceptions import TransportError, RefreshError
    except ImportError:  # pragma: no cover
        return False
    if isinstance(e, gspread.exceptions.APIError):
        return e.response.status_code in _RETRY_STATUSES
    if isinstance(e, (requests.exceptions.Timeout, requests.exceptions.ConnectionError, TransportError)):
        return True
    if isinstance(e, RefreshError):
        return bool(getattr(e, "retryable", False))
    return isinstance(e, (TimeoutError, ConnectionError))


T = TypeVar("T")


def _with_retries(fn: Callable[[], T], deadline: float, what: str) -> T:
    """Calls fn until it succeeds, a non-retryable error, or the deadline (monotonic) passes:
    then SourceUnavailable. Backoff 0.25 s doubling to 2 s, with jitter. Blocking: call off the loop."""
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        _budget.deadline = deadline
        try:
            return fn()
        except Exception as e:
            if not _retryable(e):
                raise
            pause = delay * (0.5 + random.random())
            if time.monotonic() + pause >= deadline:
                raise SourceUnavailable(f"{what}: no answer after {attempt} attempt(s): {_describe(e)}") from e
            logger.info("Sheets %s failed (%s) - retrying in %.2fs", what, _describe(e), pause)
            time.sleep(pause)
            delay = min(delay * 2, 2.0)
        finally:
            _budget.deadline = None


def _describe(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    code = getattr(resp, "status_code", None)
    if code is not None:
        return f"HTTP {code}"
    try:
        from google.auth.exceptions import TransportError

        if isinstance(e, TransportError) and str(e):
            return f"{type(e).__name__} ({str(e)[:160]})"
    except ImportError:  # pragma: no cover
        pass
    return type(e).__name__


# =============================================================================================
# The cache, booking and outbox, shared by both stores


SNAPSHOT_FILE = "equipment-snapshot.json"
OUTBOX_FILE = "outbox.jsonl"
OUTBOX_MAX_ATTEMPTS = 5  # failed replays (not outages) of one entry before it is settled "failed"
OUTBOX_COMPACT_LINES = 200  # settled lines that trigger a rewrite even when they are not a majority
_OUTBOX_MARKS = ("settled", "attempt")  # bookkeeping lines, not work to replay


class CachedInventory:
    """The Inventory implementation (see the module docstring)."""

    def __init__(self, cfg: Config, store: Store):
        self.cfg = cfg
        self.store = store
        self.state_dir = Path(cfg.state_dir)
        (self.state_dir / "locks").mkdir(parents=True, exist_ok=True)
        self.snapshot_path = self.state_dir / SNAPSHOT_FILE
        self.outbox_path = self.state_dir / OUTBOX_FILE
        self._refresh_future: asyncio.Future | None = None
        self._background: set[asyncio.Future] = set()

    @property
    def source(self) -> str:
        return self.store.source

    def _lock(self, name: str, timeout: float = -1) -> filelock.FileLock:
        return filelock.FileLock(str(self.state_dir / "locks" / f"{name}.lock"), timeout=timeout)

    def _unit_lock(self, equipment_id: str, timeout: float) -> filelock.FileLock:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", _fold(equipment_id))[:80] or "_"
        return self._lock(f"unit-{safe}", timeout)

    # -- running things off the event loop --------------------------------------------------------
    def _off_loop(self, fn: Callable[..., T], *args: Any, name: str = "equipment") -> "asyncio.Future[T]":
        """Runs fn on a daemon thread (never blocks the loop, and never keeps a finished call's
        process alive the way the default executor's joined threads would). Each request inside
        is bounded by the HTTP timeout and the retry budget."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if fut.done():  # cancelled: nobody is waiting for it any more
                _log_late(name, result, exc, "its caller stopped waiting")
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        def runner() -> None:
            result, exc = None, None
            try:
                result = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                exc = e
            try:
                loop.call_soon_threadsafe(settle, result, exc)
            except RuntimeError:  # the loop is gone (the call ended): say how the work ended
                _log_late(name, result, exc, "its call's event loop had closed")

        threading.Thread(target=runner, name=name, daemon=True).start()
        return fut

    def _track(self, fut: asyncio.Future) -> asyncio.Future:
        """Remembers work that close() must wait for (refreshes, bookings, call-backs)."""
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        return fut

    async def _run_tracked(self, fn: Callable[..., T], *args: Any, name: str) -> T:
        """Runs fn off the loop, tracked for close(). If the caller stops waiting (cancelled),
        the work carries on and its outcome is logged when it lands."""
        fut = self._track(self._off_loop(fn, *args, name=name))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            def late(f: asyncio.Future) -> None:
                if not f.cancelled():
                    _log_late(name, None if f.exception() else f.result(), f.exception(),
                              "its caller stopped waiting")
            fut.add_done_callback(late)
            raise

    # -- snapshot file ----------------------------------------------------------------------------
    def _read_snapshot_file(self) -> dict[str, Any] | None:
        try:
            with open(self.snapshot_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("Equipment snapshot %s unreadable (%s) - ignoring it", self.snapshot_path, e)
            return None
        if not isinstance(data, dict) or data.get("origin") != self.store.origin:
            return None
        return data

    @staticmethod
    def _units_of(data: Mapping[str, Any]) -> tuple[Unit, ...]:
        return tuple(Unit(**u) for u in data.get("units") or [])

    def _apply_holds(self, units: list[dict[str, Any]], overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
        pending = self._outbox_pending_units()
        out = []
        for u in units:
            u = dict(u)
            k = _fold(u["id"])
            if k in overrides:
                u["status"] = overrides[k]["status"]
            if k in pending and u["status"] in (AVAILABLE, PENDING):
                # held by an outbox booking (kept, or in flight: write-ahead). A unit already
                # RENTED (e.g. by that very booking) or in MAINTENANCE keeps its status.
                u["status"] = PENDING
            out.append(u)
        return out

    def _write_snapshot(self, units: list[Unit], read_started: float, read_at: float) -> None:
        with self._lock("snapshot", timeout=10):
            old = self._read_snapshot_file() or {}
            # keep patches made while this read was in flight: the read may not have seen them
            overrides = {k: v for k, v in (old.get("overrides") or {}).items()
                         if float(v.get("at", 0)) >= read_started - 1.0}
            data = {
                "version": 1, "origin": self.store.origin, "source": self.store.source,
                "read_at": read_at, "overrides": overrides,
                "units": self._apply_holds([u.__dict__ for u in units], overrides),
            }
            _atomic_write(self.snapshot_path, json.dumps(data))

    def _patch_snapshot(self, changes: Mapping[str, str]) -> None:
        """Records new statuses (id -> status) in the shared snapshot so every process sees them
        on its next read, and so a refresh that was already in flight does not undo them."""
        with self._lock("snapshot", timeout=10):
            data = self._read_snapshot_file()
            if data is None:
                return  # nothing cached: the next load reads the source (and the outbox holds)
            overrides = dict(data.get("overrides") or {})
            now = time.time()
            for eid, status in changes.items():
                overrides[_fold(eid)] = {"status": status, "at": now}
            data["overrides"] = overrides
            data["units"] = self._apply_holds(data.get("units") or [], overrides)
            _atomic_write(self.snapshot_path, json.dumps(data))

    # -- refresh ---------------------------------------------------------------------------------
    def _refresh_sync(self, force: bool = False) -> str:
        """Single flight per machine. Returns "busy" (another process is refreshing), "fresh"
        (someone refreshed meanwhile) or "loaded". Raises InventoryConfigError / SourceUnavailable."""
        lock = self._lock("refresh")
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            return "busy"
        try:
            if not force:
                data = self._read_snapshot_file()
                if data and time.time() - float(data["read_at"]) < self.cfg.cache_ttl:
                    return "fresh"
            started = time.time()
            deadline = time.monotonic() + max(self.cfg.retry_budget, 0.5)
            table = _with_retries(self.store.read_table, deadline, "read")
            units = table.units(log_unknown=True)
            self._write_snapshot(units, started, time.time())
            logger.info("Equipment loaded successfully: %d items", len(units))
            if self._outbox_pending():
                try:
                    self._replay_sync()  # compacts the outbox too
                except Exception as e:  # noqa: BLE001 - the refresh itself succeeded
                    logger.warning("Outbox replay after refresh failed: %s", e)
            else:
                self._compact_quietly()  # settled bookings only: keep the file small
            return "loaded"
        finally:
            lock.release()

    def _start_refresh(self) -> asyncio.Future:
        if self._refresh_future is not None and not self._refresh_future.done():
            return self._refresh_future
        fut = self._track(self._off_loop(self._refresh_sync, name="equipment-refresh"))

        def report(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            e = f.exception()
            if e is None:
                return
            data = self._read_snapshot_file()
            if isinstance(e, InventoryConfigError):
                logger.error("Equipment refresh failed: %s", e)
            if data:
                logger.warning("Equipment loading timed out - still serving the last good snapshot "
                               "(age: %.1fs): %s", time.time() - float(data["read_at"]), e)

        fut.add_done_callback(report)
        self._refresh_future = fut
        return fut

    async def snapshot(self) -> Snapshot:
        data = self._read_snapshot_file()  # a small local file: no network, no lock
        if data is not None:
            age = max(0.0, time.time() - float(data["read_at"]))
            logger.info("Using cached equipment data (age: %.1fs)", age)
            if age >= self.cfg.cache_ttl:
                logger.info("Cache expired or empty - reloading equipment")
                self._start_refresh()  # stale-while-revalidate: never awaited here
            return Snapshot(self._units_of(data), age, self.store.source)

        logger.info("Cache expired or empty - reloading equipment")
        deadline = time.monotonic() + self.cfg.load_timeout
        fut = self._start_refresh()
        started = time.monotonic()
        failure: BaseException | None = None
        while True:
            data = self._read_snapshot_file()
            if data is not None:
                age = max(0.0, time.time() - float(data["read_at"]))
                return Snapshot(self._units_of(data), age, self.store.source)
            if fut.done() and not fut.cancelled():
                failure = fut.exception()
                if failure is not None:
                    break
                # "busy": another process holds the refresh lock; poll its file, and take over
                # if that process dies (flock is released with it)
                if fut.result() == "busy" and time.monotonic() - started > 0.25:
                    fut, started = self._start_refresh(), time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if fut.done():
                await asyncio.sleep(min(0.05, left))
            else:
                await asyncio.wait({fut}, timeout=min(0.05, left))
        why = f"the source failed: {failure}" if failure else f"no answer within {self.cfg.load_timeout:.1f}s"
        logger.warning("Equipment loading timed out - no equipment data on this machine yet, continuing with "
                       "inventory unknown (age: n/a; %s)", why)
        return Snapshot(None, None, self.store.source)

    async def check(self) -> int:
        """Preflight: reads the source directly (no cache), raises InventoryConfigError naming
        what is wrong, or SourceUnavailable; returns the number of units."""
        def run() -> int:
            deadline = time.monotonic() + max(self.cfg.retry_budget, 0.5)
            return len(_with_retries(self.store.read_table, deadline, "read").units())
        return await self._off_loop(run, name="equipment-check")

    # -- outbox ----------------------------------------------------------------------------------
    def _outbox_entries(self) -> list[dict[str, Any]]:
        try:
            with open(self.outbox_path, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                logger.warning("Outbox: skipping a damaged line")
        return out

    def _outbox_pending(self, entries: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        entries = self._outbox_entries() if entries is None else entries
        settled = {e.get("ref") for e in entries if e.get("op") == "settled"}
        return [e for e in entries if e.get("op") not in _OUTBOX_MARKS and e.get("ref") not in settled]

    @staticmethod
    def _outbox_attempts(entries: list[dict[str, Any]]) -> dict[str, int]:
        """ref -> failed replay attempts so far (the highest `attempt` count recorded)."""
        out: dict[str, int] = {}
        for e in entries:
            if e.get("op") == "attempt":
                try:
                    out[e.get("ref")] = max(out.get(e.get("ref"), 0), int(e.get("count", 0)))
                except (TypeError, ValueError):
                    pass
        return out

    def _compact_outbox(self, force: bool = False) -> bool:
        """Rewrites the outbox keeping only unsettled entries (and their latest attempt count),
        when settled lines are a majority or above OUTBOX_COMPACT_LINES (any, with force).
        Atomic (temp file, fsync, os.replace) and under the outbox lock, which every append takes
        too, so no append can land in the file being replaced. Returns True if rewritten."""
        with self._lock("outbox", timeout=10):
            entries = self._outbox_entries()
            settled = {e.get("ref") for e in entries if e.get("op") == "settled"}
            attempts = self._outbox_attempts(entries)
            keep: list[dict[str, Any]] = []
            seen_attempt: set[Any] = set()
            for e in entries:
                ref = e.get("ref")
                if ref in settled or e.get("op") == "settled":
                    continue
                if e.get("op") == "attempt":
                    if ref in seen_attempt or int(e.get("count", 0) or 0) != attempts.get(ref):
                        continue
                    seen_attempt.add(ref)
                keep.append(e)
            dropped = len(entries) - len(keep)
            if dropped == 0 or not (force or dropped * 2 > len(entries) or dropped >= OUTBOX_COMPACT_LINES):
                return False
            _atomic_write(self.outbox_path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in keep))
            try:  # make the rename itself durable
                fd = os.open(str(self.outbox_path.parent), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
            logger.info("Outbox compacted: %d line(s) dropped, %d kept", dropped, len(keep))
            return True

    def _compact_quietly(self) -> None:
        try:
            self._compact_outbox()
        except Exception as e:  # noqa: BLE001 - compaction is housekeeping; the file stays valid
            logger.warning("Outbox %s not compacted (%s)", self.outbox_path, _failure(e))

    def _outbox_pending_units(self) -> set[str]:
        return {_fold(e["equipment_id"]) for e in self._outbox_pending() if e.get("op") == "book"}

    def _outbox_append(self, entry: dict[str, Any]) -> None:
        with self._lock("outbox", timeout=10):
            _append_durable(self.outbox_path, json.dumps(entry, ensure_ascii=False) + "\n")

    def _is_settled(self, ref: str) -> bool:
        return any(e.get("op") == "settled" and e.get("ref") == ref for e in self._outbox_entries())

    def _settle(self, ref: str, result: str) -> None:
        """Marks an outbox entry done. Best effort: if it fails, a later replay finds the row and
        the Bookings entry already carrying the ref and settles it without writing again."""
        try:
            self._outbox_append({"op": "settled", "ref": ref, "result": result, "at": time.time()})
        except Exception as e:  # noqa: BLE001
            logger.warning("Outbox: could not mark %s settled (%s); a replay will", ref, _failure(e))

    def _patch_quietly(self, changes: Mapping[str, str]) -> None:
        """_patch_snapshot for the booking path: the snapshot is a cache, its failure never
        changes a booking's outcome (the outbox hold and the next refresh cover it)."""
        try:
            self._patch_snapshot(changes)
        except Exception as e:  # noqa: BLE001
            logger.warning("Could not update the shared equipment snapshot (%s): %s", _failure(e), dict(changes))

    def _log_row(self, ref: str, at: str, equipment_id: str, equipment_name: str, name: str, phone: str,
                 start: str, end: str, call_id: str, kind: str, note: str = "") -> list[str]:
        """The one place a Bookings-tab row (LOG_HEADER order) is built; caller text prepared
        for the store (RAW in Sheets; neutralised in the CSV)."""
        p = self.store.prepare_text
        return [ref, at, equipment_id, p(equipment_name), p(name), p(phone), start, end, p(call_id), kind, p(note)]

    # -- booking ---------------------------------------------------------------------------------
    @staticmethod
    def _validate_name(renter_name: str) -> str:
        name = _clean_text(renter_name, MAX_NAME)
        if not name:
            raise BookingRefused("bad_name", "I need a name to put the booking under.")
        if len(name) > MAX_NAME:
            raise BookingRefused("bad_name", f"That name is too long for a booking; please give a name of at "
                                             f"most {MAX_NAME} characters.")
        return name

    @staticmethod
    def _validate_phone(renter_phone: str) -> str:
        phone = " ".join(str(renter_phone or "").split())
        digits = re.sub(r"\D", "", phone)
        if (len(phone) > MAX_PHONE or not re.fullmatch(r"\+?[\d\s\-().]+", phone)
                or not 7 <= len(digits) <= 15):
            raise BookingRefused("bad_phone", "That doesn't sound like a phone number; could you give me the "
                                              "number with the area code?")
        return phone

    @staticmethod
    def _alternatives(units: tuple[Unit, ...] | list[Unit], unit: Unit | None, exclude: str) -> tuple[Unit, ...]:
        if unit is None:
            return ()
        same = [u for u in units if u.available and _fold(u.id) != _fold(exclude)
                and _fold(u.category) == _fold(unit.category)]
        same.sort(key=lambda u: (_fold(u.name) != _fold(unit.name), u.daily_rate or 0.0, u.id))
        return tuple(same[:5])

    async def book(self, equipment_id: str, renter_name: str, renter_phone: str,
                   start: str, end: str, call_id: str = "", *, today: date | None = None) -> Booking:
        today = today or date.today()
        name = self._validate_name(renter_name)
        phone = self._validate_phone(renter_phone)
        try:
            d_start = date.fromisoformat(str(start).strip())
            d_end = date.fromisoformat(str(end).strip())
        except ValueError:
            raise BookingRefused("bad_date", "I didn't get the dates; which day would you like to start and "
                                             "which day will you return it?") from None
        if d_start < today:
            raise BookingRefused("past_date", f"That start date is in the past; today is {today.isoformat()}.")
        if d_end < d_start:
            raise BookingRefused("end_before_start", "The return date is before the start date.")

        snap = await self.snapshot()
        unit = snap.find(equipment_id)
        if snap.known:
            if unit is None:
                raise BookingRefused("unknown_id", f"I can't find equipment {equipment_id!r} in our inventory.")
            if not unit.available:
                what = "booked by someone else" if unit.status in (RENTED, PENDING) else \
                    "in maintenance" if unit.status == MAINTENANCE else "not available"
                raise BookingRefused("not_available", f"The {unit.name} ({unit.id}) is {what} right now.",
                                     self._alternatives(snap.units or (), unit, unit.id))
        call_id = _clean_text(call_id, MAX_CALL_ID)[:MAX_CALL_ID]
        # tracked: close() at call end waits (bounded) for a booking still in flight
        return await self._run_tracked(self._book_sync, unit, equipment_id, name, phone, d_start, d_end,
                                       call_id, snap, name="equipment-book")

    @staticmethod
    def _book_entry(ref: str, unit: Unit, name: str, phone: str, d_start: date, d_end: date, call_id: str,
                    booked_at: str) -> dict[str, Any]:
        return {"op": "book", "ref": ref, "equipment_id": unit.id, "equipment_name": unit.name,
                "name": name, "phone": phone, "start": d_start.isoformat(), "end": d_end.isoformat(),
                "call_id": call_id, "at": time.time(), "booked_at": booked_at}

    def _book_sync(self, unit: Unit | None, equipment_id: str, name: str, phone: str, d_start: date,
                   d_end: date, call_id: str, snap: Snapshot) -> Booking:
        """Under the unit's lock: re-read, write-ahead to the outbox, write the row, append the
        Bookings row, settle. Any failure after validation that is not a refusal keeps the
        booking in the outbox and returns it unconfirmed; BookingNotRecorded only if even the
        outbox cannot be written."""
        ref = new_ref()
        budget = max(self.cfg.retry_budget, 0.5)
        known = unit  # what we know of the unit: the snapshot's, then the source's
        ahead = False  # the write-ahead entry is durably in the outbox

        def kept(e: Exception) -> Booking:
            if known is None:  # never read, and the source fails now: can't even verify the unit
                logger.warning("Booking of %s refused: the inventory cannot be checked (%s)", equipment_id,
                               _failure(e))
                raise BookingRefused("inventory_unknown", "I can't check the inventory right now, so I "
                                                          "can't book it; staff can call you back.") from e
            return self._to_outbox(ref, known, name, phone, d_start, d_end, call_id, e, written=ahead)

        lock = self._unit_lock(equipment_id, timeout=budget + self.cfg.http_timeout[1] + 2.0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise BookingRefused("just_taken", "Another caller is booking that unit at this moment.",
                                 self._alternatives(snap.units or (), unit, equipment_id)) from None
        except Exception as e:  # noqa: BLE001 - e.g. STATE_DIR not writable
            return kept(e)
        try:
            try:
                if _fold(equipment_id) in self._outbox_pending_units():
                    self._patch_quietly({unit.id if unit else equipment_id: PENDING})
                    raise BookingRefused("just_taken", "That unit was just taken by another caller.",
                                         self._alternatives(snap.units or (), unit, equipment_id))
                deadline = time.monotonic() + budget
                table = _with_retries(self.store.read_table, deadline, "read")
                table.check_required()
                found = table.find(equipment_id)
                if found is None:
                    raise BookingRefused("unknown_id", f"I can't find equipment {equipment_id!r} in our inventory.")
                row_index, row = found
                fresh = known = table.unit(row)
                if not fresh.available:
                    self._patch_quietly({fresh.id: fresh.status})
                    raise BookingRefused("just_taken", f"Sorry, the {fresh.name} ({fresh.id}) was just taken.",
                                         self._alternatives(table.units(), fresh, fresh.id))
                booked_at = _now_iso()
                entry = self._book_entry(ref, fresh, name, phone, d_start, d_end, call_id, booked_at)
                try:
                    self._outbox_append(entry)  # write-ahead: a process that dies from here loses nothing
                    ahead = True
                    # held while in flight (it is about to be RENTED), and held if this process dies
                    self._patch_quietly({fresh.id: PENDING})
                except Exception as e:  # noqa: BLE001 - Sheets may still work: go on without it
                    logger.error("Outbox %s not writable (%s) - booking %s goes ahead without its write-ahead "
                                 "record", self.outbox_path, _failure(e), ref)
                p = self.store.prepare_text
                fields = {"status": RENTED, "rentername": p(name), "renterphone": p(phone),
                          "rentalstart": d_start.isoformat(), "rentalend": d_end.isoformat(),
                          "bookingref": ref, "bookedat": booked_at}
                _with_retries(lambda: self.store.write_unit(row_index, fresh.id, fields, table), deadline, "write")
            except BookingRefused:
                raise
            except Exception as e:  # noqa: BLE001 - "nothing is lost": kept in the outbox
                return kept(e)
            # written: the booking is confirmed whatever happens to the audit row or the cache
            self._patch_quietly({fresh.id: RENTED})
            logger.info("Booked %s (%s) for %s, ref %s", fresh.id, fresh.name, mask_phone(phone), ref)
            # still under the unit lock, so a replay waiting for it finds the entry settled
            self._log_booking(entry, ahead, time.monotonic() + budget)
        finally:
            lock.release()
        return Booking(ref, fresh.id, fresh.name, name, phone, d_start, d_end, confirmed=True)

    def _log_booking(self, entry: Mapping[str, Any], ahead: bool, deadline: float) -> None:
        """The Bookings row of a written booking, then the outbox entry settled. Never raises."""
        ref = entry["ref"]
        row = self._log_row(ref, entry["booked_at"], entry["equipment_id"], entry["equipment_name"], entry["name"],
                            entry["phone"], entry["start"], entry["end"], entry["call_id"], "BOOKING")
        try:
            self._append_log_once(row, ref, deadline)
        except Exception as e:  # noqa: BLE001
            if ahead:  # the entry stays pending: replay finds the row ours and appends this row
                logger.warning("Booking %s written but its Bookings row was not (%s) - kept in the outbox",
                               ref, _failure(e))
                return
            try:
                self._outbox_append({"op": "log", "ref": ref, "row": row, "at": time.time()})
                logger.warning("Booking %s written but its Bookings row was not (%s) - kept in the outbox",
                               ref, _failure(e))
            except Exception as oe:  # noqa: BLE001
                logger.error("Booking %s written but its Bookings row was not (%s) and the outbox failed too "
                             "(%s): staff must add it by hand", ref, _failure(e), _failure(oe))
            return
        if ahead:
            self._settle(ref, "written")

    def _append_log_once(self, row: list[str], ref: str, deadline: float) -> None:
        """values:append is not idempotent: after a failed attempt, look for our ref first."""
        attempts = [0]

        def once() -> None:
            if attempts[0] > 0 and ref in self.store.log_refs():
                return
            attempts[0] += 1
            self.store.append_log(row)

        _with_retries(once, deadline, "append")

    def _to_outbox(self, ref: str, unit: Unit, name: str, phone: str, d_start: date, d_end: date,
                   call_id: str, why: Exception, written: bool = False) -> Booking:
        """Keeps a booking that could not be written (written=True: its write-ahead entry is
        already there), holds the unit PENDING, logs one line saying why."""
        reason = _failure(why)
        if not written:
            try:
                self._outbox_append(self._book_entry(ref, unit, name, phone, d_start, d_end, call_id, _now_iso()))
            except Exception as e:  # noqa: BLE001
                logger.error("Booking %s for %s (%s) NOT RECORDED: the source failed (%s) and so did the "
                             "outbox %s (%s)", ref, unit.id, mask_phone(phone), reason, self.outbox_path, _failure(e))
                raise BookingNotRecorded(
                    f"booking of {unit.id} could not be written to the inventory ({reason}) nor kept in the "
                    f"outbox {self.outbox_path} ({_failure(e)})") from e
        self._patch_quietly({unit.id: PENDING})
        logger.warning("Booking %s for %s (%s) kept in the outbox, staff will confirm - not written because: %s",
                       ref, unit.id, mask_phone(phone), reason)
        return Booking(ref, unit.id, unit.name, name, phone, d_start, d_end, confirmed=False)

    # -- call-backs ------------------------------------------------------------------------------
    async def record_callback(self, name: str, phone: str, note: str, call_id: str = "") -> str:
        name = _clean_text(name, MAX_NAME)[:MAX_NAME]
        phone = self._validate_phone(phone)
        note = _clean_text(note, MAX_NOTE)[:MAX_NOTE]
        call_id = _clean_text(call_id, MAX_CALL_ID)[:MAX_CALL_ID]
        return await self._run_tracked(self._callback_sync, name, phone, note, call_id, name="equipment-callback")

    def _callback_sync(self, name: str, phone: str, note: str, call_id: str) -> str:
        ref = new_ref()
        row = self._log_row(ref, _now_iso(), "", "", name, phone, "", "", call_id, "CALLBACK", note)
        try:
            self._append_log_once(row, ref, time.monotonic() + max(self.cfg.retry_budget, 0.5))
            logger.info("Call-back request %s recorded for %s", ref, mask_phone(phone))
        except Exception as e:  # noqa: BLE001 - kept in the outbox
            try:
                self._outbox_append({"op": "callback", "ref": ref, "row": row, "at": time.time()})
            except Exception as oe:  # noqa: BLE001
                raise BookingNotRecorded(f"call-back request could not be written ({_failure(e)}) nor kept in "
                                         f"the outbox {self.outbox_path} ({_failure(oe)})") from oe
            logger.warning("Call-back request %s for %s kept in the outbox (%s)", ref, mask_phone(phone), _failure(e))
        return ref

    # -- replay ----------------------------------------------------------------------------------
    async def replay_outbox(self) -> int:
        if not self._outbox_pending():
            return 0
        try:
            return await self._run_tracked(self._replay_sync, name="equipment-replay")
        except Exception as e:  # noqa: BLE001 - kept; a later refresh or shutdown retries
            logger.warning("Outbox replay failed, will retry on a later refresh: %s", _failure(e))
            return 0

    def _replay_sync(self) -> int:
        """Replays the outbox (one process at a time), then compacts it. Each entry on its own:
        an outage (SourceUnavailable) stops the replay for a later one; any other failure is
        logged, counted in the outbox, and the next entry goes on; after OUTBOX_MAX_ATTEMPTS the
        entry is settled "failed" (CONFLICT row for staff, "Outbox conflict" log line)."""
        lock = self._lock("replay")
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            return 0  # another process is replaying
        try:
            try:
                return self._replay_entries()
            finally:
                self._compact_quietly()
        finally:
            lock.release()

    def _replay_entries(self) -> int:
        entries = self._outbox_entries()
        pending = self._outbox_pending(entries)
        if not pending:
            return 0
        attempts = self._outbox_attempts(entries)
        deadline = time.monotonic() + max(self.cfg.retry_budget, 0.5)
        settled = 0
        known_refs: set[str] | None = None
        changes: dict[str, str] = {}
        seen: dict[str, str] = {}  # equipment id -> status read from the source during this replay

        def log_refs(fresh: bool = False) -> set[str]:  # read once (or again when asked), only when needed
            nonlocal known_refs
            if known_refs is None or fresh:
                known_refs = _with_retries(self.store.log_refs, deadline, "read")
            return known_refs

        try:
            for i, e in enumerate(pending):
                if e.get("op") not in ("callback", "log", "book"):
                    continue
                try:
                    if self._replay_entry(e, deadline, log_refs, changes, seen):
                        settled += 1
                except SourceUnavailable as ex:
                    logger.warning("Outbox replay stopped at %s: Sheets unavailable (%s); %d entr%s left for a "
                                   "later replay", e.get("ref"), _failure(ex), len(pending) - i,
                                   "y" if len(pending) - i == 1 else "ies")
                    raise
                except Exception as ex:  # noqa: BLE001 - this entry's problem: the others go on
                    count = attempts.get(e.get("ref"), 0) + 1
                    if self._replay_failed(e, count, ex, log_refs, changes, seen):
                        settled += 1
        finally:
            if changes:
                try:
                    self._patch_snapshot(changes)
                except Exception as ex:  # noqa: BLE001 - a cache; the next refresh corrects it
                    logger.warning("Could not update the shared equipment snapshot (%s): %s", _failure(ex), changes)
        return settled

    def _replay_entry(self, e: Mapping[str, Any], deadline: float, log_refs: Callable[..., set[str]],
                      changes: dict[str, str], seen: dict[str, str]) -> bool:
        """One outbox entry. True if it was settled now. Raises on any failure."""
        op, ref = e.get("op"), e.get("ref")
        p = self.store.prepare_text
        if op in ("callback", "log"):
            if ref not in log_refs():
                self._append_log_once(e["row"], ref, deadline)
                log_refs().add(ref)
            self._outbox_append({"op": "settled", "ref": ref, "result": "written", "at": time.time()})
            return True
        eid = e["equipment_id"]
        unit_lock = self._unit_lock(eid, timeout=0)
        try:
            unit_lock.acquire()
        except filelock.Timeout:
            return False  # a booking of this unit is in flight (maybe this very one): later
        try:
            if self._is_settled(ref):
                return False  # its booking finished while we waited
            table = _with_retries(self.store.read_table, deadline, "read")
            table.check_required()
            found = table.find(eid)
            if found is None:
                result, now_status = "conflict", "missing"
            else:
                row_index, row = found
                cur = table.unit(row)
                now_status = seen[eid] = cur.status
                ours = table.get(row, "bookingref") == ref or (
                    cur.status == RENTED and "bookingref" not in table.cols
                    and table.get(row, "rentername") == p(e["name"])
                    and table.get(row, "renterphone") == p(e["phone"]))
                if ours:
                    result = "already"
                elif cur.available:
                    fields = {"status": RENTED, "rentername": p(e["name"]), "renterphone": p(e["phone"]),
                              "rentalstart": e["start"], "rentalend": e["end"], "bookingref": ref,
                              "bookedat": e.get("booked_at", "")}
                    _with_retries(lambda: self.store.write_unit(row_index, cur.id, fields, table),
                                  deadline, "write")
                    seen[eid] = RENTED
                    result = "written"
                else:
                    result = "conflict"
            if result == "conflict":
                logger.warning(
                    "Outbox conflict: booking %s for unit %s (%s) could not be written - the unit is now %s; "
                    "staff must call the renter back at %s", ref, eid, e.get("equipment_name", ""),
                    now_status, mask_phone(e["phone"]))
                changes[eid] = now_status if now_status != "missing" else MAINTENANCE
            else:
                changes[eid] = RENTED
            # a booking already written may have had its Bookings row appended (by its own process)
            # after the refs were read: read them again before appending, never a second row
            if ref not in log_refs() and (result != "already" or ref not in log_refs(fresh=True)):
                conflict = result == "conflict"
                self._append_log_once(self._log_row(
                    ref, e.get("booked_at", ""), eid, e.get("equipment_name", ""), e["name"], e["phone"],
                    e["start"], e["end"], e.get("call_id", ""), "CONFLICT" if conflict else "BOOKING",
                    "kept offline; unit was taken meanwhile - call the renter" if conflict
                    else "kept offline, written on replay"), ref, deadline)
                log_refs().add(ref)
            self._outbox_append({"op": "settled", "ref": ref, "result": result, "at": time.time()})
            logger.info("Outbox: booking %s for %s settled (%s)", ref, eid, result)
            return True
        finally:
            unit_lock.release()

    def _replay_failed(self, e: Mapping[str, Any], count: int, why: Exception, log_refs: Callable[..., set[str]],
                       changes: dict[str, str], seen: dict[str, str]) -> bool:
        """Records a failed (not outage) replay of one entry; at OUTBOX_MAX_ATTEMPTS settles it as
        "failed" so its unit is no longer held, and tells staff. True if settled now. Never raises."""
        op, ref = e.get("op"), e.get("ref")
        eid = str(e.get("equipment_id", ""))
        reason = _failure(why)
        phone = e.get("phone") or (e["row"][5] if isinstance(e.get("row"), list) and len(e["row"]) > 5 else "")
        what = f"booking {ref} for unit {eid}" if op == "book" else f"{op} entry {ref}"
        logger.warning("Outbox: %s failed on replay (attempt %d/%d): %s", what, count, OUTBOX_MAX_ATTEMPTS, reason)
        if count < OUTBOX_MAX_ATTEMPTS:
            try:
                self._outbox_append({"op": "attempt", "ref": ref, "count": count, "reason": reason[:200],
                                     "at": time.time()})
            except Exception as oe:  # noqa: BLE001
                logger.warning("Outbox: could not record the failed attempt of %s (%s)", ref, _failure(oe))
            return False
        noted = ""
        if op == "book":
            try:  # a CONFLICT row for staff, once per ref
                deadline = time.monotonic() + max(self.cfg.retry_budget, 0.5)
                if ref not in log_refs(fresh=True):
                    self._append_log_once(self._log_row(
                        ref, e.get("booked_at", ""), eid, e.get("equipment_name", ""), e.get("name", ""),
                        e.get("phone", ""), e.get("start", ""), e.get("end", ""), e.get("call_id", ""), "CONFLICT",
                        f"kept offline; could not be written after {count} attempts ({reason[:200]}) - "
                        f"call the renter"), ref, deadline)
                    log_refs().add(ref)
                noted = "; a CONFLICT row is in the Bookings tab"
            except Exception as le:  # noqa: BLE001
                noted = f"; its CONFLICT row could not be written either ({_failure(le)})"
            if eid in seen:
                changes[eid] = seen[eid]  # no longer held: what the source said
        logger.error("Outbox conflict: %s (%s) could not be written after %d attempts - last error: %s; "
                     "settled as failed, staff must call the renter back at %s%s", what, e.get("equipment_name", ""),
                     count, reason, mask_phone(phone), noted)
        try:
            self._outbox_append({"op": "settled", "ref": ref, "result": "failed", "at": time.time()})
        except Exception as oe:  # noqa: BLE001
            logger.error("Outbox: could not settle %s as failed (%s); it will be retried", ref, _failure(oe))
            return False
        return True

    # -- shutdown --------------------------------------------------------------------------------
    async def close(self, timeout: float = 5.0) -> None:
        """For job/worker shutdown: waits (bounded) for background refreshes and for bookings and
        call-backs still in flight, then replays the outbox if it holds anything. Never raises.
        What is still running after the timeout is in the outbox already (write-ahead)."""
        try:
            deadline = time.monotonic() + max(timeout, 0.0)
            loop = asyncio.get_running_loop()
            pending = [f for f in self._background if not f.done() and f.get_loop() is loop]
            if pending and timeout > 0:
                await asyncio.wait(pending, timeout=timeout)
                still = [f for f in pending if not f.done()]
                if still:
                    logger.warning("Shutdown: %d equipment task(s) still running after %.1fs (a booking among "
                                   "them is in the outbox and will be replayed)", len(still), timeout)
            left = deadline - time.monotonic()
            if left > 0 and self._outbox_pending():
                await asyncio.wait_for(asyncio.shield(self._off_loop(self._replay_sync,
                                                                     name="equipment-replay")), left)
        except Exception as e:  # noqa: BLE001
            logger.warning("Outbox replay at shutdown did not finish: %s", _failure(e))


def _failure(e: BaseException) -> str:
    """One clear phrase for why something failed (for the log line that says it)."""
    try:
        import gspread

        if isinstance(e, gspread.exceptions.APIError):
            msg = str(e.error.get("message", "")) if isinstance(e.error, Mapping) else ""
            return f"Google Sheets refused the request (HTTP {e.response.status_code}: {msg[:200]})"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, filelock.Timeout):
        return f"a local file lock timed out ({e})"
    if isinstance(e, (InventoryConfigError, SourceUnavailable, BookingNotRecorded)):
        return str(e)[:400]
    if isinstance(e, OSError):
        return f"local file error: {e}"[:400]
    return f"{type(e).__name__}: {e}"[:400]


def _log_late(name: str, result: Any, exc: BaseException | None, why: str) -> None:
    """The outcome of work that finished after nobody was waiting for it (never dropped silently)."""
    if exc is not None:
        level = logging.INFO if isinstance(exc, BookingRefused) else logging.WARNING
        logger.log(level, "%s finished after %s, with an error: %s", name, why, _failure(exc))
        return
    if isinstance(result, Booking):
        what = (f"booking {result.ref} for {result.equipment_id} "
                f"({'confirmed' if result.confirmed else 'kept in the outbox'})")
    else:
        what = repr(result)[:200]
    logger.info("%s finished after %s: %s", name, why, what)

def inventory_from_env(env: Mapping[str, str] = os.environ) -> CachedInventory:
    """The inventory configured by env: the Google Sheet when GOOGLE_SHEET_ID is set, else the
    embedded CSV. Raises InventoryConfigError listing config_errors(env). No network."""
    cfg = Config.from_env(env)
    store: Store = SheetStore(cfg) if cfg.sheet_id else CsvStore(cfg)
    return CachedInventory(cfg, store)
