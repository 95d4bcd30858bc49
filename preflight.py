"""Preflight: is this machine ready to answer the shop's phone?

    python agent.py check            (or: python preflight.py, make check)
    python agent.py check --timeout 3

One line per check, ✅ passed, ❌ failed (with what to fix), ⚠️ worth a look but not fatal.
Exit status 0 when nothing failed, 1 otherwise. Every credential is tried with one cheap
authenticated request, and each says apart "not set", "rejected" and "unreachable". The network
checks run at the same time, each bounded by --timeout (default 5 s), so the whole run takes
seconds even when a service hangs.

Checks, in order:
  Settings       every variable the project reads is well-formed (settings.py, the one rule)
  OpenAI         OPENAI_API_KEY lists models at OPENAI_BASE_URL (default https://api.openai.com/v1)
  Deepgram       DEEPGRAM_API_KEY passes Deepgram's key check (GET /v1/auth/token at DEEPGRAM_BASE_URL)
  LiveKit        the server at LIVEKIT_URL accepts LIVEKIT_API_KEY/SECRET (one ListRooms call)
  SIP dispatch   a dispatch rule sends callers to this agent name (warning only: dev needs none)
  Inventory      the inventory's own check: the Google Sheet answers with the service account's
                 credentials, is shared with it, has the worksheet, the ID/Name/Status columns and
                 known statuses; or the embedded CSV loads
  State dir      STATE_DIR (inventory cache, booking outbox) is writable

No value of a credential is ever printed: a value that looks like a key is named by its variable
and described, whichever variable it was put in, and the output is scrubbed of every secret value
as a last guard.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Iterator, Mapping, TextIO, TypeVar

import aiohttp

import settings

DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 120.0

LIVEKIT_VARS = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")

OK, FAIL, WARN = "✅", "❌", "⚠️"
T = TypeVar("T")


@dataclass
class Result:
    name: str
    status: str  # OK | FAIL | WARN
    message: str
    details: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [f"{self.status} {self.name}: {self.message}"] + [f"     - {d}" for d in self.details]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _where(url: str, var: str) -> str:
    """An address for a message: as given, unless it looks like it carries a credential."""
    return f"the address in {var} (not shown: it looks like it holds a credential)" \
        if settings.looks_secret(url) else url


def _bad_var(errors: list[str], *names: str) -> str | None:
    """The first of `names` that Settings reported as malformed or missing."""
    return next((n for n in names for e in errors if e.startswith(f"{n} ")), None)


def _causes(e: BaseException) -> Iterator[BaseException]:
    """e, what caused it, and exceptions it wraps as arguments (google-auth's TransportError)."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.extend(x for x in (cur.__cause__, cur.__context__, *cur.args) if isinstance(x, BaseException))


# ------------------------------------------------------------------------------------------ settings


def check_settings(errors: list[str]) -> Result:
    if not errors:
        return Result("Settings", OK, "all variables present and well-formed")
    return Result("Settings", FAIL, f"{_plural(len(errors), 'problem')} "
                  "(set in the environment, or in .env next to agent.py)", tuple(errors))


# ------------------------------------------------------------------------------------------ provider keys


@dataclass(frozen=True)
class Provider:
    name: str  # the check's name: "OpenAI"
    key_var: str
    url_var: str
    path: str  # appended to the base URL
    scheme: str  # Authorization: <scheme> <key>
    status_page: str


OPENAI = Provider("OpenAI", "OPENAI_API_KEY", "OPENAI_BASE_URL", "/models", "Bearer", "https://status.openai.com")
# Deepgram documents GET /v1/auth/token as the way to test a key: 401 when it is invalid, the key's
# details when it is valid (developers.deepgram.com/docs/authenticating).
DEEPGRAM = Provider("Deepgram", "DEEPGRAM_API_KEY", "DEEPGRAM_BASE_URL", "/v1/auth/token", "Token",
                    "https://status.deepgram.com")


def _error_code(body: bytes) -> str:
    """The provider's short error code (invalid_api_key, INVALID_AUTH, ...), never its message:
    some providers quote part of the key back in the message."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    err = data.get("error")
    code = (err.get("code") or err.get("type")) if isinstance(err, dict) else None
    code = code or data.get("err_code") or data.get("category")
    code = str(code or "")
    if re.fullmatch(r"[A-Za-z0-9_.\-]{1,40}", code) and not settings.looks_secret(code):
        return code
    return ""


async def check_provider(p: Provider, env: Mapping[str, str], base: str, url_problem: str | None,
                         timeout: float, model: str = "") -> Result:
    key = (env.get(p.key_var) or "").strip()
    get_one = settings.WHERE_TO_GET.get(p.key_var, "the provider's dashboard")
    if not key:
        return Result(p.name, FAIL, f"{p.key_var} not set: get one at {get_one}")
    if url_problem:
        return Result(p.name, FAIL, f"not checked: {p.url_var} is not a usable address (see Settings)")
    where = _where(base, p.url_var)
    t0 = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(base + p.path, headers={"Authorization": f"{p.scheme} {key}"},
                                   allow_redirects=False) as resp:
                status = resp.status
                body = await resp.content.read(256 * 1024)
    except asyncio.TimeoutError:
        return Result(p.name, FAIL, f"unreachable: no answer from {where} within {timeout:g}s; the key "
                      f"was not checked (check the network, and {p.url_var} if you set it)")
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return Result(p.name, FAIL, f"unreachable: cannot connect to {where} ({type(e).__name__}); the key "
                      f"was not checked (check the network, and {p.url_var} if you set it)")
    took = f"{(time.monotonic() - t0) * 1000:.0f} ms"
    code = _error_code(body)
    said = f"HTTP {status}{': ' + code if code else ''}"
    if status == 200:
        return _accepted(p, where, body, took, model)
    if status == 401:
        return Result(p.name, FAIL, f"{where} rejected {p.key_var} ({said}): the key is wrong, revoked or "
                      f"expired; create one at {get_one}")
    if status == 403:
        return Result(p.name, WARN, f"{where} knows {p.key_var} but refused this request ({said}): the key "
                      "may lack permissions the agent needs; check its role or scopes")
    if status == 429:
        if code == "insufficient_quota":
            return Result(p.name, FAIL, f"{where} accepted {p.key_var} but the account is out of quota "
                          f"({said}): add credit or raise the limit, or every call will fail")
        return Result(p.name, WARN, f"{where} accepted {p.key_var} but is rate-limiting it ({said})")
    if status in (301, 302, 303, 307, 308, 404):
        return Result(p.name, FAIL, f"{where} has no {p.path} ({said}): {p.url_var} does not point at the "
                      f"{p.name} API; the key was not checked")
    return Result(p.name, FAIL, f"{where} answered {said}; the key was not checked (see {p.status_page})")


def _accepted(p: Provider, where: str, body: bytes, took: str, model: str) -> Result:
    if p is not OPENAI:
        return Result(p.name, OK, f"{where} accepted {p.key_var} ({took})")
    try:
        data = json.loads(body)
        ids = {str(m.get("id")) for m in data["data"] if isinstance(m, dict)}
    except (ValueError, KeyError, TypeError):
        return Result(p.name, WARN, f"{where} answered, but not with a model list: is {p.url_var} an "
                      "OpenAI-compatible API?")
    if model and ids and model not in ids:
        return Result(p.name, WARN, f"{where} accepted {p.key_var}, but model {model!r} (LLM_MODEL) is not "
                      f"among the {len(ids)} models this key can use")
    return Result(p.name, OK, f"{where} accepted {p.key_var} ({_plural(len(ids), 'model')} listed, {took})")


# ------------------------------------------------------------------------------------------ LiveKit


async def check_livekit(env: Mapping[str, str], errors: list[str], timeout: float) -> tuple[Result, Any]:
    """Returns the result and, when the credentials work, an open LiveKitAPI for the next check."""
    missing = [v for v in LIVEKIT_VARS if not (env.get(v) or "").strip()]
    if missing:
        return Result("LiveKit", FAIL, f"not checked: {', '.join(missing)} not set "
                      f"({settings.WHERE_TO_GET[missing[0]]})"), None
    if _bad_var(errors, "LIVEKIT_URL"):
        return Result("LiveKit", FAIL, "not checked: LIVEKIT_URL is not a usable address (see Settings)"), None
    from livekit import api
    from livekit.protocol import room as proto_room

    url = env["LIVEKIT_URL"].strip()
    where = _where(url, "LIVEKIT_URL")
    try:
        lk = api.LiveKitAPI(url, env["LIVEKIT_API_KEY"].strip(), env["LIVEKIT_API_SECRET"].strip(), failover=False)
    except Exception as e:  # noqa: BLE001
        return Result("LiveKit", FAIL, f"cannot use LIVEKIT_URL {where} ({type(e).__name__})"), None
    t0 = time.monotonic()
    try:
        # livekit-api's ClientTimeout does not bound a request: wait_for does.
        rooms = await asyncio.wait_for(lk.room.list_rooms(proto_room.ListRoomsRequest()), timeout)
    except asyncio.TimeoutError:
        await lk.aclose()
        return Result("LiveKit", FAIL, f"unreachable: no answer from {where} within {timeout:g}s: check "
                      "LIVEKIT_URL (wss://<project>.livekit.cloud) and that this machine can reach it"), None
    except api.ServerError as e:
        await lk.aclose()
        if e.status == 401:
            return Result("LiveKit", FAIL, f"{where} rejected the credentials (HTTP 401: {e.code}): copy "
                          "LIVEKIT_API_KEY and LIVEKIT_API_SECRET from the same project as LIVEKIT_URL "
                          f"({settings.WHERE_TO_GET['LIVEKIT_API_KEY']})"), None
        if e.status == 403:
            return Result("LiveKit", FAIL, f"{where} accepted the key but refused ListRooms (HTTP 403: "
                          f"{e.code}): use an API key with full permissions"), None
        return Result("LiveKit", FAIL, f"{where} answered HTTP {e.status} ({e.code}): check LIVEKIT_URL "
                      "and https://status.livekit.io"), None
    except (aiohttp.ClientError, OSError) as e:
        await lk.aclose()
        return Result("LiveKit", FAIL, f"unreachable: cannot connect to {where} ({type(e).__name__}): check "
                      "LIVEKIT_URL (wss://<project>.livekit.cloud) and the network"), None
    except Exception as e:  # noqa: BLE001 - e.g. a PEM key pasted as the secret cannot sign a token
        await lk.aclose()
        return Result("LiveKit", FAIL, f"could not make a signed request to {where} ({type(e).__name__}): "
                      "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET "
                      f"({settings.WHERE_TO_GET['LIVEKIT_API_KEY']})"), None
    took = time.monotonic() - t0
    return Result("LiveKit", OK, f"{where} accepted the API key ({_plural(len(rooms.rooms), 'active room')}, "
                  f"{took * 1000:.0f} ms)"), lk


async def check_dispatch(lk: Any, agent_name: str, timeout: float) -> Result:
    from livekit import api
    from livekit.protocol import sip as proto_sip

    fix = (f"run `python -m telephony.setup_sip --number +1...` (agent {agent_name!r}) to send callers here")
    try:
        rules = await asyncio.wait_for(lk.sip.list_dispatch_rule(proto_sip.ListSIPDispatchRuleRequest()), timeout)
    except asyncio.TimeoutError:
        return Result("SIP dispatch", WARN, f"could not list dispatch rules within {timeout:g}s")
    except api.ServerError as e:
        return Result("SIP dispatch", WARN, f"could not list dispatch rules (HTTP {e.status}: {e.code}); "
                      "an API key with SIP admin permission is needed to check")
    except (aiohttp.ClientError, OSError) as e:
        return Result("SIP dispatch", WARN, f"could not list dispatch rules ({type(e).__name__})")
    ours = [r for r in rules.items if any(a.agent_name == agent_name for a in r.room_config.agents)]
    if ours:
        r = ours[0]
        kind = r.rule.WhichOneof("rule") or "?"
        note = "" if kind == "dispatch_rule_individual" else f" (a {kind} rule: callers may share a room)"
        trunks = ", ".join(r.trunk_ids) or "all trunks"
        return Result("SIP dispatch", OK if not note else WARN,
                      f"rule {r.sip_dispatch_rule_id} ({trunks}) dispatches agent {agent_name!r}{note}")
    if agent_name == settings.DEFAULT_AGENT_NAME:
        return Result("SIP dispatch", WARN, f"no dispatch rule dispatches agent {agent_name!r}: phone calls "
                      f"will not reach this worker; {fix}")
    return Result("SIP dispatch", WARN, f"no dispatch rule dispatches agent {agent_name!r} (fine for "
                  "development: send it a test call with `python -m telephony.dispatch --agent-name "
                  f"{agent_name}`, or use the console)")


async def livekit_checks(env: Mapping[str, str], errors: list[str], agent_name: str,
                         timeout: float) -> list[Result]:
    result, lk = await check_livekit(env, errors, timeout)
    if lk is None:
        return [result]
    try:
        return [result, await check_dispatch(lk, agent_name, timeout)]
    finally:
        await lk.aclose()


# ------------------------------------------------------------------------------------------ inventory


async def check_inventory(env: Mapping[str, str], timeout: float) -> Result:
    """The inventory's own check (one read of the source, the service account's credentials
    included), then the table's statuses; bounded by `timeout` as a whole."""
    import equipment

    try:
        cfg = settings.inventory_settings(env)
    except settings.ConfigError:
        return Result("Inventory", FAIL, "not checked: fix the inventory settings listed under Settings first")
    # Each request, and the retries, fit in this check's time.
    connect, read = cfg.http_timeout
    cfg = dataclasses.replace(cfg, retry_budget=timeout, http_timeout=(min(connect, timeout), min(read, timeout)))
    short = settings.shorten_id(cfg.sheet_id) if cfg.sheet_id else ""

    def hide_id(message: str) -> str:  # the sheet ID is shown shortened, as in the start-up line
        return message.replace(cfg.sheet_id, short) if cfg.sheet_id else message

    if cfg.sheet_id:
        where = f"Google Sheet {short}, worksheet {cfg.equipment_worksheet!r}"
    else:
        where = f"embedded inventory {cfg.csv_path.name} (GOOGLE_SHEET_ID not set)"
    inv = equipment.inventory_from_settings(cfg)
    try:
        report = await asyncio.wait_for(inv.check(), timeout + 0.5)
        units = report.units
    except asyncio.TimeoutError:
        return _inventory_unreachable(where, cfg, timeout, timed_out=True)
    except equipment.InventoryConfigError as e:
        msg = hide_id(str(e))
        if "column" in msg:
            msg += "; the first row of the worksheet must hold the column names (ID, Name, Status, ...)"
        if cfg.sheet_id and "Google Sheet" not in msg:
            msg = f"{where}: {msg}"
        if "rejected" in msg or "refused" in msg:
            msg += " (GOOGLE_SERVICE_ACCOUNT_JSON: create a new key for the service account)"
        return Result("Inventory", FAIL, msg)
    except Exception as e:  # noqa: BLE001 - SourceUnavailable (429/5xx/timeouts/connection errors)
        return _inventory_failure(e, where, cfg, timeout)
    unknown = [u for u in units if u.status not in equipment.KNOWN_STATUSES]
    known = ", ".join(sorted(equipment.KNOWN_STATUSES))
    if unknown:
        listed = "; ".join(f"{u.id}: {u.status or '(empty)'!r}" for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return Result("Inventory", FAIL, f"{where}: {len(unknown)} unit(s) with an unrecognised Status, never "
                      f"offered to callers ({listed}{more}); use one of {known}")
    if not units:
        return Result("Inventory", WARN, f"{where}: no units listed; callers will hear that nothing is available")
    if report.problems:
        listed = "; ".join(hide_id(p) for p in report.problems[:3])
        return Result("Inventory", FAIL, f"{where}: {len(report.problems)} reservation row(s) the agent cannot read "
                      f"(their units could be booked twice): {listed}")
    rentable = sum(u.rentable for u in units)
    summary = (f"{where}: {len(units)} units ({rentable} for rent), {report.reservations} reservations; ID, Name, "
               "Status columns and statuses OK")
    if not report.has_reservations:
        summary += "; no Reservations tab yet (the first booking creates it)"
    if not report.has_settings:
        summary += "; no Settings tab (default hours and no tax, see docs/google-sheet.md)"
    if cfg.sheet_id and not (report.has_reservations and report.has_settings):
        summary += "; until both tabs exist each refresh costs 2 more Sheets requests"
    if cfg.sheet_id:
        email = (cfg.credentials_info or {}).get("client_email", "the service account")
        summary += f"; {email} can read it (bookings need it shared as Editor)"
    else:
        summary += "; set GOOGLE_SHEET_ID to use the shop's Google Sheet"
    return Result("Inventory", OK, summary)


def _inventory_unreachable(where: str, cfg: settings.InventorySettings, timeout: float, timed_out: bool) -> Result:
    api = _where(cfg.api_url, "GOOGLE_SHEETS_API_URL")
    if timed_out:
        what = f"no answer within {timeout:g}s"
    else:
        what = f"cannot connect to {api if cfg.sheet_id else 'it'}"
    hint = " (check the network, and GOOGLE_SHEETS_API_URL, normally unset)" if cfg.sheet_id else ""
    return Result("Inventory", FAIL, f"{where}: unreachable: {what}{hint}")


def _inventory_failure(e: BaseException, where: str, cfg: settings.InventorySettings, timeout: float) -> Result:
    import requests

    for cause in _causes(e):
        if isinstance(cause, (requests.exceptions.Timeout, TimeoutError)):
            return _inventory_unreachable(where, cfg, timeout, timed_out=True)
        if isinstance(cause, (requests.exceptions.ConnectionError, ConnectionError)):
            return _inventory_unreachable(where, cfg, timeout, timed_out=False)
        code = getattr(getattr(cause, "response", None), "status_code", None)
        if code:
            hint = " (quota: 60 reads/min per service account; wait a minute)" if code == 429 else ""
            return Result("Inventory", FAIL, f"{where}: read failed (HTTP {code}){hint}")
    return Result("Inventory", FAIL, f"{where}: read failed ({type(e).__name__})")


# ------------------------------------------------------------------------------------------ state dir


def check_state_dir(env: Mapping[str, str], errors: list[str]) -> Result:
    raw = (env.get("STATE_DIR") or "").strip()
    if _bad_var(errors, "STATE_DIR"):
        return Result("State dir", FAIL, "STATE_DIR is not a folder this process can write (see Settings): set "
                      "it to a writable folder (on Railway, the volume's mount path)")
    path = Path(raw).expanduser() if raw else Path(settings.DEFAULT_STATE_DIR)
    shown = "the folder in STATE_DIR" if settings.looks_secret(raw) else str(path.resolve())
    where = "" if raw else " (the default: on Railway set STATE_DIR to a volume so it survives redeploys)"
    return Result("State dir", OK, f"{shown} writable: inventory cache and booking outbox{where}")


# ------------------------------------------------------------------------------------------ runner


async def run_checks(env: Mapping[str, str], timeout: float) -> list[Result]:
    errors = settings.config_errors("check", env)
    values = settings.Settings.lenient(env)
    openai_r, deepgram_r, livekit_rs, inventory_r = await asyncio.gather(
        _guarded("OpenAI", check_provider(OPENAI, env, values.openai_url, _bad_var(errors, OPENAI.url_var),
                                          timeout, model=values.llm_model)),
        _guarded("Deepgram", check_provider(DEEPGRAM, env, values.deepgram_url,
                                            _bad_var(errors, DEEPGRAM.url_var), timeout)),
        _guarded("LiveKit", livekit_checks(env, errors, values.agent_name, timeout)),
        _guarded("Inventory", check_inventory(env, timeout)),
    )
    livekit_rs = livekit_rs if isinstance(livekit_rs, list) else [livekit_rs]
    return [check_settings(errors), openai_r, deepgram_r, *livekit_rs, inventory_r, check_state_dir(env, errors)]


async def _guarded(name: str, check: Awaitable[T]) -> T | Result:
    """A check that crashed is a failed check, not a crashed `check`; its message is not shown
    (it could hold a value)."""
    try:
        return await check
    except Exception as e:  # noqa: BLE001
        return Result(name, FAIL, f"the check itself failed ({type(e).__name__}); please report this")


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Every value that must never appear in the output: credentials, and whatever looks like one."""
    found = []
    for name, value in env.items():
        value = str(value or "").strip()
        if len(value) >= 8 and (name in settings.SECRET_VARS or settings.looks_secret(value)):
            found.append(value)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """The last guard: no secret value leaves, whatever path printed it."""
    for s in secrets:
        text = text.replace(s, "[not shown]")
    return text


def _timeout(raw: str) -> float:
    value = float(raw)
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(f"must be seconds above 0 and at most {MAX_TIMEOUT:g}")
    return value


def main(argv: list[str], env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python agent.py check",
                                     description="Check settings, credentials and the inventory before going live.")
    parser.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT,
                        help="seconds allowed for each network check (default %(default)s)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    out = out or sys.stdout
    results = asyncio.run(run_checks(env, args.timeout))
    secrets = secret_values(env)
    for r in results:
        for line in r.lines():
            print(scrub(line, secrets), file=out)
    failed = [r for r in results if r.status == FAIL]
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed: fix the ❌ lines above, then run "
              "`python agent.py check` again.", file=out)
        return 1
    warned = sum(r.status == WARN for r in results)
    note = f" ({_plural(warned, 'warning')}: see the ⚠️ lines)" if warned else ""
    print(f"All checks passed{note}: ready to take calls.", file=out)
    return 0


if __name__ == "__main__":
    from dotenv import load_dotenv

    load_dotenv()
    sys.exit(main(sys.argv[1:]))
