"""The snapshot every call shares (units, reservations, the shop's policies), and its
single-flight refresh.

Every call is its own process, so the snapshot lives in the State (SQLite on one machine,
PostgreSQL across replicas). One process refreshes at a time, everywhere the State reaches, and
re-checks freshness once it has its turn: at most one Sheets read per TTL. Reservations the agent
wrote or changed since the read are kept as patches, so a refresh that was already in flight does
not undo them, and bookings still pending in the outbox hold their dates. What is read back is
validated: anything else costs one refresh, never a stuck "unknown".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import Enum
from typing import Any, Mapping

from inventory.model import Unit
from inventory.policy import ShopPolicy
from inventory.reservations import CHANGE_HOLD, PENDING, Reservation, busy_of
from inventory.retry import failure, with_retries
from inventory.state import State, StoredSnapshot
from inventory.table import Store

logger = logging.getLogger("equipment")

FORMAT = 3  # of the snapshot's data: a reader that finds another one refreshes
KEEP_PAST_DAYS = 7  # reservations that ended longer ago than this are not kept in the snapshot
_UNIT_FIELDS = tuple(Unit.__dataclass_fields__)
_TEXT = ("id", "name", "status", "category", "description")
_RATES = ("daily_rate", "weekly_rate", "four_week_rate", "deposit")


class RefreshResult(Enum):
    BUSY = "busy"  # another process is refreshing
    FRESH = "fresh"  # someone refreshed meanwhile
    LOADED = "loaded"  # read from the source now


@dataclass(frozen=True)
class CachedSnapshot:
    units: tuple[Unit, ...]
    read_at: float  # time.time() of the read
    policy: ShopPolicy = field(default_factory=ShopPolicy)
    busy: dict[str, list[list[Any]]] = field(default_factory=dict)  # blocking reservations by unit (busy_of)
    details: str = "[]"  # the reservations as read, JSON text: parsed only when a booking is looked up
    changed: tuple[Reservation, ...] = ()  # written or changed since the read, and the outbox's holds

    def age(self) -> float:
        return max(0.0, time.time() - self.read_at)


def _first_reservation_reads(details: str) -> None:
    """Parsing every reservation on each call's start would cost ~12 ms at 10,000 of them, so the
    details are parsed lazily; reading only the first one here still catches a writer whose rows
    differ from ours (it costs one refresh now, not a failed look-up later)."""
    start = len(details) - len(details.lstrip())
    if details[start:start + 1] != "[":
        raise TypeError("reservations")
    first = start + 1 + len(details[start + 1:]) - len(details[start + 1:].lstrip())
    if details[first:first + 1] != "]":
        Reservation.from_list(json.JSONDecoder().raw_decode(details, first)[0])


def _unit(data: Mapping[str, Any]) -> Unit:
    unit = Unit(**{k: data[k] for k in _UNIT_FIELDS if k in data})
    if not all(isinstance(getattr(unit, k), str) for k in _TEXT):
        raise TypeError("unit fields are not text")
    for k in _RATES:  # JSON has no other number: a rate written as text is another version's
        v = getattr(unit, k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise TypeError(f"unit {k} is not a number")
    return unit


def hold(payload: Mapping[str, Any]) -> Reservation | None:
    """What a pending outbox entry holds: a booking's dates, or a change's new dates."""
    try:
        start, end = date.fromisoformat(str(payload["start"])), date.fromisoformat(str(payload["end"]))
        if payload.get("kind") == "CANCELLED":
            return None  # the booking itself still holds until the cancellation is written
        ref = str(payload.get("booking_ref") or payload["ref"])
        suffix = CHANGE_HOLD if payload.get("booking_ref") else ""
        return Reservation(ref + suffix, str(payload["equipment_id"]), start, end, PENDING,
                           str(payload.get("name", "")), str(payload.get("phone", "")))
    except (KeyError, TypeError, ValueError):
        return None


class SnapshotCache:
    def __init__(self, state: State, store: Store, ttl: float):
        self.state = state
        self.store = store
        self.ttl = ttl
        # the last snapshot this process parsed, without its patches and holds: parsing 1,000 units
        # and 10,000 reservations costs ~50 ms, so a call's process parses in prewarm, and at
        # pickup reads only the patches and holds when the stored snapshot is still that one
        self._parsed: CachedSnapshot | None = None
        self._malformed_at: float | None = None  # the read_at of a stored snapshot found malformed

    def read(self) -> CachedSnapshot | None:
        """The shared snapshot with the agent's recent changes and the outbox's holds applied;
        None when there is none (or none this version can read). Blocking: raises StateUnavailable."""
        parsed = self._parsed
        stored = self.state.snapshot(self.store.origin, parsed.read_at if parsed else None)
        if stored is None:
            return None
        try:
            unchanged = stored.data is None and parsed is not None and stored.read_at == parsed.read_at
            base = parsed if unchanged and parsed is not None else self._parse(stored)
            changed = tuple(Reservation.from_list(json.loads(value)) for value in stored.patches.values())
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            if stored.read_at != self._malformed_at:  # once, not on every read of a waiting process
                self._malformed_at = stored.read_at
                logger.warning("Equipment snapshot in %s is malformed (%s) - ignoring it", self.state.where, e)
            return None
        self._parsed = base
        holds = tuple(h for h in (hold(p) for p in stored.holds) if h is not None)
        return dataclasses.replace(base, changed=changed + holds)

    @staticmethod
    def _parse(stored: StoredSnapshot) -> CachedSnapshot:
        """The stored data, validated (raises KeyError, TypeError or ValueError), patches aside."""
        data = stored.data
        if data is None:
            raise TypeError("no data")
        if data.get("v") != FORMAT:
            raise TypeError(f"format {data.get('v')!r}")
        units = tuple(_unit(u) for u in data["units"])
        busy = data["busy"]
        if not isinstance(busy, dict) or not isinstance(data["reservations"], str) or not all(
                isinstance(v, list) and all(isinstance(e, list) and len(e) == 3 and isinstance(e[0], int)
                                            and isinstance(e[1], int) for e in v) for v in busy.values()):
            raise TypeError("reservations")
        _first_reservation_reads(data["reservations"])
        return CachedSnapshot(units, stored.read_at, ShopPolicy.from_dict(data["policy"]), busy, data["reservations"])

    def is_fresh(self, cached: CachedSnapshot | None) -> bool:
        # a read_at in the future (the clock stepped back) is not fresh: it would never expire
        return cached is not None and 0 <= time.time() - cached.read_at < self.ttl

    def refresh(self, *, force: bool, budget: float) -> RefreshResult:
        """Single flight wherever the State reaches. Raises InventoryConfigError / SourceUnavailable."""
        with self.state.refresh_turn(self.store.origin) as mine:
            if not mine:
                return RefreshResult.BUSY
            if not force and self.is_fresh(self.read()):
                return RefreshResult.FRESH
            started = time.time()
            source = with_retries(self.store.read_all, time.monotonic() + max(budget, 0.5), "read")
            units = source.equipment.units(log_unknown=True)
            reservations = source.equipment.legacy_reservations()
            if source.reservations is not None:
                reservations += source.reservations.reservations(log_problems=True)
            since = date.today() - timedelta(days=KEEP_PAST_DAYS)
            kept = [r for r in reservations if r.end >= since]
            policy = ShopPolicy.from_rows(source.settings or [])
            data = {"v": FORMAT, "units": [u.__dict__ for u in units], "busy": busy_of(kept),
                    "reservations": json.dumps([r.to_list() for r in kept]), "policy": policy.to_dict()}
            self.state.save_snapshot(self.store.origin, data, started, time.time())
            logger.info("Equipment loaded successfully: %d items, %d reservations", len(units), len(reservations))
            return RefreshResult.LOADED

    def patch(self, reservations: list[Reservation]) -> None:
        """Records reservations the agent wrote or changed, so every process sees them at once."""
        self.state.patch(self.store.origin, {r.ref: json.dumps(r.to_list()) for r in reservations}, time.time())

    def patch_quietly(self, reservations: list[Reservation]) -> None:
        """patch() for the booking path: the snapshot is a cache, its failure never changes a
        booking's outcome (the outbox hold and the next refresh cover it)."""
        if not reservations:
            return
        try:
            self.patch(reservations)
        except Exception as e:  # noqa: BLE001
            logger.warning("Could not update the shared equipment snapshot (%s): %s", failure(e),
                           ", ".join(r.ref for r in reservations))
