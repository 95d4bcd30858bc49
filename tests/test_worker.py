"""Worker lifecycle: a real ``python agent.py start`` driven through LiveKit's dispatch protocol.

The worker connects to tests/fakes/dispatch_server.py (a local stand-in for LiveKit's ``/agent``
websocket). Every assertion about jobs comes from the protocol's own messages: the worker's
availability answer (accepted) and its ``update_job`` status (ended). Room URLs point at a port
that refuses or at a listener that accepts and never answers, so the agent's room-connect timeout
and job clean-up run without a media server.

Bounds here are generous on purpose (2-core CI machine shared with other runs); tight latency
numbers belong to bench/. The timings measured here are printed with ``-s``:

    .venv/bin/python -m pytest tests/test_worker.py -k dead_rooms -s
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.dispatch_server import AgentProcess, DispatchError, DispatchServer, log_records, refusing_url
from tests.worker_proc import (
    AGENT_PY,
    API_KEY,
    API_SECRET,
    CONNECT_TIMEOUT,
    END_MARGIN,
    N_DEAD_ROOM_JOBS,
    PYTHON,
    RAISING_AGENT_PY,
    ROOT,
    SIGTERM_EXIT_TIMEOUT,
    STARTUP_TIMEOUT,
    RunningWorker,
    active_jobs,
    base_env,
    http_get,
    start_worker,
    tail,
    wait_for,
)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    """``python agent.py start`` against the stand-in; shared by the tests below, in file order.
    The framework's own variables are set empty, as a copied .env.example leaves them."""
    yield from start_worker(AGENT_PY, tmp_path_factory.mktemp("worker"), "agent.log",
                             NUM_CPUS="", LIVEKIT_LOG_LEVEL="")


# --------------------------------------------------------------------------- registration, health


def test_worker_registers_and_serves_health(worker: RunningWorker) -> None:
    reg = worker.server.registrations[0]
    assert reg.agent_name == "equipment-rental", "LIVEKIT_AGENT_NAME default"
    assert reg.job_type == "JT_ROOM"
    assert worker.server.rejected_connections == [], "the worker must authenticate with a JWT"

    status, body = http_get(f"http://127.0.0.1:{worker.port}/")
    assert status == 200 and body == "OK", f"health on PORT={worker.port}: {status} {body!r}"
    status, body = http_get(f"http://127.0.0.1:{worker.port}/worker")
    assert status == 200
    info = json.loads(body)
    assert info["agent_name"] == "equipment-rental"

    # the provider plugins are preloaded in the forkserver, so no call imports them at pickup
    preload = [r for r in log_records(worker.proc.log()) if r.get("message") == "preloading plugins"]
    assert preload, worker.diagnostics()
    missing = {"livekit.plugins.deepgram", "livekit.plugins.openai", "livekit.plugins.silero"} \
        - set(preload[0].get("packages", []))
    assert not missing, f"not preloaded for job processes: {missing}"

    # empty means the default for the framework's variables too: nothing printed outside the JSON
    log = worker.proc.log()
    assert "failed to parse" not in log, worker.diagnostics()
    assert [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("{")] == [], worker.diagnostics()
    # one start-up line says what runs
    [startup] = [r["message"] for r in log_records(log) if r.get("message", "").startswith("🚀 Worker starting:")]
    for part in ("version=", "agent=equipment-rental", "inventory=CSV ", "state=", "llm=gpt-4o", "stt=deepgram/",
                 "tts=deepgram>openai", "capacity=10 calls"):
        assert part in startup, (part, startup)


# --------------------------------------------------------------------------- dead rooms


