"""Capacity and redeploys on the real thing: the overflow answer once every line is taken, and a
worker that drains on SIGTERM while a second one takes the new calls."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import skip_reason

if skip_reason():
    pytest.skip(skip_reason(), allow_module_level=True)

import asyncio  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from tests.e2e.calls import rtc_call, sip_call, wait_for_speech_end  # noqa: E402
from tests.e2e.conftest import CAPACITY_NUMBER, wait_ready  # noqa: E402
from tests.e2e.rtc_caller import RtcCaller  # noqa: E402
from tests.e2e.test_calls import INVENTORY_RULES, QUESTION, QUESTION_TRANSCRIPT, assert_call, phone  # noqa: E402
from tests.e2e.test_conversations import assert_shop_hung_up  # noqa: E402

# ------------------------------------------------------------------------- capacity reached

OVERFLOW_SPEECH = 2.0  # seconds of speech: the busy line and "please call back" (~5 s of espeak)


async def test_capacity_reached_the_overflow_answer_plays(stack, capacity_line, sniffer, run_dir, standins,
                                                          results, n_calls):
    """A worker with one call slot (MAX_CONCURRENT_CALLS=1) and one overflow slot: while a first
    caller talks to the agent, a second one is answered, hears the overflow answer (all lines
    busy, please call back: no transfer number here) and is hung up. Not silence, not endless
    ringing. The first call goes on undisturbed."""
    w = capacity_line
    for i in range(n_calls):
        mark = w.mark()
        first = asyncio.ensure_future(sip_call(stack, w, sniffer, run_dir, phone=phone(301, i), name=f"busy-{i}",
                                               dialled=CAPACITY_NUMBER, hang_up_after=26.0))
        # the first caller is answered and talking to the agent (the slot is taken) before the next rings
        await asyncio.to_thread(w.wait_for, lambda ln: "call in progress" in ln.text, 60, start=mark,
                                what="the first call in progress")
        await asyncio.sleep(2.0)
        second = await sip_call(stack, w, sniffer, run_dir, phone=phone(302, i), name=f"overflow-{i}",
                                dialled=CAPACITY_NUMBER, hang_up_after=30.0, ring_for=25.0)
        busy = await first
        ack = second.answered_at or 0.0
        heard = second.heard.speech_seconds(after=ack) if second.heard and second.answered_at else 0.0
        results.add("capacity_overflow", "sip", **second.timings(), overflow_speech_heard_s=round(heard, 2),
                    answer_to_bye_s=(second.shop_hung_up_at - ack) if second.shop_hung_up_at and second.answered_at else None)
        results.add("capacity_busy_call", "sip", **busy.timings())
        assert second.sip["sipp_rc"] == 0, f"sipp reported a failed call: {second.sip['errors']}"
        assert second.sip["answered"], f"the caller past capacity was never answered (ringing): {second.describe()}"
        assert heard >= OVERFLOW_SPEECH, f"the overflow answer was not heard ({heard:.2f}s): {second.describe()}"
        assert_shop_hung_up(second, "overflow")
        assert any("Overflow call" in ln.text for ln in w.call_lines(second.room_id)), (
            "the call past capacity did not get the overflow answer")
        assert busy.sip["sipp_rc"] == 0, f"the first call failed: {busy.sip['errors']}"
        assert_call(busy)


# ------------------------------------------------------------------------- SIGTERM during a call

DRAIN_AGENT = "equipment-rental-e2e-drain"


async def test_sigterm_during_a_call_the_call_finishes_and_new_calls_go_to_the_other_worker(
        stack, make_worker, standins, results, n_calls):
    """Two workers registered under one agent name (a redeploy with overlap). A call is in
    progress on one of them when it gets SIGTERM: that call carries on (the caller's question is
    still answered) and ends normally, the draining worker then exits 0; a call placed after the
    SIGTERM goes to the other worker. The drained worker is replaced before the next round."""
    openai_standin, deepgram_standin = standins
    openai_standin.script(rules=INVENTORY_RULES)
    deepgram_standin.script(transcripts=[QUESTION_TRANSCRIPT])
    # long enough for the drained call to finish while the second caller is served (30 s by default)
    pool = [make_worker(f"drain-{k}", agent_name=DRAIN_AGENT, DRAIN_TIMEOUT="120") for k in range(2)]
    for w in pool:
        wait_ready(w)
    spawned = 2
    for i in range(n_calls):
        openai_standin.reset()
        deepgram_standin.reset()
        marks = {w.name: w.mark() for w in pool}
        room = f"call-_{phone(303, i)}_drain"
        caller = RtcCaller(stack.livekit_url, stack.api_key, stack.api_secret, room, DRAIN_AGENT, phone=phone(303, i))
        await caller.join()
        room_id = await caller.room.sid
        greeting = await wait_for_speech_end(caller.heard, caller.connected_at or 0.0, 40.0)
        assert greeting is not None, "the first caller was not greeted"
        [busy] = [w for w in pool if w.call_lines(room_id, marks[w.name])]
        other = next(w for w in pool if w is not busy)
        sigterm_at = time.monotonic()
        busy.send_signal(signal.SIGTERM)
        # the call goes on: the caller asks, the agent answers from the inventory
        said_at = await caller.say(QUESTION)
        reply = await wait_for_speech_end(caller.heard, said_at, 20.0)
        # a new call now goes to the other worker, not the draining one
        new = await rtc_call(stack, other, phone=phone(304, i), agent_name=DRAIN_AGENT)
        await caller.hang_up()
        summary = await asyncio.to_thread(busy.wait_call_summary, room_id, 40.0, marks[busy.name])
        rc = await asyncio.to_thread(busy.proc.wait, 60)
        results.add("sigterm_drain", "rtc", room=room, sigterm_to_exit_s=round(time.monotonic() - sigterm_at, 2),
                    hangup_to_job_end_s=summary.mono - (caller.hung_up_at or 0.0),
                    voice_to_voice_s=[reply[0] - caller.said[-1][1]] if reply else [])
        assert reply is not None, "the call in progress was not answered after the SIGTERM"
        assert "caller" in summary.json.get("message", ""), f"the drained call ended badly: {summary.text[:300]}"
        assert rc == 0, f"the draining worker exited {rc}"
        assert new.reached_worker and not busy.call_lines(new.room_id, marks[busy.name]), (
            f"a call placed during the drain did not go to the other worker: {new.describe()}")
        assert_call(new)
        looked_up = [c for c in openai_standin.events("chat")
                     if c["messages"] and c["messages"][-1].get("role") == "tool"
                     and "EX-101" in str(c["messages"][-1].get("content"))]
        assert looked_up, "the draining worker's call did not answer from the inventory"
        pool.remove(busy)
        if i + 1 < n_calls:  # the redeploy's new worker, for the next round
            spawned += 1
            fresh = make_worker(f"drain-{spawned}", agent_name=DRAIN_AGENT, DRAIN_TIMEOUT="120")
            wait_ready(fresh)
            pool.append(fresh)
