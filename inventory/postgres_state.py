"""The State shared by every replica: PostgreSQL (DATABASE_URL), through psycopg 3.

Locks are advisory locks held by a connection of their own: the server releases them when that
connection (the process holding it) dies, so a crashed booking never blocks the unit. Every
connection is bounded (connect_timeout) and so is every statement (statement_timeout): a
database that hangs costs seconds, never the call."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from typing import Any, Iterator, Mapping

import psycopg
from psycopg import conninfo, errors

from inventory.state import (
    HOLDING_KINDS, SCHEMA_VERSION, LockTimeout, OutboxRow, StateUnavailable, StoredSnapshot, finite, loads_holds,
    lock_key, loads_object,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rental_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rental_snapshot (
    origin TEXT PRIMARY KEY, data TEXT NOT NULL, read_at DOUBLE PRECISION NOT NULL,
    read_started DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS rental_snapshot_patch (
    origin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (origin, key));
CREATE TABLE IF NOT EXISTS rental_outbox (
    ref TEXT PRIMARY KEY, kind TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    uncertain_at DOUBLE PRECISION, settled_at DOUBLE PRECISION, outcome TEXT);
CREATE INDEX IF NOT EXISTS rental_outbox_pending ON rental_outbox (created_at) WHERE settled_at IS NULL;
"""


def describe_url(url: str) -> str:
    """host:port/database, for logs: never the user's password."""
    try:
        info = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL (DATABASE_URL)"
    return f"PostgreSQL {info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


