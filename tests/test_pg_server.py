"""Self-test of tests/pg_server.py: a real PostgreSQL server, reached with psycopg 3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import psycopg
import pytest

from tests.pg_server import PgServer

LOCK_KEY = 90417


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with PgServer() as s:
        yield s


def test_server_runs_from_the_expected_binaries(server: PgServer) -> None:
    print(server)
    assert server.pid is not None
    assert server.url.startswith(f"postgresql://postgres@127.0.0.1:{server.port}/")
    with psycopg.connect(server.url, connect_timeout=5) as conn:
        version, user = conn.execute("select current_setting('server_version'), current_user").fetchone()
    assert user == "postgres"
    assert f"(PostgreSQL) {version.split()[0]}" in server.version  # "postgres (PostgreSQL) 18.6"
    if os.geteuid() == 0:
        assert "nobody" in server.run_as  # the server itself never runs as root


def test_two_fresh_databases_are_separate(server: PgServer) -> None:
    a, b = server.create_database(), server.create_database()
    assert a != b
    with psycopg.connect(a) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == a.rsplit("/", 1)[1]
        conn.execute("create table t (x int primary key)")
        conn.execute("insert into t values (1)")
    with psycopg.connect(b) as conn:
        assert conn.execute("select to_regclass('public.t')").fetchone()[0] is None
    server.drop_database(a)
    server.drop_database(b)
    names = {r[0] for r in server.execute("select datname from pg_database")}
    assert not {a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]} & names


def test_xact_advisory_lock_across_two_connections(server: PgServer) -> None:
    url = server.create_database()
    with psycopg.connect(url) as one, psycopg.connect(url) as two:
        with one.transaction():
            assert one.execute("select pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()[0] is True
            with two.transaction():
                assert two.execute("select pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()[0] is False
        # one's transaction ended, so its lock is gone with it
        with two.transaction():
            assert two.execute("select pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()[0] is True
    server.drop_database(url)


HOLDER = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("select pg_advisory_lock(%s)", (int(sys.argv[2]),))
print(conn.info.backend_pid, flush=True)
time.sleep(600)
"""


def test_session_advisory_lock_is_released_when_its_holder_is_sigkilled(server: PgServer) -> None:
    url = server.create_database()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(LOCK_KEY)], stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), f"holder did not take the lock (exit {holder.poll()})"
        backend_pid = int(line)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0] is False
            assert conn.execute(
                "select count(*) from pg_locks where locktype = 'advisory' and granted and pid = %s", (backend_pid,)
            ).fetchone()[0] == 1
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
            t0 = time.monotonic()
            while not conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
                assert time.monotonic() - t0 < 10, "lock still held 10 s after its holder was SIGKILLed"
                time.sleep(0.01)
            print(f"lock free {1000 * (time.monotonic() - t0):.1f} ms after the SIGKILL")
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout:
            holder.stdout.close()
    server.drop_database(url)


def test_password_auth_and_crash_restart_and_cleanup() -> None:
    s = PgServer(password="s3cr:t/pw").start()
    base = s.base
    try:
        assert ":s3cr%3At%2Fpw@" in s.url
        url = s.create_database()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url.replace(":s3cr%3At%2Fpw@", "@"), connect_timeout=5).close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (7)")
        pid = s.pid
        s.kill()  # kill -9: postmaster and every backend
        assert s.pid is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()
        s.start()  # crash recovery, same port: the old URL works again
        assert s.pid != pid
        with psycopg.connect(url) as conn:
            assert conn.execute("select x from t").fetchall() == [(7,)]
        s.stop()
        assert s.pid is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()
    finally:
        s.cleanup()
    assert base is not None and not base.exists()
