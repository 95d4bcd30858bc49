"""A local stand-in for LiveKit's agent-dispatch websocket, to drive a real worker process.

A livekit-agents 1.8.9 worker (``python agent.py start``) connects to ``LIVEKIT_URL`` + ``/agent``
(``worker.py`` ``_connection_task``: ``ws(s)://host[/path]/agent``, JWT in ``Authorization: Bearer``,
optional ``worker_token`` query) and speaks protobuf: it sends ``WorkerMessage`` (register,
availability, update_worker, update_job, migrate_job) and receives ``ServerMessage`` (register,
availability, assignment, termination, pong). This module plays the server side of that protocol,
records every message with a ``time.monotonic()`` timestamp and lets a test or a benchmark dispatch
jobs whose room URL points wherever it likes, for instance at a port that refuses or that accepts
and never answers, which exercises the agent's room-connect timeout and job clean-up without a media
server.

Typical use (all methods are synchronous and thread-safe; the server runs its own event loop in a
background thread)::

    from tests.fakes.dispatch_server import DispatchServer, HangingListener, refusing_url, AgentProcess

    with DispatchServer() as server, HangingListener() as hang:
        env = {"LIVEKIT_URL": server.url, "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
        with AgentProcess(["agent.py", "start"], env=env) as proc:
            server.wait_registered(timeout=60)
            job_id = server.dispatch("call-1", url=refusing_url())
            job = server.wait_job_end(job_id, timeout=10)
            assert job.end_status == "JS_SUCCESS"
            print(job.accept_latency, job.run_time)
            job_id = server.dispatch("call-2", url=hang.url)
            ...
        assert server.connection_count == 1 and len(server.registrations) == 1

What it records (``server.messages``, ``server.jobs``, ``server.registrations``,
``server.worker_updates``, ``server.connection_count``):

* ``Recorded(t, conn, direction, kind, msg)`` for every protobuf in either direction.
* ``JobRecord`` per dispatched job: ``requested_at`` (first availability request sent),
  ``attempts`` (each availability request and the worker's answer; a refusal is retried, as
  LiveKit's server would, see ``dispatch``), ``answered_at`` / ``available`` (the accepting
  answer), ``assigned_at`` (assignment sent), ``statuses`` (every ``update_job`` as
  ``(t, status_name, error)``), ``ended_at`` / ``end_status`` (first JS_SUCCESS / JS_FAILED /
  JS_CANCELLED). Derived: ``accept_latency`` (accepted request -> answer), ``dispatch_latency``
  (first request -> accepted), ``rejections``, ``run_time`` (assignment -> job end).
* ``worker_updates``: every ``update_worker`` as ``(t, status, load, job_count)``;
  ``worker_status`` is the latest status (WS_AVAILABLE / WS_FULL), from any worker;
  ``worker_updates_by_conn[conn]`` the same per connection.

Several workers (a redeploy: the old deployment draining while the new one registers). Every open
connection that has registered is a worker; a job is offered the way LiveKit's server offers it:
only to a registered worker with the job's agent name whose latest ``update_worker`` status is
WS_AVAILABLE (no update yet counts as available; a draining 1.8.9 worker reports WS_FULL), the
least loaded first (ties: the earliest registered); a refusal moves the job on to another available
worker, and only when every available one has refused is it retried after ``retry_interval``.
``Attempt.conn`` and ``JobRecord.conn`` say which connection each request and the assignment went
to; ``worker_updates_by_conn``, ``status_of(conn)``, ``registration_of(conn)``, ``is_open(conn)``,
``wait_registered(since=n)`` (a worker registering after the first n),
``wait_worker_status(conn, status, after=t)`` and ``wait_disconnected(conn=c)`` follow one worker;
``dispatch(..., to_conn=c)`` offers a job to that connection only, whatever it last reported (a
probe of what a draining worker answers: LiveKit itself would not offer it one).
``hold_registrations("/b/")``: a worker connecting under that path (``LIVEKIT_URL`` =
``server.url + "/b"``) gets no answer to its registration until ``admit(conn)``; it is not
registered meanwhile (``held`` lists them, ``wait_held()`` waits for one). This lets a test start a
worker's slow process early and decide when it registers (a worker waits for that answer with no
timeout of its own; TruthfulServer's REGISTER_TIMEOUT still counts).

Authentication: the stand-in does not check signatures unless ``api_secret`` is given, but it
refuses (HTTP 401) a connection without a token (``Authorization: Bearer ...`` or ``access_token``
query) and, when ``api_secret`` is set, one whose HS256 signature or ``video.agent`` grant is wrong.

Helpers: ``refusing_url()`` (a ws:// URL on a port that was bound and closed: connect is refused),
``HangingListener`` (a TCP listener that accepts and never answers; ``.url``, ``.accepted``), and
``AgentProcess`` (spawns a worker in its own process group, logs to a file, always kills the whole
group on exit).
"""

