"""`python agent.py check` (preflight.py) against the local stand-ins: LiveKit's Twirp API
(tests/fakes/livekit_api.py) and Google Sheets (tests/fakes/sheets_server.py). Healthy, and each
failure, with the line it prints and the exit status."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from livekit.protocol import agent_dispatch, room, sip

import preflight
from tests.conftest import child_env, equipment_rows
from tests.fakes.livekit_api import FakeLiveKit

ROOT = Path(__file__).resolve().parents[1]
PROVIDERS = {"OPENAI_API_KEY": "sk-test-not-real", "DEEPGRAM_API_KEY": "dg-test-not-real"}


@pytest.fixture
def lk():
    with FakeLiveKit() as fake:
        yield fake


def full_env(lk: FakeLiveKit, inventory_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {"LIVEKIT_URL": lk.url, "LIVEKIT_API_KEY": lk.api_key, "LIVEKIT_API_SECRET": lk.api_secret,
           **PROVIDERS, **inventory_env}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run(env: dict[str, str], timeout: float = 2.0) -> tuple[int, dict[str, str], str]:
    """Exit status, {check name: its line}, whole output."""
    buf = io.StringIO()
    rc = preflight.main(["--timeout", str(timeout)], env=env, out=buf)
    out = buf.getvalue()
    lines = {}
    for line in out.splitlines():
        for mark in (preflight.OK, preflight.FAIL, preflight.WARN):
            if line.startswith(mark + " ") and ":" in line:
                lines[line[len(mark) + 1:].split(":", 1)[0]] = line
    return rc, lines, out


def add_rule(lk: FakeLiveKit, agent_name: str = "equipment-rental") -> None:
    lk.rules["SDR_1"] = sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_1", trunk_ids=["ST_1"],
        rule=sip.SIPDispatchRule(dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="call-")),
        room_config=room.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(agent_name=agent_name)]))


CHECKS = ["Settings", "Provider keys", "LiveKit", "SIP dispatch", "Inventory", "State dir"]


def test_healthy_with_sheet(lk, sheets, sheet_env):
    add_rule(lk)
    rc, lines, out = run(full_env(lk, sheet_env))
    assert rc == 0, out
    assert list(lines) == CHECKS
    assert all(line.startswith(preflight.OK) for line in lines.values()), out
    assert "20 units" in lines["Inventory"] and sheets.spreadsheet_id in lines["Inventory"]
    assert "SDR_1" in lines["SIP dispatch"]
    assert out.rstrip().endswith("ready to take calls.")
    # the credentials check is one signed ListRooms call with the roomList grant
    (call,) = lk.calls("RoomService/ListRooms")
    assert call.status == 200 and call.claims["video"]["roomList"] is True


def test_csv_default_passes_with_a_note(lk, csv_env):
    rc, lines, out = run(full_env(lk, csv_env))
    assert rc == 0, out
    assert lines["Inventory"].startswith(preflight.OK)
    assert "embedded inventory" in lines["Inventory"] and "GOOGLE_SHEET_ID not set" in lines["Inventory"]
    # no dispatch rule names the agent: a warning, not a failure
    assert lines["SIP dispatch"].startswith(preflight.WARN) and "setup_sip" in lines["SIP dispatch"]


@pytest.mark.parametrize("var", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"])
def test_missing_livekit_variable(lk, csv_env, var):
    rc, lines, out = run(full_env(lk, csv_env, **{var: None}))
    assert rc == 1
    assert lines["Settings"].startswith(preflight.FAIL)
    assert f"{var} is not set" in out
    assert lines["LiveKit"].startswith(preflight.FAIL) and "not checked" in lines["LiveKit"]
    assert lk.requests == []


def test_missing_provider_key_names_it_and_where_to_get_it(lk, csv_env):
    rc, lines, out = run(full_env(lk, csv_env, DEEPGRAM_API_KEY=None))
    assert rc == 1
    assert lines["Provider keys"].startswith(preflight.FAIL) and "DEEPGRAM_API_KEY" in lines["Provider keys"]
    assert "console.deepgram.com" in out
    assert lines["Settings"].startswith(preflight.OK)  # reported once, on its own line


def test_malformed_setting_fails_settings(lk, csv_env):
    rc, lines, out = run(full_env(lk, csv_env, MAX_CALL_SECONDS="ten minutes"))
    assert rc == 1
    assert lines["Settings"].startswith(preflight.FAIL) and "MAX_CALL_SECONDS" in out


def test_bad_livekit_secret(lk, csv_env):
    rc, lines, out = run(full_env(lk, csv_env, LIVEKIT_API_SECRET="wrong-secret-" + "x" * 30))
    assert rc == 1
    assert lines["LiveKit"].startswith(preflight.FAIL)
    assert "rejected the credentials" in lines["LiveKit"] and "LIVEKIT_API_SECRET" in lines["LiveKit"]
    assert [r.status for r in lk.requests] == [401]
    assert "SIP dispatch" not in lines


def test_livekit_refusing_connections(lk, csv_env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc, lines, out = run(full_env(lk, csv_env, LIVEKIT_URL=f"ws://127.0.0.1:{port}"))
    assert rc == 1
    assert lines["LiveKit"].startswith(preflight.FAIL) and "cannot connect" in lines["LiveKit"]


def test_livekit_not_answering_is_bounded_by_the_timeout(lk, csv_env):
    lk.mode = "hang"
    t0 = time.monotonic()
    rc, lines, out = run(full_env(lk, csv_env), timeout=0.5)
    assert time.monotonic() - t0 < 15
    assert rc == 1
    assert lines["LiveKit"].startswith(preflight.FAIL) and "no answer" in lines["LiveKit"]
    assert lines["Inventory"].startswith(preflight.OK)  # the other checks still ran


def test_sheet_not_shared_says_share_with_the_service_account(lk, sheets, sheet_env):
    sheets.forbid()
    rc, lines, out = run(full_env(lk, sheet_env))
    assert rc == 1
    email = sheets.service_account_info()["client_email"]
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL)
    assert email in line and "share" in line.lower() and "Editor" in line


def test_missing_worksheet(lk, sheets, sheet_env):
    rc, lines, out = run(full_env(lk, sheet_env, EQUIPMENT_WORKSHEET="Inventory"))
    assert rc == 1
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL) and "'Inventory'" in line and "EQUIPMENT_WORKSHEET" in line


def test_missing_column(lk, sheets, sheet_env):
    rows = equipment_rows()
    status = rows[0].index("Status")
    sheets.set_rows("Equipment", [[c for i, c in enumerate(r) if i != status] for r in rows])
    rc, lines, out = run(full_env(lk, sheet_env))
    assert rc == 1
    assert lines["Inventory"].startswith(preflight.FAIL) and "'Status'" in lines["Inventory"]


def test_unrecognised_status(lk, sheets, sheet_env):
    rows = equipment_rows()
    rows[3][rows[0].index("Status")] = "Out back"
    sheets.set_rows("Equipment", rows)
    rc, lines, out = run(full_env(lk, sheet_env))
    assert rc == 1
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL) and rows[3][0] in line and "OUT BACK" in line
    assert "AVAILABLE" in line


def test_sheet_not_answering_is_bounded_by_the_timeout(lk, sheets, sheet_env):
    sheets.hang("read")
    t0 = time.monotonic()
    rc, lines, out = run(full_env(lk, sheet_env), timeout=1.0)
    assert time.monotonic() - t0 < 15
    assert rc == 1
    assert lines["Inventory"].startswith(preflight.FAIL) and "no answer" in lines["Inventory"]


def test_rule_for_another_agent_is_only_a_warning(lk, csv_env):
    add_rule(lk, agent_name="someone-else")
    rc, lines, out = run(full_env(lk, csv_env))
    assert rc == 0
    assert lines["SIP dispatch"].startswith(preflight.WARN) and "equipment-rental" in lines["SIP dispatch"]


def _agent_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in child_env({}).items()
            if not k.startswith(("LIVEKIT_", "OPENAI_", "DEEPGRAM_", "TTS_", "SIP_"))}
    # a developer's .env must not leak in (load_dotenv never overrides a variable that is set)
    base.update({"GOOGLE_SHEET_ID": "", "GOOGLE_SERVICE_ACCOUNT_JSON": "", "GOOGLE_APPLICATION_CREDENTIALS": ""})
    base.update(env)
    return subprocess.run([sys.executable, "agent.py", "check", "--timeout", "3"], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


def test_agent_py_check_command(lk, csv_env):
    ok = _agent_check(full_env(lk, csv_env))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in CHECKS:
        assert f" {name}: " in ok.stdout
    bad = _agent_check(full_env(lk, csv_env, OPENAI_API_KEY=""))
    assert bad.returncode == 1
    assert "❌ Provider keys: OPENAI_API_KEY not set" in bad.stdout
