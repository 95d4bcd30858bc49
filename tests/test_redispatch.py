"""Callers left waiting are dispatched again once a worker registers (worker.py, Redispatch).

livekit-server dispatches a room's agent once: a caller who rang while no worker was registered
(a redeploy gap) waits in silence for ever (e2e/README.md, finding 1). The worker looks for such
rooms once registered and creates the dispatch again. Here against a stand-in of LiveKit's API
(Twirp) holding rooms, participants and dispatches; the e2e tier shows it on the real server
(tests/e2e/test_calls.py, test_worker_started_after_the_caller_is_waiting)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch, models, room

import worker
from tests.fakes.livekit_api import FakeLiveKit, TwirpError

AGENT = "equipment-rental"
SIP, AGENT_KIND, STANDARD = (models.ParticipantInfo.Kind.SIP, models.ParticipantInfo.Kind.AGENT,
                             models.ParticipantInfo.Kind.STANDARD)


class CallsLiveKit(FakeLiveKit):
    """FakeLiveKit with rooms that have participants and agent dispatches, as livekit-server
    lists them (a dispatch's state.created_at and its jobs' state.started_at in ns)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, dict[str, Any]] = {}
        self.accept = True  # dispatches made get a job at once (False: no worker takes them)
        self._routes.update({
            "livekit.RoomService/ListRooms": (room.ListRoomsRequest, self._rooms, "room_list"),
            "livekit.RoomService/ListParticipants": (room.ListParticipantsRequest, self._participants,
                                                     "room_admin"),
            "livekit.AgentDispatchService/ListDispatch": (agent_dispatch.ListAgentDispatchRequest,
                                                          self._list_dispatch, "room_admin"),
            "livekit.AgentDispatchService/CreateDispatch": (agent_dispatch.CreateAgentDispatchRequest,
                                                            self._create, "room_admin"),
        })

    def add(self, name: str, *, age: float = 60.0, kinds: tuple[int, ...] = (SIP,),
            dispatch_age: float | None = 60.0, job_age: float | None = None, agent: str = AGENT) -> None:
        now = time.time()
        d = []
        if dispatch_age is not None:
            ad = agent_dispatch.AgentDispatch(id=self.new_id("AD_"), agent_name=agent, room=name)
            ad.state.created_at = int((now - dispatch_age) * 1e9)
            if job_age is not None:
                job = agent_pb.Job(id=self.new_id("AJ_"), agent_name=agent)
                job.state.started_at = int((now - job_age) * 1e9)
                job.state.status = agent_pb.JobStatus.JS_RUNNING
                ad.state.jobs.append(job)
            d.append(ad)
        self.calls[name] = {"created": now - age, "kinds": kinds, "dispatches": d}

    def _rooms(self, req: room.ListRoomsRequest, _c: Any) -> room.ListRoomsResponse:
        return room.ListRoomsResponse(rooms=[
            models.Room(name=n, sid="RM_" + n, creation_time=int(c["created"]),
                        creation_time_ms=int(c["created"] * 1000), num_participants=len(c["kinds"]))
            for n, c in self.calls.items()])

    def _participants(self, req: room.ListParticipantsRequest, _c: Any) -> room.ListParticipantsResponse:
        if req.room not in self.calls:
            raise TwirpError(404, "not_found", "room not found")
        return room.ListParticipantsResponse(participants=[
            models.ParticipantInfo(identity=f"p{i}", kind=k) for i, k in enumerate(self.calls[req.room]["kinds"])])

    def _list_dispatch(self, req: agent_dispatch.ListAgentDispatchRequest, _c: Any
                       ) -> agent_dispatch.ListAgentDispatchResponse:
        return agent_dispatch.ListAgentDispatchResponse(
            agent_dispatches=self.calls.get(req.room, {}).get("dispatches", []))

    def _create(self, req: agent_dispatch.CreateAgentDispatchRequest, _c: Any) -> agent_dispatch.AgentDispatch:
        ad = agent_dispatch.AgentDispatch(id=self.new_id("AD_"), agent_name=req.agent_name, room=req.room,
                                          metadata=req.metadata)
        ad.state.created_at = time.time_ns()
        if self.accept:  # a worker takes the job at once, as livekit-server records it
            job = agent_pb.Job(id=self.new_id("AJ_"), agent_name=req.agent_name)
            job.state.started_at = time.time_ns()
            ad.state.jobs.append(job)
        self.calls.setdefault(req.room, {"created": time.time(), "kinds": (), "dispatches": []})["dispatches"].append(ad)
        self.dispatches.append(ad)
        return ad


