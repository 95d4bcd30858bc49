"""worker.py: a real ``python agent.py start`` whose ``GET /`` says whether it is registered
with LiveKit, and whose exit status says when it gave up.

The worker starts with nothing listening at LIVEKIT_URL (503), the dispatch stand-in then starts
on that address (200 once registered), and goes away again (503 after DISCONNECT_TIMEOUT; exit
status 3 after REGISTER_TIMEOUT). A LiveKit that accepts connections and never answers gets the
same treatment as one that refuses them.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

import worker
from tests.fakes.dispatch_server import AgentProcess, DispatchServer, HangingListener, free_port
from tests.worker_proc import API_KEY, API_SECRET, STARTUP_TIMEOUT, base_env, http_get, tail, wait_for

ROOT = Path(__file__).resolve().parents[1]
AGENT_PY = ROOT / "agent.py"
DISCONNECT_TIMEOUT = 2.0
REGISTER_TIMEOUT = 20.0  # long enough for the framework's reconnect back-off to reach a late stand-in


def health(port: int) -> int | None:
    try:
        return http_get(f"http://127.0.0.1:{port}/", timeout=2)[0]
    except (urllib.error.URLError, OSError):
        return None  # not listening yet


def test_health_is_503_until_registered_200_while_registered_503_once_lost_then_exit_3(tmp_path: Path) -> None:
    lk_port = free_port()
    env = base_env(tmp_path, LIVEKIT_URL=f"ws://127.0.0.1:{lk_port}", DISCONNECT_TIMEOUT=str(DISCONNECT_TIMEOUT),
                   REGISTER_TIMEOUT=str(REGISTER_TIMEOUT), NUM_IDLE_PROCESSES="0")
    port = int(env["PORT"])
    with AgentProcess([str(AGENT_PY), "start"], env=env, cwd=str(ROOT), python=sys.executable,
                      log_path=tmp_path / "health.log") as proc:
        assert wait_for(lambda: health(port) is not None or proc.poll() is not None, STARTUP_TIMEOUT), tail(proc.log())
        assert health(port) == 503, "GET / before the worker has registered with LiveKit"

        server = DispatchServer(api_key=API_KEY, api_secret=API_SECRET, port=lk_port).start()
        try:
            server.wait_registered(REGISTER_TIMEOUT)
            assert wait_for(lambda: health(port) == 200, 5), tail(proc.log())
            time.sleep(DISCONNECT_TIMEOUT + 1)
            assert health(port) == 200, "a registered worker stays healthy"
        finally:
            server.close()
        lost = time.monotonic()
        assert wait_for(lambda: health(port) == 503, DISCONNECT_TIMEOUT + 5), tail(proc.log())
        assert time.monotonic() - lost >= DISCONNECT_TIMEOUT - 0.5, "503 only after DISCONNECT_TIMEOUT"

        rc = proc.wait(REGISTER_TIMEOUT + 30)
        log = proc.log()
    assert rc == worker.GAVE_UP, tail(log)
    assert "⚠️ Lost the connection to LiveKit; reconnecting" in log
    assert "❌ Giving up: no connection to LiveKit for 20s (REGISTER_TIMEOUT)" in log, tail(log)


@pytest.mark.parametrize("kind", ["refused", "hanging"])
def test_unreachable_livekit_exits_non_zero_within_register_timeout(kind: str, tmp_path: Path) -> None:
    with HangingListener() as hang:
        url = hang.url if kind == "hanging" else f"ws://127.0.0.1:{free_port()}"
        env = base_env(tmp_path, LIVEKIT_URL=url, REGISTER_TIMEOUT="4", NUM_IDLE_PROCESSES="0")
        port = int(env["PORT"])
        with AgentProcess([str(AGENT_PY), "start"], env=env, cwd=str(ROOT), python=sys.executable,
                          log_path=tmp_path / f"unreachable-{kind}.log") as proc:
            assert wait_for(lambda: health(port) is not None or proc.poll() is not None, STARTUP_TIMEOUT)
            assert health(port) == 503
            started = time.monotonic()
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 60 s after start:\n{tail(proc.log())}") from None
            log = proc.log()
    assert rc == worker.GAVE_UP, tail(log)
    assert time.monotonic() - started < 30
    assert "❌ Giving up: not registered with LiveKit within 4s (REGISTER_TIMEOUT)" in log, tail(log)
    if kind == "hanging":
        assert hang.accepted >= 1  # it really tried the listener that never answers


class _Stub(worker.TruthfulServer):
    def __init__(self) -> None:  # exit_code() only: no AgentServer behind it
        self.gave_up, self.run_error = None, None


def test_exit_code_turns_a_framework_give_up_into_a_failure() -> None:
    s = _Stub()
    assert s.exit_code(0) == 0 and s.exit_code(2) == 2
    s.run_error = RuntimeError("failed to connect to livekit after 16 attempts")
    assert s.exit_code(0) == worker.FAILED
    s.gave_up = "not registered"
    assert s.exit_code(0) == worker.GAVE_UP
