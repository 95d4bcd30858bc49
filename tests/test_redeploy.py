"""A redeploy with DATABASE_URL: worker B starts and registers while worker A still serves a call;
A gets SIGTERM; calls that arrive in between are dispatched to B; A exits once its call ends.

Two real ``python agent.py start`` workers (same agent name, same DATABASE_URL on a real
PostgreSQL, a STATE_DIR each) register with tests/fakes/dispatch_server.py, which offers each job
the way LiveKit's server does: only to a registered worker whose latest status is WS_AVAILABLE (a
draining 1.8.9 worker reports WS_FULL), and a refusal moves the job to another worker. This is
the order Railway follows with an overlap: the new deployment becomes Active when its health
check (``GET /``) answers 200, which TruthfulServer does only once it has registered with LiveKit,
and only then does the old one get SIGTERM.

A's call is a room job whose room URL points at a listener that accepts the connection and never
answers: the job stays live, connecting, until that listener closes (the test "hangs up"). The
room SDK itself gives up on such a room after about 32 s (5 s attempts, retried), so A's call can
last no longer than that. A worker's start-up (imports) takes 15-40 s on a loaded 2-core machine,
so B's process is started together with A's, and the stand-in holds B's registration (it gets no
answer to its register message: ``hold_registrations``) until A serves its call; the test then
admits it. B is up meanwhile and its ``GET /`` says 503; once registered, 200. So A still has a
live call when B registers and when A is told to stop, and the call ends when the test says.
Every assertion comes from the protocol (registrations, update_worker, availability answers,
assignments and update_job, and which worker connection each came on), from the health check
or from the processes' exit statuses; none from timings. Bounds are generous.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from livekit.protocol import agent as agent_pb

from tests.fakes.dispatch_server import (
    AgentProcess, DispatchError, DispatchServer, HangingListener, JobRecord, log_records, refusing_url,
)
from tests.worker_proc import API_KEY, API_SECRET, STARTUP_TIMEOUT, active_jobs, base_env, http_get, tail, wait_for

ROOT = Path(__file__).resolve().parents[1]
AGENT_PY = ROOT / "agent.py"
CALL_MAX = 60  # ROOM_CONNECT_TIMEOUT; against a room that never answers the SDK gives up after ~32 s anyway
DRAIN_TIMEOUT = 90  # small, but longer than A's call can last: A drains it rather than cutting it short
REGISTER_TIMEOUT = 240  # B waits, unregistered, until the test admits it (A's start-up included)
JOB_END = 30.0  # a job whose room refuses (or goes away) ends well within this
DRAIN_UPDATES = 3  # status updates A sends while draining its call before the test hangs up (>= 5 s)


def worker_env(tmp: Path, url: str, database_url: str) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    return base_env(tmp, LIVEKIT_URL=url, DATABASE_URL=database_url, ROOM_CONNECT_TIMEOUT=str(CALL_MAX),
                    DRAIN_TIMEOUT=str(DRAIN_TIMEOUT), NUM_IDLE_PROCESSES="1", REGISTER_TIMEOUT=str(REGISTER_TIMEOUT))


def health(port: int) -> int | None:
    try:
        return http_get(f"http://127.0.0.1:{port}/", timeout=2)[0]
    except OSError:
        return None  # not listening yet


class HealthWatch:
    """Polls a worker's GET / every 50 ms from its start: (monotonic time answered, status or None)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"health-{port}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            code = health(self.port)
            self.seen.append((time.monotonic(), code))  # the time of the answer: a 200 comes after registering
            self._stop.wait(0.05)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def answers(self, until: float | None = None, since: float | None = None) -> set[int]:
        return {code for t, code in list(self.seen)
                if code is not None and (until is None or t < until) and (since is None or t > since)}


def statuses(server: DispatchServer, job_id: str) -> list[tuple[int, str]]:
    """(worker connection, status name) of every update_job for the job, in order."""
    return [(m.conn, agent_pb.JobStatus.Name(m.msg.update_job.status)) for m in server.messages_of("update_job", "in")
            if m.msg.update_job.job_id == job_id]


def went_to(server: DispatchServer, job: JobRecord, conn: int, why: str) -> None:
    """Offered only to `conn` and accepted there, assigned there, and every update_job from there."""
    diag = f"{why}: {server.summary()['jobs'].get(job.job_id)}"
    assert [a.conn for a in job.attempts] == [conn] and job.attempts[0].available is True, diag
    assert job.assigned_at is not None and job.conn == conn, diag
    assignments = [m.conn for m in server.messages_of("assignment", "out")
                   if m.msg.assignment.job.id == job.job_id]
    assert assignments == [conn], diag
    assert {c for c, _ in statuses(server, job.job_id)} == {conn}, diag  # call it once a status came