class PostgresState:
    engine = "postgres"

    def __init__(self, url: str, *, connect_timeout: float = 3.0, statement_timeout: float = 3.0):
        self.url = url
        self.where = describe_url(url)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._guard = threading.Lock()
        self._ready = False

    # -- connections --------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(2, math.ceil(self.connect_timeout)),
                application_name="equipment-rental",
                options=f"-c statement_timeout={int(self.statement_timeout * 1000)}")
        except psycopg.Error as e:
            raise StateUnavailable(f"{self.where}: {str(e).strip()[:300]}") from e
        if not self._ready:
            self._create_schema(conn)
        return conn

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Once per database: a process that finds the current version skips it (one query)."""
        try:
            with contextlib.suppress(errors.UndefinedTable):
                row = conn.execute("SELECT max(version) FROM rental_schema").fetchone()
                if row and row[0] is not None and row[0] >= SCHEMA_VERSION:
                    self._ready = True
                    return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("rental", "schema"),))
                # schema 1 kept the units alone in rental_snapshot, with per-unit status overrides:
                # a cache, dropped (the next refresh fills it again); the outbox is kept as it is
                old = conn.execute(
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND table_name = 'rental_snapshot' AND column_name = 'units'").fetchone()
                if old and old[0]:
                    conn.execute("DROP TABLE rental_snapshot")
                conn.execute("DROP TABLE IF EXISTS rental_status_override")
                conn.execute(SCHEMA)
                conn.execute("DELETE FROM rental_schema")
                conn.execute("INSERT INTO rental_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        except psycopg.Error as e:
            conn.close()
            raise StateUnavailable(f"{self.where}: {str(e).strip()[:300]}") from e
        self._ready = True

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The process's shared connection, one user at a time; a broken one is replaced."""
        with self._guard:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                yield self._conn
            except psycopg.Error as e:
                if isinstance(e, (psycopg.OperationalError, errors.QueryCanceled)) or self._conn.broken:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                raise StateUnavailable(f"{self.where}: {str(e).strip()[:300]}") from e

    def _query(self, sql: str, args: tuple[Any, ...] = (), *, read: bool = False) -> list[tuple[Any, ...]]:
        reused = self._conn is not None and not self._conn.closed
        try:
            with self._session() as conn:
                return conn.execute(sql, args).fetchall()
        except StateUnavailable as e:
            # the connection opened in prewarm may have sat idle until the server or a proxy closed
            # it: a read goes again on a new one, once (a write is never sent twice)
            if not (read and reused and self._conn is None and not isinstance(e.__cause__, errors.QueryCanceled)):
                raise
        with self._session() as conn:
            return conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._guard:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # -- the snapshot -------------------------------------------------------------------------
    def snapshot(self, origin: str, known_read_at: float | None = None) -> StoredSnapshot | None:
        """One round trip: the snapshot (unless known_read_at says the caller has it), the changes
        since its read, and what pending bookings hold."""
        rows = self._query(
            "SELECT CASE WHEN s.read_at = %s THEN NULL ELSE s.data END, s.read_at,"
            " (SELECT coalesce(json_object_agg(p.key, p.value), '{}') FROM rental_snapshot_patch p"
            "   WHERE p.origin = s.origin),"
            " (SELECT coalesce(json_agg(json_build_array(b.ref, b.payload)), '[]') FROM rental_outbox b"
            "   WHERE b.kind = ANY(%s) AND b.settled_at IS NULL)"
            " FROM rental_snapshot s WHERE s.origin = %s", (known_read_at, list(HOLDING_KINDS), origin), read=True)
        if not rows:
            return None
        data, read_at, patches, holds = rows[0]
        read_at = finite(read_at)
        unchanged = data is None and read_at is not None and read_at == known_read_at
        data = None if unchanged else loads_object(data)
        if read_at is None or (data is None and not unchanged):
            return None  # written by something else: one refresh replaces it
        patches = {str(k): str(v) for k, v in patches.items()} if isinstance(patches, dict) else {}
        return StoredSnapshot(data, read_at, patches, loads_holds(holds))

    def holds(self) -> tuple[dict[str, Any], ...]:
        return loads_holds(self._query(
            "SELECT ref, payload FROM rental_outbox WHERE kind = ANY(%s) AND settled_at IS NULL",
            (list(HOLDING_KINDS),), read=True))

    def save_snapshot(self, origin: str, data: dict[str, Any], read_started: float, read_at: float) -> None:
        with self._session() as conn, conn.transaction():
            conn.execute("INSERT INTO rental_snapshot (origin, data, read_at, read_started) VALUES (%s, %s, %s, %s)"
                         " ON CONFLICT (origin) DO UPDATE SET data = excluded.data, read_at = excluded.read_at,"
                         " read_started = excluded.read_started", (origin, json.dumps(data), read_at, read_started))
            # a change a booking made while this read was in flight may be newer than the read
            conn.execute("DELETE FROM rental_snapshot_patch WHERE origin = %s AND at < %s",
                         (origin, read_started - 1.0))

    def patch(self, origin: str, changes: Mapping[str, str], at: float) -> None:
        with self._session() as conn, conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO rental_snapshot_patch (origin, key, value, at) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (origin, key) DO UPDATE SET value = excluded.value, at = excluded.at",
                    [(origin, key, value, at) for key, value in changes.items()])

    # -- serialisation: advisory locks on a connection of their own -----------------------------
    @contextlib.contextmanager
    def _advisory(self, key: int, wait: float | None) -> Iterator[bool]:
        """wait None: take it only if free (yields whether it was). Else wait up to `wait` s."""
        conn = self._connect()
        try:
            try:
                if wait is None:
                    got = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
                else:
                    lock_ms = max(1, int(wait * 1000))
                    conn.execute(f"SET lock_timeout = {lock_ms}")
                    # this connection's statement_timeout (DATABASE_TIMEOUT) would cancel a wait
                    # longer than it first, and a booking waiting its turn would be "kept, the
                    # shop will confirm" instead of "just taken": still bounded, just after it
                    conn.execute(f"SET statement_timeout = {lock_ms + max(1000, int(self.statement_timeout * 1000))}")
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    got = True
            except errors.LockNotAvailable:
                raise LockTimeout("another process holds this lock") from None
            except psycopg.Error as e:
                raise StateUnavailable(f"{self.where}: {str(e).strip()[:300]}") from e
            yield got
        finally:
            conn.close()  # closing the session releases the lock

    def refresh_turn(self, origin: str) -> contextlib.AbstractContextManager[bool]:
        return self._advisory(lock_key("rental", "refresh", origin), None)

    def replay_turn(self) -> contextlib.AbstractContextManager[bool]:
        return self._advisory(lock_key("rental", "replay"), None)

    @contextlib.contextmanager
    def unit_lock(self, unit: str, timeout: float) -> Iterator[None]:
        with self._advisory(lock_key("rental", "unit", unit), timeout):
            yield

    def unit_lock_if_free(self, unit: str) -> contextlib.AbstractContextManager[bool]:
        return self._advisory(lock_key("rental", "unit", unit), None)

    # -- the outbox ---------------------------------------------------------------------------
    def add(self, ref: str, kind: str, unit: str, payload: Mapping[str, Any]) -> None:
        self._query("INSERT INTO rental_outbox (ref, kind, unit, payload, created_at) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (ref) DO NOTHING RETURNING ref",
                    (ref, kind, unit, json.dumps(dict(payload), ensure_ascii=False), time.time()))

    def pending(self) -> list[OutboxRow]:
        out = []
        for ref, kind, payload, attempts, uncertain_at, created_at in self._query(
                "SELECT ref, kind, payload, attempts, uncertain_at, created_at FROM rental_outbox"
                " WHERE settled_at IS NULL ORDER BY created_at, ref"):
            data = loads_object(payload)
            out.append(OutboxRow(ref, kind, data if data is not None else {}, int(attempts or 0),
                                 finite(uncertain_at), float(created_at or 0.0)))
        return out

    def held_units(self) -> set[str]:
        return {u for (u,) in self._query("SELECT DISTINCT unit FROM rental_outbox WHERE kind = ANY(%s)"
                                          " AND settled_at IS NULL AND unit <> ''", (list(HOLDING_KINDS),))}

    def attempt(self, ref: str, reason: str) -> int:
        rows = self._query("UPDATE rental_outbox SET attempts = attempts + 1, last_error = %s WHERE ref = %s"
                           " RETURNING attempts", (reason[:300], ref))
        return int(rows[0][0]) if rows else 0

    def mark_uncertain(self, ref: str, at: float) -> None:
        self._query("UPDATE rental_outbox SET uncertain_at = %s WHERE ref = %s RETURNING ref", (at, ref))

    def settle(self, ref: str, outcome: str) -> None:
        self._query("UPDATE rental_outbox SET settled_at = %s, outcome = %s WHERE ref = %s AND settled_at IS NULL"
                    " RETURNING ref", (time.time(), outcome, ref))

    def is_settled(self, ref: str) -> bool:
        return bool(self._query("SELECT 1 FROM rental_outbox WHERE ref = %s AND settled_at IS NOT NULL", (ref,)))

    def forget_settled(self, before: float) -> int:
        return len(self._query("DELETE FROM rental_outbox WHERE settled_at IS NOT NULL AND settled_at < %s"
                               " RETURNING ref", (before,)))
