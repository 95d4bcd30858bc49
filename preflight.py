"""Preflight: is this machine ready to answer the shop's phone?

    python agent.py check            (or: python preflight.py, make check)
    python agent.py check --timeout 3

One line per check, ✅ passed, ❌ failed (with what to fix), ⚠️ worth a look but not fatal.
Exit status 0 when nothing failed, 1 otherwise. Each check that touches the network has its own
short timeout (--timeout, default 5 s), so the whole run takes seconds even when a service hangs.

Checks, in order:
  Settings       every variable agent.py and equipment.py read is present and well-formed
  Provider keys  OPENAI_API_KEY and DEEPGRAM_API_KEY are set
  LiveKit        the server at LIVEKIT_URL accepts LIVEKIT_API_KEY/SECRET (one ListRooms call)
  SIP dispatch   a dispatch rule sends callers to this agent name (warning only: dev needs none)
  Inventory      the Google Sheet answers, is shared with the service account, has the worksheet,
                 the ID/Name/Status columns and known statuses; or the embedded CSV loads
  State dir      STATE_DIR (inventory cache, booking outbox) is writable
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

DEFAULT_TIMEOUT = 5.0
PROVIDER_KEYS = ("OPENAI_API_KEY", "DEEPGRAM_API_KEY")
LIVEKIT_VARS = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")

OK, FAIL, WARN = "✅", "❌", "⚠️"


@dataclass
class Result:
    name: str
    status: str  # OK | FAIL | WARN
    message: str
    details: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [f"{self.status} {self.name}: {self.message}"] + [f"     - {d}" for d in self.details]


# ------------------------------------------------------------------------------------------ helpers


_import_error: list[str] = []


def _agent_module() -> Any | None:
    """agent.py, without importing it twice when we were started as `python agent.py check`."""
    main = sys.modules.get("__main__")
    if main is not None and hasattr(main, "config_errors") and hasattr(main, "NUMERIC_VARS"):
        return main
    try:
        return importlib.import_module("agent")
    except Exception as e:  # noqa: BLE001 - reported by the Settings check
        _import_error[:] = [f"{type(e).__name__}: {e}"[:300]]
        return None


def _in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    """Run blocking fn in a daemon thread; give up after timeout (the thread is left to die with
    the process, so a hung HTTP call can never keep `check` from exiting)."""
    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(e)

    threading.Thread(target=target, name="preflight-check", daemon=True).start()
    return fut.result(timeout=timeout)


def _missing(env: Mapping[str, str], name: str) -> bool:
    return not (env.get(name) or "").strip()


# ------------------------------------------------------------------------------------------ checks


def check_settings(env: Mapping[str, str]) -> Result:
    agent = _agent_module()
    errors: list[str] = []
    if agent is None:
        errors.append("agent.py could not be imported (" + "".join(_import_error) + "): run the check "
                      "from the project folder, in its virtualenv")
    else:
        errors.extend(agent.config_errors("start", env))
    # The provider keys get their own line below.
    errors = [e for e in errors if not e.startswith(tuple(f"{k} " for k in PROVIDER_KEYS))]
    if not errors:
        return Result("Settings", OK, "all variables present and well-formed")
    return Result("Settings", FAIL, f"{len(errors)} problem{'s' if len(errors) > 1 else ''} "
                  "(set in the environment, or in .env next to agent.py)", tuple(errors))


def check_provider_keys(env: Mapping[str, str]) -> Result:
    agent = _agent_module()
    where = getattr(agent, "WHERE", {}) if agent else {}
    missing = [k for k in PROVIDER_KEYS if _missing(env, k)]
    tts = (env.get("TTS_PROVIDER") or "deepgram").strip().lower()
    if not missing:
        return Result("Provider keys", OK, f"OPENAI_API_KEY and DEEPGRAM_API_KEY set (LLM openai, STT deepgram, TTS {tts})")
    return Result("Provider keys", FAIL, f"{' and '.join(missing)} not set",
                  tuple(f"{k}: get one at {where.get(k, 'the provider dashboard')}" for k in missing))


async def check_livekit(env: Mapping[str, str], timeout: float) -> tuple[Result, Any]:
    """Returns the result and, when the credentials work, an open LiveKitAPI for the next check."""
    missing = [v for v in LIVEKIT_VARS if _missing(env, v)]
    if missing:
        return Result("LiveKit", FAIL, f"not checked: {', '.join(missing)} not set "
                      "(LiveKit Cloud dashboard > Settings > API Keys)"), None
    import aiohttp
    from livekit import api
    from livekit.protocol import room as proto_room

    url = env["LIVEKIT_URL"].strip()
    try:
        lk = api.LiveKitAPI(url, env["LIVEKIT_API_KEY"].strip(), env["LIVEKIT_API_SECRET"].strip(), failover=False)
    except Exception as e:  # noqa: BLE001
        return Result("LiveKit", FAIL, f"cannot use LIVEKIT_URL {url!r}: {e}"), None
    t0 = time.monotonic()
    try:
        # livekit-api's ClientTimeout does not bound a request: wait_for does.
        rooms = await asyncio.wait_for(lk.room.list_rooms(proto_room.ListRoomsRequest()), timeout)
    except asyncio.TimeoutError:
        await lk.aclose()
        return Result("LiveKit", FAIL, f"no answer from {url} within {timeout:g}s: check LIVEKIT_URL "
                      "(wss://<project>.livekit.cloud) and that this machine can reach it"), None
    except api.ServerError as e:
        await lk.aclose()
        if e.status == 401:
            return Result("LiveKit", FAIL, f"{url} rejected the credentials ({e.code}: {e.message}): copy "
                          "LIVEKIT_API_KEY and LIVEKIT_API_SECRET from the same project as LIVEKIT_URL "
                          "(LiveKit Cloud dashboard > Settings > API Keys)"), None
        if e.status == 403:
            return Result("LiveKit", FAIL, f"{url} accepted the key but refused ListRooms ({e.message}): "
                          "use an API key with full permissions"), None
        return Result("LiveKit", FAIL, f"{url} answered HTTP {e.status} ({e.code}: {e.message}): "
                      "check LIVEKIT_URL and https://status.livekit.io"), None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        await lk.aclose()
        return Result("LiveKit", FAIL, f"cannot connect to {url} ({type(e).__name__}: {e}): check "
                      "LIVEKIT_URL (wss://<project>.livekit.cloud) and the network"), None
    took = time.monotonic() - t0
    return Result("LiveKit", OK, f"{url} accepted the API key ({len(rooms.rooms)} active rooms, "
                  f"{took * 1000:.0f} ms)"), lk


async def check_dispatch(env: Mapping[str, str], lk: Any, timeout: float) -> Result:
    import aiohttp
    from livekit import api
    from livekit.protocol import sip as proto_sip

    agent = _agent_module()
    default = getattr(agent, "DEFAULT_AGENT_NAME", "equipment-rental")
    name = (env.get("LIVEKIT_AGENT_NAME") or "").strip() or default
    fix = f"run `python -m telephony.setup_sip --number +1...` (agent name {name!r}) to send callers here"
    try:
        rules = await asyncio.wait_for(lk.sip.list_dispatch_rule(proto_sip.ListSIPDispatchRuleRequest()), timeout)
    except asyncio.TimeoutError:
        return Result("SIP dispatch", WARN, f"could not list dispatch rules within {timeout:g}s")
    except api.ServerError as e:
        return Result("SIP dispatch", WARN, f"could not list dispatch rules ({e.code}: {e.message}); "
                      "an API key with SIP admin permission is needed to check")
    except (aiohttp.ClientError, OSError) as e:
        return Result("SIP dispatch", WARN, f"could not list dispatch rules ({type(e).__name__}: {e})")
    ours = [r for r in rules.items if any(a.agent_name == name for a in r.room_config.agents)]
    if ours:
        r = ours[0]
        kind = r.rule.WhichOneof("rule") or "?"
        note = "" if kind == "dispatch_rule_individual" else f" (a {kind} rule: callers may share a room)"
        trunks = ", ".join(r.trunk_ids) or "all trunks"
        return Result("SIP dispatch", OK if not note else WARN,
                      f"rule {r.sip_dispatch_rule_id} ({trunks}) dispatches agent {name!r}{note}")
    if name == default:
        return Result("SIP dispatch", WARN, f"no dispatch rule dispatches agent {name!r}: phone calls will "
                      f"not reach this worker; {fix}")
    return Result("SIP dispatch", WARN, f"no dispatch rule dispatches agent {name!r} (fine for development: "
                  "use the console or the LiveKit playground)")


def check_inventory(env: Mapping[str, str], timeout: float) -> Result:
    import equipment

    if equipment.config_errors(env):
        return Result("Inventory", FAIL, "not checked: fix the inventory settings listed under Settings first")
    cfg = equipment.Config.from_env(env)
    store = equipment.SheetStore(cfg) if cfg.sheet_id else equipment.CsvStore(cfg)
    if cfg.sheet_id:
        where = f"Google Sheet {cfg.sheet_id}, worksheet {cfg.equipment_worksheet!r}"
    else:
        where = f"embedded inventory {cfg.csv_path.name} (GOOGLE_SHEET_ID not set)"
    try:
        # One direct read of the source, no cache and no retries, bounded by the timeout.
        table = _in_thread(store.read_table, timeout)
        units = table.units()  # raises when ID, Name or Status is missing
    except TimeoutError:
        return Result("Inventory", FAIL, f"{where}: no answer within {timeout:g}s; check the network "
                      "and GOOGLE_SHEETS_API_URL (normally unset)")
    except equipment.InventoryConfigError as e:
        msg = str(e)
        if "column" in msg:
            msg += "; the first row of the worksheet must hold the column names (ID, Name, Status, ...)"
        if cfg.sheet_id and "Google Sheet" not in msg:
            msg = f"Google Sheet {cfg.sheet_id}: {msg}"
        return Result("Inventory", FAIL, msg)
    except Exception as e:  # noqa: BLE001 - HTTP 429/5xx, connection errors, token errors
        resp = getattr(e, "response", None)
        code = getattr(resp, "status_code", None)
        what = f"HTTP {code}" if code else f"{type(e).__name__}: {str(e)[:200]}"
        hint = " (quota: 60 reads/min per service account; wait a minute)" if code == 429 else ""
        return Result("Inventory", FAIL, f"{where}: read failed ({what}){hint}")
    unknown = [u for u in units if u.status not in equipment.KNOWN_STATUSES]
    known = ", ".join(sorted(equipment.KNOWN_STATUSES))
    if unknown:
        listed = "; ".join(f"{u.id}: {u.status or '(empty)'!r}" for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return Result("Inventory", FAIL, f"{where}: {len(unknown)} unit(s) with an unrecognised Status, never "
                      f"offered to callers ({listed}{more}); use one of {known}")
    if not units:
        return Result("Inventory", WARN, f"{where}: no units listed; callers will hear that nothing is available")
    available = sum(u.available for u in units)
    summary = f"{where}: {len(units)} units ({available} available); ID, Name, Status columns and statuses OK"
    if cfg.sheet_id:
        email = (cfg.credentials_info or {}).get("client_email", "the service account")
        summary += f"; {email} can read it (bookings need it shared as Editor)"
    else:
        summary += "; set GOOGLE_SHEET_ID to use the shop's Google Sheet"
    return Result("Inventory", OK, summary)


def check_state_dir(env: Mapping[str, str]) -> Result:
    import equipment

    raw = (env.get("STATE_DIR") or "").strip()
    path = Path(raw).expanduser() if raw else Path(equipment.DEFAULT_STATE_DIR)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight-", delete=True) as f:
            f.write(b"ok")
    except OSError as e:
        return Result("State dir", FAIL, f"{path} is not writable ({e.strerror or e}): set STATE_DIR to a "
                      "writable folder (on Railway, the volume's mount path)")
    where = "" if raw else " (the default: on Railway set STATE_DIR to a volume so it survives redeploys)"
    return Result("State dir", OK, f"{path.resolve()} writable: inventory cache and booking outbox{where}")


# ------------------------------------------------------------------------------------------ runner


async def run_checks(env: Mapping[str, str], timeout: float) -> list[Result]:
    results = [check_settings(env), check_provider_keys(env)]
    lk_result, lk = await check_livekit(env, timeout)
    results.append(lk_result)
    if lk is not None:
        try:
            results.append(await check_dispatch(env, lk, timeout))
        finally:
            await lk.aclose()
    results.append(await asyncio.to_thread(check_inventory, env, timeout))
    results.append(check_state_dir(env))
    return results


def main(argv: list[str], env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python agent.py check",
                                     description="Check settings, credentials and the inventory before going live.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds allowed for each network check (default %(default)s)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    out = out or sys.stdout
    results = asyncio.run(run_checks(env, args.timeout))
    for r in results:
        for line in r.lines():
            print(line, file=out)
    failed = [r for r in results if r.status == FAIL]
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed: fix the ❌ lines above, then run "
              "`python agent.py check` again.", file=out)
        return 1
    warned = sum(r.status == WARN for r in results)
    plural = "s" if warned > 1 else ""
    note = f" ({warned} warning{plural}: see the ⚠️ lines)" if warned else ""
    print(f"All checks passed{note}: ready to take calls.", file=out)
    return 0


if __name__ == "__main__":
    try:
        from dotenv import load_dotenv

        load_dotenv()
    except ImportError:
        pass
    sys.exit(main(sys.argv[1:]))
