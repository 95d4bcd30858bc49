"""A worker whose health check tells the truth, and whose exit status does.

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

Private attributes of the pinned livekit-agents 1.8.9 are used, because the framework offers no
public hook for any of this: ``_connection_failed`` (the flag its GET / handler reads,
worker.py:661), ``_connecting`` (true from each connection attempt until LiveKit answers the
registration, worker.py:1095-1155) and ``_conn_task`` (the connection task; done once the framework
gave up). tests/test_health.py drives a real worker through each state, so an upgrade that changes
them fails there first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Sequence

from livekit.agents import AgentServer

import logs

logger = logging.getLogger("rental-agent")

GAVE_UP = 3  # exit status when the worker stopped itself for want of LiveKit
FAILED = 1  # exit status when the framework's worker failed (it gave up reconnecting)
POLL = 0.5


class TruthfulServer(AgentServer):
    def __init__(self, *args: Any, register_timeout: float = 60.0, disconnect_timeout: float = 30.0,
                 startup_line: str = "", startup_warnings: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
