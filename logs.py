"""What reaches the logs: no caller's phone number and no credential, in any record, ours or the
framework's, at every level, in the JSON (`start`) and the coloured (`dev`, `console`) formats.

LiveKit's individual dispatch rule names each caller's room after their number
(``call-_+15551234567_abc``), and the room is in the context of every log line of the call; the
caller's participant identity (``sip_+15551234567``), SIP attributes, the tool arguments of the
framework's ``executing tool`` record (``lk.pii.arguments``) and transcripts (``lk.pii.text``)
carry it too. `RedactingFilter` rewrites each record in place before any formatter sees it:

- every phone number in the message, its arguments, every extra field (nested dicts and lists
  included), the exception text and the stack text is masked by `phone.mask_text`, the project's
  one masking rule (``+15551234567`` -> ``+1******4567``; dates, times, decimals and IP addresses
  are left alone);
- the exact value of every credential in the environment (`settings.SECRET_VARS`, any
  ``*_KEY``/``*_SECRET``/``*_TOKEN``/``*_PASSWORD`` variable, the service account's private key) and
  the password of any ``scheme://user:password@host`` URL are replaced by ``[redacted]``.

Where it must sit (livekit-agents 1.8.9): job processes ship their records to the worker process,
whose log listener hands them to the root logger's *handlers* directly (``Logger.callHandlers``),
skipping logger filters. So the filter goes on the root handlers, once the CLI has created them:
`install()` is called by `worker.TruthfulServer.run` (the CLI calls it right after setting
up logging, in `dev`, `start` and `console`), and again at the top of each call's entrypoint, which
makes it the last filter in `console` (where the job runs in the worker's own process and the job
context adds its log fields with a handler filter of its own).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping

import phone
import settings

REDACTED = "[redacted]"
MIN_SECRET = 8  # shorter values ("k" in a test) would redact ordinary words
_SECRET_NAME = re.compile(r"(?:^|_)(?:KEY|SECRET|TOKEN|PASSWORD)$")
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)([^/@\s]+)(@)")
# the attributes every LogRecord has: everything else on a record is an extra field
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_MAX_DEPTH = 6


def secret_values(env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The values that must never be printed, longest first (a key that contains another is
    redacted whole)."""
    found: set[str] = set()
    for name, value in env.items():
        value = str(value or "").strip()
        if len(value) < MIN_SECRET:
            continue
        if name in settings.SECRET_VARS or _SECRET_NAME.search(name):
            found.add(value)
    key = _private_key(str(env.get("GOOGLE_SERVICE_ACCOUNT_JSON") or ""))
    if key:
        found.add(key)
        found.add(key.replace("\n", "\\n"))
        # each line of the PEM body, for a key printed line by line or re-wrapped
        found.update(line.strip() for line in key.splitlines() if len(line.strip()) >= 40 and "-----" not in line)
    return tuple(sorted(found, key=len, reverse=True))


def _private_key(raw: str) -> str:
    """The service account's private key from its JSON (raw or base64), however broken the rest."""
    raw = raw.strip()
    if not raw:
        return ""
    for text in (raw, _b64(raw)):
        try:
            info = json.loads(text)
        except ValueError:
            continue
        if isinstance(info, dict):
            return str(info.get("private_key") or "").replace("\\n", "\n").strip()
    return ""


def _b64(raw: str) -> str:
    compact = "".join(raw.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""


class Redactor:
    """Masks phone numbers and removes secret values from text and from any value a log record
    can carry."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET)

    def text(self, s: str) -> str:
        if not s:
            return s
        for secret in self.secrets:
            if secret in s:
                s = s.replace(secret, REDACTED)
        if "://" in s:
            s = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), s)
        return phone.mask_text(s)

    def value(self, v: Any, depth: int = 0) -> Any:
        """`v` redacted; the very object when nothing in it needed redacting."""
        if isinstance(v, str):
            return self.text(v)
        if v is None or isinstance(v, (bool, int, float)):
            return v
        if depth < _MAX_DEPTH:
            if isinstance(v, dict):
                out = {self.value(k, depth + 1) if isinstance(k, str) else k: self.value(x, depth + 1)
                       for k, x in v.items()}
                same = len(out) == len(v) and all(_same(k, k2) and _same(x, x2)
                                                  for (k, x), (k2, x2) in zip(v.items(), out.items()))
                return v if same else out
            if type(v) in (list, tuple, set, frozenset):
                items = [self.value(x, depth + 1) for x in v]
                return v if all(_same(a, b) for a, b in zip(v, items)) else type(v)(items)
        # anything else (exceptions, protobufs, JobRequest, ...) is str()-ed by the formatters:
        # replaced by its redacted text only when that text needed it
        try:
            text = str(v)
        except Exception:  # noqa: BLE001 - an object that cannot print cannot leak either
            return v
        redacted = self.text(text)
        return v if redacted == text else redacted


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is str and type(b) is str and a == b)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts a record in place and always lets it through."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("redact")
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        try:
            if isinstance(record.msg, dict) and not record.args:  # a dict message is merged by the JSON formatter
                record.msg = r.value(record.msg)
            elif record.args or not isinstance(record.msg, str):
                # formatted once, then masked: a masked argument could no longer fill a %d
                try:
                    text = record.getMessage()
                except Exception:  # noqa: BLE001 - a broken format string still gets logged
                    text = f"{record.msg} {record.args!r}"
                record.msg, record.args = r.text(text), None
            else:
                record.msg = r.text(record.msg)
            if record.exc_info:
                if not record.exc_text:
                    record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None  # formatters would format it again, unredacted
            if record.exc_text:
                record.exc_text = r.text(record.exc_text)
            if record.stack_info:
                record.stack_info = r.text(record.stack_info)
            for key, value in list(vars(record).items()):
                if key in _STANDARD:
                    continue
                redacted = r.value(value)
                if redacted is not value:
                    setattr(record, key, redacted)
        except Exception as e:  # noqa: BLE001 - never lose a record; never let it out unredacted
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"(log record withheld: redaction failed with {type(e).__name__})", None, None, None)
            for key in [k for k in vars(record) if k not in _STANDARD]:
                delattr(record, key)
        return True


_filter: RedactingFilter | None = None


def redacting_filter() -> RedactingFilter:
    """The process's filter, built once from the environment as it is then."""
    global _filter
    if _filter is None:
        _filter = RedactingFilter(Redactor(secret_values()))
    return _filter


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of `logger` (default: the root logger), as the last
    filter of each, so fields that earlier filters add are redacted too. Idempotent."""
    f = redacting_filter()
    for handler in (logger or logging.getLogger()).handlers:
        if f in handler.filters:
            handler.removeFilter(f)
        handler.addFilter(f)


def redact(text: str) -> str:
    """`text` as the logs would show it (for messages printed outside logging)."""
    return redacting_filter().redactor.text(text)

