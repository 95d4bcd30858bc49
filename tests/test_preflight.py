"""`python agent.py check` (preflight.py) against local stand-ins: LiveKit's Twirp API
(tests/fakes/livekit_api.py), OpenAI and Deepgram's key checks (tests/fakes/providers.py) and
Google Sheets (tests/fakes/sheets_server.py). Healthy, and for each credential "not set",
"rejected" and "unreachable" (refused, and hanging: bounded by --timeout), with the line it prints
and the exit status. No secret ever appears in the output."""

from __future__ import annotations

import base64
import io
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from livekit.protocol import agent_dispatch, room, sip

import preflight
import settings
from tests.conftest import child_env, equipment_rows
from tests.fakes.livekit_api import FakeLiveKit
from tests.fakes.providers import FakeDeepgram, FakeOpenAI, closed_port_url

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ["Settings", "OpenAI", "Deepgram", "LiveKit", "SIP dispatch", "Inventory", "State dir"]


@pytest.fixture
def lk():
    with FakeLiveKit() as fake:
        yield fake


@pytest.fixture
def openai_api():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def deepgram_api():
    with FakeDeepgram() as fake:
        yield fake


@pytest.fixture
def stand_ins(lk, openai_api, deepgram_api):
    """Every credential pointed at a stand-in that accepts it."""
    return {"LIVEKIT_URL": lk.url, "LIVEKIT_API_KEY": lk.api_key, "LIVEKIT_API_SECRET": lk.api_secret,
            **openai_api.env(), **deepgram_api.env()}


def env_with(base: dict[str, str], inventory_env: dict[str, str], **extra: str | None) -> dict[str, str]:
    env = {**base, **inventory_env, **extra}
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


def add_rule(lk: FakeLiveKit, agent_name: str = settings.DEFAULT_AGENT_NAME) -> None:
    lk.rules["SDR_1"] = sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_1", trunk_ids=["ST_1"],
        rule=sip.SIPDispatchRule(dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="call-")),
        room_config=room.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(agent_name=agent_name)]))


# ------------------------------------------------------------------------------------------ healthy


def test_healthy_with_sheet(lk, openai_api, deepgram_api, stand_ins, sheets, sheet_env):
    add_rule(lk)
    rc, lines, out = run(env_with(stand_ins, sheet_env))
    assert rc == 0, out
    assert list(lines) == CHECKS
    assert all(line.startswith(preflight.OK) for line in lines.values()), out
    assert "20 units" in lines["Inventory"] and settings.shorten_id(sheets.spreadsheet_id) in lines["Inventory"]
    assert "SDR_1" in lines["SIP dispatch"]
    assert out.rstrip().endswith("ready to take calls.")
    # each credential is tried with one authenticated request
    (call,) = lk.calls("RoomService/ListRooms")
    assert call.status == 200 and call.claims["video"]["roomList"] is True
    (models,) = openai_api.requests
    assert (models.method, models.path) == ("GET", "/v1/models")
    assert models.headers["authorization"] == f"Bearer {openai_api.key}"
    (auth,) = deepgram_api.requests
    assert (auth.method, auth.path) == ("GET", "/v1/auth/token")
    assert auth.headers["authorization"] == f"Token {deepgram_api.key}"
    assert sheets.counts["token"] >= 1 and sheets.counts["read"] >= 1 and sheets.counts["write"] == 0


def test_csv_default_passes_with_a_note(stand_ins, csv_env):
    rc, lines, out = run(env_with(stand_ins, csv_env))
    assert rc == 0, out
    assert lines["Inventory"].startswith(preflight.OK)
    assert "embedded inventory" in lines["Inventory"] and "GOOGLE_SHEET_ID not set" in lines["Inventory"]
    # no dispatch rule names the agent: a warning, not a failure
    assert lines["SIP dispatch"].startswith(preflight.WARN) and "setup_sip" in lines["SIP dispatch"]


