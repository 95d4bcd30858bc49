"""The end-to-end tier: real livekit-server, livekit-sip, redis-server, a real `python agent.py start`
worker, provider stand-ins speaking the real wire protocols, and callers that speak and listen.

It runs only through `make test-e2e` (bash e2e/run-tests.sh), which builds the pinned servers once,
sets RENTAL_E2E=1 and runs pytest inside a network namespace of its own (e2e/netns.sh): nothing
can reach the internet, and no port collides with anything on the machine. Under plain
`make test` every test here is skipped, with that reason.

    E2E_CALLS=10 make test-e2e        calls per scenario (default 2; the issue asks for 10)
    make test-e2e E2E_ARGS='-k sip'   pass arguments to pytest

Each run keeps every process's log, sipp's traces and what each SIP caller heard (heard.wav) under
pytest's temporary folder (the path is printed at the end), and writes the timings to
e2e/results/e2e-timings.json (or $E2E_RESULTS) for the benchmark: INVITE -> 200 OK, answer ->
first agent audio, caller hang-up -> job ended, end of the caller's speech -> first reply audio.
Tests assert outcomes (greeted, job ended, room deleted, answered from the inventory), never times.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("RENTAL_E2E") == "1"
IN_NETNS = os.environ.get("E2E_NETNS") == "1"

AGENT_NAME = "equipment-rental-e2e"
SHOP_NUMBER = "+15551234567"


def calls_per_scenario() -> int:
    try:
        return max(1, int(os.environ.get("E2E_CALLS", "2")))
    except ValueError:
        return 2


def skip_reason() -> str | None:
    """Why the tier does not run here, or None. Each test module skips itself with it (one line
    in `make test`); the hook below is the safety net for a module that forgets."""
    if not ENABLED:
        return "end-to-end tier: run it with `make test-e2e` (real LiveKit server, SIP, worker)"
    if not IN_NETNS:
        return ("end-to-end tier outside its network namespace: run it through `make test-e2e` "
                "or `bash e2e/run-tests.sh` (loopback only, nothing can reach the internet)")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason:
        for it in items:
            if HERE in Path(str(it.fspath)).parents:
                it.add_marker(pytest.mark.skip(reason=reason))


# ------------------------------------------------------------------------------ the stack


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def stack(run_dir: Path) -> Iterator[Any]:
    from tests.e2e.audio import tools_missing
    from tests.e2e.stack import Stack, binaries

    missing = tools_missing() + [t for t in ("redis-server", "sipp") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools: {missing}; run `make e2e-tools`")
    bins = binaries()
    st = Stack(run_dir)
    st.binaries = bins  # type: ignore[attr-defined]
    try:
        st.start_redis()
        st.start_livekit(bins["LIVEKIT_SERVER_BIN"])
        st.start_sip(bins["LIVEKIT_SIP_BIN"])
        st.start_standin("openai", "tests.e2e.standins.openai_server")
        st.start_standin("deepgram", "tests.e2e.standins.deepgram_server")
        yield st
    finally:
        st.stop()
        print(f"\ne2e logs: {run_dir}")


class StandIn:
    """Control of a provider stand-in: its script and the requests it saw."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def script(self, **body: Any) -> None:
        self._call("/_e2e/script", body)

    def events(self, kind: str | None = None) -> list[dict]:
        evs = self._call("/_e2e/events")["events"]
        return [e for e in evs if kind is None or e["kind"] == kind]

    def reset(self) -> None:
        self._call("/_e2e/reset", {})

    def dump(self, path: Path) -> None:
        """The events so far, kept in the run's folder for reading after a failure."""
        path.write_text(json.dumps(self.events(), indent=1, default=str))


@pytest.fixture(scope="session")
def openai_standin(stack: Any) -> StandIn:
    return StandIn(stack.ports["openai"])


@pytest.fixture(scope="session")
def deepgram_standin(stack: Any) -> StandIn:
    return StandIn(stack.ports["deepgram"])


@pytest.fixture
def standins(openai_standin: StandIn, deepgram_standin: StandIn) -> Iterator[tuple[StandIn, StandIn]]:
    """Both stand-ins with an empty script and no events: a test scripts what it needs."""
    for s in (openai_standin, deepgram_standin):
        s.reset()
    openai_standin.script(rules=[], default="Sure, what can I help you with?")
    deepgram_standin.script(transcripts=[], default="Hello?")
    yield openai_standin, deepgram_standin


@pytest.fixture(scope="session")
def inventory_csv(run_dir: Path) -> Path:
    """The embedded inventory, copied for the run: equipment.csv and, beside it, the reservations
    (bookings are written there) and the shop's settings (hours, tax)."""
    from tests.e2e.stack import ROOT

    for name in ("equipment.csv", "reservations.csv", "settings.csv"):
        if (ROOT / "data" / name).exists():
            shutil.copyfile(ROOT / "data" / name, run_dir / name)
    return run_dir / "equipment.csv"


