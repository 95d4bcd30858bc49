"""What both provider stand-ins share: the event log the tests read, the control endpoints,
and the way a stand-in process tells its parent where it listens.

Control endpoints (loopback only, never part of a provider's API):
    GET  /_e2e/health          200 "ok"
    GET  /_e2e/events          {"events": [...]} every request/utterance seen, with wall times
    POST /_e2e/reset           forget events (scripts are kept)
    POST /_e2e/script          the scripted behaviour (shape depends on the stand-in)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Callable

from aiohttp import web


class EventLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"kind": kind, "t": time.time(), **fields}
        self.events.append(ev)
        return ev


def control_routes(app: web.Application, log: EventLog, set_script: Callable[[dict], None]) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def events(_: web.Request) -> web.Response:
        return web.json_response({"events": log.events})

    async def reset(_: web.Request) -> web.Response:
        log.events.clear()
        return web.json_response({"ok": True})

    async def script(request: web.Request) -> web.Response:
        set_script(await request.json())
        return web.json_response({"ok": True})

    app.router.add_get("/_e2e/health", health)
    app.router.add_get("/_e2e/events", events)
    app.router.add_post("/_e2e/reset", reset)
    app.router.add_post("/_e2e/script", script)


def token_of(request: web.Request, scheme: str) -> str | None:
    """The credential of `Authorization: <scheme> <key>`, or None (the real APIs answer 401)."""
    value = request.headers.get("Authorization", "")
    if not value.lower().startswith(scheme.lower() + " "):
        return None
    return value.split(" ", 1)[1].strip() or None


def serve(app: web.Application, name: str) -> None:
    """Run `app` on --host/--port (port 0: any free one) and print `READY <port>` once listening."""
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit(f"{name}: refusing to listen on {args.host}: loopback only")

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"READY {port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default
