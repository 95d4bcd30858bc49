"""The HTTP side of the Google Sheet: the service-account credentials, gspread's plain HTTPClient
with every request bounded by the retry budget, and a session that reaches nothing but Sheets (and
the key's token endpoint) when a proxy or a local stand-in is configured."""

from __future__ import annotations

from typing import Any, Mapping

import gspread
import requests
from google.auth import crypt
from google.auth.exceptions import TransportError
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2.service_account import Credentials

from inventory.retry import RETRY_STATUSES, bounded_timeout
from service_account import DEFAULT_TOKEN_URI
from settings import DEFAULT_SHEETS_API_URL, InventorySettings

SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]


def client(cfg: InventorySettings) -> gspread.Client:
    creds = service_account_credentials(cfg.credentials_info or {})
    custom = cfg.api_url != DEFAULT_SHEETS_API_URL
    token_uri = (cfg.credentials_info or {}).get("token_uri") or DEFAULT_TOKEN_URI
    # The token request goes through our own transport: no retry adapter, no google-auth back-off
    # (3 tries with 1 s + 2 s sleeps), the per-request timeout; a failure is one attempt of our
    # bounded retry. With a proxy or a stand-in it reaches nothing but the JSON's token_uri.
    session = AuthorizedSession(creds, auth_request=TokenRequest(cfg.http_timeout, only=token_uri if custom else None))
    if custom:
        session.mount(DEFAULT_SHEETS_API_URL, RewriteAdapter(DEFAULT_SHEETS_API_URL, cfg.api_url))
        # nothing else may leave through this session (it only ever talks to Sheets)
        session.mount("https://", RefuseAdapter())
        session.mount("http://", RefuseAdapter())
    gc = gspread.Client(None, session=session, http_client=BudgetedHTTPClient)
    gc.set_timeout(cfg.http_timeout)
    return gc


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
