"""The deploy files and the docs agree with the code: railway.json is valid for Railway and drains
long enough, the Procfile and railway.json start the same command, every environment variable the
code reads is in .env.example and in docs/configuration.md, and every log line the docs quote is one
the code (ours or livekit-agents') prints."""

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

# Every product module: the top-level files, the inventory package and the SIP setup.
CODE_FILES = sorted(str(p.relative_to(ROOT)) for pattern in ("*.py", "inventory/*.py", "telephony/*.py")
                    for p in ROOT.glob(pattern))
# UPPER_SNAKE string literals in those files that are not environment variables.
NOT_ENV = {"INSERT_ROWS", "USER_ENTERED", "KNOWN_STATUSES", "MAX_NAME", "FORMATTED_VALUE"}
# Read by livekit-agents itself, documented for operators.
FRAMEWORK_VARS = {"LIVEKIT_LOG_LEVEL", "NUM_CPUS"}
# Set by the platform, documented in docs/configuration.md, never in .env.example (an empty copy
# pasted into Railway's Variables must not shadow Railway's own).
PLATFORM_VARS = {"RAILWAY_GIT_COMMIT_SHA", "RAILWAY_DEPLOYMENT_ID", "RAILWAY_VOLUME_MOUNT_PATH"}
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


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
    import worker
    import settings

    deploy = railway()["deploy"]
    assert deploy["healthcheckPath"] == "/"  # the worker's health server, on $PORT
    # zero-downtime redeploys (with DATABASE_URL): the new deployment is Active once GET / says it
    # registered with LiveKit, and the old one keeps taking calls until then, and a while after
    assert deploy["overlapSeconds"] >= 15 and deploy["numReplicas"] >= 1
    drain_default = settings.NUMBERS["DRAIN_TIMEOUT"].default
    # Railway kills the old deployment drainingSeconds after SIGTERM; the worker waits up to
    # DRAIN_TIMEOUT for live calls, then settles the booking outbox (up to 10 s). Railway must wait
    # longer than both.
    settle_s = inspect.signature(worker.settle_outbox_at_shutdown).parameters["timeout"].default
    needed = drain_default + settle_s + 5
    assert deploy["drainingSeconds"] >= needed, (deploy["drainingSeconds"], drain_default, settle_s)
    # a clean exit (the framework exits 0 after losing LiveKit for good) must restart too
    assert deploy["restartPolicyType"] == "ALWAYS"



def parse_source(text: str) -> ast.Module:
    # CPython 3.11 before 3.11.8 shares ast.parse's recursion counter between threads (gh-106905):
    # a thread left running by an earlier test can make one parse fail with a spurious SystemError.
    for _ in range(4):
        try:
            return ast.parse(text)
        except SystemError:
            continue
    return ast.parse(text)


