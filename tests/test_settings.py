"""settings.py: every variable parsed, bounded and named when bad, secrets never echoed, and
"empty means the default" for every variable, the framework's included."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import railway
import settings
from settings import NUMBERS, Settings, config_errors

GOOD = {"LIVEKIT_URL": "wss://x.livekit.cloud", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s",
        "OPENAI_API_KEY": "sk", "DEEPGRAM_API_KEY": "dg"}
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
SERVICE_ACCOUNT = json.dumps({"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com",
                              "private_key": PEM, "private_key_id": "abc123"})
SECRETS = {
    "pem": PEM,
    "service-account": SERVICE_ACCOUNT,
    "openai-key": "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
    "livekit-secret": "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm",
    "url-with-password": "postgresql://shop:hunter2pass@db.internal:5432/rental",
}


@pytest.fixture
def env(csv_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # a relative STATE_DIR is created here, never in the repo
    return {**csv_env, **GOOD}


def test_a_good_environment_has_no_errors_and_the_documented_defaults(env: dict[str, str]) -> None:
    assert config_errors("start", env) == []
    s = Settings.from_env(env)
    assert s.agent_name == settings.DEFAULT_AGENT_NAME and s.max_concurrent_calls == 10
    assert s.booking_timeout == 30.0 and s.max_bookings_per_call == 3 and s.port is None
    assert s.inventory.source == "csv" and Settings.lenient({}).inventory.http_timeout == (5.0, 10.0)


def test_every_bad_variable_is_named_in_one_list(csv_env: dict[str, str]) -> None:
    errors = config_errors("start", {**csv_env, "PORT": "http", "ROOM_CONNECT_TIMEOUT": "-1",
                                     "TTS_PROVIDER": "polly", "TRANSFER_PHONE_NUMBER": "call bob"})
    text = "\n".join(errors)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY", "DEEPGRAM_API_KEY",
                 "PORT", "ROOM_CONNECT_TIMEOUT", "TTS_PROVIDER", "TRANSFER_PHONE_NUMBER"):
        assert name in text, name
    assert len(errors) == 9, errors


def test_console_needs_no_livekit_server_but_the_model_keys(csv_env: dict[str, str]) -> None:
    console = config_errors("console", {**csv_env, "OPENAI_API_KEY": "sk"})
    assert not any("LIVEKIT" in e for e in console)
    assert any("DEEPGRAM_API_KEY" in e for e in console)


def test_livekit_url_must_be_a_websocket_or_http_url(env: dict[str, str]) -> None:
    assert any("LIVEKIT_URL" in e for e in config_errors("start", {**env, "LIVEKIT_URL": "x.livekit.cloud"}))


@pytest.mark.parametrize("name", sorted(NUMBERS))
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e308", "99999999999999999999", "-5", "ten", "0x10"])
def test_every_number_variable_is_bounded(env: dict[str, str], name: str, raw: str) -> None:
    errors = config_errors("start", {**env, name: raw})
    assert len(errors) == 1 and errors[0].startswith(f"{name} must be "), errors


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_every_number_default_is_within_its_own_bounds(name: str) -> None:
    spec = NUMBERS[name]
    if spec.default is not None:
        assert spec.parse(str(spec.default)) == spec.default
        assert math.isfinite(spec.default)


@pytest.mark.parametrize("target,ok", [
    ("+15551234567", True), ("tel:+15551234567", True), ("sip:desk@pbx.example.com", True),
    ("sips:desk@pbx.example.com:5061", True), ("tel:abc", False), ("555-1234", False), ("sip:", False),
    ("+1555", False), ("call bob", False),
])
def test_the_transfer_target_is_e164_or_a_sip_uri(env: dict[str, str], target: str, ok: bool) -> None:
    errors = config_errors("start", {**env, "TRANSFER_PHONE_NUMBER": target})
    assert (errors == []) is ok, errors


def test_state_dir_must_be_creatable_and_writable(env: dict[str, str], tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for bad in ("/proc/nope", str(afile), str(afile / "below")):
        errors = config_errors("start", {**env, "STATE_DIR": bad})
        assert len(errors) == 1 and errors[0].startswith("STATE_DIR "), (bad, errors)
    fresh = tmp_path / "new" / "state"
    assert config_errors("start", {**env, "STATE_DIR": str(fresh)}) == [] and fresh.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_state_dir_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert any(e.startswith("STATE_DIR ") for e in config_errors("start", {**env, "STATE_DIR": str(ro)}))


def every_variable() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    return [line.split("=", 1)[0] for line in text.splitlines() if line[:1].isupper() and "=" in line]


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_a_secret_in_any_variable_is_never_echoed(env: dict[str, str], kind: str) -> None:
    secret = SECRETS[kind]
    fragments = [part for part in secret.replace("\n", " ").split() if len(part) >= 12] or [secret]
    fragments += ["hunter2pass", "Abc123Def456", "MIIEvQIBADAN"]
    for name in every_variable():
        errors = config_errors("start", {**env, name: secret})
        text = "\n".join(errors)
        leaked = [f for f in fragments if f in text and f in secret]
        assert not leaked, (name, leaked, text)


def test_an_empty_value_means_the_default_for_every_variable(env: dict[str, str]) -> None:
    blank = {name: "" for name in every_variable()}
    errors = config_errors("start", {**blank, **env})
    assert errors == [], errors


def test_empty_framework_variables_are_dropped_before_the_framework_reads_them() -> None:
    environ = {"NUM_CPUS": "", "LIVEKIT_LOG_LEVEL": "  ", "OTHER": ""}
    settings.drop_empty_framework_vars(environ)
    assert environ == {"OTHER": ""}


def test_the_sheet_id_accepts_the_url_and_refuses_anything_else(env: dict[str, str]) -> None:
    sa = {"GOOGLE_SERVICE_ACCOUNT_JSON": "", "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent.json"}
    url = "https://docs.google.com/spreadsheets/d/1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdEFG/edit#gid=0"
    parsed, _ = settings.parse({**env, **sa, "GOOGLE_SHEET_ID": url})
    assert parsed.inventory.sheet_id == "1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdEFG"
    errors = config_errors("start", {**env, "GOOGLE_SHEET_ID": SERVICE_ACCOUNT})
    assert any(e.startswith("GOOGLE_SHEET_ID must be") for e in errors) and "private_key" not in "".join(errors)


def test_a_key_pasted_as_the_credentials_path_is_refused_unechoed(env: dict[str, str]) -> None:
    errors = config_errors("start", {**env, "GOOGLE_SHEET_ID": "1AbCdEfGhIjKlMnOp",
                                     "GOOGLE_APPLICATION_CREDENTIALS": SERVICE_ACCOUNT})
    text = "\n".join(errors)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in text and "MIIEvQ" not in text and "client_email" not in text


def test_the_start_up_line_says_what_runs_and_leaks_nothing(env: dict[str, str]) -> None:
    s = Settings.from_env({**env, "TRANSFER_PHONE_NUMBER": "+15550001111"})
    line = s.describe()
    for part in ("agent=equipment-rental", "inventory=CSV ", "llm=gpt-4o", "tts=deepgram>openai",
                 "capacity=10 calls", "transfer=on"):
        assert part in line, (part, line)
    assert "15550001111" not in line


def test_console_text_needs_no_deepgram_key(csv_env: dict[str, str]) -> None:
    typed = config_errors(settings.TEXT_CONSOLE, {**csv_env, "OPENAI_API_KEY": "sk"})
    assert typed == [], typed
    assert any("OPENAI_API_KEY" in e for e in config_errors(settings.TEXT_CONSOLE, csv_env))


def test_the_start_up_line_names_the_version_state_models_and_capacity(env: dict[str, str]) -> None:
    s = Settings.from_env({**env, "NUM_IDLE_PROCESSES": "2", "TTS_PROVIDER": "openai"})
    line = s.describe("g5858035")
    for part in ("version=g5858035 ", f"state=sqlite {s.inventory.state_dir}", "llm=gpt-4o>gpt-4o-mini",
                 "stt=deepgram/nova-3", "tts=openai>deepgram (openai/gpt-4o-mini-tts/ash, deepgram/aura-2-andromeda-en)",
                 "idle_processes=2"):
        assert part in line, (part, line)
    assert "version=unknown" in Settings().describe()


def test_the_version_is_the_commit_railway_or_git_gives() -> None:
    assert railway.version({"RAILWAY_GIT_COMMIT_SHA": "5858035ABCDEF0123456789"}) == "g5858035"
    from_git = railway.version({})
    assert from_git == "" or (from_git.startswith("g") and len(from_git) == 8)


def test_health_bounds_are_number_variables() -> None:
    s = Settings.lenient({"REGISTER_TIMEOUT": "5", "DISCONNECT_TIMEOUT": "2"})
    assert (s.register_timeout, s.disconnect_timeout) == (5.0, 2.0)
    assert Settings.lenient({}).register_timeout == NUMBERS["REGISTER_TIMEOUT"].default