from __future__ import annotations

import json

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from livekit import api
from livekit.protocol import agent as agent_pb
from livekit.protocol import models

__all__ = [
    "AgentProcess",
    "Attempt",
    "DispatchError",
    "DispatchServer",
    "HangingListener",
    "JobRecord",
    "Recorded",
    "Registration",
    "free_port",
    "refusing_url",
]

END_STATUSES = ("JS_SUCCESS", "JS_FAILED", "JS_CANCELLED")


class DispatchError(RuntimeError):
    """The worker rejected a job, did not answer in time, or is not connected."""


@dataclasses.dataclass
class Recorded:
    t: float  # time.monotonic()
    conn: int  # connection number, 1-based
    direction: str  # "in" (worker -> server) or "out" (server -> worker)
    kind: str  # the oneof field name: register, availability, update_job, assignment, ...
    msg: Any  # the WorkerMessage / ServerMessage


@dataclasses.dataclass
class Registration:
    t: float
    conn: int
    worker_id: str
    agent_name: str
    version: str
    job_type: str


@dataclasses.dataclass
class Attempt:
    """One AvailabilityRequest for a job and the worker's answer."""

    requested_at: float
    answered_at: float | None = None
    available: bool | None = None
    terminate: bool | None = None
    conn: int = 0  # the worker connection the request went to


@dataclasses.dataclass
class JobRecord:
    job_id: str
    room_name: str
    url: str
    conn: int  # the worker connection of the latest request (the accepting one, once accepted)
    requested_at: float  # the first availability request
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    answered_at: float | None = None  # the accepting answer (or the last refusal)
    available: bool | None = None
    terminate: bool | None = None
    participant_identity: str = ""
    assigned_at: float | None = None
    statuses: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)
    ended_at: float | None = None
    end_status: str | None = None
    end_error: str = ""

    @property
    def accept_latency(self) -> float | None:
        """The accepted availability request -> its response (seconds)."""
        for a in self.attempts:
            if a.available and a.answered_at is not None:
                return a.answered_at - a.requested_at
        return None

    @property
    def dispatch_latency(self) -> float | None:
        """First availability request -> accepted (seconds; includes refused attempts and the
        wait for the worker to report WS_AVAILABLE again)."""
        if not self.available or self.answered_at is None:
            return None
        return self.answered_at - self.requested_at

    @property
    def rejections(self) -> int:
        return sum(1 for a in self.attempts if a.available is False)

    @property
    def run_time(self) -> float | None:
        """Assignment sent -> final update_job received (seconds)."""
        if self.ended_at is None or self.assigned_at is None:
            return None
        return self.ended_at - self.assigned_at

    @property
    def ended(self) -> bool:
        return self.end_status is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusing_url(scheme: str = "ws") -> str:
    """A room URL whose TCP connect is refused (a port bound, then closed)."""
    return f"{scheme}://127.0.0.1:{free_port()}"