@pytest.fixture(scope="session")
def make_worker(stack: Any, run_dir: Path, inventory_csv: Path) -> Iterator[Any]:
    """make_worker(name, agent_name=..., **env) starts a real `python agent.py start`; every worker
    started is stopped (SIGTERM, then the whole process group) at the end of the session."""
    from tests.e2e.stack import Worker, worker_env

    started: list[Any] = []

    def make(name: str, agent_name: str = AGENT_NAME, state_name: str | None = None, **extra: str) -> Any:
        env = worker_env(stack, agent_name=agent_name, state_dir=run_dir / f"state-{state_name or name}",
                         csv_path=inventory_csv, openai_port=stack.ports["openai"],
                         deepgram_port=stack.ports["deepgram"], extra=extra)
        w = Worker(name, env, run_dir)
        started.append(w)
        return w

    yield make
    for w in started:
        try:
            w.stop(timeout=40)
        except Exception as e:  # the others must still be stopped
            print(f"could not stop {w.name}: {e!r}")


def wait_ready(worker: Any, timeout: float = 90.0) -> None:
    """Registered with the server, and its idle job processes started (a call placed before that
    waits for a process to be created: pickup then measures the machine, not the agent)."""
    worker.wait_registered(timeout)
    worker.wait_for(lambda ln: "process initialized" in ln.text, timeout, what="an idle process initialized")


@pytest.fixture(scope="session")
def worker(make_worker: Any) -> Any:
    w = make_worker("worker")
    wait_ready(w)
    return w


def setup_sip(stack: Any, *args: str) -> list[str]:
    """Our own `python -m telephony.setup_sip` against the real server's API, run twice (the
    second run must change nothing); the two outputs."""
    from tests.e2e.stack import PYTHON, ROOT

    env = {**os.environ, "LIVEKIT_URL": stack.livekit_url, "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret}
    outs = []
    for _ in range(2):
        out = subprocess.run([PYTHON, "-m", "telephony.setup_sip", *args],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"setup_sip failed:\n{out.stdout}\n{out.stderr}"
        outs.append(out.stdout)
    assert ": created" in outs[0], outs[0]
    assert outs[1].count(": unchanged") == 2, f"second run of setup_sip was not a no-op:\n{outs[1]}"
    return outs


@pytest.fixture(scope="session")
def sip_line(stack: Any, worker: Any) -> dict[str, str]:
    """The inbound trunk and dispatch rule, made by our own `python -m telephony.setup_sip`
    against the real server's API (run twice: the second run must change nothing)."""
    outs = setup_sip(stack, "--number", SHOP_NUMBER, "--agent-name", AGENT_NAME)
    return {"first": outs[0], "second": outs[1]}


CAPACITY_NUMBER = "+15559870000"
CAPACITY_AGENT = "equipment-rental-e2e-capacity"


@pytest.fixture(scope="session")
def capacity_line(stack: Any, sip_line: Any, make_worker: Any) -> Any:
    """A second phone line (trunk and rule of their own) to a worker with one call slot and one
    overflow slot (MAX_CONCURRENT_CALLS=1, MAX_OVERFLOW_CALLS=1): capacity is reached at the
    second call."""
    setup_sip(stack, "--number", CAPACITY_NUMBER, "--agent-name", CAPACITY_AGENT,
              "--trunk-name", "e2e capacity line", "--rule-name", "e2e capacity line: to the capacity agent")
    w = make_worker("capacity", agent_name=CAPACITY_AGENT, MAX_CONCURRENT_CALLS="1", MAX_OVERFLOW_CALLS="1")
    wait_ready(w)
    return w


@pytest.fixture(scope="session")
def sniffer() -> Iterator[Any]:
    from tests.e2e.sip_caller import RtpSniffer

    s = RtpSniffer()
    yield s
    s.close()


@pytest.fixture(scope="session")
def results(stack: Any) -> Iterator[Any]:
    from tests.e2e.timeline import Results

    r = Results()
    yield r
    bins = getattr(stack, "binaries", {})
    path = r.write({
        "calls_per_scenario": calls_per_scenario(),
        "servers": {k: Path(v).parent.name for k, v in bins.items()},
        "standins": {k: os.environ.get(k) for k in ("E2E_OPENAI_TTFT_MS", "E2E_DG_TTS_DELAY_MS",
                                                    "E2E_DG_MIN_ENDPOINT_MS") if os.environ.get(k)},
        "worker_env": os.environ.get("E2E_WORKER_ENV", ""),
    })
    print(f"\ne2e timings: {path}")


@pytest.fixture
def n_calls() -> int:
    return calls_per_scenario()
