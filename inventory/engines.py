"""Which State a machine uses (`open_state`), and SharedState: PostgreSQL first, this machine's
SQLite when PostgreSQL does not answer.

When PostgreSQL is down: a booking is not written to the sheet (without the shared unit lock,
two replicas could sell the same unit); it is kept in the local outbox, the caller is told the
shop will confirm, and the entry is moved to PostgreSQL as soon as it answers, for any replica's
replay to write. Reads fall back to this machine's copy of the last snapshot: unknown only if
there is none, never empty. While PostgreSQL answers, this machine's SQLite is only its backup: a
broken or full local disk is logged once and never fails the shared state."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from inventory.files import Locks
from inventory.sqlite_state import SqliteState
from inventory.state import HOLDING_KINDS, OutboxRow, State, StateUnavailable, StoredSnapshot
from settings import InventorySettings

if TYPE_CHECKING:
    from inventory.postgres_state import PostgresState

logger = logging.getLogger("equipment")


def open_state(cfg: InventorySettings, locks: Locks) -> State:
    local = SqliteState(cfg.state_dir, locks)
    if not cfg.database_url:
        return local
    # psycopg only where PostgreSQL is configured (the worker then preloads it in its forkserver)
    from inventory.postgres_state import PostgresState

    return SharedState(PostgresState(cfg.database_url, connect_timeout=cfg.database_timeout,
                                     statement_timeout=cfg.database_timeout), local)


class SharedState:
    engine = "postgres"

    def __init__(self, remote: PostgresState, local: SqliteState):
        self.remote = remote
        self.local = local
        self.where = f"{remote.where} (fallback: {local.where})"
        self._warned = False
        self._local_warned = False

    def _down(self, e: StateUnavailable, doing: str) -> None:
        # one line per process: a call's process meets the outage once, not on every read
        if not self._warned:
            self._warned = True
            logger.warning("PostgreSQL state unavailable (%s) - %s", e, doing)

    def _backup(self, default: Any, method: str, *args: Any) -> Any:
        """This machine's SQLite where it only backs PostgreSQL up (PostgreSQL answered): a
        broken or full local disk is logged once, never a failure of the shared state."""
        try:
            return getattr(self.local, method)(*args)
        except StateUnavailable as e:
            if not self._local_warned:
                self._local_warned = True
                logger.warning("This machine's fallback state is unavailable (%s) - carrying on with PostgreSQL "
                               "alone", e)
            return default

    # -- the snapshot -------------------------------------------------------------------------
    def snapshot(self, origin: str, known_read_at: float | None = None) -> StoredSnapshot | None:
        try:
            snap = self.remote.snapshot(origin, known_read_at)
        except StateUnavailable as e:
            self._down(e, "serving this machine's copy of the snapshot")
            return self.local.snapshot(origin, known_read_at)
        held = self._backup((), "holds")  # bookings kept here while PostgreSQL was down
        if snap is not None:
            if held:
                snap = dataclasses.replace(snap, holds=snap.holds + tuple(held))
            if snap.data is not None:  # unchanged: mirrored by whoever read it first
                threading.Thread(target=self._mirror, args=(origin, snap), name="state-mirror", daemon=True).start()
        return snap

    def _mirror(self, origin: str, snap: StoredSnapshot) -> None:
        """Keeps this machine's copy current, for when PostgreSQL is down (best effort)."""
        with contextlib.suppress(Exception):
            mine = self.local.snapshot(origin, snap.read_at)  # the same read: no data to parse
            if snap.data is not None and (mine is None or mine.read_at < snap.read_at):
                self.local.save_snapshot(origin, snap.data, snap.read_at, snap.read_at)
                if snap.patches:
                    self.local.patch(origin, snap.patches, time.time())

    def save_snapshot(self, origin: str, data: dict[str, Any], read_started: float, read_at: float) -> None:
        try:
            self.remote.save_snapshot(origin, data, read_started, read_at)
        except StateUnavailable as e:
            self._down(e, "keeping the fresh snapshot on this machine only")
            self.local.save_snapshot(origin, data, read_started, read_at)
            return
        self._backup(None, "save_snapshot", origin, data, read_started, read_at)

    def patch(self, origin: str, changes: Mapping[str, str], at: float) -> None:
        try:
            self.remote.patch(origin, changes, at)
        except StateUnavailable as e:
            self._down(e, "recording the status change on this machine only")
            self.local.patch(origin, changes, at)
            return
        self._backup(None, "patch", origin, changes, at)

    # -- serialisation ------------------------------------------------------------------------
    @contextlib.contextmanager
    def refresh_turn(self, origin: str) -> Iterator[bool]:
        with contextlib.ExitStack() as stack:
            try:
                mine = stack.enter_context(self.remote.refresh_turn(origin))
            except StateUnavailable as e:
                self._down(e, "refreshing for this machine alone")
                mine = stack.enter_context(self.local.refresh_turn(origin))
            yield mine

    @contextlib.contextmanager
    def replay_turn(self) -> Iterator[bool]:
        with contextlib.ExitStack() as stack:
            try:
                mine = stack.enter_context(self.remote.replay_turn())
            except StateUnavailable as e:  # (only taking the turn: the replay's own errors are its own)
                self._down(e, "no replay until it answers (the unit locks live there)")
                mine = False
            yield mine

    def unit_lock(self, unit: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        return self.remote.unit_lock(unit, timeout)  # StateUnavailable: the booking is kept locally

    def unit_lock_if_free(self, unit: str) -> contextlib.AbstractContextManager[bool]:
        return self.remote.unit_lock_if_free(unit)

    # -- the outbox ---------------------------------------------------------------------------
    def add(self, ref: str, kind: str, unit: str, payload: Mapping[str, Any]) -> None:
        try:
            self.remote.add(ref, kind, unit, payload)
        except StateUnavailable as e:
            logger.warning("PostgreSQL state unavailable (%s) - %s %s kept in this machine's outbox until it "
                           "answers", e, kind, ref)
            self.local.add(ref, kind, unit, payload)

    def move_local_entries(self) -> int:
        """Entries kept here while PostgreSQL was down, moved there (once: unique by ref)."""
        moved = 0
        for row in self._backup([], "pending"):
            unit = self._unit_of(row)
            self.remote.add(row.ref, row.kind, unit, row.payload)
            if row.uncertain_at is not None:  # its Bookings append may still land: no second one
                self.remote.mark_uncertain(row.ref, row.uncertain_at)
            self._backup(None, "settle", row.ref, "moved")  # else moved again: unique by ref
            moved += 1
        if moved:
            logger.info("Outbox: %d entr%s kept on this machine moved to PostgreSQL", moved, "y" if moved == 1 else "ies")
        return moved

    @staticmethod
    def _unit_of(row: OutboxRow) -> str:
        from inventory.model import fold

        return fold(str(row.payload.get("equipment_id") or "")) if row.kind in HOLDING_KINDS else ""

    def pending(self) -> list[OutboxRow]:
        try:
            self.move_local_entries()
            return self.remote.pending()
        except StateUnavailable as e:
            self._down(e, "the outbox waits on this machine")
            return []

    def held_units(self) -> set[str]:
        try:
            remote = self.remote.held_units()
        except StateUnavailable as e:
            self._down(e, "holding only this machine's pending bookings")
            return self.local.held_units()
        return remote | self._backup(set(), "held_units")

    def holds(self) -> tuple[dict[str, Any], ...]:
        local = tuple(self._backup((), "holds"))
        try:
            return self.remote.holds() + local
        except StateUnavailable as e:
            self._down(e, "holding only this machine's pending bookings")
            return local

    def _either(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.remote, method)(*args)
        except StateUnavailable:
            return getattr(self.local, method)(*args)

    def attempt(self, ref: str, reason: str) -> int:
        return int(self._either("attempt", ref, reason))

    def mark_uncertain(self, ref: str, at: float) -> None:
        self._either("mark_uncertain", ref, at)
        with contextlib.suppress(StateUnavailable):
            self.local.mark_uncertain(ref, at)

    def settle(self, ref: str, outcome: str) -> None:
        self._either("settle", ref, outcome)

    def is_settled(self, ref: str) -> bool:
        return bool(self._either("is_settled", ref))

    def forget_settled(self, before: float) -> int:
        n = int(self._backup(0, "forget_settled", before))
        with contextlib.suppress(StateUnavailable):
            n += self.remote.forget_settled(before)
        return n

    def close(self) -> None:
        self.remote.close()
        self.local.close()