def env_vars_read_by_code() -> set[str]:
    import settings

    names: set[str] = set(settings.NUMBERS)  # PORT has no underscore: take the table itself
    for rel in CODE_FILES:
        tree = parse_source((ROOT / rel).read_text())
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
    missing = env_vars_read_by_code() - set(listed) - PLATFORM_VARS
    assert not missing, (f"add to .env.example and docs/configuration.md: {sorted(missing)} "
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


def documented_vars() -> set[str]:
    text = CONFIGURATION.read_text()
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", text, re.M))


def test_the_configuration_reference_documents_every_variable():
    documented = documented_vars()
    expected = set(env_example_vars()) | PLATFORM_VARS
    assert expected <= documented, sorted(expected - documented)
    assert documented <= expected, sorted(documented - expected)


def readme_defaults() -> dict[str, str]:
    text = CONFIGURATION.read_text()
    return dict(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*([^|]*?)\s*\|", text, re.M))


def _fmt(value: float | int) -> str:
    return f"{value:g}"


def test_documented_defaults_match_the_code():
    import settings

    documented = readme_defaults()
    expected = {name: f"`{_fmt(spec.default)}`" for name, spec in settings.NUMBERS.items()
                if spec.default is not None}
    cfg = settings.InventorySettings()
    expected.update({
        "EQUIPMENT_CACHE_TTL": f"`{_fmt(cfg.cache_ttl)}`",
        "EQUIPMENT_LOAD_TIMEOUT": f"`{_fmt(cfg.load_timeout)}`",
        "BOOKING_RETRY_BUDGET": f"`{_fmt(cfg.retry_budget)}`",
        "SHEETS_HTTP_TIMEOUT": f"`{_fmt(cfg.http_timeout[0])},{_fmt(cfg.http_timeout[1])}`",
        "EQUIPMENT_WORKSHEET": f"`{cfg.equipment_worksheet}`",
        "BOOKINGS_WORKSHEET": f"`{cfg.bookings_worksheet}`",
        "LIVEKIT_AGENT_NAME": f"`{settings.DEFAULT_AGENT_NAME}`",
    })
    wrong = {k: (documented.get(k), v) for k, v in expected.items() if documented.get(k) != v}
    assert not wrong, f"docs/configuration.md default (documented, code): {wrong}"


def test_readme_is_short_and_starts_with_the_two_make_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    assert len(text.encode()) <= 8 * 1024, "the README is an entry point: details go in docs/"
    assert text.index("## Commands") < 1500, "the commands come first, right after what it is"
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:sh|bash|shell)?\n(.*?)```", section, re.S)
    commands = [ln.split("#", 1)[0].strip() for b in blocks for ln in b.splitlines()
                if ln.split("#", 1)[0].strip()]
    # the end-to-end suite's target may sit beside them
    assert commands[:2] == ["make dev", "make test"] and set(commands[2:]) <= {"make test-e2e"}, commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^dev:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.parametrize("path", ["README.md", ".env.example", "railway.json", "telephony/dispatch-rule.json",
                                  "telephony/inbound-trunk.json",
                                  *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))])
def test_no_secrets_committed(path):
    text = (ROOT / path).read_text()
    assert not re.search(r"sk-[A-Za-z0-9]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|API[a-zA-Z0-9]{12}\b", text)



def test_readme_links_every_docs_page_and_every_link_resolves():
    readme = README.read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README does not link {page.name}"
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name} links {target}, which does not exist"


# Log lines an operator watches (docs/operations.md): each must be printed by the code and shown in
# the docs, so the two cannot drift apart unnoticed.
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
    "kept in the outbox, staff will confirm",
    "Outbox conflict: booking ",
    "🚀 Worker starting: ",
    "❌ Giving up: ",
    "⚠️ Lost the connection to LiveKit; reconnecting",
]
WILD = "\x00"  # a part of a line that varies


def _skeleton(node: ast.AST) -> str | None:
    """A string the code builds, with WILD where a value goes: f-string fields, %-placeholders."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        text = "".join(v.value if isinstance(v, ast.Constant) else WILD for v in node.values)
    else:
        return None
    return re.sub(r"%(?:\([^)]*\))?[-+ #0]*\d*(?:\.\d+)?[sdrifg]", WILD, text)


def _skeletons(files: list[Path]) -> list[str]:
    out = set()
    for f in files:
        try:
            tree = parse_source(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        out.update(s for node in ast.walk(tree) if (s := _skeleton(node)) and len(s) >= 6)
    return sorted(out)


def _could_match(a: str, b: str) -> bool:
    """Whether two lines with WILD parts (each matching any text) can be the same line."""
    import functools

    @functools.lru_cache(maxsize=None)
    def m(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == WILD and (m(i + 1, j) or (j < len(b) and m(i, j + 1))):
            return True
        if j < len(b) and b[j] == WILD and (m(i, j + 1) or (i < len(a) and m(i + 1, j))):
            return True
        return i < len(a) and j < len(b) and a[i] == b[j] and a[i] != WILD and m(i + 1, j + 1)

    return m(0, 0)


def quoted_log_lines() -> list[tuple[str, str, bool]]:
    """(doc, line, from the framework) for every line in the first column of a docs table whose
    header is "Line": the log guide; "(framework)" right after a line marks one of livekit-agents'. In a quoted line, "..." stands for the part that varies, and
    example values (12.3s, R7K3QX, +1******4567) are matched by the code's own placeholders."""
    found = []
    for doc in DOCS:
        header = False
        for row in doc.read_text().splitlines():
            if not row.startswith("|"):
                header = False
                continue
            first = row.split("|")[1].strip()
            if first in ("Line", "Log line"):
                header = True
                continue
            if header and not first.startswith("---"):
                for m in re.finditer(r"`([^`]+)`(\s*\(framework\))?", first):
                    found.append((doc.name, m.group(1), bool(m.group(2))))
    return found


def test_every_log_line_the_docs_quote_is_printed_by_the_code():
    import livekit.agents

    lines = [(doc, re.sub(r"\.\.\.|…", WILD, line), line, fw) for doc, line, fw in quoted_log_lines()]
    assert len(lines) >= 40, "the log guide's tables were not found"
    ours = _skeletons([ROOT / f for f in CODE_FILES])
    # livekit-agents' own lines: only its files that contain the start of one of them
    heads = {pattern.split(WILD, 1)[0][:16] for _, pattern, _, fw in lines if fw}
    sources = [f for f in sorted(Path(livekit.agents.__file__).parent.rglob("*.py"))
               if any(h in f.read_text(encoding="utf-8", errors="replace") for h in heads)]
    framework = _skeletons(sources)
    missing = [f"{doc}: {line}" for doc, pattern, line, fw in lines
               if not any(_could_match(pattern, s) for s in (framework if fw else ours) if _ends_agree(pattern, s))]
    assert not missing, "log lines the docs quote but the code does not print:\n" + "\n".join(missing)


def _ends_agree(pattern: str, skeleton: str) -> bool:
    """Cheap necessary condition for a match: the literal text before the first WILD of each agrees
    (one starts the other), and likewise the literal text after the last WILD."""
    def agree(a: str, b: str) -> bool:
        return a.startswith(b) or b.startswith(a)

    if not agree(pattern.split(WILD, 1)[0], skeleton.split(WILD, 1)[0]):
        return False
    return agree(pattern.rsplit(WILD, 1)[-1][::-1], skeleton.rsplit(WILD, 1)[-1][::-1])


def test_the_log_lines_operators_watch_are_in_the_code_and_the_log_guide():
    code = "".join((ROOT / f).read_text() for f in CODE_FILES)
    guide = (ROOT / "docs" / "operations.md").read_text()
    not_in_code = [f for f in LOG_FRAGMENTS if f not in code]
    not_in_guide = [f for f in LOG_FRAGMENTS if f not in guide]
    assert not not_in_code, f"log lines the docs document but the code no longer prints: {not_in_code}"
    assert not not_in_guide, f"log lines missing from docs/operations.md: {not_in_guide}"
