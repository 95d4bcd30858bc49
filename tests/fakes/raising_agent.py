"""Run the real agent.py worker, but make the entrypoint raise for rooms named ``raise-*``.

Used by tests/test_worker.py to check that an exception escaping the entrypoint ends that job
(the worker reports its end over the dispatch protocol) and the worker goes on taking calls.

Why a wrapper and not a natural input: every input a room job can receive from the dispatch
protocol (room URL, token, room name, metadata) is handled by agent.py on purpose: a failed
connect is caught and ends the job with ``ctx.shutdown``. An exception escaping the entrypoint is
exactly what that handling exists to prevent, so no honest input produces it. The wrapper leaves
agent.py untouched: it imports the module, keeps its ``AgentServer`` (options, prewarm, health
server, configuration check, CLI), and wraps the registered entrypoint so that it raises
``RaisedByTest`` for ``raise-*`` rooms and calls the real entrypoint for every other room.

The wrap happens at import time, outside the ``__main__`` guard, on purpose: job processes
re-import this script as ``__mp_main__`` and unpickle the entrypoint by reference
(``__main__.raising_entrypoint``), so the child must define it too.

Usage: ``python tests/fakes/raising_agent.py start`` (same arguments and environment as agent.py;
``AGENT_PY`` may point at another agent file).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from livekit.agents import AgentServer, JobContext

ROOT = Path(__file__).resolve().parents[2]
AGENT_PY = Path(os.environ.get("AGENT_PY", ROOT / "agent.py")).resolve()
RAISE_PREFIX = "raise-"

sys.path.insert(0, str(AGENT_PY.parent))
_spec = importlib.util.spec_from_file_location(AGENT_PY.stem, AGENT_PY)
assert _spec is not None and _spec.loader is not None
agent_module = importlib.util.module_from_spec(_spec)
sys.modules[AGENT_PY.stem] = agent_module
_spec.loader.exec_module(agent_module)

_servers = [v for v in vars(agent_module).values() if isinstance(v, AgentServer)]
if len(_servers) != 1:
    raise SystemExit(f"{AGENT_PY}: expected one module-level AgentServer, found {len(_servers)}")
server: AgentServer = _servers[0]
_original_entrypoint = server._entrypoint_fnc  # noqa: SLF001 - no public getter in 1.8.9
if _original_entrypoint is None:
    raise SystemExit(f"{AGENT_PY}: no rtc_session entrypoint registered at import time")


class RaisedByTest(RuntimeError):
    pass


async def raising_entrypoint(ctx: JobContext) -> None:
    if ctx.job.room.name.startswith(RAISE_PREFIX):
        raise RaisedByTest(f"entrypoint raised on purpose for room {ctx.job.room.name}")
    await _original_entrypoint(ctx)


server._entrypoint_fnc = raising_entrypoint  # noqa: SLF001


def main() -> int:
    """Run agent.py's own start-up path (configuration check, then the CLI) with the wrapped
    server: agent.py defines ``main(argv) -> int``."""
    fn = getattr(agent_module, "main", None)
    if not callable(fn):
        raise SystemExit(f"{AGENT_PY}: no main(argv) to call; update tests/fakes/raising_agent.py")
    return int(fn(sys.argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