def test_dead_rooms_every_job_accepted_and_ended_worker_stays_registered(
    worker: RunningWorker,
) -> None:
    server, hang = worker.server, worker.hang
    kinds = ["refused" if i % 2 == 0 else "hanging" for i in range(N_DEAD_ROOM_JOBS)]
    hang_before = hang.accepted
    jobs = []
    for i, kind in enumerate(kinds):
        url = refusing_url() if kind == "refused" else hang.url
        job_id = server.dispatch(f"dead-{kind}-{i}", url=url)
        try:
            job = server.wait_job_end(job_id, CONNECT_TIMEOUT + END_MARGIN + 2)
        except TimeoutError as e:
            raise AssertionError(f"job {i} ({kind}) never ended: {e}{worker.diagnostics()}") from None
        jobs.append((kind, job))

    problems = []
    for kind, job in jobs:
        if not job.available:
            problems.append(f"{job.room_name}: not accepted")
        if job.run_time is None or job.run_time > CONNECT_TIMEOUT + END_MARGIN:
            problems.append(f"{job.room_name}: ended after {job.run_time:.2f}s")
        if job.end_status != "JS_SUCCESS":
            problems.append(f"{job.room_name}: ended {job.end_status} {job.end_error!r}")
        if [s for _, s, _ in job.statuses][:1] != ["JS_RUNNING"]:
            problems.append(f"{job.room_name}: statuses {[s for _, s, _ in job.statuses]}")
        if kind == "hanging" and job.run_time is not None and job.run_time < CONNECT_TIMEOUT * 0.8:
            problems.append(f"{job.room_name}: a hanging room ended after only {job.run_time:.2f}s")
    assert not problems, "\n".join(problems) + worker.diagnostics()

    # the hanging jobs really connected to the hanging listener
    assert hang.accepted - hang_before >= kinds.count("hanging"), worker.diagnostics()
    # the worker stayed registered on its one connection the whole time
    assert server.connection_count == 1, worker.diagnostics()
    assert len(server.registrations) == 1, worker.diagnostics()
    assert server.registered and server.disconnects == [], worker.diagnostics()
    # and no job is left running in it
    assert wait_for(lambda: active_jobs(worker.port) == 0, 10), worker.diagnostics()

    # the agent's own account, per job: the pickup line, one ❌ line, then the clean-up with its
    # summary line, ending in "Ready"
    records = log_records(worker.proc.log())
    for _, job in jobs:
        msgs = [r.get("message", "") for r in records if r.get("room") == job.room_name]
        assert msgs.count("📞 INCOMING CALL - Entrypoint triggered") == 1, f"{job.room_name}: {msgs}"
        errors = [m for m in msgs if "❌" in m]
        assert len(errors) == 1, f"{job.room_name}: expected one ❌ line, got {errors}"
        summaries = [m for m in msgs if m.startswith("📋 Call summary:")]
        assert len(summaries) == 1, f"{job.room_name}: expected one summary line, got {msgs}"
        for part in ("duration=", "reason=room connect failed", "turns=0/0", "bookings=-",
                     "median_latency=n/a", "usage=-"):
            assert part in summaries[0], f"{job.room_name}: {part!r} not in {summaries[0]!r}"
        assert "✅ Ready for next call" in msgs, f"{job.room_name}: {msgs}"
        assert (msgs.index("📞 INCOMING CALL - Entrypoint triggered") < msgs.index(errors[0])
                < msgs.index(summaries[0]) < msgs.index("✅ Ready for next call")), msgs

    _report_timings(jobs)


def _report_timings(jobs: list) -> None:
    lines = [f"worker timings over {len(jobs)} jobs (ROOM_CONNECT_TIMEOUT={CONNECT_TIMEOUT}s), "
             "from the stand-in's view:"]
    for kind in ("refused", "hanging"):
        sel = [j for k, j in jobs if k == kind]
        acc = [j.accept_latency * 1000 for j in sel]
        disp = [j.dispatch_latency * 1000 for j in sel]
        run = [j.run_time for j in sel]
        lines.append(
            f"  {kind:8s} n={len(sel)}  availability request->accepted median {statistics.median(acc):.1f} ms "
            f"(max {max(acc):.1f}; first request->accepted median {statistics.median(disp):.1f}, "
            f"max {max(disp):.1f}, refusals {sum(j.rejections for j in sel)})  "
            f"assignment->job end median {statistics.median(run):.2f} s (max {max(run):.2f})"
        )
    print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- SIGTERM


def test_idle_worker_exits_promptly_on_sigterm(worker: RunningWorker) -> None:
    proc = worker.proc
    assert proc.poll() is None, worker.diagnostics()
    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    try:
        rc = proc.wait(SIGTERM_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"idle worker still running {SIGTERM_EXIT_TIMEOUT}s after SIGTERM{worker.diagnostics()}"
        ) from None
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit status {rc} after SIGTERM{worker.diagnostics()}"
    print(f"\nidle worker exited {elapsed:.2f}s after SIGTERM")
    # main() settled the booking outbox on the way out (nothing was pending here)
    assert "📤 Outbox at worker exit: 0 settled" in proc.log(), worker.diagnostics()
    # its job processes and forkserver go with it
    assert wait_for(lambda: not proc.group_alive(), 10), f"children outlived the worker{worker.diagnostics()}"
    assert worker.server.wait_disconnected(5)


# --------------------------------------------------------------------------- entrypoint raises


@pytest.fixture
def raising_worker(tmp_path: Path) -> Iterator[RunningWorker]:
    """agent.py's server run by tests/fakes/raising_agent.py: rooms named raise-* make the
    entrypoint raise; every other room runs agent.py's real entrypoint."""
    yield from start_worker(RAISING_AGENT_PY, tmp_path, "raising-agent.log")


def test_job_whose_entrypoint_raises_ends_and_worker_takes_next_job(
    raising_worker: RunningWorker,
) -> None:
    w = raising_worker
    server = w.server
    crash_id = server.dispatch("raise-1", url=w.hang.url)
    try:
        crashed = server.wait_job_end(crash_id, CONNECT_TIMEOUT + END_MARGIN + 2)
    except TimeoutError as e:
        raise AssertionError(f"the raising job never ended: {e}{w.diagnostics()}") from None
    assert crashed.available
    assert crashed.end_status in ("JS_SUCCESS", "JS_FAILED"), w.diagnostics()
    assert crashed.run_time is not None and crashed.run_time < END_MARGIN, w.diagnostics()
    log = w.proc.log()
    assert "entrypoint raised on purpose" in log, "the wrapper's exception was not logged" + w.diagnostics()

    for i, url in enumerate((refusing_url(), w.hang.url)):
        job_id = server.dispatch(f"after-raise-{i}", url=url)
        job = server.wait_job_end(job_id, CONNECT_TIMEOUT + END_MARGIN + 2)
        assert job.available and job.end_status == "JS_SUCCESS", w.diagnostics()
        assert job.run_time is not None and job.run_time < CONNECT_TIMEOUT + END_MARGIN, w.diagnostics()

    assert server.connection_count == 1 and len(server.registrations) == 1, w.diagnostics()
    assert server.registered, w.diagnostics()
    print(f"\nraising job ended {crashed.end_status} after {crashed.run_time:.2f}s")