@pytest.fixture
def lk() -> Any:
    with CallsLiveKit() as fake:
        yield fake


def client(fake: FakeLiveKit) -> api.LiveKitAPI:
    return api.LiveKitAPI(fake.url, fake.api_key, fake.api_secret)


async def sweep(fake: CallsLiveKit, **kw: Any) -> tuple[list[str], list[str]]:
    async with client(fake) as lk:
        return await worker.redispatch_waiting_calls(lk, AGENT, **kw)


async def test_a_caller_waiting_with_no_agent_is_dispatched_again(lk: CallsLiveKit) -> None:
    lk.add("call-_+15550001_abc")  # dispatched at room start, no worker then: no job
    done, later = await sweep(lk)
    assert done == ["call-_+15550001_abc"] and later == []
    [made] = lk.dispatches
    assert made.agent_name == AGENT and made.room == "call-_+15550001_abc"
    assert json.loads(made.metadata) == {"redispatched": True}


@pytest.mark.parametrize("kw", [
    {"kinds": (SIP, AGENT_KIND)},  # the agent is there
    {"kinds": (STANDARD,)},  # no phone caller
    {"kinds": ()},  # empty room
], ids=["agent-present", "no-sip-caller", "empty"])
async def test_rooms_that_are_not_a_waiting_caller_are_left_alone(lk: CallsLiveKit, kw: dict) -> None:
    lk.add("call-_+15550002_abc", **kw)
    assert await sweep(lk) == ([], [])
    assert lk.dispatches == []


async def test_only_rooms_of_the_dispatch_rule_prefix(lk: CallsLiveKit) -> None:
    lk.add("meeting-1")
    lk.add("test-call-abc")
    assert await sweep(lk) == ([], [])
    assert await sweep(lk, prefix="test-call-") == (["test-call-abc"], [])


async def test_a_room_meant_for_another_agent_is_left_alone(lk: CallsLiveKit) -> None:
    """Another phone line's agent, or a room nobody dispatched an agent to: not ours to answer."""
    lk.add("call-_+15550003_abc", agent="another-agent")
    lk.add("call-_+15550014_abc", dispatch_age=None)
    assert await sweep(lk) == ([], [])
    assert lk.dispatches == []


async def test_a_room_or_dispatch_too_young_to_judge_is_looked_at_later(lk: CallsLiveKit) -> None:
    """livekit-server may still be offering the room's job to a worker: seconds later it is
    judged again (Redispatch runs up to ROUNDS sweeps, `grace` apart)."""
    lk.add("call-_+15550004_abc", age=1.0, dispatch_age=1.0)
    assert await sweep(lk) == ([], ["call-_+15550004_abc"])
    assert lk.dispatches == []
    later = time.time() + 10
    assert await sweep(lk, now=lambda: later) == (["call-_+15550004_abc"], [])


async def test_a_recent_job_may_still_bring_its_agent(lk: CallsLiveKit) -> None:
    """A job was assigned 5 s ago: its process may still be starting (16 s on a busy machine,
    e2e finding 7); one assigned long ago whose agent is not in the room has failed."""
    lk.add("call-_+15550005_abc", job_age=5.0)
    lk.add("call-_+15550006_abc", job_age=120.0)
    assert await sweep(lk) == (["call-_+15550006_abc"], [])


async def test_a_dispatch_made_again_is_not_made_twice(lk: CallsLiveKit) -> None:
    lk.add("call-_+15550007_abc")
    assert (await sweep(lk))[0] == ["call-_+15550007_abc"]
    assert await sweep(lk) == ([], [])  # taken by a worker at once
    lk.accept = False
    lk.add("call-_+15550013_abc")
    assert (await sweep(lk))[0] == ["call-_+15550013_abc"]
    assert await sweep(lk) == ([], ["call-_+15550013_abc"])  # ours, just made, not taken yet
    assert len(lk.dispatches) == 2


