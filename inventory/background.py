"""Blocking inventory work (HTTP, file locks) off the call's event loop, tracked so the end of
the call can wait for it, and never dropped silently when nobody waits any more."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, TypeVar

from inventory.model import Booking, BookingRefused
from inventory.retry import failure

logger = logging.getLogger("equipment")
T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    def run(self, fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
        """Runs fn on a daemon thread: it never blocks the loop, and never keeps a finished
        call's process alive the way the default executor's joined threads would. Each request
        inside is bounded by its HTTP timeout and retry budget."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if fut.done():  # cancelled: nobody is waiting for it any more
                log_late(name, result, exc, "its caller stopped waiting")
            elif exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        def runner() -> None:
            result, exc = None, None
            try:
                result = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                exc = e
            try:
                loop.call_soon_threadsafe(settle, result, exc)
            except RuntimeError:  # the loop is gone (the call ended): say how the work ended
                log_late(name, result, exc, "its call's event loop had closed")

        threading.Thread(target=runner, name=name, daemon=True).start()
        return fut

    def track(self, fut: asyncio.Future[T]) -> asyncio.Future[T]:
        """Remembers work that `wait` must wait for (refreshes, bookings, call-backs)."""
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)
        return fut

    async def run_tracked(self, fn: Callable[..., T], *args: Any, name: str) -> T:
        """Runs fn off the loop, tracked. If the caller stops waiting (cancelled), the work
        carries on and its outcome is logged when it lands."""
        fut = self.track(self.run(fn, *args, name=name))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            def late(f: asyncio.Future[T]) -> None:
                if not f.cancelled():
                    log_late(name, None if f.exception() else f.result(), f.exception(),
                             "its caller stopped waiting")
            fut.add_done_callback(late)
            raise

    async def wait(self, timeout: float) -> int:
        """Waits (bounded) for tracked work on this loop; returns how many are still running."""
        loop = asyncio.get_running_loop()
        pending = [f for f in self._running if not f.done() and f.get_loop() is loop]
        if pending and timeout > 0:
            await asyncio.wait(pending, timeout=timeout)
        return sum(not f.done() for f in pending)


def log_late(name: str, result: Any, exc: BaseException | None, why: str) -> None:
    """The outcome of work that finished after nobody was waiting for it."""
    if exc is not None:
        level = logging.INFO if isinstance(exc, BookingRefused) else logging.WARNING
        logger.log(level, "%s finished after %s, with an error: %s", name, why, failure(exc))
        return
    if isinstance(result, Booking):
        what = (f"booking {result.ref} for {result.equipment_id} "
                f"({'confirmed' if result.confirmed else 'kept in the outbox'})")
    else:
        what = repr(result)[:200]
    logger.info("%s finished after %s: %s", name, why, what)