def test_network_checks_run_at_once_and_are_bounded(lk, openai_api, deepgram_api, stand_ins, sheets, sheet_env):
    for fake in (lk, openai_api, deepgram_api):
        fake.mode = "hang"
    sheets.hang("token")
    t0 = time.monotonic()
    rc, lines, out = run(env_with(stand_ins, sheet_env), timeout=1.0)
    took = time.monotonic() - t0
    assert rc == 1
    for name in ("OpenAI", "Deepgram", "LiveKit", "Inventory"):
        assert lines[name].startswith(preflight.FAIL) and "no answer" in lines[name], out
    assert took < 3.5, f"four 1 s checks took {took:.1f}s: they should run at the same time"


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("var", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"])
def test_missing_livekit_variable(lk, stand_ins, csv_env, var):
    rc, lines, out = run(env_with(stand_ins, csv_env, **{var: None}))
    assert rc == 1
    assert lines["Settings"].startswith(preflight.FAIL)
    assert f"{var} is not set" in out
    assert lines["LiveKit"].startswith(preflight.FAIL) and "not checked" in lines["LiveKit"]
    assert lk.requests == []


def test_malformed_setting_fails_settings(stand_ins, csv_env):
    rc, lines, out = run(env_with(stand_ins, csv_env, MAX_CALL_SECONDS="ten minutes"))
    assert rc == 1
    assert lines["Settings"].startswith(preflight.FAIL) and "MAX_CALL_SECONDS" in out


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e308", "soon"])
def test_timeout_argument_is_bounded(timeout, capsys):
    with pytest.raises(SystemExit) as e:
        preflight.main(["--timeout", timeout], env={}, out=io.StringIO())
    assert e.value.code == 2 and "--timeout" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ provider keys

PROVIDERS = {"OpenAI": "openai_api", "Deepgram": "deepgram_api"}


@pytest.fixture(params=list(PROVIDERS))
def provider(request):
    """(check name, its stand-in)"""
    return request.param, request.getfixturevalue(PROVIDERS[request.param])


def test_provider_key_not_set_names_it_and_where_to_get_it(provider, stand_ins, csv_env):
    name, fake = provider
    rc, lines, out = run(env_with(stand_ins, csv_env, **{fake.key_var: None}))
    assert rc == 1
    assert lines[name].startswith(preflight.FAIL) and f"{fake.key_var} not set" in lines[name]
    assert settings.WHERE_TO_GET[fake.key_var].split()[0] in lines[name]
    assert fake.requests == []
    assert lines["Settings"].startswith(preflight.OK)  # reported once, on its own line


def test_provider_key_rejected(provider, stand_ins, csv_env):
    name, fake = provider
    wrong = fake.key.replace("standin", "revoked")
    rc, lines, out = run(env_with(stand_ins, csv_env, **{fake.key_var: wrong}))
    assert rc == 1
    line = lines[name]
    assert line.startswith(preflight.FAIL) and "rejected" in line and "HTTP 401" in line and fake.key_var in line
    assert fake.invalid_code in line  # the provider's code, never its message (which quotes the key)
    assert wrong not in out and "ready to take calls" not in out
    assert len(fake.requests) == 1


def test_dummy_keys_are_not_ready_to_take_calls(stand_ins, csv_env):
    """Issue 11: `sk-dummy` and `dg-dummy` used to pass."""
    rc, lines, out = run(env_with(stand_ins, csv_env, OPENAI_API_KEY="sk-dummy", DEEPGRAM_API_KEY="dg-dummy"))
    assert rc == 1
    assert lines["OpenAI"].startswith(preflight.FAIL) and lines["Deepgram"].startswith(preflight.FAIL)
    assert "All checks passed" not in out and "ready to take calls" not in out
    assert "2 of 7 checks failed" in out


def test_provider_unreachable_refused_port(provider, stand_ins, csv_env):
    name, fake = provider
    base = closed_port_url(fake.base_path)
    t0 = time.monotonic()
    rc, lines, out = run(env_with(stand_ins, csv_env, **{fake.url_var: base}))
    assert time.monotonic() - t0 < 5
    assert rc == 1
    line = lines[name]
    assert line.startswith(preflight.FAIL) and "unreachable" in line and "cannot connect" in line
    assert "rejected" not in line and fake.url_var in line


def test_provider_hanging_is_bounded_by_the_timeout(provider, stand_ins, csv_env):
    name, fake = provider
    fake.mode = "hang"
    t0 = time.monotonic()
    rc, lines, out = run(env_with(stand_ins, csv_env), timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert rc == 1
    assert lines[name].startswith(preflight.FAIL) and "no answer" in lines[name] and "0.5s" in lines[name]
    assert lines["LiveKit"].startswith(preflight.OK)  # the other checks still ran


@pytest.mark.parametrize("mode,status,words", [
    ("error500", preflight.FAIL, "HTTP 500"),
    ("forbidden", preflight.WARN, "HTTP 403"),
])
def test_provider_other_answers(provider, stand_ins, csv_env, mode, status, words):
    name, fake = provider
    fake.mode = mode
    rc, lines, out = run(env_with(stand_ins, csv_env))
    assert lines[name].startswith(status) and words in lines[name], out
    assert rc == (1 if status == preflight.FAIL else 0)


def test_openai_out_of_quota_fails(openai_api, stand_ins, csv_env):
    openai_api.mode = "quota"
    rc, lines, out = run(env_with(stand_ins, csv_env))
    assert rc == 1 and lines["OpenAI"].startswith(preflight.FAIL) and "quota" in lines["OpenAI"]


def test_base_url_that_is_not_the_api(provider, stand_ins, csv_env):
    name, fake = provider
    rc, lines, out = run(env_with(stand_ins, csv_env, **{fake.url_var: fake.url + "/nope"}))
    assert rc == 1
    assert lines[name].startswith(preflight.FAIL) and "HTTP 404" in lines[name] and fake.url_var in lines[name]


def test_openai_model_not_available_to_the_key_warns(stand_ins, csv_env):
    rc, lines, out = run(env_with(stand_ins, csv_env, LLM_MODEL="gpt-9-turbo"))
    assert rc == 0
    assert lines["OpenAI"].startswith(preflight.WARN) and "'gpt-9-turbo'" in lines["OpenAI"]


def test_bad_openai_base_url_is_a_settings_error(openai_api, stand_ins, csv_env):
    rc, lines, out = run(env_with(stand_ins, csv_env, OPENAI_BASE_URL="api.openai.com"))
    assert rc == 1
    assert lines["Settings"].startswith(preflight.FAIL) and "OPENAI_BASE_URL" in out
    assert lines["OpenAI"].startswith(preflight.FAIL) and "not checked" in lines["OpenAI"]
    assert openai_api.requests == []


# ------------------------------------------------------------------------------------------ LiveKit


def test_bad_livekit_secret(lk, stand_ins, csv_env):
    rc, lines, out = run(env_with(stand_ins, csv_env, LIVEKIT_API_SECRET="wrong-secret-" + "x" * 30))
    assert rc == 1
    assert lines["LiveKit"].startswith(preflight.FAIL)
    assert "rejected the credentials" in lines["LiveKit"] and "LIVEKIT_API_SECRET" in lines["LiveKit"]
    assert [r.status for r in lk.requests] == [401]
    assert "SIP dispatch" not in lines


def test_livekit_refusing_connections(stand_ins, csv_env):
    rc, lines, out = run(env_with(stand_ins, csv_env, LIVEKIT_URL=closed_port_url().replace("http", "ws")))
    assert rc == 1
    assert lines["LiveKit"].startswith(preflight.FAIL) and "unreachable: cannot connect" in lines["LiveKit"]


def test_livekit_not_answering_is_bounded_by_the_timeout(lk, stand_ins, csv_env):
    lk.mode = "hang"
    t0 = time.monotonic()
    rc, lines, out = run(env_with(stand_ins, csv_env), timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert rc == 1
    assert lines["LiveKit"].startswith(preflight.FAIL) and "no answer" in lines["LiveKit"]
    assert lines["Inventory"].startswith(preflight.OK)  # the other checks still ran


def test_rule_for_another_agent_is_only_a_warning(lk, stand_ins, csv_env):
    add_rule(lk, agent_name="someone-else")
    rc, lines, out = run(env_with(stand_ins, csv_env))
    assert rc == 0
    assert lines["SIP dispatch"].startswith(preflight.WARN) and "equipment-rental" in lines["SIP dispatch"]


def test_dispatch_check_uses_the_workers_agent_name(lk, stand_ins, csv_env):
    add_rule(lk, agent_name="equipment-rental-dev")
    rc, lines, out = run(env_with(stand_ins, csv_env, LIVEKIT_AGENT_NAME="equipment-rental-dev"))
    assert rc == 0 and lines["SIP dispatch"].startswith(preflight.OK)
    assert "'equipment-rental-dev'" in lines["SIP dispatch"]


# ------------------------------------------------------------------------------------------ Google / inventory


def test_sheet_not_shared_says_share_with_the_service_account(stand_ins, sheets, sheet_env):
    sheets.forbid()
    rc, lines, out = run(env_with(stand_ins, sheet_env))
    assert rc == 1
    email = sheets.service_account_info()["client_email"]
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL)
    assert email in line and "share" in line.lower() and "Editor" in line


def test_google_rejects_the_service_account(stand_ins, sheets, sheet_env):
    sheets.fail("token", 401)
    rc, lines, out = run(env_with(stand_ins, sheet_env))
    assert rc == 1
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL) and "refused" in line and "GOOGLE_SERVICE_ACCOUNT_JSON" in line
    assert "unreachable" not in line


def test_google_unreachable_refused_port(stand_ins, sheets, sheet_env):
    rc, lines, out = run(env_with(stand_ins, sheet_env, GOOGLE_SHEETS_API_URL=closed_port_url()), timeout=1.0)
    assert rc == 1
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL) and "unreachable: cannot connect" in line
    assert "GOOGLE_SHEETS_API_URL" in line


