"""logs.py: no caller's number and no credential in any log line, ours or the framework's.

The end-to-end test drives real calls through a real worker (`tests/fakes/pii_agent.py`, which is
`agent.main` with a call that puts the number everywhere a call can) against the dispatch
stand-in, at DEBUG, in `start` (JSON) and `dev` (coloured), and greps every byte the worker
printed for the number in each form it was given.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from livekit.agents.cli.log import ColoredFormatter, JsonFormatter

import logs
import phone
from tests.fakes.dispatch_server import AgentProcess, DispatchServer, log_records, refusing_url
from tests.worker_proc import API_KEY, API_SECRET, STARTUP_TIMEOUT, base_env, tail

ROOT = Path(__file__).resolve().parents[1]
PII_AGENT = ROOT / "tests" / "fakes" / "pii_agent.py"
NUMBER = "+15551234567"
# the forms the number takes in the calls below, and the digits any of them would show
LEAKS = ("15551234567", "5551234567", "555-123-4567", "555 123 4567")
OPENAI_KEY = "sk-test-logs-Abc123Def456Ghi789"
SA_KEY_LINE = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7abcdefghijklmnop"


def record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("livekit.agents", logging.DEBUG, __file__, 1, msg, args or None,
                          (type(exc), exc, exc.__traceback__) if exc else None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def formatted(r: logging.LogRecord) -> list[str]:
    f = logs.RedactingFilter(logs.Redactor([OPENAI_KEY]))
    assert f.filter(r) is True  # a record is never dropped
    return [JsonFormatter().format(r), ColoredFormatter("%(message)s %(extra)s").format(r)]


def raised(text: str) -> BaseException:
    try:
        raise RuntimeError(text)
    except RuntimeError as e:
        return e


def test_every_part_of_a_record_is_masked_in_both_formats() -> None:
    r = record("received job request for %s", "call-_+15551234567_abc",
               exc=raised(f"failed for sip_{NUMBER} with key {OPENAI_KEY}"),
               room="call-_+15551234567_abc",
               **{"lk.pii.arguments": json.dumps({"contact_number": "555-123-4567", "renter_name": "Ann"}),
                  "sip": {"sip.phoneNumber": NUMBER, "nested": [{"identity": f"sip_{NUMBER}"}]},
                  "error": raised(f"no answer from {NUMBER}"), "count": 5551234567})
    r.stack_info = f"Stack (most recent call last):\n  caller {NUMBER}"
    for out in formatted(r):
        assert not any(leak in out for leak in LEAKS if leak != "5551234567" or "count" not in out), out
        assert "+1******4567" in out and "******4567" in out
        assert OPENAI_KEY not in out and logs.REDACTED in out
        assert "Ann" in out and "received job request" in out  # the rest stays readable


def test_numbers_in_an_int_field_stay_ints_and_ids_dates_and_addresses_stay_readable() -> None:
    r = record("job %s at %s from %s: %.3fs", "AJ_a1234567bc", "2030-01-12T10:00:00", "10.0.0.12", 1.2345678,
               pid=4194304, speech_id="speech_1234567abc", version="g5858035")
    json_out, _ = formatted(r)
    data = json.loads(json_out)
    assert data["message"] == "job AJ_a1234567bc at 2030-01-12T10:00:00 from 10.0.0.12: 1.235s"
    assert data["pid"] == 4194304 and data["speech_id"] == "speech_1234567abc" and data["version"] == "g5858035"


def test_a_record_whose_message_cannot_be_formatted_is_still_logged_masked() -> None:
    json_out, _ = formatted(record("%d calls from %s", "many", NUMBER))
    assert "+1******4567" in json_out and NUMBER not in json_out


def test_secret_values_come_from_the_environment_not_from_guesses() -> None:
    pem = f"-----BEGIN PRIVATE KEY-----\n{SA_KEY_LINE}\n-----END PRIVATE KEY-----\n"
    env = {"OPENAI_API_KEY": OPENAI_KEY, "LIVEKIT_API_SECRET": "short", "ELEVEN_API_KEY": "el-0123456789abcdef",
           "LIVEKIT_WORKER_TOKEN": "tok-0123456789", "RAILWAY_GIT_COMMIT_SHA": "a" * 40, "PATH": "/usr/bin:/bin",
           "GOOGLE_SERVICE_ACCOUNT_JSON": json.dumps({"client_email": "a@b.iam.gserviceaccount.com",
                                                      "private_key": pem})}
    found = logs.secret_values(env)
    assert OPENAI_KEY in found and "el-0123456789abcdef" in found and "tok-0123456789" in found
    assert "short" not in found and "a" * 40 not in found and "/usr/bin:/bin" not in found
    r = logs.Redactor(found)
    text = r.text(f"key={OPENAI_KEY} pem={pem!r} line {SA_KEY_LINE} db=postgresql://shop:hunter2pass@db:5432/x")
    assert OPENAI_KEY not in text and SA_KEY_LINE not in text and "hunter2pass" not in text
    assert "postgresql://shop:[redacted]@db:5432/x" in text


def test_install_puts_the_filter_last_on_every_root_handler_once() -> None:
    root = logging.getLogger("test-logs-install")
    first, second = logging.StreamHandler(), logging.StreamHandler()
    other = logging.Filter("other")
    first.addFilter(other)
    root.addHandler(first)
    root.addHandler(second)
    try:
        logs.install(root)
        second.addFilter(other)  # a filter added later (the job context's log fields in console)
        logs.install(root)
        assert first.filters == [other, logs.redacting_filter()]
        assert second.filters == [other, logs.redacting_filter()]
    finally:
        root.removeHandler(first)
        root.removeHandler(second)


def test_mask_text_is_the_one_rule() -> None:
    r = logs.Redactor()
    for text in ("call-_+15551234567_abc", "sip_+15551234567", "my number is 555 123 4567"):
        assert r.text(text) == phone.mask_text(text)


# ------------------------------------------------------------------------------------------ a real worker


@pytest.mark.parametrize("mode", ["start", "dev"])
def test_a_real_call_at_debug_prints_no_number_and_no_key(mode: str, tmp_path: Path) -> None:
    csv = tmp_path / "equipment.csv"
    shutil.copy(ROOT / "data" / "equipment.csv", csv)  # the conversation books a unit: a copy
    with DispatchServer(api_key=API_KEY, api_secret=API_SECRET) as server:
        env = base_env(tmp_path, LIVEKIT_URL=server.url, LIVEKIT_LOG_LEVEL="DEBUG", EQUIPMENT_CSV=str(csv),
                       OPENAI_API_KEY=OPENAI_KEY, NUM_IDLE_PROCESSES="1")
        with AgentProcess([str(PII_AGENT), mode], env=env, cwd=str(ROOT), python=sys.executable,
                          log_path=tmp_path / f"pii-{mode}.log") as proc:
            server.wait_registered(STARTUP_TIMEOUT)
            server.wait_worker_available(STARTUP_TIMEOUT)
            # agent.py's own entrypoint in a room named after the caller (no media server: it ends
            # at the room connection), then the booking conversation
            for room, metadata in (("call-_+15551234567_abc", ""), ("call-_+15551234567_talk", "conversation")):
                job = server.wait_job_end(server.dispatch(room, url=refusing_url(), metadata=metadata), 60)
                assert job.end_status == "JS_SUCCESS", tail(proc.log())
            time.sleep(1.0)  # the job processes' last records travel to the worker
            proc.signal()
            assert proc.wait(30) == 0, tail(proc.log())
            out = proc.log()

    leaked = [line[:300] for line in out.splitlines() if any(leak in line for leak in LEAKS)]
    assert not leaked, "\n".join(leaked)
    assert OPENAI_KEY not in out and "a bug that logs a key: [redacted]" in out
    # the number was really there to leak: the framework's tool record, the caller line, the room
    for seen in ("executing tool", "lk.pii.arguments", "👤 Caller +1******4567", "call-_+1******4567_abc",
                 "sip_+1******4567", "a failure that names the caller +1******4567"):
        assert seen in out, (seen, tail(out))
    assert out.count("🚀 Worker starting: version=") == 1
    if mode == "start":
        records = log_records(out)
        assert records and all(r.get("level") for r in records)  # JSON lines only: nothing printed raw
        raw = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("{")]
        assert not raw, raw[:5]
        for room in ("call-_+1******4567_abc", "call-_+1******4567_talk"):
            info = [r["message"] for r in records if r.get("room") == room and r["level"] == "INFO"]
            assert 3 <= len(info) <= 30, info  # a call's INFO lines stay few enough to read
            assert sum("Using cached equipment data" in m for m in info) <= 1, info
        assert not re.search(r"failed to parse NUM_CPUS", out)
