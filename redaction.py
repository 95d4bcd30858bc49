"""Which configured values are secrets, and how any value is shown in a message or a log line
without leaking one: by variable (the API keys, the service-account key, DATABASE_URL) and by
shape (a PEM block, a service-account JSON, a provider key, a URL with a password), whichever
variable it was pasted into."""

from __future__ import annotations

import re

# Variables whose values are credentials: never shown, not even in part.
SECRET_VARS = frozenset({"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY", "DEEPGRAM_API_KEY",
                         "GOOGLE_SERVICE_ACCOUNT_JSON", "DATABASE_URL"})


def looks_like_api_key(raw: str) -> bool:
    """A PEM block, a service-account JSON, or a provider key's prefix (sk-, dg_, ...)."""
    s = str(raw or "").strip()
    return ("-----BEGIN" in s or "private_key" in s
            or bool(re.match(r"(?i)^(sk|rk|pk|dg|key|api|secret|token)[-_]", s)))


def looks_secret(raw: str) -> bool:
    """A PEM block, a service-account JSON (raw or base64), an API-key shape, or a URL with a
    password: never echoed, whichever variable it was put in."""
    s = str(raw or "").strip()
    if not s:
        return False
    if looks_like_api_key(s) or re.search(r"://[^/@\s]*:[^/@\s]*@", s):
        return True
    if re.search(r"\s", s) or s.startswith(("/", "~", ".", "+")) or "://" in s:
        return False
    # long, key-like tokens: one unbroken run of 20+ letters and digits, mixed (a LiveKit secret,
    # a Deepgram key); words joined by separators ("equipment-rental-e2e-late-0") are not one
    return len(s) >= 20 and bool(re.fullmatch(r"[A-Za-z0-9_\-+/=.]+", s)) and any(
        len(run) >= 20 and re.search(r"[A-Za-z]", run) and re.search(r"\d", run)
        for run in re.findall(r"[A-Za-z0-9+/=]+", s))


def shown(raw: str, name: str = "") -> str:
    """How a bad value appears in a message: quoted and shortened, or described if secret."""
    if name in SECRET_VARS or looks_secret(raw):
        return "a value that looks like a key or credential (not shown)"
    s = str(raw)
    return repr(s if len(s) <= 40 else s[:37] + "...")


def shorten_id(value: str) -> str:
    return value if len(value) <= 10 else f"{value[:4]}…{value[-4:]}"
