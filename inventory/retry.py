"""Our own bounded retry for Sheets calls, and one phrase for why something failed.

gspread's BackOffHTTPClient sleeps up to 128 s per try and never gives up on a steady 429, so
retries are ours: keyed on the HTTP status, inside a deadline, and every request's own timeout is
cut to what is left of it (`bounded_timeout`, read by the HTTP client on the same thread).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Mapping, TypeVar

import filelock
import gspread
import requests
from google.auth.exceptions import RefreshError, TransportError

from inventory.model import BookingNotRecorded, InventoryConfigError, SourceUnavailable

logger = logging.getLogger("equipment")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")
_budget = threading.local()


def bounded_timeout(base: Any) -> Any:
    """A per-request timeout that never outlasts the current retry deadline (thread-local)."""
    deadline = getattr(_budget, "deadline", None)
    if base is None or deadline is None:
        return base
    left = max(0.2, deadline - time.monotonic())
    c, r = base if isinstance(base, tuple) else (base, base)
    return (min(c, left), min(r, left))


def is_retryable(e: BaseException) -> bool:
    if isinstance(e, gspread.exceptions.APIError):
        return e.response.status_code in RETRY_STATUSES
    if isinstance(e, (requests.exceptions.Timeout, requests.exceptions.ConnectionError, TransportError)):
        return True
    if isinstance(e, RefreshError):
        return bool(getattr(e, "retryable", False))
    return isinstance(e, (TimeoutError, ConnectionError))


def with_retries(fn: Callable[[], T], deadline: float, what: str) -> T:
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
            if not is_retryable(e):
                raise
            pause = delay * (0.5 + random.random())
            if time.monotonic() + pause >= deadline:
                raise SourceUnavailable(f"{what}: no answer after {attempt} attempt(s): {short_reason(e)}") from e
            logger.info("Sheets %s failed (%s) - retrying in %.2fs", what, short_reason(e), pause)
            time.sleep(pause)
            delay = min(delay * 2, 2.0)
        finally:
            _budget.deadline = None


def short_reason(e: BaseException) -> str:
    """HTTP 503, TransportError (...), or the exception's type."""
    code = getattr(getattr(e, "response", None), "status_code", None)
    if code is not None:
        return f"HTTP {code}"
    if isinstance(e, TransportError) and str(e):
        return f"{type(e).__name__} ({str(e)[:160]})"
    return type(e).__name__


def failure(e: BaseException) -> str:
    """One clear phrase for why something failed (for the log line that says it)."""
    if isinstance(e, gspread.exceptions.APIError):
        msg = str(e.error.get("message", "")) if isinstance(e.error, Mapping) else ""
        return f"Google Sheets refused the request (HTTP {e.response.status_code}: {msg[:200]})"
    if isinstance(e, filelock.Timeout):
        return f"a local file lock timed out ({e})"
    if isinstance(e, (InventoryConfigError, SourceUnavailable, BookingNotRecorded)):
        return str(e)[:400]
    if isinstance(e, OSError):
        return f"local file error: {e}"[:400]
    return f"{type(e).__name__}: {e}"[:400]
