"""The state every call shares: the inventory snapshot and its single-flight refresh, per-unit
booking serialisation, and the write-ahead outbox. One interface, two engines with one schema:

- SQLite in STATE_DIR (the default): one machine, no server. Its locks are file locks, which
  the OS releases when a process dies.
- PostgreSQL when DATABASE_URL is set: shared by every replica and by an old and a new
  deployment side by side. Its locks are advisory locks, which the server releases when the
  holding connection (process) dies: no lock TTLs to guess. When PostgreSQL does not answer,
  the machine carries on with its local SQLite (inventory/engines.py).

All methods block: call them off the event loop. Each is one short transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ContextManager, Mapping, Protocol

logger = logging.getLogger("equipment")

SCHEMA_VERSION = 2  # 2: the snapshot is one JSON object (units, reservations, policy), patched by reservation
OUTBOX_KINDS = ("book", "change", "callback", "log")
HOLDING_KINDS = ("book", "change")  # pending entries that hold a unit for their dates


class StateUnavailable(Exception):
    """The state engine did not answer (the database is down or unreachable)."""


class LockTimeout(Exception):
    """Another process holds the lock for longer than the caller would wait."""


@dataclass(frozen=True)
class StoredSnapshot:
    # units, reservations and policy as read from the source; validated by the cache. None: unchanged
    # since the read the caller named (known_read_at), which it has parsed already
    data: dict[str, Any] | None
    read_at: float  # time.time() of the read
    patches: dict[str, str] = field(default_factory=dict)  # reservation ref -> its state since the read
    holds: tuple[dict[str, Any], ...] = ()  # payloads of pending bookings and changes: their dates are taken


@dataclass(frozen=True)
class OutboxRow:
    ref: str
    kind: str  # book | change | callback | log
    payload: dict[str, Any]
    attempts: int = 0
    uncertain_at: float | None = None  # a Bookings append timed out then: it may still land
    created_at: float = 0.0


class State(Protocol):
    engine: str  # "sqlite" or "postgres"
    where: str  # for logs: a path, or host/database (never a password)

    # the snapshot
    def snapshot(self, origin: str, known_read_at: float | None = None) -> StoredSnapshot | None:
        """The stored snapshot with its patches and holds; its data left out (None) when its
        read_at is known_read_at: a call's process that parsed it in prewarm reads only the rest."""
        ...

    def save_snapshot(self, origin: str, data: dict[str, Any], read_started: float, read_at: float) -> None: ...
    def patch(self, origin: str, changes: Mapping[str, str], at: float) -> None: ...

    # serialisation
    def refresh_turn(self, origin: str) -> ContextManager[bool]: ...
    def replay_turn(self) -> ContextManager[bool]: ...
    def unit_lock(self, unit: str, timeout: float) -> ContextManager[None]: ...
    def unit_lock_if_free(self, unit: str) -> ContextManager[bool]: ...

    # the outbox
    def add(self, ref: str, kind: str, unit: str, payload: Mapping[str, Any]) -> None: ...
    def pending(self) -> list[OutboxRow]: ...
    def held_units(self) -> set[str]: ...
    def holds(self) -> tuple[dict[str, Any], ...]: ...
    def attempt(self, ref: str, reason: str) -> int: ...
    def mark_uncertain(self, ref: str, at: float) -> None: ...
    def settle(self, ref: str, outcome: str) -> None: ...
    def is_settled(self, ref: str) -> bool: ...
    def forget_settled(self, before: float) -> int: ...

    def close(self) -> None: ...


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for a named lock (PostgreSQL advisory locks take bigint)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def loads_object(text: Any) -> dict[str, Any] | None:
    """A JSON object written by any version, or None if it is not one."""
    if isinstance(text, dict):
        return text
    with contextlib.suppress(TypeError, ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            return data
    return None


def loads_holds(items: Any) -> tuple[dict[str, Any], ...]:
    """The payloads of pending bookings and changes that are readable objects, from (ref, payload)
    pairs: each with its row's ref, which the payload of another version may lack (its dates are
    held all the same until the entry is settled)."""
    out = []
    for item in items or ():
        ref, payload = item
        data = loads_object(payload)
        if data is not None:
            out.append({**data, "ref": str(ref)})
    return tuple(out)


def loads_units(text: Any) -> list[dict[str, Any]] | None:
    """A list of unit objects with an id (the format of earlier versions' snapshot file); None
    otherwise."""
    data = text
    if isinstance(text, (str, bytes)):
        try:
            data = json.loads(text)
        except ValueError:
            return None
    if not isinstance(data, list) or not all(isinstance(u, dict) and isinstance(u.get("id"), str) for u in data):
        return None
    return data


def finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
