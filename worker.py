"""The worker process: a server whose health check tells the truth, and whose exit status does;
its command line (the framework's, with `check` and `inventory`); its last act at exit.

livekit-agents 1.8.9 answers ``GET /`` with 200 from the moment its HTTP server listens, whether
or not it ever reaches LiveKit, and 503 only after all its reconnects failed (16 of them, about
2 minutes against a refused port, far longer against one that never answers); it then logs
``worker failed`` and exits with status 0. A platform that trusts the health check (Railway marks
a deploy Active on the first 200) or the exit status (restart "on failure") is told all is well.

`TruthfulServer` is the framework's AgentServer with three changes:

- ``GET /`` answers 503 ``failed to connect to livekit`` until the worker has registered with
  LiveKit, 200 while it is registered, and 503 again once it has been disconnected for more than
  DISCONNECT_TIMEOUT;
- when it has had no registration for REGISTER_TIMEOUT (at start-up, or since the connection was
  lost), it logs ``❌ Giving up: ...`` and stops itself the way SIGTERM does (live calls are
  drained), and `exit_code()` turns that, or the framework's own give-up, into a non-zero status
  for `agent.main` to return;
- `run()`, which the CLI calls once it has set up logging, puts the log redaction filter on the
  root handlers (logs.py) and logs the start-up line (and the deployment's warnings).

It also answers callers the framework would leave unanswered:

- **Capacity is counted in calls, bursts included.** 1.8.9's ``_get_effective_load`` adds, for
  every call accepted but not yet running, ``load_threshold / num_idle_processes`` while no job is
  running, whatever ``load_fnc`` says: with 2 idle processes the third of three calls arriving
  together was refused, and LiveKit drops a refused job for good (e2e/README.md, finding 2). Here
  the effective load is (running + accepted-not-yet-running calls) / (MAX_CONCURRENT_CALLS +
  MAX_OVERFLOW_CALLS), so a burst is refused only past that.
- **Overflow.** A call accepted while MAX_CONCURRENT_CALLS calls are already taken is accepted with
  the participant attribute ``rental.overflow=1``; its job reads it after connecting and plays the
  overflow answer (agent.py) instead of the agent: no silence, no endless ringing.
- **Callers left waiting are dispatched again.** livekit-server dispatches a room's agent once;
  a caller who rang while no worker was registered (a redeploy gap) is never answered. Once
  registered, the worker looks for such rooms (`redispatch_waiting_calls`) and creates the dispatch
  again, under a lock shared by every worker of the deployment.

Private attributes of the pinned livekit-agents 1.8.9 are used, because the framework offers no
public hook for any of this: ``_get_effective_load`` and ``_reserved_slots`` (worker.py:1331-1342,
1377, 1471: the burst accounting; tests/test_worker_capacity.py and the e2e tier's burst scenario
fail if an upgrade changes them), ``_connection_failed`` (the flag its GET / handler reads,
worker.py:661), ``_connecting`` (true from each connection attempt until LiveKit answers the
registration, worker.py:1095-1155) and ``_conn_task`` (the connection task; done once the framework
gave up). tests/test_health.py drives a real worker through each state, so an upgrade that changes
them fails there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, ContextManager, Iterator, Sequence

from livekit import api
from livekit.agents import AgentServer, JobContext, JobProcess, JobRequest

import equipment
import logs
import railway
import voice
from settings import Settings

logger = logging.getLogger("rental-agent")

GAVE_UP = 3  # exit status when the worker stopped itself for want of LiveKit
FAILED = 1  # exit status when the framework's worker failed (it gave up reconnecting)
POLL = 0.5
# on the agent participant of a call taken past MAX_CONCURRENT_CALLS: the job plays the overflow answer
OVERFLOW_ATTRIBUTE = "rental.overflow"
# Imported once in the forkserver, before it forks each job process (AgentServer preload_modules):
# the framework preloads only the plugins. Without it every job process imported agent.py's own
# modules (the inventory with gspread, psycopg with DATABASE_URL, prompts with num2words...: 2-4 s
# of CPU on two busy cores) while calls were in progress: each call's process is a new one.
PRELOAD = ["agent"]


class TruthfulServer(AgentServer):
    def __init__(self, *args: Any, register_timeout: float = 60.0, disconnect_timeout: float = 30.0,
                 startup_line: str = "", startup_warnings: Sequence[str] = (), max_calls: int = 10,
                 overflow_calls: int = 0, redispatch: Redispatch | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_calls = max_calls
        self.overflow_calls = overflow_calls
        self.redispatch = redispatch
        self._accepting = {"call": 0, "overflow": 0}  # accepted, not yet running (ours, by kind)
        self._redispatch_task: asyncio.Task[Any] | None = None
        self.register_timeout = register_timeout
        self.disconnect_timeout = disconnect_timeout
        self.startup_line = startup_line
        self.startup_warnings = tuple(startup_warnings)
        self.registered = False  # registered at least once
        self.lost_at: float | None = None  # monotonic time the registration was lost
        self.gave_up: str | None = None  # why we stopped the worker
        self.run_error: BaseException | None = None  # what the framework's run() raised
        self._connection_failed = True  # GET / -> 503 from the moment the HTTP server listens
        self.on("worker_registered", self._on_registered)

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        logs.install()  # the CLI has just created the root handlers
        if self.startup_line:
            logger.info(f"🚀 Worker starting: {self.startup_line}")
        for warning in self.startup_warnings:
            logger.warning(warning)
        monitor = None if unregistered else asyncio.get_running_loop().create_task(
            self._monitor(), name="health_monitor")
        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        except BaseException as e:  # the CLI only logs it ("worker failed") and exits 0
            self.run_error = e
            raise
        finally:
            if monitor is not None:
                monitor.cancel()

    def _on_registered(self, worker_id: str, server_info: Any) -> None:
        if self.lost_at is not None:
            logger.info(f"✅ Registered with LiveKit again after {time.monotonic() - self.lost_at:.0f}s")
        self.registered = True
        self.lost_at = None
        self._connection_failed = False
        # callers who rang while no worker (or not this one) was registered are waiting unanswered
        if self.redispatch is not None and (self._redispatch_task is None or self._redispatch_task.done()):
            self._redispatch_task = asyncio.get_running_loop().create_task(
                self.redispatch.run(), name="redispatch_waiting_calls")

    # -- capacity: calls, not CPU; bursts counted; overflow past MAX_CONCURRENT_CALLS ----------
    @property
    def total_slots(self) -> int:
        return max(self.max_calls + self.overflow_calls, 1)

    def _get_effective_load(self) -> float:
        """Overrides 1.8.9's (worker.py:1331), which counts a call accepted but not yet running
        as load_threshold / num_idle_processes while no job runs: here every call, running or
        accepted, is one slot of MAX_CONCURRENT_CALLS + MAX_OVERFLOW_CALLS. `_is_available` and
        `_update_worker_status` compare it with load_threshold (1.0)."""
        reserved = int(getattr(self, "_reserved_slots", 0) or 0)
        return (len(self.active_jobs) + reserved) / self.total_slots

    @staticmethod
    def is_overflow(info: Any) -> bool:
        attrs = getattr(getattr(info, "accept_arguments", None), "attributes", None) or {}
        return attrs.get(OVERFLOW_ATTRIBUTE) == "1"

    def calls_taken(self) -> tuple[int, int]:
        """(agent calls, overflow calls): running, plus accepted and not yet running."""
        overflow = sum(1 for j in self.active_jobs if self.is_overflow(j))
        return (len(self.active_jobs) - overflow + self._accepting["call"],
                overflow + self._accepting["overflow"])

    async def request_fnc(self, req: JobRequest) -> None:
        """Accept every call offered (the load already refused what is past every slot); one
        past MAX_CONCURRENT_CALLS is accepted as an overflow call."""
        calls, overflow = self.calls_taken()
        kind = "overflow" if calls >= self.max_calls else "call"
        if kind == "overflow":
            logger.warning(f"📵 At capacity ({calls} calls, MAX_CONCURRENT_CALLS={self.max_calls}): job "
                           f"{req.id} gets the overflow answer ({overflow + 1} of {self.overflow_calls} overflow)")
        self._accepting[kind] += 1
        try:
            await req.accept(attributes={OVERFLOW_ATTRIBUTE: "1"} if kind == "overflow" else None)
        finally:
            self._accepting[kind] -= 1

    def healthy(self, now: float) -> bool:
        return self.registered and (self.lost_at is None or now - self.lost_at <= self.disconnect_timeout)

    async def _monitor(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            conn_task = getattr(self, "_conn_task", None)
            if conn_task is not None and conn_task.done():
                self._connection_failed = True
                return  # the framework gave up; run() raises, exit_code() says so
            now = time.monotonic()
            if self.registered and self._connecting and self.lost_at is None:
                self.lost_at = now
                logger.warning("⚠️ Lost the connection to LiveKit; reconnecting")
            self._connection_failed = not self.healthy(now)
            since = started if not self.registered else self.lost_at
            if since is not None and now - since > self.register_timeout:
                self.gave_up = (f"not registered with LiveKit within {self.register_timeout:g}s "
                                "(REGISTER_TIMEOUT)" if not self.registered else
                                f"no connection to LiveKit for {self.register_timeout:g}s (REGISTER_TIMEOUT)")
                logger.error(f"❌ Giving up: {self.gave_up}; check LIVEKIT_URL, LIVEKIT_API_KEY and "
                             f"LIVEKIT_API_SECRET (python agent.py check). Exiting with status {GAVE_UP}.")
                signal.raise_signal(signal.SIGTERM)  # the CLI's own path: drain live calls, then close
                return

    def exit_code(self, cli_code: int) -> int:
        """The process's exit status, given the CLI's own."""
        if cli_code:
            return cli_code
        if self.gave_up is not None:
            return GAVE_UP
        if self.run_error is not None:
            return FAILED
        return 0


# --------------------------------------------------------------------------------------------
# callers left waiting: dispatch them again


REDISPATCH_METADATA = json.dumps({"redispatched": True})  # marks the dispatches this makes (the job's metadata)


async def redispatch_waiting_calls(lk: api.LiveKitAPI, agent_name: str, *, prefix: str = "call-",
                                   grace: float = 5.0, job_grace: float = 30.0,
                                   now: Callable[[], float] = time.time) -> tuple[list[str], list[str]]:
    """Creates the agent's dispatch again for each room that looks like a caller waiting
    unanswered: named `prefix`... (the dispatch rule's), a SIP participant in it, no agent
    participant, dispatched to `agent_name` (by the dispatch rule: livekit-server lists that
    dispatch, with no job when no worker took it), and no dispatch for it that may still bring one:

    - none younger than `grace` s (livekit-server may still be offering it to a worker, or another
      worker has just dispatched it again);
    - none with a job started less than `job_grace` s ago (its agent may still be starting: on a
      busy machine a job waited 16 s for a process, e2e/README.md finding 7). A job older than
      that whose agent is not in the room has failed (its process crashed, or was killed in a
      redeploy): the caller is dispatched again.

    Returns (rooms dispatched again, rooms too young to judge: look again once `grace` passed)."""
    done: list[str] = []
    later: list[str] = []
    rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
    for room in rooms:
        if not room.name.startswith(prefix):
            continue
        created = (room.creation_time_ms / 1000.0) if room.creation_time_ms else float(room.creation_time)
        people = (await lk.room.list_participants(api.ListParticipantsRequest(room=room.name))).participants
        kinds = {p.kind for p in people}
        if api.ParticipantInfo.Kind.SIP not in kinds or api.ParticipantInfo.Kind.AGENT in kinds:
            continue
        t = now()
        mine = [d for d in await lk.agent_dispatch.list_dispatch(room.name) if d.agent_name == agent_name]
        if not mine:
            continue  # the room was never meant for this agent (another line, another agent)
        if any(j.state.started_at and t - j.state.started_at / 1e9 < job_grace for d in mine for j in d.state.jobs):
            continue  # a worker took it moments ago: its agent is on its way
        if (created and t - created < grace) or any(t - d.state.created_at / 1e9 < grace for d in mine):
            later.append(room.name)  # may still be being offered to a worker: judged again later
            continue
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=agent_name, room=room.name, metadata=REDISPATCH_METADATA))
        # the room's ID, not its name: the name holds the caller's number
        logger.warning(f"📞 A caller was waiting with no agent (room {room.sid}): dispatched again")
        done.append(room.name)
    return done, later


@contextlib.asynccontextmanager
async def held(make_lock: Callable[[], ContextManager[Any]]) -> AsyncIterator[None]:
    """A blocking lock (file or PostgreSQL advisory) taken and released in one thread of its own,
    held while the event loop carries on."""
    loop = asyncio.get_running_loop()
    taken: asyncio.Future[None] = loop.create_future()
    release = threading.Event()

    def settle(exc: BaseException | None) -> None:
        if not taken.done():
            taken.set_exception(exc) if exc is not None else taken.set_result(None)

    def hold() -> None:
        try:
            with make_lock():
                loop.call_soon_threadsafe(settle, None)
                release.wait()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting coroutine
            loop.call_soon_threadsafe(settle, e)

    thread = threading.Thread(target=hold, name="redispatch-lock", daemon=True)
    thread.start()
    try:
        await taken
        yield
    finally:
        release.set()
        await asyncio.to_thread(thread.join, 5.0)


class Redispatch:
    """Once the worker has registered: the rooms of callers left waiting are dispatched again
    (`redispatch_waiting_calls`), under a lock every worker of the deployment shares (PostgreSQL
    advisory lock with DATABASE_URL, else a file lock in STATE_DIR), so two workers starting
    together dispatch a waiting caller once. Bounded; never raises."""

    LOCK_WAIT = 15.0
    ROUNDS = 4  # rooms too young to judge are looked at again, this many times at most

    def __init__(self, url: str, api_key: str, api_secret: str, agent_name: str, *, state_dir: Path,
                 database_url: str = "", database_timeout: float = 3.0, prefix: str = "call-",
                 grace: float = 5.0, timeout: float = 60.0) -> None:
        self.url = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        self.api_key = api_key
        self.api_secret = api_secret
        self.agent_name = agent_name
        self.state_dir = Path(state_dir)
        self.database_url = database_url
        self.database_timeout = database_timeout
        self.prefix = prefix
        self.grace = grace
        self.timeout = timeout
        self.dispatched: list[str] = []

    @classmethod
    def from_env(cls, settings: Settings, env: Any = os.environ) -> Redispatch | None:
        url, key, secret = (str(env.get(n) or "").strip() for n in
                            ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"))
        if not (url and key and secret):
            return None
        inv = settings.inventory
        return cls(url, key, secret, settings.agent_name, state_dir=inv.state_dir,
                   database_url=inv.database_url, database_timeout=inv.database_timeout)

    @contextlib.contextmanager
    def lock(self) -> Iterator[str]:
        """The deployment-wide lock, waiting up to LOCK_WAIT: PostgreSQL's advisory lock (a
        connection of its own; the server releases it if this process dies) when DATABASE_URL is
        set and answers, else a file lock in STATE_DIR (the OS releases it likewise). Yields
        which one."""
        from inventory.files import Locks
        from inventory.state import StateUnavailable, lock_key

        with contextlib.ExitStack() as stack:
            kind = "file"
            if self.database_url:
                from inventory.postgres_state import PostgresState

                pg = PostgresState(self.database_url, connect_timeout=self.database_timeout,
                                   statement_timeout=self.database_timeout)
                try:  # PostgresState's own lock primitive (the one its unit locks use)
                    stack.enter_context(pg._advisory(lock_key("rental", "redispatch", self.agent_name),
                                                     self.LOCK_WAIT))
                    kind = "postgres"
                except StateUnavailable as e:
                    logger.warning(f"⚠️ PostgreSQL not answering for the re-dispatch lock ({e}); "
                                   "using this machine's file lock")
            if kind == "file":
                stack.enter_context(Locks(self.state_dir).named(f"redispatch-{self.agent_name}",
                                                                timeout=self.LOCK_WAIT))
            yield kind

    async def sweep(self) -> tuple[list[str], list[str]]:
        async with held(self.lock):
            async with api.LiveKitAPI(self.url, self.api_key, self.api_secret) as lk:
                return await redispatch_waiting_calls(lk, self.agent_name, prefix=self.prefix, grace=self.grace)

    async def run(self) -> list[str]:
        try:
            return await asyncio.wait_for(self._run(), self.timeout)
        except Exception as e:  # noqa: BLE001 - a sweep that fails leaves things as they were
            logger.warning(f"⚠️ Could not look for callers left waiting: {e!r}"[:300])
            return self.dispatched

    async def _run(self) -> list[str]:
        for _ in range(self.ROUNDS):
            done, later = await self.sweep()
            self.dispatched += done
            if not later:
                break
            await asyncio.sleep(self.grace)
        return self.dispatched


# --------------------------------------------------------------------------------------------
# the server, its command line, its last act


def make_server(settings: Settings, entrypoint: Callable[[JobContext], Any],
                prewarm: Callable[[JobProcess], Any] = voice.prewarm) -> TruthfulServer:
    # The framework's default load is the machine's CPU (refuse above 70%): a busy moment on a
    # small Railway box would turn a caller away with nobody else to answer. Count calls instead.
    # Calls past MAX_CONCURRENT_CALLS (up to MAX_OVERFLOW_CALLS more) get the overflow answer.
    slots = max(settings.max_concurrent_calls + settings.max_overflow_calls, 1)
    server = TruthfulServer(setup_fnc=prewarm, drain_timeout=settings.drain_timeout,
                            load_fnc=lambda s: len(s.active_jobs) / slots, load_threshold=1.0,
                            max_calls=settings.max_concurrent_calls, overflow_calls=settings.max_overflow_calls,
                            redispatch=Redispatch.from_env(settings),
                            register_timeout=settings.register_timeout,
                            disconnect_timeout=settings.disconnect_timeout,
                            startup_line=settings.describe(railway.version()),
                            startup_warnings=railway.deployment_warnings(),
                            # psycopg only where PostgreSQL is configured (inventory/engines.py)
                            preload_modules=PRELOAD + (["inventory.postgres_state"]
                                                       if settings.inventory.database_url else []),
                            **({"port": settings.port} if settings.port else {}),
                            **({"num_idle_processes": settings.num_idle_processes}
                               if settings.num_idle_processes is not None else {}))
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_request=server.request_fnc)
    return server


def settle_outbox_at_shutdown(timeout: float = 10.0) -> int | None:
    """Last chance for bookings kept in the outbox while Sheets was down (railway.json's
    drainingSeconds leaves room for it). Bounded; never raises. Returns how many entries were
    settled (None when it could not finish)."""

    async def settle() -> int:
        inventory = equipment.inventory_from_settings(Settings.lenient().inventory)
        started = time.monotonic()
        settled = await asyncio.wait_for(inventory.replay_outbox(), timeout)
        # anything still pending (another process held the replay lock) gets the time left
        await inventory.close(timeout=max(timeout - (time.monotonic() - started), 0.0))
        return int(settled or 0)

    try:
        settled = asyncio.run(settle())
    except Exception as e:
        logger.warning(f"⚠️ Outbox not settled at shutdown: {e!r}"[:300])
        return None
    logger.info(f"📤 Outbox at worker exit: {settled} settled")
    return settled