def test_google_credentials_not_set(stand_ins, sheets, sheet_env):
    rc, lines, out = run(env_with(stand_ins, sheet_env, GOOGLE_SERVICE_ACCOUNT_JSON=None))
    assert rc == 1
    assert lines["Settings"].startswith(preflight.FAIL) and "no credentials" in out
    assert lines["Inventory"].startswith(preflight.FAIL) and "not checked" in lines["Inventory"]
    assert sheets.counts["read"] == 0


def test_missing_worksheet(stand_ins, sheets, sheet_env):
    rc, lines, out = run(env_with(stand_ins, sheet_env, EQUIPMENT_WORKSHEET="Inventory"))
    assert rc == 1
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL) and "'Inventory'" in line and "EQUIPMENT_WORKSHEET" in line


def test_missing_column(stand_ins, sheets, sheet_env):
    rows = equipment_rows()
    status = rows[0].index("Status")
    sheets.set_rows("Equipment", [[c for i, c in enumerate(r) if i != status] for r in rows])
    rc, lines, out = run(env_with(stand_ins, sheet_env))
    assert rc == 1
    assert lines["Inventory"].startswith(preflight.FAIL) and "'Status'" in lines["Inventory"]


def test_unrecognised_status(stand_ins, sheets, sheet_env):
    rows = equipment_rows()
    rows[3][rows[0].index("Status")] = "Out back"
    sheets.set_rows("Equipment", rows)
    rc, lines, out = run(env_with(stand_ins, sheet_env))
    assert rc == 1
    line = lines["Inventory"]
    assert line.startswith(preflight.FAIL) and rows[3][0] in line and "OUT BACK" in line
    assert "AVAILABLE" in line


