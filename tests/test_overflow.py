"""The overflow answer: a call the worker took past MAX_CONCURRENT_CALLS (worker.py marks it
``rental.overflow=1``) hears a pre-rendered busy line, then is put through to staff (transfer
number set, shop open by the inventory's hours) or asked to call back, and is hung up: never
silence, never endless ringing. Driven with a FakeJob; the e2e tier plays it to a real SIP caller
(tests/e2e/test_calls.py, test_capacity_reached_the_overflow_answer_plays)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import agent as rental
import equipment
import prompts
import voice
import worker
from call_control import CallControl, CallState
from settings import Settings
from tests.fakes.inventory import ALWAYS_OPEN, FakeInventory
from tests.fakes.job import FakeJob, FakeParticipant, FakeRoom
from tests.fakes.tts import FakeTTS

CLOSED = equipment.ShopPolicy(hours=(None,) * 7)


class RecordingPlayer:
    """Plays lines into nothing, recording their text (and the job's events, in order)."""

    def __init__(self, job: FakeJob, fail: bool = False) -> None:
        self.job = job
        self.fail = fail
        self.played: list[str] = []

    async def play(self, line: voice.GreetingAudio, **_: Any) -> float:
        if self.fail:
            raise RuntimeError("TTS down")
        self.played.append(line.text)
        self.job.events.append(f"played {line.text[:20]}")
        await asyncio.sleep(0.01)
        return 1.0


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.lenient({"BUSINESS_NAME": "Acme Rentals", "STATE_DIR": str(tmp_path), **env})


def snapshot_task(policy: equipment.ShopPolicy | None = None, hang: bool = False) -> asyncio.Task:
    async def load() -> equipment.Snapshot:
        if hang:
            await asyncio.Event().wait()
        inv = FakeInventory(policy=policy or ALWAYS_OPEN)
        return await inv.snapshot()
    return asyncio.ensure_future(load())


async def overflow(tmp_path: Path, *, policy: equipment.ShopPolicy | None = None, hang: bool = False,
                   transfer_error: Exception | None = None, fail: bool = False, **env: str
                   ) -> tuple[FakeJob, RecordingPlayer, CallState]:
    job = FakeJob(room=FakeRoom(participants=(FakeParticipant("sip_caller"),)), transfer_error=transfer_error)
    s = settings(tmp_path, **env)
    call = CallState(call_id="call-overflow")
    control = CallControl(s, call, job)  # type: ignore[arg-type]
    player = RecordingPlayer(job, fail=fail)
    await rental.answer_overflow(job, s, control, snapshot_task(policy, hang), engine=FakeTTS(),  # type: ignore[arg-type]
                                 player=player)  # type: ignore[arg-type]
    return job, player, call


BUSY = prompts.overflow_busy("Acme Rentals")


async def test_no_transfer_number_busy_line_then_call_back_then_hang_up(tmp_path: Path) -> None:
    job, player, call = await overflow(tmp_path)
    assert player.played == [BUSY, prompts.OVERFLOW_CALL_BACK]
    assert job.deleted == ["call-room"] and job.shutdowns == ["overflow"], "hung up: the room deleted"
    assert job.transfers == [] and call.end_reason == "overflow"
    assert job.events.index("delete") > job.events.index(f"played {prompts.OVERFLOW_CALL_BACK[:20]}")


async def test_shop_open_and_a_transfer_number_puts_the_caller_through(tmp_path: Path) -> None:
    job, player, call = await overflow(tmp_path, TRANSFER_PHONE_NUMBER="+15557654321")
    assert player.played == [BUSY, prompts.OVERFLOW_TRANSFER]
    assert job.transfers == [("sip_caller", "tel:+15557654321")]
    assert job.deleted and call.transferred and call.end_reason == "overflow, transferred"


@pytest.mark.parametrize("how", ["closed", "hours unknown", "transfer fails"])
async def test_otherwise_the_caller_is_asked_to_call_back(tmp_path: Path, how: str) -> None:
    started = time.monotonic()
    job, player, call = await overflow(
        tmp_path, TRANSFER_PHONE_NUMBER="+15557654321", policy=CLOSED if how == "closed" else None,
        hang=how == "hours unknown", transfer_error=RuntimeError("REFER refused") if how == "transfer fails" else None)
    assert player.played[0] == BUSY and player.played[-1] == prompts.OVERFLOW_CALL_BACK
    assert job.deleted == ["call-room"] and not call.transferred
    assert time.monotonic() - started < rental.OVERFLOW_HOURS_WAIT + 2, "the hours wait is bounded"


async def test_a_voice_that_fails_still_hangs_up(tmp_path: Path) -> None:
    job, player, call = await overflow(tmp_path, fail=True)
    assert job.deleted == ["call-room"] and job.shutdowns == ["overflow"]


async def test_run_call_answers_an_overflow_call_without_building_the_agent(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's mark on our participant, read once connected, routes the call."""
    job = FakeJob(room=FakeRoom(participants=(FakeParticipant("sip_caller"),)))
    job.room.local_participant = SimpleNamespace(attributes={worker.OVERFLOW_ATTRIBUTE: "1"})  # type: ignore[attr-defined]
    answered: list[str] = []

    async def fake_answer(ctx: Any, s: Settings, control: CallControl, first: asyncio.Task, **_: Any) -> None:
        answered.append(ctx.room.name)

    def no_pipeline(*_: Any) -> Any:
        raise AssertionError("an overflow call builds no agent")

    monkeypatch.setattr(rental, "answer_overflow", fake_answer)
    await rental.run_call(job, settings(tmp_path), make_inventory=lambda: FakeInventory(),  # type: ignore[arg-type]
                          make_pipeline=no_pipeline)
    assert answered == ["call-room"]
    assert rental.is_overflow_call(job) is True  # type: ignore[arg-type]
    job.room.local_participant = SimpleNamespace(attributes={})  # type: ignore[attr-defined]
    assert rental.is_overflow_call(job) is False  # type: ignore[arg-type]


async def test_the_overflow_lines_are_rendered_once_per_machine(tmp_path: Path) -> None:
    """Rendered by a normal call (voice.prerender, after pickup), so the first overflow caller
    hears them without a TTS round trip; cached in STATE_DIR by text and voice."""
    engine = FakeTTS()
    lines = rental.overflow_lines(settings(tmp_path), engine)
    assert [ln.text for ln in lines] == [BUSY, prompts.OVERFLOW_TRANSFER, prompts.OVERFLOW_CALL_BACK]
    assert await voice.prerender(lines) == 3
    assert all(ln.frames() for ln in lines)
    assert await voice.prerender(rental.overflow_lines(settings(tmp_path), engine)) == 0
    assert len(engine.requests) == 3
    other = rental.overflow_lines(settings(tmp_path, BUSINESS_NAME="Other Shop"), engine)
    assert await voice.prerender(other) == 1  # only the busy line names the shop
