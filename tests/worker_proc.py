"""A real ``python agent.py start`` (or another script) registered with the dispatch stand-in
(tests/fakes/dispatch_server.py): the environment it runs with, and the helpers the worker, health,
logs, capacity and redeploy tests share."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.fakes.dispatch_server import AgentProcess, DispatchServer, HangingListener, free_port

ROOT = Path(__file__).resolve().parents[1]
AGENT_PY = ROOT / "agent.py"
RAISING_AGENT_PY = ROOT / "tests" / "fakes" / "raising_agent.py"
PYTHON = sys.executable

API_KEY = "devkey-worker-test"
API_SECRET = "worker-test-secret-0123456789abcdef0123456789"  # >= 32 bytes: no PyJWT warning
CONNECT_TIMEOUT = 1.5  # ROOM_CONNECT_TIMEOUT given to the agent
END_MARGIN = 8.0  # job end must arrive within CONNECT_TIMEOUT + END_MARGIN after assignment
STARTUP_TIMEOUT = 90.0  # import + register + first idle process, on a loaded 2-core machine
SIGTERM_EXIT_TIMEOUT = 15.0  # an idle worker should exit in well under this
N_DEAD_ROOM_JOBS = 12

# Variables that must not leak from the developer's shell into the worker under test. agent.py
# calls load_dotenv(), which fills in only variables absent from the environment: the app's own
# variables are therefore set to "" (agent.py treats empty as unset) so a developer's .env cannot
# point the test worker at a real sheet, project or phone number. Other inherited LIVEKIT_* /
# provider variables are dropped.
_STRIP_PREFIXES = ("LIVEKIT_", "GOOGLE_", "OPENAI_", "DEEPGRAM_", "ELEVEN", "CARTESIA_")
_BLANK = (
    "LIVEKIT_AGENT_NAME", "LIVEKIT_AGENT_NAME_OVERRIDE", "LIVEKIT_WORKER_TOKEN",
    "GOOGLE_SHEET_ID", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_SERVICE_ACCOUNT_FILE", "GOOGLE_CREDENTIALS_JSON",
    "TRANSFER_PHONE_NUMBER", "BUSINESS_NAME", "LLM_MODEL", "TTS_PROVIDER", "SHOP_TIMEZONE",
    "DRAIN_TIMEOUT", "NUM_IDLE_PROCESSES", "SESSION_START_TIMEOUT", "MAX_CALL_SECONDS",
    "USER_AWAY_SECONDS", "BOOKING_TIMEOUT", "EQUIPMENT_LOAD_TIMEOUT",
)

def base_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """The environment of a worker under test: dummy credentials, no Google Sheet, temp state.

    An override of ``None`` unsets the variable (as "", so a .env cannot fill it in).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES)}
    env.update(dict.fromkeys(_BLANK, ""))
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    env.update(
        LIVEKIT_URL="ws://127.0.0.1:9",  # replaced by the stand-in's URL where one runs
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        OPENAI_API_KEY="sk-test-dummy-not-a-real-key",
        DEEPGRAM_API_KEY="dg-test-dummy-not-a-real-key",
        ROOM_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        STATE_DIR=str(state_dir),
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    for k, v in overrides.items():
        env[k] = "" if v is None else v
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - localhost only
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def active_jobs(port: int) -> int:
    """``active_jobs`` from the worker's ``GET /worker`` (protobuf JSON omits zero values)."""
    return int(json.loads(http_get(f"http://127.0.0.1:{port}/worker")[1]).get("active_jobs", 0))


def wait_for(pred, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


class RunningWorker:
    """A worker process registered with a DispatchServer, with a HangingListener to point rooms at."""

    def __init__(self, server: DispatchServer, hang: HangingListener, proc: AgentProcess,
                 env: dict[str, str]) -> None:
        self.server = server
        self.hang = hang
        self.proc = proc
        self.env = env
        self.port = int(env["PORT"])

    def diagnostics(self) -> str:
        return (f"\n--- stand-in ---\n{json.dumps(self.server.summary(), indent=1, default=str)}"
                f"\n--- worker log (tail) ---\n{tail(self.proc.log())}")

    def wait_ready(self) -> None:
        """Registered, and at least one idle job process initialised (so job timings measure
        the job, not the pool's cold start)."""
        try:
            self.server.wait_registered(STARTUP_TIMEOUT)
        except TimeoutError as e:
            raise AssertionError(f"{e} (exit={self.proc.poll()}){self.diagnostics()}") from None
        ok = wait_for(lambda: "process initialized" in self.proc.log() or self.proc.poll() is not None,
                      STARTUP_TIMEOUT)
        assert ok and self.proc.poll() is None, f"no idle job process became ready{self.diagnostics()}"
        # a 1.8.9 worker reports WS_FULL while CPU > 70 % (start-up on 2 cores): let it settle
        self.server.wait_worker_available(STARTUP_TIMEOUT)


def start_worker(script: Path, tmp_path: Path, log_name: str, **overrides: str
                  ) -> Iterator[RunningWorker]:
    with DispatchServer(api_key=API_KEY, api_secret=API_SECRET) as server, HangingListener() as hang:
        env = base_env(tmp_path, LIVEKIT_URL=server.url, **overrides)
        with AgentProcess([str(script), "start"], env=env, cwd=str(ROOT), python=PYTHON,
                          log_path=tmp_path / log_name) as proc:
            worker = RunningWorker(server, hang, proc, env)
            worker.wait_ready()
            yield worker
            # AgentProcess.__exit__ SIGKILLs the whole process group, pass or fail
