"""The deploy files agree with the code: railway.json is valid for Railway and drains long enough,
the Procfile and railway.json start the same command, and every environment variable the code
reads is in .env.example and in the README's configuration table."""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
# A copy of https://railway.com/railway.schema.json (JSON Schema draft-07), kept in the repo so the
# check runs offline. Refresh it from that URL when Railway adds settings.
SCHEMA = ROOT / "tests" / "data" / "railway.schema.json"

CODE_FILES = ["agent.py", "equipment.py", "preflight.py", "prompts.py", "telephony/setup_sip.py"]
# UPPER_SNAKE string literals in those files that are not environment variables.
NOT_ENV = {"INSERT_ROWS", "USER_ENTERED", "DEFAULT_AGENT_NAME", "NUMERIC_VARS"}
# Read by livekit-agents itself, documented for operators.
FRAMEWORK_VARS = {"LIVEKIT_LOG_LEVEL", "NUM_CPUS"}


def railway() -> dict:
    return json.loads((ROOT / "railway.json").read_text())


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_railway_json_is_valid_for_railways_schema():
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator().iter_errors(railway())]
    assert errors == []


def test_the_schema_copy_is_strict_enough_to_catch_mistakes():
    v = validator()
    good = railway()
    for bad in (
        {**good, "deploy": {**good["deploy"], "drainingSeconds": "630"}},  # strings are refused by Railway
        {**good, "deploy": {**good["deploy"], "healthCheckPath": "/"}},  # misspelt key
        {**good, "deploy": {**good["deploy"], "restartPolicyType": "ON_CRASH"}},
        {**good, "build": {"builder": "BUILDPACKS"}},
    ):
        assert list(v.iter_errors(bad)), bad


def procfile_commands() -> dict[str, str]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, cmd = line.split(":", 1)
            out[name.strip()] = cmd.strip()
    return out


def test_start_command_is_the_same_everywhere_and_runs_python_directly():
    deploy = railway()["deploy"]
    assert procfile_commands() == {"worker": "python agent.py start"}
    assert deploy["startCommand"] == procfile_commands()["worker"]
    # Run directly, so Railway's SIGTERM reaches the worker (which then drains): no shell, no make.
    argv = shlex.split(deploy["startCommand"])
    assert argv[0] == "python" and argv[1:] == ["agent.py", "start"]
    assert not re.search(r"[;&|`$()]", deploy["startCommand"])


def test_deploy_settings_fit_the_worker():
    import agent

    deploy = railway()["deploy"]
    assert deploy["healthcheckPath"] == "/"  # the worker's health server, on $PORT
    assert deploy["numReplicas"] == 1  # booking serialisation is per machine (file locks in STATE_DIR)
    drain_default = agent.NUMERIC_VARS["DRAIN_TIMEOUT"][1]
    # Railway kills the old deployment drainingSeconds after SIGTERM; the worker waits up to
    # DRAIN_TIMEOUT for live calls, then settles the booking outbox (up to 10 s). Railway must wait
    # longer than both.
    settle = getattr(agent, "settle_outbox_at_shutdown", None)
    settle_s = inspect.signature(settle).parameters["timeout"].default if settle else 0
    needed = drain_default + settle_s + 5
    assert deploy["drainingSeconds"] >= needed, (deploy["drainingSeconds"], drain_default, settle_s)
    # a clean exit (the framework exits 0 after losing LiveKit for good) must restart too
    assert deploy["restartPolicyType"] == "ALWAYS"


def env_vars_read_by_code() -> set[str]:
    import agent

    names: set[str] = set(agent.NUMERIC_VARS)  # PORT has no underscore: take the table itself
    for rel in CODE_FILES:
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", node.value)):
                names.add(node.value)
    return names - NOT_ENV


def env_example_vars() -> list[str]:
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)


def test_env_example_lists_every_variable_the_code_reads():
    listed = env_example_vars()
    assert len(listed) == len(set(listed)), "a variable is listed twice"
    missing = env_vars_read_by_code() - set(listed)
    assert not missing, (f"add to .env.example and the README table: {sorted(missing)} "
                         "(or, if one is not an environment variable, to NOT_ENV in this test)")
    stale = set(listed) - env_vars_read_by_code() - FRAMEWORK_VARS
    assert not stale, f"listed in .env.example but read by nothing: {sorted(stale)}"


