"""The inventory snapshot every call shares, and its single-flight refresh.

Every call is its own process, so the snapshot lives in the State (SQLite on one machine,
PostgreSQL across replicas). One process refreshes at a time, everywhere the State reaches, and
re-checks freshness once it has its turn: at most one Sheets read per TTL. Statuses changed by
bookings are kept as overrides, so a refresh that was already in flight does not undo them, and
units held by the outbox read PENDING. What is read back is validated: anything else costs one
refresh, never a stuck "unknown".
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from inventory.model import AVAILABLE, PENDING, Unit, fold
from inventory.retry import failure, with_retries
from inventory.state import State
from inventory.table import Store

logger = logging.getLogger("equipment")

_UNIT_FIELDS = tuple(Unit.__dataclass_fields__)


class RefreshResult(Enum):
    BUSY = "busy"  # another process is refreshing
    FRESH = "fresh"  # someone refreshed meanwhile
    LOADED = "loaded"  # read from the source now


@dataclass(frozen=True)
class CachedUnits:
    units: tuple[Unit, ...]
    read_at: float  # time.time() of the read

    def age(self) -> float:
        return max(0.0, time.time() - self.read_at)


def _unit(data: Mapping[str, Any]) -> Unit:
    fields = {k: data[k] for k in _UNIT_FIELDS if k in data}
    unit = Unit(**fields)
    if not all(isinstance(getattr(unit, k), str) for k in ("id", "name", "status", "category", "description")):
        raise TypeError("unit fields are not text")
    for k in ("daily_rate", "weekly_rate"):  # prices are formatted as numbers on every call
        rate = getattr(unit, k)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate)):
            raise TypeError(f"unit {k} is not a number")
    return unit


class SnapshotCache:
    def __init__(self, state: State, store: Store, ttl: float):
        self.state = state
        self.store = store
        self.ttl = ttl

    def read(self) -> CachedUnits | None:
        """The shared snapshot with bookings' statuses and outbox holds applied; None when there
        is none (or none this version can read). Blocking: raises StateUnavailable."""
        stored = self.state.snapshot(self.store.origin)
        if stored is None:
            return None
        try:
            units = []
            for data in stored.units:
                unit = _unit(data)
                key = fold(unit.id)
                status = stored.overrides.get(key, unit.status)
                if key in stored.held and status in (AVAILABLE, PENDING):
                    # held by an outbox booking (kept, or in flight: write-ahead); a unit already
                    # RENTED (by that very booking) or in MAINTENANCE keeps its status
                    status = PENDING
                units.append(unit if status == unit.status else Unit(**{**unit.__dict__, "status": status}))
        except TypeError:
            logger.warning("Equipment snapshot in %s is malformed - ignoring it", self.state.where)
            return None
        return CachedUnits(tuple(units), stored.read_at)

    def is_fresh(self, cached: CachedUnits | None) -> bool:
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
            table = with_retries(self.store.read_table, time.monotonic() + max(budget, 0.5), "read")
            units = table.units(log_unknown=True)
            self.state.save_snapshot(self.store.origin, [u.__dict__ for u in units], started, time.time())
            logger.info("Equipment loaded successfully: %d items", len(units))
            return RefreshResult.LOADED

    def patch(self, changes: Mapping[str, str]) -> None:
        """Records new statuses (id -> status) so every process sees them on its next read."""
        self.state.patch(self.store.origin, {fold(k): v for k, v in changes.items()}, time.time())

    def patch_quietly(self, changes: Mapping[str, str]) -> None:
        """patch() for the booking path: the snapshot is a cache, its failure never changes a
        booking's outcome (the outbox hold and the next refresh cover it)."""
        if not changes:
            return
        try:
            self.patch(changes)
        except Exception as e:  # noqa: BLE001
            logger.warning("Could not update the shared equipment snapshot (%s): %s", failure(e), dict(changes))
