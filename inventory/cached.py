"""CachedInventory: the Inventory behind equipment.py. It decides *when* things happen (serve the
shared snapshot, refresh it in the background, book, replay the outbox, wait at call end); the
cache, the outbox and the booker decide *how*, on the State (SQLite or PostgreSQL). Every read
of the State runs off the event loop: a slow database never stalls the call's audio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from datetime import date

from inventory.background import Background
from inventory.booking import Booker
from inventory.cache import CachedSnapshot, RefreshResult, SnapshotCache
from inventory.changes import Changes
from inventory.model import (
    Booking, BookingRefused, BookingRequest, CallbackRequest, ChangeRequest, InventoryConfigError, RefusalCode,
)
from inventory.outbox import Outbox
from inventory.replay import replay
from inventory.snapshot import Snapshot
from inventory.retry import failure, with_retries
from inventory.state import State, StateUnavailable
from inventory.table import CheckReport, Store
from settings import InventorySettings

logger = logging.getLogger("equipment")


class CachedInventory:
    def __init__(self, cfg: InventorySettings, store: Store, state: State):
        self.cfg = cfg
        self.store = store
        self.state = state
        self.outbox = Outbox(state)
        self.cache = SnapshotCache(state, store, cfg.cache_ttl)
        self.booker = Booker(cfg, store, self.outbox, self.cache, state)
        self.changes = Changes(self.booker)
        self.background = Background()
        self._refresh: asyncio.Future[RefreshResult] | None = None

    # -- the snapshot -----------------------------------------------------------------------------
    def warm(self) -> None:
        """Before the call (prewarm: blocking, no event loop): opens the State and parses the stored
        snapshot, so the call's first snapshot() reads only what changed since. Never raises: the
        call then reads it all, as it would have."""
        try:
            self.cache.read()
        except Exception as e:  # noqa: BLE001
            logger.debug("Equipment snapshot not read ahead of the call: %s", failure(e))

    def keep_warm(self, every: float = 2.0) -> threading.Event:
        """While the process waits for its call (minutes, at a quiet shop): warm() again every
        `every` seconds, so a refresh made meanwhile is parsed before the call instead of at its
        pickup. When nothing changed that is one small read. Set the returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                self.warm()

        threading.Thread(target=loop, name="equipment-keep-warm", daemon=True).start()
        return stop

    def _snapshot(self, cached: CachedSnapshot) -> Snapshot:
        return Snapshot(cached.units, cached.age(), self.store.source, policy=cached.policy, busy=cached.busy,
                        details=cached.details, changed=cached.changed)

    def replay(self) -> int:
        return replay(self.booker)

    def _refresh_then_settle(self) -> RefreshResult:
        """A refresh, then (after a real read) what the outbox holds gets its chance."""
        result = self.cache.refresh(force=False, budget=self.cfg.retry_budget)
        if result is RefreshResult.LOADED:
            try:
                if self.outbox.pending():
                    self.replay()
            except Exception as e:  # noqa: BLE001 - the refresh itself succeeded
                logger.warning("Outbox replay after refresh failed: %s", failure(e))
        return result

    def _start_refresh(self) -> asyncio.Future[RefreshResult]:
        if self._refresh is not None and not self._refresh.done():
            return self._refresh
        fut = self.background.track(self.background.run(self._refresh_then_settle, name="equipment-refresh"))

        def report(f: asyncio.Future[RefreshResult]) -> None:
            if f.cancelled() or f.exception() is None:
                return
            e = f.exception()
            if isinstance(e, InventoryConfigError):
                logger.error("Equipment refresh failed: %s", e)
            with contextlib.suppress(Exception):
                cached = self.cache.read()
                if cached is not None:
                    logger.warning("Equipment loading timed out - still serving the last good snapshot "
                                   "(age: %.1fs): %s", cached.age(), e)

        fut.add_done_callback(report)
        self._refresh = fut
        return fut

    async def _read(self) -> CachedSnapshot | None:
        """The shared snapshot, read off the loop; None when there is none or the State is down."""
        try:
            return await self.background.run(self.cache.read, name="equipment-read")
        except StateUnavailable as e:
            logger.warning("Equipment snapshot unavailable (%s)", e)
            return None

    async def snapshot(self) -> Snapshot:
        cached = await self._read()
        if cached is not None:
            logger.debug("Using cached equipment data (age: %.1fs)", cached.age())
            if not self.cache.is_fresh(cached):
                logger.info("Cache expired or empty - reloading equipment")
                self._start_refresh()  # stale-while-revalidate: never awaited here
            return self._snapshot(cached)

        logger.info("Cache expired or empty - reloading equipment")
        deadline = time.monotonic() + self.cfg.load_timeout
        fut = self._start_refresh()
        started = time.monotonic()
        failed: BaseException | None = None
        while True:
            cached = await self._read()
            if cached is not None:
                return self._snapshot(cached)
            if fut.done() and not fut.cancelled():
                failed = fut.exception()
                if failed is not None:
                    break
                # BUSY: another process holds the refresh lock; poll its file, and take over if
                # that process dies (flock is released with it)
                if fut.result() is RefreshResult.BUSY and time.monotonic() - started > 0.25:
                    fut, started = self._start_refresh(), time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if fut.done():
                await asyncio.sleep(min(0.05, left))
            else:
                await asyncio.wait({fut}, timeout=min(0.05, left))
        why = f"the source failed: {failed}" if failed else f"no answer within {self.cfg.load_timeout:.1f}s"
        logger.warning("Equipment loading timed out - no equipment data on this machine yet, continuing with "
                       "inventory unknown (age: n/a; %s)", why)
        return Snapshot(None, None, self.store.source)

    # -- writes -----------------------------------------------------------------------------------
    async def book(self, request: BookingRequest) -> Booking:
        """Raises BookingRefused; returns the booking, confirmed or kept in the outbox."""
        snap = await self.snapshot()
        unit = snap.find(request.equipment_id)
        start, end = request.start, request.end
        if snap.known:
            if unit is None:
                raise BookingRefused(RefusalCode.UNKNOWN_ID, requested_id=request.equipment_id)
            if not snap.free(unit, start, end):
                raise BookingRefused(RefusalCode.NOT_AVAILABLE, unit=unit, start=start, end=end,
                                     next_free=snap.next_free(unit, start, end),
                                     alternatives=snap.alternatives(unit, start, end))
        # tracked: close() at call end waits (bounded) for a booking still in flight
        return await self.background.run_tracked(self.booker.book, request, unit, snap, name="equipment-book")

    async def change(self, request: ChangeRequest, today: date) -> Booking:
        """Extends, moves or cancels a booking (the caller's: checked by the tools). Raises
        BookingRefused; returns the booking as it now stands, confirmed or kept in the outbox."""
        snap = await self.snapshot()
        known = snap.reservation(request.ref)
        return await self.background.run_tracked(self.changes.change, request, today,
                                                 known.equipment_id if known else "", name="equipment-change")

    async def record_callback(self, request: CallbackRequest) -> str:
        return await self.background.run_tracked(self.booker.record_callback, request, name="equipment-callback")

    async def replay_outbox(self) -> int:
        try:
            if not await self.background.run(self.outbox.pending, name="equipment-outbox"):
                return 0
            return await self.background.run_tracked(self.replay, name="equipment-replay")
        except Exception as e:  # noqa: BLE001 - kept; a later refresh or shutdown retries
            logger.warning("Outbox replay failed, will retry on a later refresh: %s", failure(e))
            return 0

    # -- preflight and shutdown -------------------------------------------------------------------
    async def check(self) -> CheckReport:
        """Reads the source directly (no cache): what it holds, or InventoryConfigError naming
        what is wrong, or SourceUnavailable."""
        def read() -> CheckReport:
            deadline = time.monotonic() + max(self.cfg.retry_budget, 0.5)
            source = with_retries(self.store.read_all, deadline, "read")
            problems: list[str] = []
            found = source.reservations.reservations(problems=problems) if source.reservations is not None else []
            return CheckReport(source.equipment.units(), len(found) + len(source.equipment.legacy_reservations()),
                               problems, source.reservations is not None, source.settings is not None)
        return await self.background.run(read, name="equipment-check")

    async def close(self, timeout: float = 5.0) -> None:
        """At call end and worker shutdown: waits (bounded) for refreshes, bookings and call-backs
        still in flight, then replays the outbox if it holds anything. Never raises. What is
        still running after the timeout is in the outbox already (write-ahead)."""
        try:
            deadline = time.monotonic() + max(timeout, 0.0)
            still = await self.background.wait(timeout)
            if still and timeout > 0:
                logger.warning("Shutdown: %d equipment task(s) still running after %.1fs (a booking among "
                               "them is in the outbox and will be replayed)", still, timeout)
            left = deadline - time.monotonic()
            if left > 0 and await asyncio.wait_for(self.background.run(self.outbox.pending, name="equipment-outbox"),
                                                   left):
                left = deadline - time.monotonic()
                await asyncio.wait_for(asyncio.shield(self.background.run(self.replay,
                                                                          name="equipment-replay")), max(left, 0.01))
        except Exception as e:  # noqa: BLE001
            logger.warning("Outbox replay at shutdown did not finish: %s", failure(e))
