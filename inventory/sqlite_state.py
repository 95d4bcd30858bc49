"""The State on one machine: SQLite in STATE_DIR (WAL, every commit synced), file locks for
single flight and per-unit serialisation. Every call is its own process: each opens the file."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import filelock

from inventory.files import Locks
from inventory.state import (
    HOLDING_KINDS, SCHEMA_VERSION, LockTimeout, OutboxRow, StateUnavailable, StoredSnapshot, finite, loads_holds,
    loads_object,
)

DB_FILE = "state.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot (
    origin TEXT PRIMARY KEY, data TEXT NOT NULL, read_at REAL NOT NULL, read_started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_patch (
    origin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (origin, key));
CREATE TABLE IF NOT EXISTS outbox (
    ref TEXT PRIMARY KEY, kind TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL,
    created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    uncertain_at REAL, settled_at REAL, outcome TEXT);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (settled_at, created_at);
"""
# read_at without the row: it is stored after a data column of megabytes (overflow pages), and a
# call's process asks only whether the snapshot it parsed in prewarm is still the one stored
READ_AT_INDEX = "CREATE INDEX IF NOT EXISTS snapshot_read_at ON snapshot (origin, read_at)"


def _migrate(conn: sqlite3.Connection) -> None:
    """The schema, in one transaction (two processes starting at once: one does it). A database
    from schema 1 keeps its outbox (nothing pending is lost); its snapshot table held the units
    alone, so it goes (a cache: the next refresh fills it again) and with it the per-unit status
    overrides, which the snapshot's patches replaced."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(snapshot)")}
            if columns and "data" not in columns:
                conn.execute("DROP TABLE snapshot")
            conn.execute("DROP TABLE IF EXISTS status_override")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _wal(conn: sqlite3.Connection, timeout: float = 10.0) -> None:
    """WAL mode, a property of the file. Processes opening a new file at once race to set it,
    and SQLite answers the losers "database is locked" at once, without its busy wait: wait here."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteState:
    engine = "sqlite"

    def __init__(self, state_dir: Path, locks: Locks | None = None):
        self.dir = Path(state_dir)
        self.path = self.dir / DB_FILE
        self.where = str(self.path)
        self.locks = locks or Locks(self.dir)
        self._local = threading.local()
        self._ready = False

    # -- connections --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
                _wal(conn)
                conn.execute("PRAGMA synchronous=FULL")  # the outbox must survive a power cut
                if not self._ready:
                    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                        _migrate(conn)
                    conn.execute(READ_AT_INDEX)  # a database of this version from before the index has none
                    self._ready = True
            except sqlite3.Error as e:
                raise StateUnavailable(f"SQLite state {self.path}: {e}") from e
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StateUnavailable(f"SQLite state {self.path}: {e}") from e
            raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StateUnavailable(f"SQLite state {self.path}: {e}") from e

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- the snapshot -------------------------------------------------------------------------
    def snapshot(self, origin: str, known_read_at: float | None = None) -> StoredSnapshot | None:
        unchanged = False
        if known_read_at is not None:
            rows = self._query("SELECT read_at FROM snapshot INDEXED BY snapshot_read_at WHERE origin = ?",
                               (origin,))
            unchanged = bool(rows) and finite(rows[0][0]) == known_read_at
        if unchanged:
            read_at, data = known_read_at, None
        else:
            rows = self._query("SELECT data, read_at FROM snapshot WHERE origin = ?", (origin,))
            if not rows:
                return None
            read_at, data = finite(rows[0][1]), loads_object(rows[0][0])
        if read_at is None or (data is None and not unchanged):
            return None  # written by something else: one refresh replaces it
        patches = dict(self._query("SELECT key, value FROM snapshot_patch WHERE origin = ?", (origin,)))
        return StoredSnapshot(data, read_at, patches, self.holds())

    def holds(self) -> tuple[dict[str, Any], ...]:
        marks = ",".join("?" * len(HOLDING_KINDS))
        return loads_holds(self._query(
            f"SELECT ref, payload FROM outbox WHERE kind IN ({marks}) AND settled_at IS NULL", HOLDING_KINDS))

    def save_snapshot(self, origin: str, data: dict[str, Any], read_started: float, read_at: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO snapshot (origin, data, read_at, read_started) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (origin) DO UPDATE SET data = excluded.data, read_at = excluded.read_at, "
                         "read_started = excluded.read_started", (origin, json.dumps(data), read_at, read_started))
            # a change a booking made while this read was in flight may be newer than the read
            conn.execute("DELETE FROM snapshot_patch WHERE origin = ? AND at < ?", (origin, read_started - 1.0))

    def patch(self, origin: str, changes: Mapping[str, str], at: float) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT INTO snapshot_patch (origin, key, value, at) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (origin, key) DO UPDATE SET value = excluded.value, at = excluded.at",
                             [(origin, key, value, at) for key, value in changes.items()])

    # -- serialisation ------------------------------------------------------------------------
    def refresh_turn(self, origin: str) -> contextlib.AbstractContextManager[bool]:
        return self.locks.held_if_free("refresh")

    def replay_turn(self) -> contextlib.AbstractContextManager[bool]:
        return self.locks.held_if_free("replay")

    @contextlib.contextmanager
    def unit_lock(self, unit: str, timeout: float) -> Iterator[None]:
        lock = self.locks.unit(unit, timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockTimeout(f"unit {unit} is being booked by another process") from None
        try:
            yield
        finally:
            lock.release()

    def unit_lock_if_free(self, unit: str) -> contextlib.AbstractContextManager[bool]:
        return self.locks.held_if_free(self.locks.unit_name(unit))

    # -- the outbox ---------------------------------------------------------------------------
    def add(self, ref: str, kind: str, unit: str, payload: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO outbox (ref, kind, unit, payload, created_at) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (ref) DO NOTHING",
                         (ref, kind, unit, json.dumps(dict(payload), ensure_ascii=False), time.time()))

    def pending(self) -> list[OutboxRow]:
        out = []
        for ref, kind, payload, attempts, uncertain_at, created_at in self._query(
                "SELECT ref, kind, payload, attempts, uncertain_at, created_at FROM outbox "
                "WHERE settled_at IS NULL ORDER BY created_at, ref"):
            data = loads_object(payload)
            out.append(OutboxRow(ref, kind, data if data is not None else {}, int(attempts or 0),
                                 finite(uncertain_at), float(created_at or 0.0)))
        return out

    def held_units(self) -> set[str]:
        marks = ",".join("?" * len(HOLDING_KINDS))
        return {u for (u,) in self._query(f"SELECT DISTINCT unit FROM outbox WHERE kind IN ({marks}) "
                                          "AND settled_at IS NULL AND unit != ''", HOLDING_KINDS)}

    def attempt(self, ref: str, reason: str) -> int:
        with self._tx() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE ref = ?", (reason[:300], ref))
            row = conn.execute("SELECT attempts FROM outbox WHERE ref = ?", (ref,)).fetchone()
        return int(row[0]) if row else 0

    def mark_uncertain(self, ref: str, at: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE outbox SET uncertain_at = ? WHERE ref = ?", (at, ref))

    def settle(self, ref: str, outcome: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE outbox SET settled_at = ?, outcome = ? WHERE ref = ? AND settled_at IS NULL",
                         (time.time(), outcome, ref))

    def is_settled(self, ref: str) -> bool:
        return bool(self._query("SELECT 1 FROM outbox WHERE ref = ? AND settled_at IS NOT NULL", (ref,)))

    def forget_settled(self, before: float) -> int:
        with self._tx() as conn:
            return conn.execute("DELETE FROM outbox WHERE settled_at IS NOT NULL AND settled_at < ?",
                                (before,)).rowcount