# --------------------------------------------------------------------------- capacity


def test_capacity_is_counted_in_calls_not_cpu(tmp_path: Path) -> None:
    """MAX_CONCURRENT_CALLS decides when the worker says it is full (the framework's default is
    the machine's CPU, which turns callers away whenever a small box is briefly busy)."""
    gen = start_worker(AGENT_PY, tmp_path, "capacity.log",  # no overflow slot: tests/test_worker_capacity.py
                        MAX_CONCURRENT_CALLS="1", MAX_OVERFLOW_CALLS="0", ROOM_CONNECT_TIMEOUT="6")
    w = next(gen)
    try:
        server = w.server
        busy = server.dispatch("busy-1", url=w.hang.url)  # holds the only slot for ~6 s
        assert wait_for(lambda: server.worker_status == "WS_FULL", 5), (
            "one call in progress with MAX_CONCURRENT_CALLS=1: the worker should report full"
            + w.diagnostics())
        with pytest.raises(DispatchError):
            server.dispatch("busy-2", url=refusing_url(), accept_timeout=1.5)
        server.wait_job_end(busy, 6 + END_MARGIN + 2)
        assert server.wait_worker_available(10), "the slot came back when the call ended" + w.diagnostics()
        after = server.wait_job_end(server.dispatch("after-busy", url=refusing_url()), END_MARGIN)
        assert after.available and after.end_status == "JS_SUCCESS", w.diagnostics()
    finally:
        gen.close()


# --------------------------------------------------------------------------- configuration


def _run_to_exit(mode: str, env: dict[str, str], tmp_path: Path, timeout: float = 60.0
                 ) -> tuple[int, str]:
    with AgentProcess([str(AGENT_PY), mode], env=env, cwd=str(ROOT), python=PYTHON,
                      log_path=tmp_path / f"config-{mode}.log") as proc:
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`agent.py {mode}` with bad configuration still running after {timeout}s:\n"
                f"{tail(proc.log())}"
            ) from None
        return rc, proc.log()


@pytest.mark.parametrize(
    ("mode", "overrides", "named"),
    [
        ("start", {"LIVEKIT_URL": None}, ["LIVEKIT_URL"]),
        ("dev", {"LIVEKIT_URL": None}, ["LIVEKIT_URL"]),
        ("start", {"ROOM_CONNECT_TIMEOUT": "soon"}, ["ROOM_CONNECT_TIMEOUT"]),
        ("dev", {"ROOM_CONNECT_TIMEOUT": "soon"}, ["ROOM_CONNECT_TIMEOUT"]),
        # every bad variable in one message
        ("start", {"LIVEKIT_API_SECRET": None, "ROOM_CONNECT_TIMEOUT": "-3"},
         ["LIVEKIT_API_SECRET", "ROOM_CONNECT_TIMEOUT"]),
    ],
    ids=["start-no-url", "dev-no-url", "start-bad-timeout", "dev-bad-timeout", "start-two-bad"],
)
def test_bad_configuration_exits_non_zero_naming_the_variable(
    mode: str, overrides: dict, named: list[str], tmp_path: Path
) -> None:
    with DispatchServer(api_key=API_KEY, api_secret=API_SECRET) as server:
        env = base_env(tmp_path, **{"LIVEKIT_URL": server.url, **overrides})
        rc, out = _run_to_exit(mode, env, tmp_path)
        assert rc != 0, f"`agent.py {mode}` exited 0 with bad configuration:\n{tail(out)}"
        missing = [name for name in named if name not in out]
        assert not missing, f"output does not name {missing}:\n{tail(out)}"
        assert server.connection_count == 0, "the worker connected before checking its configuration"


def test_dev_warns_when_registering_under_the_production_agent_name(tmp_path: Path) -> None:
    with DispatchServer(api_key=API_KEY, api_secret=API_SECRET) as server:
        for name, warned in (("", True), ("equipment-rental-dev", False)):
            env = base_env(tmp_path, LIVEKIT_URL=server.url, LIVEKIT_AGENT_NAME=name)
            with AgentProcess([str(AGENT_PY), "dev"], env=env, cwd=str(ROOT), python=PYTHON,
                              log_path=tmp_path / f"dev-{name or 'default'}.log") as proc:
                reg = server.wait_registered(STARTUP_TIMEOUT)
                assert reg.agent_name == (name or "equipment-rental")
                assert ("production agent name" in proc.log()) == warned, tail(proc.log())
            server.wait_disconnected(10)