def redispatcher(lk: CallsLiveKit, state_dir: Path, **kw: Any) -> worker.Redispatch:
    return worker.Redispatch(lk.url, lk.api_key, lk.api_secret, AGENT, state_dir=state_dir, grace=2.0, **kw)


async def test_two_workers_starting_together_dispatch_a_waiting_caller_once(lk: CallsLiveKit,
                                                                              tmp_path: Path) -> None:
    """The sweep runs under a lock every worker of the deployment shares (a file lock in
    STATE_DIR without DATABASE_URL): the second finds the first one's dispatch."""
    lk.add("call-_+15550008_abc")
    lk.add("call-_+15550009_abc")
    lk.latency = 0.05  # each request takes a while: without the lock both would dispatch
    a, b = redispatcher(lk, tmp_path), redispatcher(lk, tmp_path)
    await asyncio.gather(a.run(), b.run())
    assert sorted(d.room for d in lk.dispatches) == ["call-_+15550008_abc", "call-_+15550009_abc"]
    assert sorted(a.dispatched + b.dispatched) == ["call-_+15550008_abc", "call-_+15550009_abc"]


async def test_without_the_lock_both_would_dispatch(lk: CallsLiveKit, tmp_path: Path) -> None:
    """The race the lock prevents, shown: two sweeps without it dispatch the same caller twice."""
    lk.add("call-_+15550010_abc")
    lk.latency = 0.05
    await asyncio.gather(sweep(lk), sweep(lk))
    assert len(lk.dispatches) == 2


async def test_the_lock_is_postgresql_when_database_url_is_set(lk: CallsLiveKit, tmp_path: Path) -> None:
    """Replicas share no disk: with DATABASE_URL the lock is a PostgreSQL advisory lock."""
    from tests.pg_server import PgServer, PgServerError

    try:
        pg = PgServer()
        pg.start()
    except PgServerError as e:
        pytest.skip(f"no PostgreSQL here: {e}")
    try:
        url = pg.create_database()
        lk.add("call-_+15550011_abc")
        lk.latency = 0.05
        # two machines: two STATE_DIRs, one database
        a = redispatcher(lk, tmp_path / "a", database_url=url)
        b = redispatcher(lk, tmp_path / "b", database_url=url)
        with a.lock() as kind:
            assert kind == "postgres"
        await asyncio.gather(a.run(), b.run())
        assert [d.room for d in lk.dispatches] == ["call-_+15550011_abc"]
    finally:
        pg.cleanup()


async def test_postgresql_not_answering_falls_back_to_the_file_lock(tmp_path: Path) -> None:
    r = worker.Redispatch("ws://127.0.0.1:9", "k", "s", AGENT, state_dir=tmp_path,
                          database_url="postgresql://nobody@127.0.0.1:9/none", database_timeout=1.0)
    with r.lock() as kind:
        assert kind == "file"


async def test_a_server_that_fails_leaves_things_as_they_were(lk: CallsLiveKit, tmp_path: Path) -> None:
    """Never raises, bounded: the worker carries on."""
    lk.add("call-_+15550012_abc")
    lk.mode = "error500"
    r = redispatcher(lk, tmp_path)
    assert await r.run() == []
    lk.mode = "hang"
    r = redispatcher(lk, tmp_path, timeout=1.0)
    started = time.monotonic()
    assert await r.run() == []
    assert time.monotonic() - started < 8
    assert lk.dispatches == []


def test_made_from_the_worker_settings(tmp_path: Path) -> None:
    import settings

    s = settings.Settings.lenient({"STATE_DIR": str(tmp_path), "LIVEKIT_AGENT_NAME": "shop-a"})
    r = worker.Redispatch.from_env(s, {"LIVEKIT_URL": "wss://x.livekit.cloud", "LIVEKIT_API_KEY": "k",
                                       "LIVEKIT_API_SECRET": "s"})
    assert r is not None and r.url == "https://x.livekit.cloud" and r.agent_name == "shop-a"
    assert worker.Redispatch.from_env(s, {}) is None