def test_sheet_not_answering_is_bounded_by_the_timeout(stand_ins, sheets, sheet_env):
    sheets.hang("read")
    t0 = time.monotonic()
    rc, lines, out = run(env_with(stand_ins, sheet_env), timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert rc == 1
    assert lines["Inventory"].startswith(preflight.FAIL) and "no answer" in lines["Inventory"]


# ------------------------------------------------------------------------------------------ secrets


def _pem(marker: str) -> tuple[str, str]:
    body = base64.b64encode(marker.encode() + secrets.token_bytes(600)).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n", body


def key_shapes() -> dict[str, tuple[str, list[str]]]:
    """name -> (the value fed in, the parts of it that must never be printed)."""
    pem, pem_body = _pem("pem")
    sa_pem, sa_body = _pem("service-account")
    key_id = secrets.token_hex(20)
    sa = json.dumps({"type": "service_account", "project_id": "shop-123", "private_key_id": key_id,
                     "private_key": sa_pem, "client_email": "agent@shop-123.iam.gserviceaccount.com",
                     "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"})
    sk = "sk-proj-" + secrets.token_urlsafe(36)
    return {"pem": (pem, [pem_body]), "service-account": (sa, [sa_body, key_id]), "sk": (sk, [sk])}


def leaked(text: str, cores: list[str], window: int = 12) -> list[str]:
    """Any run of `window` characters of a secret found in text (line breaks ignored)."""
    flat = text.replace("\n", "")
    return [core[i:i + window] for core in cores for i in range(0, max(len(core) - window, 0) + 1)
            if core[i:i + window] in flat][:3]


class Recording(dict):
    """An env that remembers every variable looked up."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


@pytest.mark.parametrize("shape", ["pem", "service-account", "sk"])
def test_no_secret_is_ever_printed(shape, lk, stand_ins, sheets, sheet_env, tmp_path, monkeypatch, capsys, caplog):
    """A key-shaped value in every variable check reads, one at a time: the output (and anything
    logged) never contains it, nor the real credentials around it."""
    monkeypatch.chdir(tmp_path)  # a key pasted into STATE_DIR would be created as a folder here
    add_rule(lk)
    base = env_with(stand_ins, sheet_env)
    recording = Recording(base)
    assert preflight.main(["--timeout", "2"], env=recording, out=io.StringIO()) == 0
    read = sorted(v for v in recording.read if isinstance(v, str) and v.isupper())
    assert {"OPENAI_API_KEY", "DEEPGRAM_API_KEY", "LIVEKIT_URL", "GOOGLE_SHEET_ID", "STATE_DIR",
            "OPENAI_BASE_URL", "DEEPGRAM_BASE_URL", "TRANSFER_PHONE_NUMBER"} <= set(read), read

    value, cores = key_shapes()[shape]
    real = [lk.api_secret, stand_ins["OPENAI_API_KEY"], stand_ins["DEEPGRAM_API_KEY"],
            json.loads(sheet_env["GOOGLE_SERVICE_ACCOUNT_JSON"])["private_key"].split("-----")[2].strip()]
    for var in read:
        buf = io.StringIO()
        caplog.clear()
        preflight.main(["--timeout", "2"], env={**base, var: value}, out=buf)
        captured = capsys.readouterr()
        printed = buf.getvalue() + captured.out + captured.err + caplog.text
        assert not leaked(printed, cores), f"{var}: {leaked(printed, cores)} in\n{printed}"
        assert not leaked(printed, real), f"{var}: a real credential in\n{printed}"


# ------------------------------------------------------------------------------------------ the command


def _agent_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in child_env({}).items()
            if not k.startswith(("LIVEKIT_", "OPENAI_", "DEEPGRAM_", "TTS_", "SIP_"))}
    # a developer's .env must not leak in (load_dotenv never overrides a variable that is set)
    base.update({"GOOGLE_SHEET_ID": "", "GOOGLE_SERVICE_ACCOUNT_JSON": "", "GOOGLE_APPLICATION_CREDENTIALS": ""})
    base.update(env)
    return subprocess.run([sys.executable, "agent.py", "check", "--timeout", "3"], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


def test_agent_py_check_command(stand_ins, csv_env):
    ok = _agent_check(env_with(stand_ins, csv_env))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in CHECKS:
        assert f" {name}: " in ok.stdout
    bad = _agent_check(env_with(stand_ins, csv_env, OPENAI_API_KEY=""))
    assert bad.returncode == 1
    assert "❌ OpenAI: OPENAI_API_KEY not set" in bad.stdout