def test_redeploy_new_worker_registers_first_then_old_one_drains_its_call_and_new_calls_go_to_the_new_one(
        tmp_path: Path, database_url: str) -> None:
    with DispatchServer(api_key=API_KEY, api_secret=API_SECRET) as server, HangingListener() as live_room:
        server.hold_registrations("/b/")  # B registers when the test admits it
        env_a = worker_env(tmp_path / "a", server.url, database_url)
        env_b = worker_env(tmp_path / "b", server.url + "/b", database_url)
        assert env_a["STATE_DIR"] != env_b["STATE_DIR"] and env_a["PORT"] != env_b["PORT"]
        port_a, port_b = int(env_a["PORT"]), int(env_b["PORT"])
        with AgentProcess([str(AGENT_PY), "start"], env=env_a, cwd=str(ROOT), python=sys.executable,
                          log_path=tmp_path / "worker-a.log") as a, \
             AgentProcess([str(AGENT_PY), "start"], env=env_b, cwd=str(ROOT), python=sys.executable,
                          log_path=tmp_path / "worker-b.log") as b, \
             HealthWatch(port_b) as b_health:

            def diag() -> str:
                return (f"\n--- stand-in ---\n{server.summary()}\n--- worker A ---\n{tail(a.log())}"
                        f"\n--- worker B ---\n{tail(b.log())}")

            # ---- the old deployment, A, serving a call
            try:
                reg_a = server.wait_registered(STARTUP_TIMEOUT)
            except TimeoutError as e:
                raise AssertionError(f"{e}{diag()}") from None
            conn_a = reg_a.conn
            assert wait_for(lambda: "process initialized" in a.log() or a.poll() is not None, STARTUP_TIMEOUT), diag()
            assert server.wait_worker_available(STARTUP_TIMEOUT, conn=conn_a), diag()
            call_1 = server.dispatch("call-1", url=live_room.url, accept_timeout=60)
            job_1 = server.jobs[call_1]
            assert wait_for(lambda: live_room.accepted >= 1 and statuses(server, call_1), 60), diag()
            went_to(server, job_1, conn_a, "the first call goes to A, the only worker")
            assert statuses(server, call_1)[0] == (conn_a, "JS_RUNNING"), diag()  # A is serving it

            # ---- the new deployment, B: up and asking to register; its health check says 503
            try:
                conn_b = server.wait_held(STARTUP_TIMEOUT)
            except TimeoutError as e:
                raise AssertionError(f"{e}{diag()}") from None
            assert wait_for(lambda: health(port_b) is not None or b.poll() is not None, STARTUP_TIMEOUT), diag()
            assert health(port_b) == 503, f"B's GET / before B has registered with LiveKit{diag()}"
            # registered while A serves its call: then (and only then) GET / answers 200
            reg_b = server.admit(conn_b)
            assert wait_for(lambda: health(port_b) == 200 or b.poll() is not None, 30) and b.poll() is None, \
                f"B registered but its GET / does not say so{diag()}"
            assert b_health.answers(until=reg_b.t) == {503}, \
                f"B's GET / from its start until it registered: {b_health.answers(until=reg_b.t)}{diag()}"
            assert (reg_a.agent_name, reg_b.agent_name) == ("equipment-rental", "equipment-rental")
            assert [r.conn for r in server.registrations] == [conn_a, conn_b] and conn_a != conn_b, diag()
            assert job_1.end_status is None and a.poll() is None, f"A's call ended before B registered{diag()}"

            # ---- Railway retires A: SIGTERM. A says it is full (draining) and refuses new calls
            sigterm_at = time.monotonic()
            a.signal(signal.SIGTERM)
            draining = server.wait_worker_status(conn_a, "WS_FULL", after=sigterm_at, timeout=30)
            assert draining is not None, f"A did not report WS_FULL after SIGTERM{diag()}"
            assert draining[3] == 1, f"A's draining update does not count its live call: {draining}{diag()}"
            with pytest.raises(DispatchError):  # a probe LiveKit would not send: A refuses it
                server.dispatch("probe", url=refusing_url(), job_id="AJ_probe_a_draining", to_conn=conn_a,
                                retry=False, accept_timeout=20)
            probe = server.jobs["AJ_probe_a_draining"]
            assert [(x.conn, x.available) for x in probe.attempts] == [(conn_a, False)], diag()
            assert probe.assigned_at is None

            # ---- a call that arrives in between: dispatched to B, while A still serves its call
            call_2 = server.dispatch("call-2", url=refusing_url(), accept_timeout=60)
            job_2 = server.jobs[call_2]
            assert conn_a in {r.conn for r in server.registrations} and a.poll() is None, diag()
            assert server.status_of(conn_a) == "WS_FULL" and server.is_open(conn_a), \
                "A was still connected and registered when B got the call" + diag()
            server.wait_job_end(call_2, JOB_END)
            went_to(server, job_2, conn_b, "a call during A's drain goes to B")
            assert job_2.end_status == "JS_SUCCESS", diag()
            # A's call is still live: not ended, still in A's active jobs, still connecting
            assert job_1.end_status is None and a.poll() is None, f"A's call was cut short{diag()}"
            assert active_jobs(port_a) == 1, diag()
            # and it stays live through the drain: A goes on reporting itself full with the call
            # counted, update after update (one every 2.5 s), until the caller hangs up
            def draining_updates() -> list[tuple[float, str, float, int]]:  # from the first WS_FULL on
                return [u for u in server.worker_updates_by_conn.get(conn_a, []) if u[0] >= draining[0]]

            assert wait_for(lambda: len(draining_updates()) >= DRAIN_UPDATES or a.poll() is not None, 60), diag()
            assert [(u[1], u[3]) for u in draining_updates()][:DRAIN_UPDATES] == [("WS_FULL", 1)] * DRAIN_UPDATES, \
                f"A did not keep its call through the drain: {draining_updates()}{diag()}"
            assert job_1.end_status is None and a.poll() is None, f"A's call was cut short{diag()}"

            # ---- A's caller hangs up: the call ends, then A exits (well before DRAIN_TIMEOUT)
            hangup_at = time.monotonic()
            live_room.close()
            try:
                server.wait_job_end(call_1, JOB_END)
                rc = a.wait(JOB_END + 15)
            except (TimeoutError, subprocess.TimeoutExpired) as e:
                raise AssertionError(f"A's call or A did not end after the hang-up: {e}{diag()}") from None
            assert job_1.ended_at is not None and job_1.ended_at > hangup_at, \
                f"A's call ended before the hang-up (cut by SIGTERM or the drain){diag()}"
            assert job_1.end_status == "JS_SUCCESS" and {c for c, _ in statuses(server, call_1)} == {conn_a}, diag()
            assert rc == 0, f"A exited {rc}{diag()}"
            assert server.wait_disconnected(10, conn=conn_a), diag()
            [(left_at, _)] = [d for d in server.disconnects if d[1] == conn_a]
            assert left_at >= job_1.ended_at, f"A left LiveKit before its call ended{diag()}"
            log_a = a.log()
            assert "draining worker" in log_a and "📤 Outbox at worker exit" in log_a, tail(log_a)

            # ---- and after: B takes the calls, on the registration it made at start
            call_3 = server.dispatch("call-3", url=refusing_url(), accept_timeout=60)
            server.wait_job_end(call_3, JOB_END)
            went_to(server, server.jobs[call_3], conn_b, "a call after A left goes to B")
            assert server.jobs[call_3].end_status == "JS_SUCCESS", diag()
            assert [r.conn for r in server.registrations] == [conn_a, conn_b], diag()
            assert b.poll() is None and health(port_b) == 200, diag()
            ok_at = next(t for t, code in b_health.seen if code == 200)
            assert b_health.answers(since=ok_at) == {200}, "B stayed healthy from its registration on" + diag()

            # both ran on the shared state (DATABASE_URL), each with its own STATE_DIR
            for proc, env in ((a, env_a), (b, env_b)):
                [line] = [r["message"] for r in log_records(proc.log())
                          if r.get("message", "").startswith("🚀 Worker starting:")]
                assert "state=postgresql 127.0.0.1:" in line and f"fallback sqlite {env['STATE_DIR']}" in line, line
            print(f"\nredeploy: B registered {reg_b.t - job_1.assigned_at:.1f}s into A's call; A's call lasted "
                  f"{job_1.ended_at - job_1.assigned_at:.1f}s, {job_1.ended_at - sigterm_at:.1f}s of it after "
                  f"SIGTERM; calls 2 and 3 on B")
