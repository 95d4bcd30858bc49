"""Capacity in calls, bursts included, and the overflow slots (worker.py, TruthfulServer).

livekit-agents 1.8.9 counts a call accepted but not yet running as load_threshold /
num_idle_processes while no job runs (``_get_effective_load``, worker.py:1331), whatever
``load_fnc`` says: an idle worker with 2 idle processes refused the third of three calls arriving
together, and LiveKit drops a refused job for good (e2e/README.md, finding 2). TruthfulServer
counts every call, running or accepted, as one slot of MAX_CONCURRENT_CALLS + MAX_OVERFLOW_CALLS;
a call past MAX_CONCURRENT_CALLS is accepted with ``rental.overflow=1`` (the overflow answer).

A real ``python agent.py start`` driven through the dispatch protocol (tests/fakes/dispatch_server.py):
each call is offered once (``retry=False``), as LiveKit's server does. The e2e tier repeats the
burst on the real server (test_five_calls_at_once) and plays the overflow answer to a SIP caller.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import AgentServer

import worker
from tests.fakes.dispatch_server import DispatchError
from tests.worker_proc import AGENT_PY, END_MARGIN, start_worker, wait_for


def test_the_pinned_framework_still_has_what_truthful_server_overrides() -> None:
    """Private API of livekit-agents 1.8.9 that TruthfulServer relies on: an upgrade that renames
    it fails here first (and the burst test below would show what it costs)."""
    import inspect

    from livekit.agents import version

    assert version.__version__ == "1.8.9", "re-check worker.TruthfulServer against the new framework"
    src = inspect.getsource(AgentServer)
    assert "def _get_effective_load(self) -> float:" in src
    assert "self._reserved_slots += 1" in src and "self._reserved_slots -= 1" in src
    assert "return self._get_effective_load() < load_threshold" in src  # _is_available
    assert "effective_load = self._get_effective_load()" in src  # _update_worker_status


def overflow_flags(server: Any) -> dict[str, bool]:
    """job id -> accepted as an overflow call, from the worker's availability answers."""
    out = {}
    for rec in server.messages_of("availability", "in"):
        a = rec.msg.availability
        if a.available:
            out[a.job_id] = a.participant_attributes.get(worker.OVERFLOW_ATTRIBUTE) == "1"
    return out


def test_a_burst_is_accepted_up_to_every_slot_the_last_ones_as_overflow(tmp_path: Path) -> None:
    """Four calls at the same moment to an idle worker with 2 idle processes, 3 call slots and 1
    overflow slot: all four accepted at the first offer (1.8.9 refused the third), the fourth
    as an overflow call; a fifth, past every slot, is refused."""
    gen = start_worker(AGENT_PY, tmp_path, "burst.log", NUM_IDLE_PROCESSES="2", MAX_CONCURRENT_CALLS="3",
                        MAX_OVERFLOW_CALLS="1", ROOM_CONNECT_TIMEOUT="8")
    w = next(gen)
    try:
        server = w.server
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(server.dispatch, f"call-burst-{i}", url=w.hang.url, retry=False,
                                   accept_timeout=20) for i in range(4)]
            ids = [f.result() for f in futures]  # DispatchError: refused at the first offer
        flags = overflow_flags(server)
        assert all(server.jobs[j].rejections == 0 for j in ids), w.diagnostics()
        assert sorted(flags[j] for j in ids) == [False, False, False, True], (flags, w.diagnostics())
        assert wait_for(lambda: server.worker_status == "WS_FULL", 5), "every slot taken: full" + w.diagnostics()
        with pytest.raises(DispatchError):
            server.dispatch("call-burst-5", url=w.hang.url, retry=False, accept_timeout=3,
                            to_conn=server.registrations[-1].conn)
        for j in ids:  # the hanging rooms time out (ROOM_CONNECT_TIMEOUT): every job ends
            assert server.wait_job_end(j, 8 + END_MARGIN + 10).end_status == "JS_SUCCESS", w.diagnostics()
        assert server.wait_worker_available(10), w.diagnostics()
        after = server.dispatch("call-after", url=w.hang.url, retry=False)
        assert overflow_flags(server)[after] is False, "slots free again: an agent call"
    finally:
        gen.close()


def test_no_overflow_slots_refuses_past_max_concurrent_calls(tmp_path: Path) -> None:
    """MAX_OVERFLOW_CALLS=0: the worker says it is full at MAX_CONCURRENT_CALLS, as before."""
    gen = start_worker(AGENT_PY, tmp_path, "no-overflow.log", MAX_CONCURRENT_CALLS="1",
                        MAX_OVERFLOW_CALLS="0", ROOM_CONNECT_TIMEOUT="6")
    w = next(gen)
    try:
        server = w.server
        busy = server.dispatch("busy-1", url=w.hang.url, retry=False)
        assert overflow_flags(server)[busy] is False
        assert wait_for(lambda: server.worker_status == "WS_FULL", 5), w.diagnostics()
        with pytest.raises(DispatchError):
            server.dispatch("busy-2", url=w.hang.url, retry=False, accept_timeout=3,
                            to_conn=server.registrations[-1].conn)
    finally:
        gen.close()
