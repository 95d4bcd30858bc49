"""Phone numbers: the one rule for validating, normalising, masking and transferring.

Callers' numbers are personal data: every log line shows them masked (`mask`), and `mask_text`
masks every number inside any text (room names such as ``call-_+15551234567_abc``, participant
identities, tool arguments), which is what the log filter applies to every record.
"""

from __future__ import annotations

import re

MAX_PHONE = 32  # characters as given, separators included
_ALLOWED = re.compile(r"\+?[\d\s\-().]+")
_E164 = re.compile(r"\+[1-9]\d{6,14}")
# A run of 7 to 15 digits, optionally led by +, with the separators people type between them
# (not part of a longer number or a decimal). A bare run of digits glued to a letter is part of an
# identifier (a hex ID such as speech_1234567abc, a commit such as g5858035), not a number; with
# a + or a separator inside (555-123-4567x12) it is a number all the same.
_DIGITS = r"\d(?:[\s\-().]{0,2}\d){6,14}"
_NUMBER_IN_TEXT = re.compile(
    rf"(?<![\d.])(?:\+{_DIGITS}(?!\d|\.\d)"  # +15551234567, +1 555 123 4567
    rf"|(?=\d{{1,14}}[\s\-().]{{1,2}}\d){_DIGITS}(?!\d|\.\d)"  # 555-123-4567, 555 123 4567
    rf"|(?<![A-Za-z]){_DIGITS}(?![\dA-Za-z]|\.\d))")  # 5551234567
# Dates, times and IPv4 addresses look like numbers with separators: kept as they are.
_DECIMAL = re.compile(r"\d+\.\d+")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?|\d{2}:\d{2}:\d{2}"
                        r"|(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d)")
_SIP_URI = re.compile(r"sips?:[^@\s;]+@[A-Za-z0-9.\-]+(?::\d{1,5})?(?:;[^\s]*)?", re.I)


def digits(raw: str | None) -> str:
    return re.sub(r"\D", "", str(raw or ""))


def mask(number: str | None) -> str:
    """A number for logs: +15551234567 -> +1******4567, 5551234567 -> ******4567.

    Only the last 4 digits stay, plus, for a number in international form, its first digit (a
    country-code hint). tel:/sip: prefixes and an @host part are stripped. No digits (empty,
    None, "anonymous") -> "unknown"."""
    n = str(number or "").strip()
    m = re.match(r"(?i)^(?:tel|sips?):", n)
    if m:
        n = n[m.end():]
    n = re.split(r"[@;]", n, maxsplit=1)[0].strip()
    d = digits(n)
    if not d:
        return "unknown"
    if n.startswith("+") and len(d) >= 7:
        return "+" + d[0] + "*" * (len(d) - 5) + d[-4:]
    prefix = "+" if n.startswith("+") else ""
    if len(d) <= 4:
        return prefix + "*" * len(d)
    return prefix + "*" * (len(d) - 4) + d[-4:]


def mask_text(text: str) -> str:
    """`text` with every phone number in it masked (7 to 15 digits, with or without +)."""
    if not text or not any(c.isdigit() for c in text):
        return text
    kept: list[str] = []

    def keep(m: re.Match[str]) -> str:
        kept.append(m.group(0))
        return f"\x00{len(kept) - 1}\x00"

    def hide(m: re.Match[str]) -> str:
        return m.group(0) if _DECIMAL.fullmatch(m.group(0)) else mask(m.group(0))

    masked = _NUMBER_IN_TEXT.sub(hide, _DATE_TIME.sub(keep, text))
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], masked) if kept else masked


def clean_booking_phone(raw: str) -> str:
    """A contact number as the caller gave it, tidied (single spaces). Raises ValueError when it
    is not a plausible phone number: 7 to 15 digits, only digits and the usual separators."""
    phone = " ".join(str(raw or "").split())
    if len(phone) > MAX_PHONE or not _ALLOWED.fullmatch(phone) or not 7 <= len(digits(phone)) <= 15:
        raise ValueError("not a phone number")
    return phone


def is_e164(raw: str) -> bool:
    return bool(_E164.fullmatch(str(raw or "").strip()))


def normalise_e164(raw: str) -> str:
    """+1 (555) 123-4567 -> +15551234567. Raises ValueError unless it is E.164 once the
    separators people type are removed."""
    number = re.sub(r"[\s\-().]", "", str(raw or ""))
    if not is_e164(number):
        raise ValueError("not an E.164 number")
    return number


def same_number(a: str | None, b: str | None) -> bool:
    """Whether two numbers reach the same phone: equal digits, or the same national number with
    and without its country code (+1 555 123 4567 and 555-123-4567)."""
    da, db = digits(a), digits(b)
    if len(da) < 7 or len(db) < 7:
        return False
    if da == db:
        return True
    short, long_ = sorted((da, db), key=len)
    return len(short) >= 7 and long_.endswith(short) and len(long_) - len(short) <= 3


def is_transfer_target(raw: str) -> bool:
    """E.164 (+15551234567), tel:+15551234567, or a SIP URI (sip:desk@pbx.example.com)."""
    value = str(raw or "").strip()
    if value.lower().startswith("tel:"):
        return is_e164(value[4:])
    if value.lower().startswith(("sip:", "sips:")):
        return bool(_SIP_URI.fullmatch(value))
    return is_e164(value)


def transfer_uri(raw: str) -> str:
    """The URI a SIP REFER needs: tel:+15551234567 or the SIP URI as given. "" stays ""."""
    value = str(raw or "").strip()
    if not value:
        return ""
    return value if value.lower().startswith(("tel:", "sip:", "sips:")) else f"tel:{value}"
