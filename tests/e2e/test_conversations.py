"""Conversations on the real thing, by a real SIP call (sipp): a spoken booking through to the
reservations CSV and the agent's goodbye and hang-up; the caller talking over the greeting; the
caller's first words right after the answer.

sipp cannot listen before it speaks: what the caller says comes at fixed times after the answer,
spaced for the agent's replies (espeak speaks ~2.8 words a second). The Deepgram stand-in hears
the real audio (end-pointing on it) and gives the k-th utterance of the call the k-th scripted
transcript; the OpenAI stand-in answers by rules on the conversation the agent sends it. Outcomes
are asserted (booked once, in the CSV; the BYE arrived after the goodbye; the greeting stopped;
the first words reached the STT whole); timings go to the results file.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import skip_reason

if skip_reason():
    pytest.skip(skip_reason(), allow_module_level=True)

import csv  # noqa: E402
from datetime import date, datetime, timedelta  # noqa: E402
from zoneinfo import ZoneInfo  # noqa: E402

from tests.e2e import audio  # noqa: E402
from tests.e2e.calls import Outcome, sip_call, voice_to_voice  # noqa: E402
from tests.e2e.test_calls import (  # noqa: E402
    INVENTORY_RULES, QUESTION, QUESTION_TRANSCRIPT, assert_answered_from_inventory, assert_call, phone,
)

SHOP_TZ = "America/Chicago"  # the workers' SHOP_TIMEZONE (tests/e2e/stack.py)


def dump(run_dir, name: str, standins) -> None:
    for which, standin in zip(("openai", "deepgram"), standins):
        standin.dump(run_dir / f"sipp-{name}" / f"{which}-events.json")


def shop_today() -> date:
    return datetime.now(ZoneInfo(SHOP_TZ)).date()


# ------------------------------------------------------------------------- a booking

# One sentence each: espeak pauses ~0.4 s at a full stop, which the STT stand-in (like Deepgram
# with short end-pointing) would end an utterance at, shifting every scripted transcript after it.
ASK = "Hi, do you have a mini excavator I could rent?"
NAME = "It's Dana Smith, and yes please book it."
BYE = "No thanks, that's all, goodbye."
# what the Deepgram stand-in hears (Deepgram's shape: punctuated, capitalised)
TRANSCRIPTS = [ASK, NAME, BYE]
OFFER = "Yes, the Kubota mini excavator is free that day. What name should I book it under?"
BOOKED = "You're all set, Dana. Anything else?"
GOODBYE = "Thanks for calling Acme Equipment Rental. Goodbye!"


def booking_rules(day: date) -> list[dict]:
    """The model's side of the booking, as a real one would do it with today's tools: look the
    item up for the day, quote it, book it under the caller's name (the number they call from),
    then say goodbye and end the call."""
    d = day.isoformat()
    return [
        {"user": "excavator", "tool": "look_up_equipment",
         "arguments": {"category": "excavator", "start_date": d, "end_date": d}},
        {"after_tool": "look_up_equipment", "tool": "get_quote",
         "arguments": {"equipment_id": "EX-101", "start_date": d, "end_date": d}},
        {"after_tool": "get_quote", "say": OFFER},
        {"user": "Dana Smith", "tool": "book_equipment",
         "arguments": {"equipment_id": "EX-101", "renter_name": "Dana Smith", "start_date": d, "end_date": d}},
        {"after_tool": "book_equipment", "say": BOOKED},
        {"user": "goodbye", "say": GOODBYE, "tool": "end_call", "arguments": {}},
        {"after_tool": "end_call", "say": ""},
    ]


def reservations(run_dir) -> list[dict]:
    path = run_dir / "reservations.csv"
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def tool_outputs(openai_standin, name: str) -> list[str]:
    """The outputs of tool `name` the LLM was sent (its calls' ids matched to the results)."""
    out = []
    for chat in openai_standin.events("chat"):
        msgs = chat["messages"]
        ids = {tc.get("id") for m in msgs if m.get("role") == "assistant"
               for tc in (m.get("tool_calls") or []) if tc.get("function", {}).get("name") == name}
        out += [str(m.get("content")) for m in msgs if m.get("role") == "tool" and m.get("tool_call_id") in ids]
    return list(dict.fromkeys(out))


async def test_spoken_booking_lands_in_the_csv_then_the_agent_says_goodbye_and_hangs_up(
        stack, worker, sip_line, sniffer, run_dir, standins, results, n_calls):
    """A SIP caller asks for a mini excavator, gives their name and says yes, then goodbye: the
    booking is one new row in reservations.csv (the unit, the day, the name, the number they
    called from), the agent says goodbye and hangs up, and the caller's phone gets the BYE."""
    openai_standin, deepgram_standin = standins
    deepgram_standin.script(transcripts=TRANSCRIPTS)
    for i in range(n_calls):
        day = shop_today() + timedelta(days=2 + 2 * i)  # a free day for each call's booking
        openai_standin.script(rules=booking_rules(day), default="Sorry, could you say that again?")
        openai_standin.reset()
        deepgram_standin.reset()
        before = reservations(run_dir)
        caller = phone(201, i)
        out = await sip_call(stack, worker, sniffer, run_dir, phone=caller, name=f"booking-{i}",
                             script=[(7.0, ASK), (17.0, NAME), (25.0, BYE)], hang_up_after=45.0)
        dump(run_dir, f"booking-{i}", standins)
        v2v = voice_to_voice(out)
        goodbye_to_bye = goodbye_before_bye(out)
        results.add("booking", "sip", **out.timings(), voice_to_voice_s=v2v, goodbye_end_to_bye_s=goodbye_to_bye)
        assert out.sip["sipp_rc"] == 0, f"sipp reported a failed call: {out.sip['errors']}"
        assert_shop_hung_up(out, "agent ended call")
        booked = tool_outputs(openai_standin, "book_equipment")
        assert booked and booked[0].startswith("Booked:"), f"book_equipment did not book: {booked}"
        new = [r for r in reservations(run_dir) if r not in before]
        mine = [r for r in new if r.get("Equipment ID") == "EX-101" and r.get("Start") == day.isoformat()]
        assert len(mine) == 1 and len(new) == 1, f"booked once, in the CSV: {new}"
        row = mine[0]
        assert row["End"] == day.isoformat() and row["Renter Name"] == "Dana Smith", row
        assert "".join(c for c in row["Renter Phone"] if c.isdigit()).endswith(caller[-10:]), row
        assert goodbye_to_bye is not None, f"no goodbye heard before the BYE: {out.describe()}"


def goodbye_before_bye(out: Outcome) -> float | None:
    """Seconds from the end of the last agent speech the caller heard to the shop's BYE."""
    if out.heard is None or out.shop_hung_up_at is None:
        return None
    bursts = out.heard.bursts(gap=0.6, after=out.answered_at or 0.0)
    last = [b for b in bursts if b[1] <= out.shop_hung_up_at + 0.05]
    return (out.shop_hung_up_at - last[-1][1]) if last else None


def assert_shop_hung_up(out: Outcome, reason: str) -> None:
    """The shop ended the call: its BYE reached the caller, the job ended for `reason`, the room
    was deleted, and nothing went wrong in the call."""
    what = out.describe()
    assert out.room and out.reached_worker, f"no job for this call reached the worker: {what}"
    assert not out.error_lines, f"errors in the call's log: {out.error_lines}"
    assert out.sip.get("bye_from_shop"), f"the caller's phone never got the shop's BYE: {what}"
    assert out.job_ended, f"the job did not end: {what}"
    summary = out.summary.json.get("message", "") if out.summary else ""
    assert f"reason={reason}" in summary, f"job ended for another reason: {summary}"
    assert out.room_deleted_after is not None, f"the room was not deleted: {what}"


# ------------------------------------------------------------------------- the STT heard it whole

EDGES = 0.15  # 30 ms open an utterance; G.711 and the resamplers blur the edges by a frame or two


def spoken_seconds(text: str) -> float:
    """From the first to the last voiced 10 ms of `text` as the caller says it (8 kHz)."""
    first, last = audio.voiced_bounds(audio.speak(text, 8000), 8000)
    return last - first


def stt_heard(deepgram_standin) -> float:
    """Seconds of the caller's speech the STT stand-in received, from the start of the first
    utterance it heard to the end of the last (the caller says one thing; the stand-in's
    end-pointing runs on the audio the agent sent it): less than was spoken means words were
    lost at the start or the end. (A pause inside, where audio arrived late or thin, may split it
    in two: `stt_utterances` in the results counts them.)"""
    finals = [e for e in deepgram_standin.events("stt_final") if e.get("utterance", 0) >= 0]
    return (max(e["audio_end"] for e in finals) - min(e["audio_start"] for e in finals)) if finals else 0.0


# ------------------------------------------------------------------------- talking over the greeting

FULL_GREETING = 2.0  # seconds of agent speech heard when the greeting plays whole (~2.8 s)


async def test_caller_talks_over_the_greeting(stack, worker, sip_line, sniffer, run_dir, standins,
                                              results, n_calls):
    """The caller starts asking 1.5 s after the answer, while the greeting plays: the greeting
    stops (barge-in), the question is heard whole and answered from the inventory."""
    openai_standin, deepgram_standin = standins
    openai_standin.script(rules=INVENTORY_RULES)
    deepgram_standin.script(transcripts=[QUESTION_TRANSCRIPT])
    spoken_s = spoken_seconds(QUESTION)
    for i in range(n_calls):
        openai_standin.reset()
        deepgram_standin.reset()
        out = await sip_call(stack, worker, sniffer, run_dir, phone=phone(202, i), name=f"barge-in-{i}",
                             script=[(1.5, QUESTION)], hang_up_after=16.0)
        dump(run_dir, f"barge-in-{i}", standins)
        ack = out.answered_at or 0.0
        said = out.sip["said"][0]
        greeting_heard = out.heard.speech_seconds(after=ack, before=ack + said["end"]) if out.heard else 0.0
        v2v = voice_to_voice(out)
        heard_s = stt_heard(deepgram_standin)
        results.add("barge_in", "sip", **out.timings(), greeting_heard_s=greeting_heard, voice_to_voice_s=v2v,
                    spoken_s=round(spoken_s, 3), stt_heard_s=round(heard_s, 3),
                    stt_utterances=len(deepgram_standin.events("stt_final")))
        out.replies = [b for b in out.heard.bursts(gap=0.6, after=ack + said["end"])] if out.heard else []
        out.min_speech = 0.3  # the greeting is cut short: that is the point
        assert out.sip["sipp_rc"] == 0, f"sipp reported a failed call: {out.sip['errors']}"
        assert_call(out)
        assert greeting_heard < FULL_GREETING, (
            f"the greeting went on over the caller ({greeting_heard:.2f}s of it heard while they spoke): "
            f"{out.describe()}")
        assert heard_s >= spoken_s - EDGES, (
            f"the question was cut: the STT heard {heard_s:.2f}s of {spoken_s:.2f}s of speech")
        assert_answered_from_inventory(openai_standin, deepgram_standin, out)


# ------------------------------------------------------------------------- first words

async def test_first_words_right_after_the_answer_are_heard_whole(stack, worker, sip_line, sniffer, run_dir,
                                                                 standins, results, n_calls):
    """The caller speaks 100 ms after the answer, before the agent could have said anything: the
    STT receives the speech from its first syllable (the stand-in's end-pointing on the audio it
    was sent spans all of it), and the question is answered."""
    openai_standin, deepgram_standin = standins
    openai_standin.script(rules=INVENTORY_RULES)
    deepgram_standin.script(transcripts=[QUESTION_TRANSCRIPT])
    spoken_s = spoken_seconds(QUESTION)
    for i in range(n_calls):
        openai_standin.reset()
        deepgram_standin.reset()
        out = await sip_call(stack, worker, sniffer, run_dir, phone=phone(203, i), name=f"first-words-{i}",
                             script=[(0.1, QUESTION)], hang_up_after=14.0)
        dump(run_dir, f"first-words-{i}", standins)
        finals = [e for e in deepgram_standin.events("stt_final") if e["text"] == QUESTION_TRANSCRIPT]
        heard_s = stt_heard(deepgram_standin)
        results.add("first_words", "sip", **out.timings(), spoken_s=round(spoken_s, 3), stt_heard_s=round(heard_s, 3),
                    stt_utterances=len(deepgram_standin.events("stt_final")), voice_to_voice_s=voice_to_voice(out))
        assert out.sip["sipp_rc"] == 0, f"sipp reported a failed call: {out.sip['errors']}"
        assert finals, f"the STT never finalised the first words: {deepgram_standin.events()}"
        assert heard_s >= spoken_s - EDGES, (
            f"the first words were cut: the STT heard {heard_s:.2f}s of {spoken_s:.2f}s of speech")
        ack = out.answered_at or 0.0
        out.replies = out.heard.bursts(gap=0.6, after=ack + out.sip["said"][0]["end"]) if out.heard else []
        out.min_speech = 0.3
        assert_call(out)
        assert_answered_from_inventory(openai_standin, deepgram_standin, out)
