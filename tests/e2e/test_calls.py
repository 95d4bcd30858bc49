"""Calls on the real thing: a real LiveKit server and SIP bridge, the real worker, real audio.

Every scenario asserts what the caller and the shop would see (greeted, answered from the
inventory, the job ended, the room deleted, no error in the call's log), never how long it took:
the timings go to e2e/results/e2e-timings.json. E2E_CALLS sets the calls per scenario.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import skip_reason

if skip_reason():  # one line in `make test`, and nothing heavy imported there
    pytest.skip(skip_reason(), allow_module_level=True)

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

from tests.e2e.calls import Outcome, refused_by_worker, rtc_call, sip_call, wait_for_speech_end  # noqa: E402
from tests.e2e.rtc_caller import RtcCaller  # noqa: E402

QUESTION = "Hi, do you have a mini excavator I could rent tomorrow?"
# what the Deepgram stand-in hears: Deepgram's shape (punctuated, capitalised)
QUESTION_TRANSCRIPT = "Hi, do you have a mini excavator I could rent tomorrow?"
ANSWER = "Yes, we have the Kubota KX040 mini excavator at 325 dollars a day. Shall I book it for you?"
INVENTORY_RULES = [
    {"user": "excavator", "tool": "look_up_equipment", "arguments": {"category": "excavator"}},
    {"after_tool": "look_up_equipment", "say": ANSWER},
]


def assert_call(out: Outcome) -> None:
    """Greeted, the job ended, the room was deleted, and nothing went wrong in the call."""
    what = out.describe()
    assert out.room and out.reached_worker, f"no job for this call reached the worker: {what}"
    assert not out.error_lines, f"errors in the call's log: {out.error_lines}"
    assert out.greeted, f"the caller was not greeted: {what}"
    assert out.job_ended, f"the job did not end after the caller hung up: {what}"
    reason = out.summary.json.get("message", "") if out.summary else ""
    assert "caller left" in reason or "caller hung up" in reason, f"job ended for another reason: {reason}"
    assert out.room_deleted_after is not None, f"the room was not deleted: {what}"


def phone(scenario: int, i: int) -> str:
    return f"+1555{scenario:03d}{i:04d}"


def assert_no_job_left(worker) -> None:
    deadline = time.monotonic() + 10
    while worker.status().get("active_jobs", 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.status().get("active_jobs", 0) == 0, f"jobs still running: {worker.status()}"


# ------------------------------------------------------------------------- greet, hang up


async def test_rtc_caller_is_greeted_then_hangs_up(stack, worker, standins, results, n_calls):
    for i in range(n_calls):
        out = await rtc_call(stack, worker, phone=phone(101, i))
        results.add("greet_and_hang_up", "rtc", **out.timings())
        assert_call(out)
    assert_no_job_left(worker)


async def test_sip_caller_is_greeted_then_hangs_up(stack, worker, sip_line, sniffer, run_dir, standins,
                                                   results, n_calls):
    for i in range(n_calls):
        out = await sip_call(stack, worker, sniffer, run_dir, phone=phone(102, i), name=f"greet-{i}",
                             hang_up_after=10.0)
        results.add("greet_and_hang_up", "sip", **out.timings())
        assert out.sip["sipp_rc"] == 0, f"sipp reported a failed call: {out.sip['errors']}"
        assert out.sip["invite_to_200_s"] is not None, "the INVITE was never answered with 200 OK"
        assert_call(out)
    assert_no_job_left(worker)


# ------------------------------------------------------------------------- one question


def assert_answered_from_inventory(openai_standin, deepgram_standin, out: Outcome) -> None:
    finals = [e for e in deepgram_standin.events("stt_final") if e["text"] == QUESTION_TRANSCRIPT]
    assert finals, f"the STT stand-in never finalised the caller's question: {deepgram_standin.events()}"
    chats = openai_standin.events("chat")
    asked = [c for c in chats if any(m.get("role") == "user" and "excavator" in str(m.get("content"))
                                     for m in c["messages"])]
    assert asked, "the LLM never saw the caller's question"
    looked_up = [c for c in chats if c["messages"] and c["messages"][-1].get("role") == "tool"]
    assert looked_up, "the look_up_equipment tool result never reached the LLM"
    tool_output = str(looked_up[-1]["messages"][-1].get("content"))
    assert "Kubota KX040" in tool_output and "EX-101" in tool_output, f"not from the inventory: {tool_output}"
    assert out.replies, f"the caller heard no answer after asking: {out.describe()}"


async def test_rtc_caller_question_answered_from_inventory(stack, worker, standins, results, n_calls):
    openai_standin, deepgram_standin = standins
    openai_standin.script(rules=INVENTORY_RULES)
    deepgram_standin.script(transcripts=[QUESTION_TRANSCRIPT])
    for i in range(n_calls):
        openai_standin.reset()
        deepgram_standin.reset()
        out = await rtc_call(stack, worker, phone=phone(103, i), say=[QUESTION])
        said_end = out.sip["said"][0]["end"]
        results.add("question_answered", "rtc", **out.timings(),
                    end_of_speech_to_first_reply_audio_s=(out.replies[0][0] - said_end) if out.replies else None)
        assert_call(out)
        assert_answered_from_inventory(openai_standin, deepgram_standin, out)


async def test_sip_caller_question_answered_from_inventory(stack, worker, sip_line, sniffer, run_dir,
                                                           standins, results, n_calls):
    openai_standin, deepgram_standin = standins
    openai_standin.script(rules=INVENTORY_RULES)
    deepgram_standin.script(transcripts=[QUESTION_TRANSCRIPT])
    for i in range(n_calls):
        openai_standin.reset()
        deepgram_standin.reset()
        # sipp cannot wait for the greeting (~4.5 s, starting 0.5-1.5 s after the answer): the
        # question comes at a fixed 8 s, once it is over
        out = await sip_call(stack, worker, sniffer, run_dir, phone=phone(104, i), name=f"question-{i}",
                             script=[(8.0, QUESTION)], hang_up_after=18.0)
        said = out.sip["said"][0]
        ack = out.answered_at or 0.0
        replies = [b for b in out.replies if b[0] > ack + said["end"]]
        out.replies = replies
        results.add("question_answered", "sip", **out.timings(),
                    end_of_speech_to_first_reply_audio_s=(replies[0][0] - ack - said["end"]) if replies else None)
        assert out.sip["sipp_rc"] == 0, f"sipp reported a failed call: {out.sip['errors']}"
        assert_call(out)
        assert_answered_from_inventory(openai_standin, deepgram_standin, out)


# ------------------------------------------------------------------------- five at once

GREETING_STARTED = 0.3  # seconds of agent speech: the greeting reached the caller


@pytest.mark.parametrize("kind", ["rtc", "sip"])
async def test_five_calls_at_once(kind, stack, worker, sip_line, sniffer, run_dir, standins, results):
    """Five callers at the same moment (the rooms are created together with the agent's dispatch,
    as the SIP bridge does): none is refused (livekit-agents 1.8.9 refused the third of a burst
    to an idle worker, fixed in worker.TruthfulServer), each is greeted, its job ends, its room is
    deleted. Calls past the idle processes wait for one to start (seconds, more on two busy
    cores: timings record it), so "greeted" allows a minute."""
    if kind == "rtc":
        from livekit import api

        rooms = [f"call-_{phone(105, i)}_{int(time.time())}" for i in range(5)]
        async with api.LiveKitAPI(stack.livekit_url.replace("ws", "http", 1), stack.api_key,
                                  stack.api_secret) as lk:
            await asyncio.gather(*(lk.room.create_room(api.CreateRoomRequest(
                name=r, agents=[api.RoomAgentDispatch(agent_name=worker.agent_name)])) for r in rooms))
        outs = await asyncio.gather(*(rtc_call(stack, worker, phone=phone(105, i), room=rooms[i],
                                               dispatch=False, greeting_timeout=60.0) for i in range(5)))
    else:
        outs = await asyncio.gather(*(sip_call(stack, worker, sniffer, run_dir, phone=phone(106, i),
                                               name=f"five-{i}", hang_up_after=14.0, ring_for=60.0)
                                      for i in range(5)))
    refused = [o for o in outs if not o.reached_worker and refused_by_worker(stack, o.room)]
    for out in outs:
        results.add("five_at_once", kind, refused_by_worker=out in refused, **out.timings())
    assert len({o.room for o in outs}) == 5, [o.room for o in outs]
    assert not refused, f"{len(refused)} of 5 calls refused by the worker: {[o.describe() for o in refused]}"
    for out in outs:
        # on two cores shared with the SFU and the SIP bridge, five greetings arrive chopped (a
        # second of speech or less heard, README finding 4): greeted here means the greeting
        # reached the caller; speech_heard_s in the timings says how much of it
        out.min_speech = GREETING_STARTED
        if kind == "sip":
            assert out.sip["sipp_rc"] == 0, f"sipp reported a failed call: {out.sip['errors']}"
        assert_call(out)
    assert_no_job_left(worker)


# ------------------------------------------------------------------------- a late worker

async def late_worker_call(stack, make_worker, results, i: int, *, workers: int = 1,
                           listen: float = 40.0) -> tuple[Outcome, list]:
    """A caller joins with the agent dispatched by name while no worker of that name exists (a
    redeploy gap); 3 s later `workers` workers start together. livekit-server dispatched the
    room once, to nobody, and never again: once registered, a worker dispatches the waiting
    caller again (worker.Redispatch), under a lock so that two workers do it once."""
    agent_name = f"late-agent-{'abcdefghijklmnopqrstuvwxyz'[i % 26]}{workers}"
    room = f"call-_{phone(107, i)}_late{workers}"
    caller = RtcCaller(stack.livekit_url, stack.api_key, stack.api_secret, room, agent_name,
                       phone=phone(107, i))
    await caller.join()
    room_id = await caller.room.sid
    waited = 3.0
    await asyncio.sleep(waited)  # the caller waits; no worker is registered under that name
    # one STATE_DIR: workers on one machine share the file lock (PostgreSQL's across machines)
    lates = [make_worker(f"{agent_name}-worker{k}", agent_name=agent_name, state_name=f"late-{agent_name}")
             for k in range(workers)]
    try:
        registered = min(w.wait_registered(90).mono for w in lates)
        greeting = await wait_for_speech_end(caller.heard, caller.connected_at or 0.0, listen)
        heard = caller.heard.speech_seconds(after=caller.connected_at or 0.0)
        await asyncio.sleep(1.0)
    finally:
        await caller.hang_up()
    jobs = [w for w in lates if w.call_lines(room_id)]
    summaries = []
    for w in jobs:
        with contextlib.suppress(TimeoutError):
            summaries.append(await asyncio.to_thread(w.wait_call_summary, room_id, 30.0))
    for w in lates:
        await asyncio.to_thread(w.stop, 30)
    results.add("worker_started_late", "rtc", room=room, workers=workers, caller_waited_s=waited,
                registered_to_first_audio_s=(greeting[0] - registered) if greeting else None)
    return Outcome("rtc", room=room, room_id=room_id, answered_at=caller.connected_at,
                   hung_up_at=caller.hung_up_at, greeting=greeting, greeted_speech=heard,
                   reached_worker=bool(jobs)), summaries


async def test_worker_started_after_the_caller_is_waiting(stack, make_worker, standins, results, n_calls):
    """The caller is already in the room (dispatch requested, no worker registered) when the first
    worker for the agent name registers: the caller is greeted, not left in silence."""
    for i in range(n_calls):
        out, summaries = await late_worker_call(stack, make_worker, results, i)
        assert out.greeted, f"a caller waiting when the worker registered was never greeted: {out.describe()}"
        assert len(summaries) == 1, f"one job for the waiting caller, got {len(summaries)}"


async def test_two_workers_starting_together_answer_a_waiting_caller_once(stack, make_worker, standins,
                                                                           results):
    """Two workers register together while a caller waits: both look for waiting callers, under
    the same lock; the caller gets one agent, not two talking over each other."""
    out, summaries = await late_worker_call(stack, make_worker, results, 0, workers=2)
    assert out.greeted, f"the waiting caller was never greeted: {out.describe()}"
    assert len(summaries) == 1, f"the waiting caller got {len(summaries)} agents"
