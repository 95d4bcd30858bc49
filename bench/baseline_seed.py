"""The BASELINE: the seed's design, rebuilt here so it can be measured side by side with ours
against the same fakes. It is not used by the product.

What the seed did (and what this module reproduces):
- a module-level cache (`_equipment_cache`, `_cache_timestamp`, 30 s TTL) inside the job process.
  Job processes are never reused (one process per call), so it is cold in every call;
- a load through real gspread, the usual way: new credentials, `gspread.authorize(creds)`,
  `open_by_key(id).worksheet("Equipment").get_all_records()` — one token request and three Sheets
  GETs (metadata, metadata again, values) per load, with gspread's default `timeout=None`;
- an entrypoint that awaits that load with `asyncio.wait_for(asyncio.to_thread(load), 3.0)`
  *before* it connects and starts the session, so the greeting waits for the sheet
  (up to the 3 s timeout); on a timeout or an error it goes on with whatever it has (usually nothing).

The only bench-specific seam: the Sheets base URL is redirected to the local stand-in by a requests
transport adapter mounted on gspread's session (as the project notes describe); it changes where the
requests go, not how many there are.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from typing import Any, Callable

logger = logging.getLogger("bench.baseline_seed")

CACHE_TTL = 30.0
LOAD_TIMEOUT = 3.0  # the seed's asyncio.wait_for(..., 3.0)
SHEETS_URL = "https://sheets.googleapis.com"

# the seed's module-level cache: lives as long as the process, i.e. one call
_equipment_cache: list[dict[str, Any]] | None = None
_cache_timestamp: float = 0.0


def _service_account_info(env) -> dict:
    raw = env.get("GOOGLE_SERVICE_ACCOUNT_JSON", "").strip()
    if not raw and env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        with open(env["GOOGLE_APPLICATION_CREDENTIALS"]) as f:
            raw = f.read()
    if not raw.startswith("{"):
        raw = base64.b64decode(raw).decode()
    info = json.loads(raw)
    if "\\n" in info.get("private_key", ""):
        info["private_key"] = info["private_key"].replace("\\n", "\n")
    return info


def _redirect_adapter(target: str):
    """A requests adapter that sends https://sheets.googleapis.com/... to the local stand-in."""
    import requests

    class _Redirect(requests.adapters.HTTPAdapter):
        def send(self, request, **kw):  # type: ignore[override]
            if request.url.startswith(SHEETS_URL):
                request.url = target.rstrip("/") + request.url[len(SHEETS_URL):]
            return super().send(request, **kw)

    return _Redirect()


def _client(env):
    import gspread
    from google.oauth2.service_account import Credentials

    creds = Credentials.from_service_account_info(
        _service_account_info(env), scopes=["https://www.googleapis.com/auth/spreadsheets"])
    gc = gspread.authorize(creds)  # default HTTPClient: no retries, timeout=None
    target = env.get("GOOGLE_SHEETS_API_URL", "")
    if target and target.rstrip("/") != SHEETS_URL:
        gc.http_client.session.mount(SHEETS_URL, _redirect_adapter(target))
    return gc


def clear_cache() -> None:
    """Forget the module-level cache (a new job process starts without it)."""
    global _equipment_cache, _cache_timestamp
    _equipment_cache, _cache_timestamp = None, 0.0


def load_equipment_from_sheets(env=None) -> list[dict[str, Any]]:
    """The seed's loader (synchronous; blocks its thread for as long as Sheets takes)."""
    global _equipment_cache, _cache_timestamp
    env = os.environ if env is None else env
    now = time.time()
    if _equipment_cache is not None and now - _cache_timestamp < CACHE_TTL:
        logger.info("Using cached equipment data (age: %.1fs)", now - _cache_timestamp)
        return _equipment_cache
    logger.info("Cache expired or empty - reloading equipment")
    gc = _client(env)
    ws = gc.open_by_key(env["GOOGLE_SHEET_ID"]).worksheet(env.get("EQUIPMENT_WORKSHEET", "Equipment"))
    records = ws.get_all_records()
    _equipment_cache = [r for r in records if str(r.get("ID", "")).strip()]
    _cache_timestamp = time.time()
    logger.info("Equipment loaded successfully: %d items", len(_equipment_cache))
    return _equipment_cache


async def load_with_timeout(env=None) -> tuple[list[dict[str, Any]] | None, str]:
    """The seed's call path for the inventory: await the load, at most LOAD_TIMEOUT."""
    try:
        items = await asyncio.wait_for(asyncio.to_thread(load_equipment_from_sheets, env), LOAD_TIMEOUT)
        return items, "loaded"
    except asyncio.TimeoutError:
        logger.warning("Equipment loading timed out - using %s",
                       "cached data" if _equipment_cache is not None else "no inventory")
        return _equipment_cache, "timeout"
    except Exception as e:  # the seed logged and went on with nothing
        logger.error("Equipment loading failed: %s", e)
        return _equipment_cache, "error:" + type(e).__name__


async def seed_entrypoint(env, connect: Callable[[], Any], start_session: Callable[..., Any],
                          greeting: str, marks: dict[str, float]) -> Any:
    """The seed's entrypoint order: inventory first (bounded by 3 s), then connect, then session,
    then the greeting. `connect` and `start_session` are supplied by the caller (the bench runs
    them against fakes); `marks` receives perf_counter timestamps."""
    marks["entry"] = time.perf_counter()
    logger.info("📞 INCOMING CALL - Entrypoint triggered")
    items, how = await load_with_timeout(env)
    marks["inventory_ready"] = time.perf_counter()
    marks["inventory"] = how  # type: ignore[assignment]
    await connect()
    session = await start_session(items)
    handle = session.say(greeting)
    marks["greeting_queued"] = time.perf_counter()
    return session, handle