class HangingListener:
    """A TCP listener that accepts connections and never sends a byte (nor closes them).

    A room URL pointing here makes the agent's room connect hang until its own timeout.
    ``url`` is ``ws://127.0.0.1:<port>``; ``accepted`` counts accepted connections.
    Use as a context manager (or ``start()``/``close()``); closing drops every held socket.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.url = f"ws://{host}:{self.port}"
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hanging-listener", daemon=True)
        self._lock = threading.Lock()

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._held)

    def start(self) -> HangingListener:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for c in self._held:
                with contextlib.suppress(OSError):
                    c.close()

    def __enter__(self) -> HangingListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class DispatchServer:
    """The server side of LiveKit's agent-dispatch websocket, on 127.0.0.1:<random port>.

    ``url`` is what to put in the worker's ``LIVEKIT_URL`` (``ws://127.0.0.1:<port>``); the worker
    appends ``/agent``. Any number of workers may be connected: ``dispatch`` picks one the way
    LiveKit does (see the module docstring).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "devkey",
        api_secret: str | None = None,
        worker_id_prefix: str = "AW_fake_",
    ) -> None:
        self.host = host
        self._req_port = port
        self.port = 0
        self.api_key = api_key
        self.api_secret = api_secret
        self._worker_id_prefix = worker_id_prefix

        self._cond = threading.Condition()
        self.messages: list[Recorded] = []
        self.registrations: list[Registration] = []
        self.jobs: dict[str, JobRecord] = {}
        self.worker_updates: list[tuple[float, str, float, int]] = []  # (t, status, load, jobs)
        self.worker_updates_by_conn: dict[int, list[tuple[float, str, float, int]]] = {}
        self.connection_count = 0
        self.rejected_connections: list[tuple[float, str]] = []  # (t, reason) for 401s
        self.disconnects: list[tuple[float, int]] = []  # (t, conn)
        self._active: dict[int, web.WebSocketResponse] = {}
        self._paths: dict[int, str] = {}  # connection -> the request path it connected to
        self._hold_paths: list[str] = []
        self.held: list[tuple[int, float, str]] = []  # (conn, t, agent_name) registrations not answered yet
        self._held_msgs: dict[int, Any] = {}
        self._conn_ids = itertools.count(1)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self) -> DispatchServer:
        self._thread = threading.Thread(target=self._thread_main, name="dispatch-server", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._start_error is not None:
            raise self._start_error
        if not self._started.is_set():
            raise RuntimeError("dispatch server did not start")
        return self

    def close(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._aclose(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)
        self._loop = None

    def __enter__(self) -> DispatchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._astart())
        except BaseException as e:  # surfaced by start()
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _astart(self) -> None:
        app = web.Application()
        app.router.add_get("/agent", self._handle_ws)
        # a worker whose LIVEKIT_URL carries a path (ws://host/prefix) connects to /prefix/agent
        app.router.add_get("/{prefix:.+}/agent", self._handle_ws)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._req_port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _aclose(self) -> None:
        for ws in list(self._active.values()):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ websocket side

    def _check_token(self, request: web.Request) -> str | None:
        """Return an error string, or None when the request carries an acceptable token."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        token = token or request.query.get("access_token", "")
        if not token:
            return "no token (Authorization: Bearer or access_token query)"
        if self.api_secret is None:
            return None
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except Exception as e:  # noqa: BLE001
            return f"invalid token: {e}"
        if not (claims.video and claims.video.agent):
            return "token lacks the video.agent grant"
        return None

    def _record(self, conn: int, direction: str, msg: Any) -> Recorded:
        rec = Recorded(time.monotonic(), conn, direction, msg.WhichOneof("message") or "", msg)
        self.messages.append(rec)
        return rec

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        err = self._check_token(request)
        if err is not None:
            with self._cond:
                self.rejected_connections.append((time.monotonic(), err))
                self._cond.notify_all()
            return web.Response(status=401, text=err)

        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._cond:
            conn = next(self._conn_ids)
            self.connection_count += 1
            self._active[conn] = ws
            self._paths[conn] = request.path
            self._cond.notify_all()
        try:
            async for raw in ws:
                if raw.type != aiohttp.WSMsgType.BINARY:
                    continue
                msg = agent_pb.WorkerMessage()
                msg.ParseFromString(raw.data)
                await self._on_worker_message(conn, ws, msg)
        finally:
            with self._cond:
                self._active.pop(conn, None)
                self.disconnects.append((time.monotonic(), conn))
                self._cond.notify_all()
        return ws

    def _register(self, conn: int, t: float, msg: agent_pb.WorkerMessage) -> agent_pb.ServerMessage:
        """Records the registration (call with self._cond held) and returns the answer to send."""
        worker_id = f"{self._worker_id_prefix}{uuid.uuid4().hex[:12]}"
        self.registrations.append(
            Registration(
                t=t,
                conn=conn,
                worker_id=worker_id,
                agent_name=msg.register.agent_name,
                version=msg.register.version,
                job_type=agent_pb.JobType.Name(msg.register.type),
            )
        )
        reply = agent_pb.ServerMessage()
        reply.register.worker_id = worker_id
        reply.register.server_info.CopyFrom(
            models.ServerInfo(version="fake-1.0", protocol=16, region="local")
        )
        return reply

    async def _send(self, conn: int, ws: web.WebSocketResponse, msg: agent_pb.ServerMessage) -> None:
        with self._cond:
            self._record(conn, "out", msg)
        await ws.send_bytes(msg.SerializeToString())

    async def _on_worker_message(
        self, conn: int, ws: web.WebSocketResponse, msg: agent_pb.WorkerMessage
    ) -> None:
        reply: agent_pb.ServerMessage | None = None
        with self._cond:
            rec = self._record(conn, "in", msg)
            kind = rec.kind
            if kind == "register" and any(self._paths.get(conn, "").startswith(p) for p in self._hold_paths):
                self.held.append((conn, rec.t, msg.register.agent_name))
                self._held_msgs[conn] = msg
            elif kind == "register":
                reply = self._register(conn, rec.t, msg)
            elif kind == "availability":
                a = msg.availability
                job = self.jobs.get(a.job_id)
                att = None
                if job is not None:
                    att = next((x for x in reversed(job.attempts)
                                if x.conn == conn and x.answered_at is None), None)
                if job is not None and att is not None:
                    att.answered_at = rec.t
                    att.available = a.available
                    att.terminate = a.terminate
                    job.answered_at = rec.t
                    job.available = a.available
                    job.terminate = a.terminate
                    job.participant_identity = a.participant_identity
            elif kind == "update_job":
                u = msg.update_job
                status = agent_pb.JobStatus.Name(u.status)
                job = self.jobs.get(u.job_id)
                if job is not None:
                    job.statuses.append((rec.t, status, u.error))
                    if status in END_STATUSES and job.end_status is None:
                        job.ended_at = rec.t
                        job.end_status = status
                        job.end_error = u.error
            elif kind == "update_worker":
                u = msg.update_worker
                update = (rec.t, agent_pb.WorkerStatus.Name(u.status), u.load, u.job_count)
                self.worker_updates.append(update)
                self.worker_updates_by_conn.setdefault(conn, []).append(update)
            elif kind == "ping":
                reply = agent_pb.ServerMessage()
                reply.pong.last_timestamp = msg.ping.timestamp
                reply.pong.timestamp = int(time.time() * 1000)
            self._cond.notify_all()
        if reply is not None:
            await self._send(conn, ws, reply)

    # ------------------------------------------------------------------ test-facing API

    def _call(self, coro: Any, timeout: float) -> Any:
        if self._loop is None:
            raise RuntimeError("dispatch server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _wait(self, pred: Any, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    @property
    def connected(self) -> bool:
        """A worker websocket is open right now."""
        with self._cond:
            return bool(self._active)

    @property
    def registered(self) -> bool:
        """The latest registration's connection is still open."""
        with self._cond:
            return bool(self.registrations) and self.registrations[-1].conn in self._active

    @property
    def worker_id(self) -> str | None:
        with self._cond:
            return self.registrations[-1].worker_id if self.registrations else None

    @property
    def worker_status(self) -> str | None:
        """The status in the worker's latest update_worker (WS_AVAILABLE / WS_FULL), if any."""
        with self._cond:
            return self.worker_updates[-1][1] if self.worker_updates else None

    def status_of(self, conn: int) -> str | None:
        """The latest update_worker status reported on connection ``conn`` (None: none yet)."""
        with self._cond:
            updates = self.worker_updates_by_conn.get(conn)
            return updates[-1][1] if updates else None

    def registration_of(self, conn: int) -> Registration | None:
        with self._cond:
            return next((r for r in reversed(self.registrations) if r.conn == conn), None)

    def _open_registrations(self) -> list[Registration]:
        """One per open connection that has registered (its latest registration)."""
        seen: dict[int, Registration] = {}
        for r in self.registrations:
            if r.conn in self._active:
                seen[r.conn] = r
        return list(seen.values())

    def _conn_available(self, conn: int) -> bool:
        # like LiveKit's server: no update yet after registering counts as available
        updates = self.worker_updates_by_conn.get(conn)
        return conn in self._active and (not updates or updates[-1][1] == "WS_AVAILABLE")

    def _available_workers(self, agent_name: str) -> list[Registration]:
        """Registered, open, this agent name, WS_AVAILABLE: least loaded first, then earliest."""
        regs = [r for r in self._open_registrations()
                if r.agent_name == agent_name and self._conn_available(r.conn)]

        def load(r: Registration) -> float:
            updates = self.worker_updates_by_conn.get(r.conn)
            return updates[-1][2] if updates else 0.0

        return sorted(regs, key=lambda r: (load(r), r.t))

    def _latest_conn(self) -> int | None:
        return self.registrations[-1].conn if self.registrations else None

    def wait_worker_available(self, timeout: float = 30.0, conn: int | None = None) -> bool:
        """Block until the worker's latest update_worker says WS_AVAILABLE (``conn``: that
        connection's worker; default the latest registered). True if in time."""

        def ready() -> bool:
            c = self._latest_conn() if conn is None else conn
            return c is not None and self._conn_available(c)

        return self._wait(ready, timeout)

    def wait_worker_status(self, conn: int, status: str, *, after: float | None = None,
                           timeout: float = 30.0) -> tuple[float, str, float, int] | None:
        """Block until the worker on ``conn`` sends an update_worker with ``status`` (received
        after monotonic time ``after`` if given); return that update, or None if not in time."""

        def found() -> tuple[float, str, float, int] | None:
            return next((u for u in self.worker_updates_by_conn.get(conn, [])
                         if u[1] == status and (after is None or u[0] > after)), None)

        with self._cond:
            self._cond.wait_for(found, timeout)
            return found()

    def wait_registered(self, timeout: float = 30.0, *, since: int = 0) -> Registration:
        """Block until a worker has registered on an open connection; return that registration.
        ``since=n``: a registration after the first n (e.g. a second worker: ``since=1``)."""
        if not self._wait(lambda: len(self.registrations) > since
                          and self.registrations[-1].conn in self._active, timeout):
            raise TimeoutError(
                f"no worker registered within {timeout}s "
                f"(connections={self.connection_count}, registrations={len(self.registrations)}, "
                f"401s={self.rejected_connections})"
            )
        with self._cond:
            return self.registrations[-1]

    def hold_registrations(self, path_prefix: str) -> None:
        """Workers connecting under ``path_prefix`` (e.g. "/b/") wait for ``admit`` to register."""
        with self._cond:
            self._hold_paths.append(path_prefix)

    def wait_held(self, timeout: float = 30.0) -> int:
        """Block until a registration is held; return its connection (the first not admitted)."""
        def waiting() -> list[int]:
            return [c for c, _, _ in self.held if c in self._held_msgs and c in self._active]

        if not self._wait(waiting, timeout):
            raise TimeoutError(f"no registration held within {timeout}s (connections={self.connection_count})")
        with self._cond:
            return waiting()[0]

    def admit(self, conn: int) -> Registration:
        """Answers the held registration of ``conn`` now: from here the worker is registered."""

        async def _go() -> Registration:
            with self._cond:
                msg = self._held_msgs.pop(conn)
                ws = self._active.get(conn)
                if ws is None:
                    raise DispatchError(f"connection {conn} closed while its registration was held")
                reply = self._register(conn, time.monotonic(), msg)
                reg = self.registrations[-1]
                self._cond.notify_all()
            await self._send(conn, ws, reply)
            return reg

        return self._call(_go(), 10)

    def is_open(self, conn: int) -> bool:
        """Whether worker connection ``conn`` is open right now."""
        with self._cond:
            return conn in self._active

    def wait_disconnected(self, timeout: float = 30.0, conn: int | None = None) -> bool:
        """Block until no worker connection is open (``conn``: until that one is closed). True
        if that happened in time."""
        if conn is not None:
            return self._wait(lambda: conn not in self._active, timeout)
        return self._wait(lambda: not self._active, timeout)

    def dispatch(
        self,
        room_name: str,
        *,
        url: str,
        token: str | None = None,
        job_id: str | None = None,
        agent_name: str | None = None,
        metadata: str = "",
        accept_timeout: float = 30.0,
        retry: bool = True,
        retry_interval: float = 0.5,
        to_conn: int | None = None,
    ) -> str:
        """Offer a room job to a registered worker and, once it accepts, assign it.

        Like LiveKit's server, it offers the job only to a worker registered under the job's
        agent name (default: the latest registration's) whose latest ``update_worker`` status is
        WS_AVAILABLE, waiting for one if there is none (a 1.8.9 worker in ``start`` reports
        WS_FULL while full or draining), the least loaded first; it sends it an
        AvailabilityRequest and waits for the answer. A refusal (``available=False``) moves the
        job to another available worker; once every available one has refused, it is retried
        every ``retry_interval`` s with the same job id when ``retry`` (each try, and the
        connection it went to, is in ``JobRecord.attempts``), until ``accept_timeout``.
        ``to_conn``: offer it to that connection only, whatever status it last reported (a probe:
        LiveKit would not offer a job to a worker that reported WS_FULL).
        Once accepted, it sends a JobAssignment carrying ``url`` (the room server the job process
        will connect to) and ``token`` (default: a room-join JWT signed with ``api_key`` /
        ``api_secret`` or a dummy secret). Returns the job id. Raises DispatchError when not
        accepted within ``accept_timeout`` (or at the first refusal when ``retry`` is False).
        The worker itself gives up on an accepted job if the assignment is 7.5 s late.
        """
        return self._call(
            self._adispatch(room_name, url, token, job_id, agent_name, metadata, accept_timeout,
                            retry, retry_interval, to_conn),
            accept_timeout + 15,
        )

    async def _adispatch(
        self,
        room_name: str,
        url: str,
        token: str | None,
        job_id: str | None,
        agent_name: str | None,
        metadata: str,
        accept_timeout: float,
        retry: bool,
        retry_interval: float,
        to_conn: int | None = None,
    ) -> str:
        with self._cond:
            regs = self._open_registrations()
            if to_conn is not None:
                regs = [r for r in regs if r.conn == to_conn]
            if not regs:
                raise DispatchError("no registered worker connection"
                                    + (f" {to_conn}" if to_conn is not None else ""))
            name = max(regs, key=lambda r: r.t).agent_name if agent_name is None else agent_name
        job_id = job_id or f"AJ_{uuid.uuid4().hex[:12]}"
        room_sid = f"RM_{uuid.uuid4().hex[:12]}"
        job = agent_pb.Job(
            id=job_id,
            dispatch_id=f"AD_{uuid.uuid4().hex[:12]}",
            type=agent_pb.JobType.JT_ROOM,
            room=models.Room(sid=room_sid, name=room_name),
            agent_name=name,
            metadata=metadata,
        )
        req = agent_pb.ServerMessage()
        req.availability.job.CopyFrom(job)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + accept_timeout
        record = JobRecord(job_id=job_id, room_name=room_name, url=url, conn=0,
                           requested_at=time.monotonic())
        with self._cond:
            self.jobs[job_id] = record
        refused: set[int] = set()  # workers that refused since the last pause

        def pick() -> int | None:
            if to_conn is not None:
                return to_conn if to_conn in self._active else None
            workers = self._available_workers(name)
            fresh = [r for r in workers if r.conn not in refused] or workers
            return fresh[0].conn if fresh else None

        while True:
            left = deadline - time.monotonic()
            conn = await loop.run_in_executor(None, self._wait, pick, max(left, 0))
            if not conn:
                raise DispatchError(f"job {job_id}: no worker WS_AVAILABLE within {accept_timeout}s "
                                    f"(last status {self.worker_status}, {record.rejections} refusals)")
            with self._cond:
                ws = self._active.get(conn)
                attempt = Attempt(requested_at=time.monotonic(), conn=conn)
                record.attempts.append(attempt)
                record.conn = conn
            if ws is None:
                raise DispatchError(f"job {job_id}: worker connection {conn} closed")
            await self._send(conn, ws, req)
            left = deadline - time.monotonic()
            answered = await loop.run_in_executor(
                None, self._wait, lambda: attempt.answered_at is not None, max(left, 0.5)
            )
            if not answered:
                raise DispatchError(f"job {job_id}: no availability response within {accept_timeout}s")
            if attempt.available:
                break
            if not retry or time.monotonic() + retry_interval > deadline:
                raise DispatchError(f"job {job_id}: worker answered available=False "
                                    f"{record.rejections} time(s) (terminate={attempt.terminate}, "
                                    f"last status {self.status_of(conn)})")
            refused.add(conn)
            with self._cond:
                others = to_conn is None and any(r.conn not in refused for r in self._available_workers(name))
            if not others:  # every available worker refused: ask again after a pause
                refused.clear()
                await asyncio.sleep(retry_interval)

        if token is None:
            token = (
                api.AccessToken(self.api_key, self.api_secret or "fake-secret-for-room-tokens")
                .with_identity(record.participant_identity or f"agent-{job_id}")
                .with_kind("agent")
                .with_grants(api.VideoGrants(room_join=True, room=room_name, agent=True))
                .to_jwt()
            )
        assign = agent_pb.ServerMessage()
        assign.assignment.job.CopyFrom(job)
        assign.assignment.url = url
        assign.assignment.token = token
        with self._cond:
            record.assigned_at = time.monotonic()
        await self._send(record.conn, ws, assign)
        return job_id

    def terminate(self, job_id: str) -> None:
        """Send a JobTermination for ``job_id`` (the worker closes that job's process)."""

        async def _go() -> None:
            with self._cond:
                job = self.jobs[job_id]
                ws = self._active.get(job.conn)
            if ws is None:
                raise DispatchError("the job's worker connection is closed")
            msg = agent_pb.ServerMessage()
            msg.termination.job_id = job_id
            await self._send(job.conn, ws, msg)

        self._call(_go(), 10)

    def wait_job_end(self, job_id: str, timeout: float) -> JobRecord:
        """Block until the worker reports JS_SUCCESS/JS_FAILED/JS_CANCELLED for ``job_id``.

        Returns the JobRecord; raises TimeoutError (with the statuses seen so far) otherwise.
        """
        with self._cond:
            job = self.jobs[job_id]
            if not self._cond.wait_for(lambda: job.end_status is not None, timeout):
                raise TimeoutError(
                    f"job {job_id} ({job.room_name}) did not end within {timeout}s; "
                    f"statuses={[(round(t - job.requested_at, 3), s) for t, s, _ in job.statuses]}"
                )
            return job

    def messages_of(self, kind: str, direction: str | None = None) -> list[Recorded]:
        with self._cond:
            return [m for m in self.messages
                    if m.kind == kind and (direction is None or m.direction == direction)]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly snapshot (for failure messages and benchmark output)."""
        with self._cond:
            return {
                "connections": self.connection_count,
                "registrations": [dataclasses.asdict(r) for r in self.registrations],
                "disconnects": list(self.disconnects),
                "rejected_connections": list(self.rejected_connections),
                "workers": {
                    r.conn: {"worker_id": r.worker_id, "agent_name": r.agent_name,
                             "open": r.conn in self._active,
                             "statuses": [u[1] for u in self.worker_updates_by_conn.get(r.conn, [])][-5:]}
                    for r in self.registrations
                },
                "jobs": {
                    j.job_id: {
                        "room": j.room_name,
                        "conn": j.conn,
                        "offered_to": [a.conn for a in j.attempts],
                        "available": j.available,
                        "rejections": j.rejections,
                        "accept_latency": j.accept_latency,
                        "dispatch_latency": j.dispatch_latency,
                        "run_time": j.run_time,
                        "statuses": [s for _, s, _ in j.statuses],
                        "end_status": j.end_status,
                        "end_error": j.end_error,
                    }
                    for j in self.jobs.values()
                },
            }


class AgentProcess:
    """A worker subprocess (e.g. ``python agent.py start``) that is always cleaned up.

    Runs in its own session/process group, so ``kill()`` reaches the forkserver and every job
    process the worker spawned. stdout and stderr go to ``log_path`` (a temp file unless given);
    ``log()`` returns the text so far. Use as a context manager: on exit the group is sent
    SIGKILL if anything is still alive, whatever happened in the test.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
        log_path: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        full_env = dict(os.environ) if inherit_env else {}
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="agent-proc-", suffix=".log")
            os.close(fd)
        self.log_path = str(log_path)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [python, *args],
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        self._log_file.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def records(self) -> list[dict]:
        """The JSON log records printed so far (``start`` logs JSON lines)."""
        return log_records(self.log())

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the worker process only (not its children)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def group_alive(self) -> bool:
        """Whether any process of the worker's process group is still alive."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def kill(self) -> None:
        """SIGKILL the whole process group (worker, forkserver, job processes) and reap."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            self._log_file.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_records(text: str) -> list[dict]:
    """The JSON log records in a ``start`` worker's output (job-process records carry ``room``)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
