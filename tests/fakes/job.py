"""The parts of a LiveKit JobContext a call uses, with every effect recorded in order: room
connection (delayed or hanging), hang-up (delete_room), transfer, shutdown and its callbacks,
and a room whose participants and events the test controls."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from livekit import rtc

SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP


@dataclass
class FakeParticipant:
    identity: str
    kind: int = SIP
    disconnect_reason: int = rtc.DisconnectReason.CLIENT_INITIATED
    attributes: dict[str, str] = field(default_factory=dict)


class FakeRoom:
    def __init__(self, name: str = "call-room", participants: tuple[FakeParticipant, ...] = ()) -> None:
        self.name = name
        self.handlers: dict[str, list[Callable[..., Any]]] = {}
        self.remote_participants = {p.identity: p for p in participants}

    def on(self, event: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        self.handlers.setdefault(event, []).append(callback)
        return callback

    def emit(self, event: str, *args: Any) -> None:
        for cb in self.handlers.get(event, []):
            cb(*args)


@dataclass
class FakeJob:
    room: FakeRoom = field(default_factory=FakeRoom)
    connect_delay: float = 0.0
    connect_hangs: bool = False
    transfer_error: Exception | None = None
    transfer_hold: asyncio.Event | None = None  # a REFER in flight until set
    events: list[str] = field(default_factory=list)  # in order: connect, snapshot, delete, transfer...
    shutdowns: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    transfers: list[tuple[str, str]] = field(default_factory=list)
    apologies: list[str] = field(default_factory=list)
    callbacks: list[Callable[..., Any]] = field(default_factory=list)
    log_context_fields: dict[str, Any] = field(default_factory=dict)
    proc: Any = field(default_factory=lambda: SimpleNamespace(userdata={}))
    said: Callable[[], list[str]] = lambda: []  # what the caller has heard so far
    said_at_delete: list[list[str]] = field(default_factory=list)

    async def connect(self) -> None:
        self.events.append("connect started")
        if self.connect_hangs:
            await asyncio.Event().wait()
        await asyncio.sleep(self.connect_delay)
        self.events.append("connect returned")

    def add_shutdown_callback(self, cb: Callable[..., Any]) -> None:
        self.callbacks.append(cb)

    def shutdown(self, reason: str = "") -> None:
        self.events.append("shutdown")
        self.shutdowns.append(reason)

    async def delete_room(self, room_name: str | None = None) -> None:
        self.said_at_delete.append(self.said())
        self.events.append("delete")
        self.deleted.append(room_name or self.room.name)

    async def transfer_sip_participant(self, participant: Any, transfer_to: str,
                                       play_dialtone: bool = False) -> None:
        identity = participant if isinstance(participant, str) else participant.identity
        self.events.append("transfer")
        self.transfers.append((identity, transfer_to))
        if self.transfer_hold is not None:
            await self.transfer_hold.wait()
        if self.transfer_error is not None:
            raise self.transfer_error

    def is_fake_job(self) -> bool:
        return True

    async def wait_for_participant(self, **_: Any) -> Any:
        await asyncio.Event().wait()

    async def play(self, text: str) -> bool:
        """Where the apology plays once the session is gone (CallControl.attach's speaker)."""
        self.apologies.append(text)
        await asyncio.sleep(0.05)
        self.events.append("apology played")
        return True

    async def run_shutdown(self, reason: str) -> None:
        """What the framework does after ctx.shutdown: the shutdown callbacks, in order."""
        for cb in self.callbacks:
            await asyncio.wait_for(cb(reason), 10)

    async def wait_for(self, what: str, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not getattr(self, what):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing recorded in {what} within {timeout}s")
            await asyncio.sleep(0.02)
