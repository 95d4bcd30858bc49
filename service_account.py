"""The Google service-account key, as pasted into an environment variable: raw JSON or base64 of
it, with the newlines a paste often turns into a literal \\n repaired. Problems are described by
variable name, never by echoing the key."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"


def decode_service_account(text: str, var: str, errors: list[str]) -> dict[str, Any] | None:
    """The service-account key from raw JSON or base64 of it; pasted keys whose newlines became
    a literal \\n are repaired. Problems go to `errors` (naming `var`, never the key)."""
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
        errors.append(f"{var} is neither service-account JSON nor base64 of it.")
        return None
    missing = [k for k in ("client_email", "private_key") if not str(info.get(k) or "").strip()]
    if missing:
        errors.append(f"{var} has no {' or '.join(missing)} (is it a service-account key file?).")
        return None
    info = dict(info)
    info["private_key"] = str(info["private_key"]).replace("\\n", "\n")
    info.setdefault("token_uri", DEFAULT_TOKEN_URI)
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        load_pem_private_key(info["private_key"].encode(), password=None, unsafe_skip_rsa_key_validation=True)
    except Exception:  # noqa: BLE001 - any failure means the key is unusable
        errors.append(f"{var}: private_key is not a readable PEM private key.")
        return None
    return info