def test_env_example_has_no_secrets_and_every_variable_is_commented():
    text = (ROOT / ".env.example").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if not m:
            continue
        assert m.group(2) == "", f"{m.group(1)} has a value in .env.example"
        j = i - 1
        while j >= 0 and re.match(r"^[A-Z][A-Z0-9_]*=", lines[j]):  # a pair such as KEY/SECRET shares one
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"{m.group(1)} has no comment above it"


def readme_table_vars() -> set[str]:
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", text, re.M))


def test_readme_documents_every_variable():
    documented = readme_table_vars()
    assert set(env_example_vars()) <= documented, sorted(set(env_example_vars()) - documented)
    assert documented <= set(env_example_vars()), sorted(documented - set(env_example_vars()))


def readme_defaults() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*([^|]*?)\s*\|", text, re.M))


def _fmt(value: float | int) -> str:
    return f"{value:g}"


def test_readme_defaults_match_the_code():
    import agent
    import equipment

    documented = readme_defaults()
    expected = {name: f"`{_fmt(default)}`" for name, (_kind, default) in agent.NUMERIC_VARS.items()
                if default is not None}
    cfg = equipment.Config()
    expected.update({
        "EQUIPMENT_CACHE_TTL": f"`{_fmt(cfg.cache_ttl)}`",
        "EQUIPMENT_LOAD_TIMEOUT": f"`{_fmt(cfg.load_timeout)}`",
        "BOOKING_RETRY_BUDGET": f"`{_fmt(cfg.retry_budget)}`",
        "SHEETS_HTTP_TIMEOUT": f"`{_fmt(cfg.http_timeout[0])},{_fmt(cfg.http_timeout[1])}`",
        "EQUIPMENT_WORKSHEET": f"`{cfg.equipment_worksheet}`",
        "BOOKINGS_WORKSHEET": f"`{cfg.bookings_worksheet}`",
        "LIVEKIT_AGENT_NAME": f"`{agent.DEFAULT_AGENT_NAME}`",
    })
    wrong = {k: (documented.get(k), v) for k, v in expected.items() if documented.get(k) != v}
    assert not wrong, f"README default (documented, code): {wrong}"


def test_readme_quick_start_is_the_two_make_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:sh|bash|shell)?\n(.*?)```", quick, re.S)
    commands = [ln.strip() for b in blocks for ln in b.splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    assert commands == ["make dev", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^dev:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.parametrize("path", ["README.md", ".env.example", "railway.json", "telephony/dispatch-rule.json",
                                  "telephony/inbound-trunk.json"])
def test_no_secrets_committed(path):
    text = (ROOT / path).read_text()
    assert not re.search(r"sk-[A-Za-z0-9]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|API[a-zA-Z0-9]{12}\b", text)



# Log lines an operator watches (README "Operating it"): each fragment must be printed by the code
# (agent.py / equipment.py) and shown in the README, so the two cannot drift apart unnoticed.
LOG_FRAGMENTS = [
    "📞 INCOMING CALL - Entrypoint triggered",
    "Using cached equipment data (age: ",
    "Cache expired or empty - reloading equipment",
    "Equipment loaded successfully: ",
    "Equipment loading timed out - still serving the last good snapshot",
    "Equipment loading timed out - no equipment data on this machine yet",
    "✅ Agent session started - call in progress",
    "🔄 CALL ENDED - Cleaning up (session_started=",
    "📋 Call summary: ",
    "✅ Ready for next call",
    "❌ Room connection ",
    "❌ Agent session start ",
    "❌ Session closed with an error: ",
    "Equipment refresh failed: ",
    "Configuration problem, the agent was not started",
    "kept in the outbox; staff will confirm",
    "Outbox conflict: booking ",
]


def test_readme_log_lines_are_the_ones_the_code_prints():
    code = "".join((ROOT / f).read_text() for f in ("agent.py", "equipment.py"))
    readme = (ROOT / "README.md").read_text().split("## Operating it", 1)[1]
    not_in_code = [f for f in LOG_FRAGMENTS if f not in code]
    not_in_readme = [f for f in LOG_FRAGMENTS if f not in readme]
    assert not not_in_code, f"log lines the README documents but the code no longer prints: {not_in_code}"
    assert not not_in_readme, f"log lines missing from the README's 'Operating it': {not_in_readme}"
