"""The real worker (`agent.main`: configuration check, server, CLI) whose entrypoint raises for
rooms named ``raise-*``, and runs the real call for every other room.

Used by tests/test_worker.py to check that an exception escaping the entrypoint ends that job
(the worker reports its end over the dispatch protocol) and the worker goes on taking calls. No
honest input produces such an exception: agent.py catches every failure of a call on purpose.

Job processes re-import this script as ``__mp_main__`` and find ``raising_entrypoint`` by name,
so it lives at module level. Usage: ``python tests/fakes/raising_agent.py start``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import agent  # noqa: E402
from livekit.agents import JobContext  # noqa: E402

RAISE_PREFIX = "raise-"


class RaisedByTest(RuntimeError):
    pass


async def raising_entrypoint(ctx: JobContext) -> None:
    if ctx.job.room.name.startswith(RAISE_PREFIX):
        raise RaisedByTest(f"entrypoint raised on purpose for room {ctx.job.room.name}")
    await agent.entrypoint(ctx)


if __name__ == "__main__":
    sys.exit(agent.main(sys.argv, entrypoint=raising_entrypoint))
