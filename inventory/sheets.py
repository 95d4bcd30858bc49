"""The Google Sheet as a Store: gspread's plain HTTPClient over google-auth, one values GET per
read, RAW writes, and every request bounded (no gspread back-off: retries are ours)."""

from __future__ import annotations

import random
import threading
from typing import Any, Mapping

import gspread
import requests
from google.auth import crypt
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2.service_account import Credentials

from inventory.model import InventoryConfigError
from inventory.retry import RETRY_STATUSES, bounded_timeout
from inventory.table import LOG_HEADER, Table, column_letter, header_key
from service_account import DEFAULT_TOKEN_URI
from settings import DEFAULT_SHEETS_API_URL, InventorySettings

SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]


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
                self._client = self._build_client()
            return self._client.http_client

    def _build_client(self) -> gspread.Client:
        creds = service_account_credentials(self.cfg.credentials_info or {})
        custom = self.cfg.api_url != DEFAULT_SHEETS_API_URL
        token_uri = (self.cfg.credentials_info or {}).get("token_uri") or DEFAULT_TOKEN_URI
        # The token request goes through our own transport: no retry adapter, no google-auth back-off
        # (3 tries with 1 s + 2 s sleeps), the per-request timeout; a failure is one attempt of our
        # bounded retry. With a proxy or a stand-in it reaches nothing but the JSON's token_uri.
        session = AuthorizedSession(creds, auth_request=TokenRequest(self.cfg.http_timeout,
                                                                     only=token_uri if custom else None))
        if custom:
            session.mount(DEFAULT_SHEETS_API_URL, RewriteAdapter(DEFAULT_SHEETS_API_URL, self.cfg.api_url))
            # nothing else may leave through this session (it only ever talks to Sheets)
            session.mount("https://", RefuseAdapter())
            session.mount("http://", RefuseAdapter())
        client = gspread.Client(None, session=session, http_client=BudgetedHTTPClient)
        client.set_timeout(self.cfg.http_timeout)
        return client

    @staticmethod
    def _ws(title: str) -> str:
        return "'" + title.replace("'", "''") + "'"

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
                var = "EQUIPMENT_WORKSHEET" if worksheet == self.cfg.equipment_worksheet else "BOOKINGS_WORKSHEET"
                return InventoryConfigError(
                    f"Google Sheet {self.cfg.sheet_id!r} has no worksheet named {worksheet!r} ({var})")
        if isinstance(e, RefreshError) and not getattr(e, "retryable", False):
            return InventoryConfigError(f"the service-account token request was refused: {e}")
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
        data = [{"range": f"{self._ws(ws)}!{column_letter(table.cols[k])}{rownum}", "values": [[v]]}
                for k, v in fields.items() if k in table.cols]
        try:
            self.http().values_batch_update(self.cfg.sheet_id, {"valueInputOption": "RAW", "data": data})
        except Exception as e:
            raise self._translate(e, ws) from e

    def log_refs(self) -> set[str]:
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
        col = next((i for i, h in enumerate(values[0]) if header_key(h) == "bookingref"), 0)
        return {str(r[col]).strip() for r in values[1:] if len(r) > col and str(r[col]).strip()}

    def append_log(self, row: list[str]) -> None:
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


def service_account_credentials(info: Mapping[str, Any]) -> Credentials:
    """Credentials.from_service_account_info(info, scopes=SCOPES), minus its RSA key validation:
    that check holds the GIL for ~40 ms, which would stall the call's event loop while a
    background refresh starts. The key is our own configuration, already parsed by settings."""
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


class BudgetedHTTPClient(gspread.HTTPClient):
    """gspread's plain HTTPClient whose per-request timeout never outlasts the retry budget."""

    @property  # type: ignore[override]
    def timeout(self) -> Any:
        return bounded_timeout(getattr(self, "_base_timeout", None))

    @timeout.setter
    def timeout(self, value: Any) -> None:
        self._base_timeout = value


class RewriteAdapter(requests.adapters.HTTPAdapter):
    """Sends https://sheets.googleapis.com/... to GOOGLE_SHEETS_API_URL (a proxy or a stand-in)."""

    def __init__(self, prefix: str, target: str):
        super().__init__()
        self.prefix, self.target = prefix, target.rstrip("/")

    def send(self, request: Any, **kwargs: Any) -> Any:
        if request.url.startswith(self.prefix):
            request.url = self.target + request.url[len(self.prefix):]
        return super().send(request, **kwargs)


class RefuseAdapter(requests.adapters.BaseAdapter):
    def send(self, request: Any, **kwargs: Any) -> Any:
        raise requests.exceptions.InvalidURL(
            f"equipment: refusing to send {request.method} {request.url} (only Sheets API calls go out)")

    def close(self) -> None:
        pass


class TokenRequest:
    """The transport google-auth uses for the token request: a plain requests.Session (no retry
    adapter), bounded by the per-request timeout and the retry budget, and a retryable HTTP status
    raised at once as a TransportError (so google-auth's own back-off never runs). With `only`
    set, any other address (google-auth's background look-ups) is refused without a request."""

    def __init__(self, timeout: tuple[float, float], only: str | None = None):
        self._timeout = timeout
        self._only = only
        self._request = Request(requests.Session())

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Any:
        if self._only is not None and url != self._only:
            raise TransportError(f"not sent: only the token endpoint is used here ({url})")
        bound = bounded_timeout(self._timeout)
        if isinstance(timeout, (int, float)):
            bound = (min(bound[0], timeout), min(bound[1], timeout))
        elif isinstance(timeout, tuple) and len(timeout) == 2 and None not in timeout:
            bound = (min(bound[0], timeout[0]), min(bound[1], timeout[1]))
        response = self._request(url, method=method, body=body, headers=headers, timeout=bound, **kwargs)
        if response.status in RETRY_STATUSES:
            raise TransportError(f"token endpoint answered HTTP {response.status}")
        return response
